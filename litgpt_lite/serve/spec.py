"""The API server side: routes, the API key, prompts and their limits, and the hand-off of work to the workers.

`OpenAIServeSpec` runs in each API server process (uvicorn, forked by LitServe). It validates a request, renders the
chat template, tokenizes (off the event loop for big prompts), checks the prompt against the context, and answers 4xx
errors before any compute. Each choice of a request becomes one work item on LitServe's request queue; when the client
goes away before its answer is complete, the rows still running are posted to the workers as cancelled.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import importlib.resources
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from litserve.specs.base import LitSpec
from litserve.utils import ResponseBufferItem
from starlette.requests import ClientDisconnect

from litgpt_lite.config import Config
from litgpt_lite.errors import UserError
from litgpt_lite.prompts import prompt_style_for
from litgpt_lite.serve.encoding import PromptEncoder
from litgpt_lite.serve.openai import (
    Answer,
    ChatCompletionBody,
    Choice,
    CompletionBody,
    RequestBody,
    RequestError,
    SSEResponse,
    error_response,
    parse_body,
)
from litgpt_lite.serve.worker import WorkerChannel
from litgpt_lite.tokenizer import Tokenizer


class OpenAIServeSpec(LitSpec):
    """Routes /v1/chat/completions, /v1/completions and /v1/models; validates and tokenizes; assembles answers."""

    def __init__(
        self,
        checkpoint_dir: Path,
        defaults: dict[str, Any],
        api_key: str | None,
        channel: WorkerChannel,
        max_choices: int,
        tokenizer_helper,
    ) -> None:
        super().__init__()
        self.api_path = "/v1/chat/completions"
        self.checkpoint_dir = Path(checkpoint_dir)
        self.model_id = self.checkpoint_dir.name
        self.defaults = defaults  # server-wide sampling defaults from the command line
        self.api_key = api_key
        self.channel = channel
        self.max_choices = max_choices
        self.tokenizer_helper = tokenizer_helper  # a proxy to the tokenizer in the helper process (encoding.py)
        self.created = int(time.time())
        self._tokenizer = self._style = self._encoder = None
        self.block_size = Config.from_file(self.checkpoint_dir / "model_config.yaml").block_size

    @property
    def stream(self) -> bool:  # every reply travels as a stream of deltas from the worker
        return True

    def __getstate__(self):
        state = super().__getstate__()
        state.update(_tokenizer=None, _style=None, _encoder=None)
        return state

    def pre_setup(self, lit_api) -> None:
        self.add_endpoint("/v1/chat/completions", self.chat_completions, ["POST"])
        self.add_endpoint("/v1/completions", self.completions, ["POST"])
        self.add_endpoint("/v1/models", self.models, ["GET"])

    def decode_request(self, request, context_kwargs=None):
        return request

    def encode_response(self, output, context_kwargs=None):
        return output

    # ---- tokenizer, chat template and encoder (built lazily in each API server process)
    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = Tokenizer(self.checkpoint_dir)
        return self._tokenizer

    @property
    def style(self):
        if self._style is None:
            self._style = prompt_style_for(self.checkpoint_dir, self.tokenizer)
        return self._style

    @property
    def encoder(self) -> PromptEncoder:
        if self._encoder is None:
            self._encoder = PromptEncoder(self.tokenizer, self.tokenizer_helper)
        return self._encoder

    # ---- endpoints
    async def models(self, request: Request) -> JSONResponse:
        try:
            self._authorize(request)
        except RequestError as e:
            return error_response(e)
        card = {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "litgpt_lite"}
        return JSONResponse({"object": "list", "data": [card]})

    async def chat_completions(self, request: Request) -> Response:
        return await self._handle(request, ChatCompletionBody, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._handle(request, CompletionBody, chat=False)

    async def _handle(self, request: Request, body_type: type[RequestBody], chat: bool) -> Response:
        try:
            self._authorize(request)  # before the body is read
            body = parse_body(await request.body(), body_type)
            self._check_choices(body, chat)
            prompts = await self._prompts(body, chat)
            items = self._work_items(body, prompts, chat)
        except RequestError as e:
            return error_response(e)
        except ClientDisconnect:  # gone while sending its body: nobody to answer
            return Response(status_code=499)
        choices = [self._submit(item) for item in items]
        answer = Answer(self.model_id, chat, body, sum(len(ids) for ids in prompts), choices)
        if body.stream:
            return SSEResponse(answer)
        return await self._full_answer(request, answer)

    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise RequestError(
                "Invalid or missing API key: send the header `Authorization: Bearer <key>`", 401, "invalid_api_key"
            )

    def _check_choices(self, body: RequestBody, chat: bool) -> None:
        """At most --max_choices rows per request: prompts x n on /v1/completions, n on chat."""
        prompts = 1 if chat or isinstance(body.prompt, str) else len(body.prompt)
        if prompts * body.n <= self.max_choices:
            return
        asked = f"n={body.n}" if prompts == 1 else f"{prompts} prompts x n={body.n}"
        raise RequestError(
            f"Invalid request: {asked} asks for {prompts * body.n} choices; this server answers at most"
            f" {self.max_choices} per request (--max_choices)",
            code="too_many_choices",
            param="n" if prompts == 1 else "prompt",
        )

    async def _prompts(self, body: RequestBody, chat: bool) -> list[list[int]]:
        """Token ids of each prompt (one for chat; one per string for completions), checked against the context."""
        if chat:
            messages = [{"role": m.role, "content": m.text()} for m in body.messages]
            try:
                texts = [self.style.apply_messages(messages)]
            except UserError as e:
                raise RequestError(str(e), param="messages") from None
        else:
            texts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
            if not texts:
                raise RequestError("prompt must not be an empty list", param="prompt")
        prompts = await self.encoder.encode(texts)
        for ids in prompts:
            if not ids:
                raise RequestError("The prompt is empty: it has no tokens", param="prompt")
            if len(ids) >= self.block_size:
                raise RequestError(
                    f"The prompt has {len(ids)} tokens but the model's context is {self.block_size}: shorten the"
                    " prompt",
                    code="context_length_exceeded",
                    param="messages" if chat else "prompt",
                )
        return prompts

    def _work_items(self, body: RequestBody, prompts: list[list[int]], chat: bool) -> list[dict[str, Any]]:
        """One work item per (prompt, choice): the prompt ids and that row's sampling parameters."""
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        stop_token_ids = self.style.stop_sequences(self.tokenizer) if chat and not body.ignore_eos else []
        requested = body.max_completion_tokens or body.max_tokens or self.defaults["max_new_tokens"]
        items = []
        for ids in prompts:
            for i in range(body.n):
                params = {
                    "max_new_tokens": min(requested, self.block_size - len(ids)),  # clamped to the context
                    "temperature": _pick(body.temperature, self.defaults["temperature"]),
                    "top_k": _pick(body.top_k, self.defaults["top_k"]),
                    "top_p": _pick(body.top_p, self.defaults["top_p"]),
                    "seed": None if body.seed is None else body.seed + i,  # n choices differ when sampling
                    "stop": stop,
                    "stop_token_ids": stop_token_ids,
                    "ignore_eos": body.ignore_eos,
                }
                items.append({"prompt": ids, "params": params})
        return items

    def _submit(self, item: dict[str, Any]) -> Choice:
        uid = uuid.uuid4()
        choice = Choice(uid, self.response_buffer, self.channel.cancel)
        self.response_buffer[uid] = ResponseBufferItem(response_queue=choice.queue, event=choice.event)
        self.request_queue.put((self.response_queue_id, uid, time.monotonic(), item))
        return choice

    async def _full_answer(self, request: Request, answer: Answer) -> Response:
        """The JSON answer; should the client disconnect first, its rows are cancelled instead."""
        full = asyncio.ensure_future(answer.full())
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({full, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not full.done():
                full.cancel()
                answer.abandon()
        if not full.done() or full.cancelled():
            return Response(status_code=499)  # nobody reads it: the client is gone
        try:
            return JSONResponse(full.result())
        except RequestError as e:
            return error_response(e)


async def _disconnected(request: Request) -> None:
    """Returns when the client closes its connection (the body has been read, so the next message says so)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# The chat page may fetch nothing but this server's own API: no CDN, no third-party request, ever.
CHAT_PAGE_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:;"
    " base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@functools.cache
def _chat_page_html() -> str:
    return importlib.resources.files("litgpt_lite.serve").joinpath("chat.html").read_text(encoding="utf-8")


async def chat_page(request: Request) -> HTMLResponse:
    """GET /: the chat page (chat.html), one self-contained file that talks to /v1/models and /v1/chat/completions.

    It needs no API key itself: the page asks for one when /v1/models answers 401.
    """
    headers = {"Content-Security-Policy": CHAT_PAGE_POLICY, "X-Content-Type-Options": "nosniff"}
    return HTMLResponse(_chat_page_html(), headers=headers)


def _pick(value, default):
    return default if value is None else value
