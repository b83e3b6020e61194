"""`litgpt_lite serve`: an OpenAI-compatible HTTP server on LitServe, over the one generation core.

Layout of a running server (all processes are children of the `serve` process):
- the API server process(es) (uvicorn, forked by LitServe) run `OpenAIServeSpec`: they parse and validate the request,
  render the chat template, tokenize, check the prompt against the context and answer 4xx errors before any
  compute. Each choice of a request becomes one work item on LitServe's request queue.
- the inference worker(s) (spawned by LitServe) run `BatchingLoop`: they wait for a work item, gather more for up to
  `batch_timeout` seconds (at most `max_batch_size`), and run the whole batch as ONE `stream_generate` call with
  per-row sampling parameters. Each row's deltas go back to the API server that owns it, which turns them into
  OpenAI JSON or SSE chunks.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import queue
import signal
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any, Literal

import litserve as ls
from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from litserve.loops.base import LitLoop
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, LoopResponseType, ResponseBufferItem
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from litgpt_lite.errors import UserError

logger = logging.getLogger("litgpt_lite.serve")

# Test-only fault injection: when this variable is set in the server's environment, a request whose prompt contains
# its value fails inside the worker after the first generated token (to exercise mid-stream error reporting).
FAULT_ENV = "LITGPT_LITE_SERVE_TEST_FAULT"
LITSERVE_HOSTS = ("127.0.0.1", "0.0.0.0", "::")


# ---------------------------------------------------------------- request bodies
class _Body(BaseModel):
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
    n: int = Field(1, ge=1, le=16)
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


class ChatCompletionBody(_Body):
    messages: list[_Message] = Field(min_length=1)


class CompletionBody(_Body):
    prompt: str | list[str]


class RequestError(Exception):
    """A request the server refuses: turned into an OpenAI-style JSON error with `status`."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_request", param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.param = status, code, param


def error_body(message: str, kind: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _error_response(e: RequestError) -> JSONResponse:
    kind = {401: "authentication_error"}.get(e.status, "server_error" if e.status >= 500 else "invalid_request_error")
    return JSONResponse(error_body(str(e), kind, e.code, e.param), status_code=e.status)


def _validation_message(e: ValidationError) -> str:
    first = e.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"Invalid request: {where}: {first['msg']}"


# ---------------------------------------------------------------- the API server side
class OpenAIServeSpec(LitSpec):
    """Routes /v1/chat/completions, /v1/completions and /v1/models; validates and tokenizes; assembles answers."""

    def __init__(self, checkpoint_dir: Path, defaults: dict[str, Any], api_key: str | None) -> None:
        super().__init__()
        self.api_path = "/v1/chat/completions"
        self.checkpoint_dir = Path(checkpoint_dir)
        self.model_id = self.checkpoint_dir.name
        self.defaults = defaults  # server-wide sampling defaults from the command line
        self.api_key = api_key
        self.created = int(time.time())
        self._tokenizer = None
        self._style = None
        from litgpt_lite.config import Config

        self.block_size = Config.from_file(self.checkpoint_dir / "model_config.yaml").block_size

    @property
    def stream(self) -> bool:  # every reply travels as a stream of deltas from the worker
        return True

    def __getstate__(self):
        state = super().__getstate__()
        state.update(_tokenizer=None, _style=None)
        return state

    def pre_setup(self, lit_api) -> None:
        self.add_endpoint("/v1/chat/completions", self.chat_completions, ["POST"])
        self.add_endpoint("/v1/completions", self.completions, ["POST"])
        self.add_endpoint("/v1/models", self.models, ["GET"])

    def decode_request(self, request, context_kwargs=None):
        return request

    def encode_response(self, output, context_kwargs=None):
        return output

    # ---- tokenizer and chat template (loaded lazily in each API server process)
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from litgpt_lite.tokenizer import Tokenizer

            self._tokenizer = Tokenizer(self.checkpoint_dir)
        return self._tokenizer

    @property
    def style(self):
        if self._style is None:
            from litgpt_lite.prompts import prompt_style_for

            self._style = prompt_style_for(self.checkpoint_dir, self.tokenizer)
        return self._style

    # ---- endpoints
    async def models(self, request: Request) -> JSONResponse:
        try:
            self._authorize(request)
        except RequestError as e:
            return _error_response(e)
        card = {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "litgpt_lite"}
        return JSONResponse({"object": "list", "data": [card]})

    async def chat_completions(self, request: Request):
        return await self._handle(request, ChatCompletionBody, chat=True)

    async def completions(self, request: Request):
        return await self._handle(request, CompletionBody, chat=False)

    async def _handle(self, request: Request, body_type: type[_Body], chat: bool):
        try:
            self._authorize(request)
            body = await self._parse(request, body_type)
            prompts = self._prompts(body, chat)
            items = self._work_items(body, prompts, chat)
        except RequestError as e:
            return _error_response(e)
        choices = [self._submit(item) for item in items]
        prompt_tokens = sum(len(ids) for ids in prompts)
        answer = _Answer(self.model_id, chat, body, prompt_tokens, choices)
        if body.stream:
            return StreamingResponse(answer.sse(), media_type="text/event-stream")
        try:
            return JSONResponse(await answer.full())
        except RequestError as e:
            return _error_response(e)

    def _authorize(self, request) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise RequestError(
                "Invalid or missing API key: send the header `Authorization: Bearer <key>`", 401, "invalid_api_key"
            )

    @staticmethod
    async def _parse(request, body_type: type[_Body]) -> _Body:
        raw = await request.body()
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(f"The request body is not valid JSON: {e}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise RequestError("The request body must be a JSON object", code="invalid_json")
        try:
            body = body_type.model_validate(data)
        except ValidationError as e:
            raise RequestError(_validation_message(e), code="invalid_request") from None
        body.check_supported()
        return body

    def _prompts(self, body: _Body, chat: bool) -> list[list[int]]:
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
        prompts = [self.tokenizer.encode(text) for text in texts]
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

    def _work_items(self, body: _Body, prompts: list[list[int]], chat: bool) -> list[dict[str, Any]]:
        """One work item per (prompt, choice): the prompt ids and that row's sampling parameters."""
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        stop_token_ids = self.style.stop_sequences(self.tokenizer) if chat and not body.ignore_eos else []
        requested = body.max_completion_tokens or body.max_tokens or self.defaults["max_new_tokens"]
        fault = os.environ.get(FAULT_ENV)
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
                fail = bool(fault) and fault in self.tokenizer.decode(ids)
                items.append({"prompt": ids, "params": params, "fail_after_first_token": fail})
        return items

    def _submit(self, item: dict[str, Any]) -> _Choice:
        uid = uuid.uuid4()
        choice = _Choice(uid, self.response_buffer)
        self.response_buffer[uid] = ResponseBufferItem(response_queue=choice.queue, event=choice.event)
        self.request_queue.put((self.response_queue_id, uid, time.monotonic(), item))
        return choice


def _pick(value, default):
    return default if value is None else value


class _Choice:
    """The stream of one row's deltas, as the worker sends them to this API server."""

    def __init__(self, uid: uuid.UUID, buffer: dict) -> None:
        self.uid, self.buffer = uid, buffer
        self.queue: deque = deque()
        self.event = asyncio.Event()

    async def messages(self) -> AsyncIterator[dict[str, Any]]:
        """Each delta dict (text, finish_reason); raises RequestError for an error the worker reported."""
        try:
            while True:
                await self.event.wait()
                self.event.clear()
                while self.queue:
                    data, status = self.queue.popleft()
                    if status == LitAPIStatus.FINISH_STREAMING:
                        return
                    if status == LitAPIStatus.ERROR:
                        message = data.get("message") if isinstance(data, dict) else "the inference worker failed"
                        raise RequestError(f"Generation failed: {message}", 500, "generation_error")
                    yield data
        finally:
            self.buffer.pop(self.uid, None)


class _Answer:
    """Turns the choices' delta streams into one OpenAI response (JSON) or a stream of SSE chunks."""

    def __init__(self, model: str, chat: bool, body: _Body, prompt_tokens: int, choices: list[_Choice]) -> None:
        self.model, self.chat, self.body, self.choices = model, chat, body, choices
        self.prompt_tokens = prompt_tokens
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

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
    async def _collect(choice: _Choice) -> tuple[str, str, int]:
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
        """SSE chunks; an error after the stream started becomes a final `error` event, then [DONE]."""
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

    @staticmethod
    async def _pump(index: int, choice: _Choice, out: asyncio.Queue) -> None:
        try:
            async for d in choice.messages():
                await out.put((index, d))
            await out.put((index, None))
        except RequestError as e:
            await out.put((index, e))


# ---------------------------------------------------------------- the inference worker side
class GenerationAPI(ls.LitAPI):
    """The model in an inference worker: runs a batch of work items as one `stream_generate` call."""

    def __init__(self, checkpoint_dir: Path, precision: str | None, quantize: str | None, **litapi_kwargs) -> None:
        super().__init__(**litapi_kwargs)
        self.checkpoint_dir, self.precision, self.quantize = Path(checkpoint_dir), precision, quantize
        self.model = self.tokenizer = None

    def setup(self, device) -> None:
        from litgpt_lite.loading import load_for_inference
        from litgpt_lite.tokenizer import Tokenizer

        self.model = load_for_inference(self.checkpoint_dir, device, self.precision, self.quantize)[0]
        self.tokenizer = Tokenizer(self.checkpoint_dir)
        if not logger.handlers:  # a spawned worker starts with no logging set up
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("[worker %(process)d] %(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False

    def predict(self, items: list[dict[str, Any]]) -> Iterator[list[Any]]:
        """Per decode step, the TokenDeltas of the rows that changed (`row` indexes `items`)."""
        from litgpt_lite.generate import SamplingParams, stream_generate

        params = [SamplingParams(**item["params"]) for item in items]
        prompts = [item["prompt"] for item in items]
        start, tokens = time.perf_counter(), 0
        for step, deltas in enumerate(stream_generate(self.model, self.tokenizer, prompts, params)):
            if step == 1 and any(item.get("fail_after_first_token") for item in items):
                raise RuntimeError(f"fault injected by {FAULT_ENV}")
            tokens += len(deltas)
            yield deltas
        seconds = time.perf_counter() - start
        logger.info(
            "batch of %d request(s): %d tokens in %.2f s (%.1f tokens/s)", len(items), tokens, seconds,
            tokens / max(seconds, 1e-9),
        )  # fmt: skip


class BatchingLoop(LitLoop):
    """Worker loop: block for the first work item, gather more for `batch_timeout`, generate them together.

    LitServe's stock batched loop polls the queue without blocking, which keeps a CPU core busy while idle.
    A row that finishes is answered at once; the others keep decoding.
    """

    def __call__(self, lit_api, device, worker_id, request_queue, transport, workers_setup_status, callback_runner):
        try:
            while True:
                batch = self._gather(lit_api, request_queue)
                if batch is None:
                    return
                if batch:
                    self._run(lit_api, transport, batch)
        except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the server shuts us down
            return

    @staticmethod
    def _gather(lit_api, request_queue) -> list | None:
        """Up to max_batch_size items: [] after an idle second, None when the server says stop."""
        try:
            first = request_queue.get(timeout=1.0)
        except queue.Empty:
            return []
        except (EOFError, BrokenPipeError, ConnectionError):
            return None
        if first == (None, None, None, None) or first is None:
            return None
        batch = [first]
        deadline = time.monotonic() + lit_api.batch_timeout
        while len(batch) < lit_api.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                item = request_queue.get(timeout=remaining) if remaining > 0 else request_queue.get_nowait()
            except queue.Empty:
                break
            if item == (None, None, None, None):
                request_queue.put(item)  # let the loop see it again after this batch
                break
            batch.append(item)
        return batch

    def _run(self, lit_api, transport, batch: list) -> None:
        stream = LoopResponseType.STREAMING
        routes = [(qid, uid) for qid, uid, _, _ in batch]
        done = [False] * len(batch)
        try:
            for deltas in lit_api.predict([item for _, _, _, item in batch]):
                for d in deltas:
                    qid, uid = routes[d.row]
                    message = {"text": d.text, "finish_reason": d.finish_reason}
                    self.put_response(transport, qid, uid, message, LitAPIStatus.OK, stream)
                    if d.finish_reason:
                        done[d.row] = True
                        self.put_response(transport, qid, uid, "", LitAPIStatus.FINISH_STREAMING, stream)
            status, payload = LitAPIStatus.FINISH_STREAMING, ""
        except Exception as e:  # the batch failed: every unfinished row reports it
            logger.exception("generation failed")
            status, payload = LitAPIStatus.ERROR, {"message": f"{type(e).__name__}: {e}"}
        for i, (qid, uid) in enumerate(routes):
            if not done[i]:
                self.put_response(transport, qid, uid, payload, status, stream)


# ---------------------------------------------------------------- loading and the command
def serve(
    checkpoint_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_new_tokens: int = 256,
    temperature: float = 0.8,
    top_k: int | None = 50,
    top_p: float = 1.0,
    quantize: str | None = None,
    precision: str | None = None,
    devices: int | str = 1,
    max_batch_size: int = 8,
    batch_timeout: float = 0.05,
    api_key: str | None = None,
    workers_per_device: int = 1,
) -> None:
    """Serve a checkpoint over the OpenAI API: /v1/chat/completions, /v1/completions, /v1/models and /health.

    Args:
        checkpoint_dir: the checkpoint directory to serve.
        host: the interface to listen on: 127.0.0.1 (this machine only), 0.0.0.0 or :: (every interface).
        port: the TCP port.
        max_new_tokens: how many tokens an answer may have when a request gives no `max_tokens`.
        temperature: sampling temperature when a request gives none (0 is greedy).
        top_k: sample among the k likeliest tokens when a request gives no `top_k` (None: all tokens).
        top_p: nucleus sampling mass when a request gives no `top_p`.
        quantize: bnb.nf4, bnb.nf4-dq, bnb.fp4, bnb.fp4-dq or bnb.int8 (needs bitsandbytes).
        precision: 32-true, bf16-true or 16-true; default is the hardware's fast one (fp32 on CPUs without bf16).
        devices: how many GPUs to use ("auto": all); on a CPU-only machine one CPU worker group.
        max_batch_size: most requests generated together in one batch.
        batch_timeout: seconds a worker waits for more requests to fill a batch after the first arrives.
        api_key: when set, every /v1 request must send `Authorization: Bearer <api_key>`.
        workers_per_device: inference worker processes per device (each holds its own copy of the model).
    """
    from litgpt_lite.checkpoint import validate_checkpoint_dir
    from litgpt_lite.generate import SamplingParams

    checkpoint_dir = validate_checkpoint_dir(checkpoint_dir, need_weights=not _prequantized(checkpoint_dir))
    host = "127.0.0.1" if host == "localhost" else host
    _check_serve_args(host, port, max_batch_size, batch_timeout, workers_per_device)
    SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p).validate()
    accelerator, devices = _accelerator(devices)
    _check_model_args(precision, quantize)
    defaults = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p}
    spec = OpenAIServeSpec(checkpoint_dir, defaults, api_key)
    api = GenerationAPI(
        checkpoint_dir,
        precision,
        quantize,
        max_batch_size=max_batch_size,
        batch_timeout=batch_timeout,
        spec=spec,
        loop=BatchingLoop(),
    )
    server = ls.LitServer(
        api, accelerator=accelerator, devices=devices, workers_per_device=workers_per_device, timeout=False
    )
    server.uvicorn_graceful_timeout = 3  # on shutdown, open requests get 3 s (LitServe's 30 s outlasts a SIGTERM)
    signal.signal(signal.SIGTERM, partial(_on_stop_signal, os.getpid()))
    signal.signal(signal.SIGINT, partial(_on_stop_signal, os.getpid()))
    print(f"Serving {checkpoint_dir} at http://{host}:{port}/v1 (OpenAI API); Ctrl-C stops", flush=True)
    try:
        server.run(host=host, port=port, generate_client_file=False, log_level="warning")
    except KeyboardInterrupt:
        pass
    except RuntimeError as e:
        if "workers failed to start" not in str(e):
            raise
        raise UserError("The inference worker could not load the model: its error is printed above") from None
    finally:
        # LitServe's worker monitor thread notices the stopped manager only after run() returns; its traceback
        # would be noise, not news.
        logging.getLogger("litserve.server").setLevel(logging.CRITICAL)
        _stop_children()


def _check_serve_args(host: str, port: int, max_batch_size: int, batch_timeout: float, workers: int) -> None:
    if host not in LITSERVE_HOSTS:
        raise UserError(f"--host {host} is not supported: LitServe binds one of {', '.join(LITSERVE_HOSTS)}")
    if not 1024 <= port <= 65535:
        raise UserError(f"--port must be in 1024..65535, got {port}")
    if max_batch_size < 1:
        raise UserError(f"--max_batch_size must be >= 1, got {max_batch_size}")
    if batch_timeout < 0:
        raise UserError(f"--batch_timeout must be >= 0 seconds, got {batch_timeout}")
    if workers < 1:
        raise UserError(f"--workers_per_device must be >= 1, got {workers}")


def _check_model_args(precision: str | None, quantize: str | None) -> None:
    """Fail on a bad precision or quantization mode here, not later inside a worker process."""
    from litgpt_lite.precision import normalize_precision

    normalize_precision(precision)
    if quantize is not None:
        from litgpt_lite.quantize import check_mode, import_bitsandbytes

        check_mode(quantize)
        import_bitsandbytes()


def _accelerator(devices: int | str) -> tuple[str, int | str]:
    import torch

    if devices != "auto" and (not isinstance(devices, int) or devices < 1):
        raise UserError(f"--devices must be a positive number or 'auto', got {devices!r}")
    if not torch.cuda.is_available():
        return "cpu", 1
    if devices != "auto" and devices > torch.cuda.device_count():
        raise UserError(f"--devices {devices} asked for more GPUs than the {torch.cuda.device_count()} available")
    return "cuda", devices


def _on_stop_signal(server_pid: int, signum, frame) -> None:
    """In the server process, SIGTERM and Ctrl-C shut down through LitServe's own path (KeyboardInterrupt), with a
    watchdog: should that path hang on a worker, every child is stopped and the process exits anyway. A forked API
    server process inherits this handler and simply exits."""
    if os.getpid() != server_pid:
        raise SystemExit(0)
    import threading

    def force_exit() -> None:
        _stop_children(grace=2.0)
        os._exit(0)

    if not any(t.name == "stop-watchdog" for t in threading.enumerate()):  # a second signal adds no second one
        watchdog = threading.Timer(8.0, force_exit)
        watchdog.name, watchdog.daemon = "stop-watchdog", True  # a clean shutdown does not wait for it
        watchdog.start()
    raise KeyboardInterrupt


def _stop_children(grace: float = 5.0) -> None:
    """Terminate (then kill) every process this server started that is still alive.

    multiprocessing's resource tracker ignores SIGTERM by design and exits by itself when this process exits.
    """
    import psutil

    children = [c for c in psutil.Process().children(recursive=True) if not _is_resource_tracker(c)]
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(children, timeout=grace)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def _is_resource_tracker(process) -> bool:
    import psutil

    try:
        return any("resource_tracker" in part for part in process.cmdline())
    except psutil.Error:
        return False


def _prequantized(checkpoint_dir: Path) -> bool:
    """A checkpoint written by `litgpt_lite quantize` holds quantized weights instead of lit_model.safetensors."""
    return (Path(checkpoint_dir) / "quantize.yaml").is_file()
