"""The OpenAI API surface: request bodies, errors in OpenAI's shape, and the assembly of answers (JSON or SSE).

Everything here runs in an API server process. Every error the server sends, whatever route or layer it comes from
(a bad body, a wrong key, a 404, a body over the size limit, a failure mid-generation), has OpenAI's shape:
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from litserve.utils import LitAPIStatus
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


# ---------------------------------------------------------------- request bodies
class RequestBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)  # not in the OpenAI API; vLLM and others accept it as an extra field
    ignore_eos: bool = False  # vLLM's extra field: generate past eos and end-of-turn tokens, up to max_tokens
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    n: int = Field(1, ge=1)  # the upper bound is the server's --max_choices
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    # accepted so the error can say what is unsupported, instead of silently ignoring the request
    logprobs: bool | int | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def check_supported(self) -> None:
        if self.logprobs:
            raise RequestError("logprobs are not supported by this server", param="logprobs")
        if self.tools:
            raise RequestError("tools (function calling) are not supported by this server", param="tools")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise RequestError("only response_format type 'text' is supported", param="response_format")


class _TextPart(BaseModel):
    type: Literal["text"]
    text: str


class _Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[_TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionBody(RequestBody):
    messages: list[_Message] = Field(min_length=1)


class CompletionBody(RequestBody):
    prompt: str | list[str]


def parse_body(raw: bytes, body_type: type[RequestBody]) -> RequestBody:
    """The validated request body, or a RequestError (400) that names the first problem."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(f"The request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise RequestError("The request body must be a JSON object", code="invalid_json")
    _check_unicode(data, "")
    try:
        body = body_type.model_validate(data)
    except ValidationError as e:
        raise RequestError(_validation_message(e), code="invalid_request") from None
    body.check_supported()
    return body


def _check_unicode(value: Any, where: str) -> None:
    """JSON may escape lone UTF-16 surrogates (`"\\ud800"`), which are no text: refuse them before they reach the
    tokenizer (which cannot encode them)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            bad = value[e.start : e.end].encode("utf-8", "backslashreplace").decode()
            raise RequestError(
                f"Invalid request: {where or 'body'} contains invalid Unicode ({bad} is a lone surrogate): send UTF-8"
                " text",
                code="invalid_unicode",
                param=where or None,
            ) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_unicode(key, where)
            _check_unicode(item, f"{where}.{key}" if where else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_unicode(item, f"{where}.{i}")


def _validation_message(e: ValidationError) -> str:
    first = e.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"Invalid request: {where}: {first['msg']}"


# ---------------------------------------------------------------- errors
class RequestError(Exception):
    """A request the server refuses: turned into an OpenAI-style JSON error with `status`."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_request", param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.param = status, code, param


def error_body(message: str, kind: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _error_kind(status: int) -> str:
    return {401: "authentication_error"}.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_response(e: RequestError) -> JSONResponse:
    return JSONResponse(error_body(str(e), _error_kind(e.status), e.code, e.param), status_code=e.status)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


async def http_error_handler(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own errors (no such route, wrong method, ...) in OpenAI's shape instead of `{"detail": ...}`."""
    message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    if exc.status_code == 404:
        routes = "/v1/chat/completions, /v1/completions, /v1/models and /health"
        message = f"No route {request.method} {request.url.path}: this server has {routes}"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}"
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    body = error_body(message, _error_kind(exc.status_code), code)
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def server_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """A bug's 500 in OpenAI's shape (Starlette logs the traceback)."""
    body = error_body(f"Internal server error: {type(exc).__name__}", "server_error", "internal_error")
    return JSONResponse(body, status_code=500)


class BodyLimitMiddleware:
    """Refuses a request body over `max_bytes` with a 413: before reading it when Content-Length says so, else as
    soon as the chunks read so far pass the limit (a chunked upload has no Content-Length)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse(self._body(), status_code=413)(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413, self._body()["error"]["message"])  # the app's handler answers it
            return message

        await self.app(scope, limited, send)

    def _body(self) -> dict[str, Any]:
        message = f"The request body is larger than this server's limit of {self.max_bytes} bytes (--max_request_bytes)"
        return error_body(message, "invalid_request_error", "request_too_large")


# ---------------------------------------------------------------- answers
class Choice:
    """The stream of one row's deltas, as the worker sends them to this API server.

    `abandon` is called with the row's id when its client went away before the row finished.
    """

    def __init__(self, uid: uuid.UUID, buffer: dict, abandon: Callable[[uuid.UUID], None]) -> None:
        self.uid, self.buffer, self._abandon = uid, buffer, abandon
        self.queue: deque = deque()
        self.event = asyncio.Event()
        self.finished = False

    async def messages(self) -> AsyncIterator[dict[str, Any]]:
        """Each delta dict (text, finish_reason); raises RequestError for an error the worker reported."""
        try:
            while True:
                await self.event.wait()
                self.event.clear()
                while self.queue:
                    data, status = self.queue.popleft()
                    if status == LitAPIStatus.FINISH_STREAMING:
                        self.finished = True
                        return
                    if status == LitAPIStatus.ERROR:
                        self.finished = True
                        message = data.get("message") if isinstance(data, dict) else "the inference worker failed"
                        raise RequestError(f"Generation failed: {message}", 500, "generation_error")
                    yield data
        finally:
            self.buffer.pop(self.uid, None)

    def abandon(self) -> None:
        """The client is gone: tell the worker to stop this row, unless it has finished."""
        if not self.finished:
            self.finished = True
            self._abandon(self.uid)


class Answer:
    """Turns the choices' delta streams into one OpenAI response (JSON) or a stream of SSE chunks."""

    def __init__(self, model: str, chat: bool, body: RequestBody, prompt_tokens: int, choices: list[Choice]) -> None:
        self.model, self.chat, self.body, self.choices = model, chat, body, choices
        self.prompt_tokens = prompt_tokens
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    def abandon(self) -> None:
        for choice in self.choices:
            choice.abandon()

    def _usage(self, completion_tokens: int) -> dict[str, int]:
        total = self.prompt_tokens + completion_tokens
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total}

    async def full(self) -> dict[str, Any]:
        results = await asyncio.gather(*(self._collect(c) for c in self.choices), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        choices = [self._choice(i, text, reason) for i, (text, reason, _) in enumerate(results)]
        usage = self._usage(sum(n for _, _, n in results))
        return {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage,
        }

    @staticmethod
    async def _collect(choice: Choice) -> tuple[str, str, int]:
        text, reason, tokens = [], "stop", 0
        async for d in choice.messages():
            text.append(d["text"])
            tokens += 1
            reason = d["finish_reason"] or reason
        return "".join(text), reason, tokens

    def _choice(self, index: int, text: str, reason: str | None) -> dict[str, Any]:
        if self.chat:
            return {
                "index": index,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": reason,
            }
        return {"index": index, "text": text, "logprobs": None, "finish_reason": reason}

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        chunk = {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices}
        if usage is not None:
            chunk["usage"] = usage
        return f"data: {json.dumps(chunk)}\n\n"

    def _delta_choice(self, index: int, text: str | None, reason: str | None, first: bool = False) -> dict:
        if not self.chat:
            return {"index": index, "text": text or "", "logprobs": None, "finish_reason": reason}
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
        if text:
            delta["content"] = text
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}

    async def sse(self) -> AsyncIterator[str]:
        """SSE chunks; an error after the stream started becomes a final `error` event, then [DONE].

        When the client disconnects, the server cancels this generator: the rows still running are abandoned.
        """
        merged: asyncio.Queue = asyncio.Queue()
        tasks = [asyncio.create_task(self._pump(i, c, merged)) for i, c in enumerate(self.choices)]
        tokens, pending = 0, len(self.choices)
        try:
            if self.chat:
                yield self._chunk([self._delta_choice(i, None, None, first=True) for i in range(len(self.choices))])
            while pending:
                index, item = await merged.get()
                if item is None:
                    pending -= 1
                    continue
                if isinstance(item, RequestError):
                    yield f"data: {json.dumps(error_body(str(item), 'server_error', item.code))}\n\n"
                    break
                tokens += 1
                if item["text"] or item["finish_reason"]:
                    yield self._chunk([self._delta_choice(index, item["text"], item["finish_reason"])])
            else:
                if (self.body.stream_options or {}).get("include_usage"):
                    yield self._chunk([], usage=self._usage(tokens))
            yield "data: [DONE]\n\n"
        finally:
            for t in tasks:
                t.cancel()
            self.abandon()

    @staticmethod
    async def _pump(index: int, choice: Choice, out: asyncio.Queue) -> None:
        try:
            async for d in choice.messages():
                await out.put((index, d))
            await out.put((index, None))
        except RequestError as e:
            await out.put((index, e))


class SSEResponse(StreamingResponse):
    """An answer's SSE stream. However the response ends (done, failed, or the client gone, even before the first
    chunk), the rows still running are abandoned."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.sse(), media_type="text/event-stream")
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.answer.abandon()
