"""`litgpt_lite serve`: the command, and the life of the server's processes (start, signals, stop).

All processes are children of the `serve` process: a multiprocessing manager that holds the `WorkerChannel`, the
tokenizer helper for big prompts (encoding.py), the API server process(es) (uvicorn, forked by LitServe, running
`OpenAIServeSpec`), the inference worker(s) (spawned by LitServe, running `BatchingLoop`), and LitServe's own manager.
Ctrl-C or SIGTERM stops them all.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import litserve as ls
from starlette.exceptions import HTTPException

from litgpt_lite.errors import UserError
from litgpt_lite.serve.encoding import TokenizerHelper
from litgpt_lite.serve.openai import BodyLimitMiddleware, http_error_handler, server_error_handler
from litgpt_lite.serve.spec import OpenAIServeSpec, chat_page
from litgpt_lite.serve.worker import BatchingLoop, GenerationAPI, WorkerChannel

API_KEY_ENV = "LITGPT_LITE_API_KEY"
LITSERVE_HOSTS = ("127.0.0.1", "0.0.0.0", "::")


@dataclass
class ServeSettings:
    """Everything `serve` takes: its command-line flags (see `serve` for each one's meaning)."""

    checkpoint_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    max_new_tokens: int = 256
    temperature: float = 0.8
    top_k: int | None = 50
    top_p: float = 1.0
    quantize: str | None = None
    precision: str | None = None
    devices: int | str = 1
    max_batch_size: int = 8
    batch_timeout: float = 0.05
    api_key: str | None = None
    workers_per_device: int = 1
    max_request_bytes: int = 4 * 1024 * 1024
    max_choices: int = 16
    kernels: str = "auto"


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
    max_request_bytes: int = 4 * 1024 * 1024,
    max_choices: int = 16,
    kernels: str = "auto",
) -> None:
    """Serve a checkpoint over the OpenAI API (/v1/chat/completions, /v1/completions, /v1/models, /health), with a chat
    page at /.

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
        api_key: when set, every /v1 request must send `Authorization: Bearer <api_key>`. Without this flag the key
            is read from the environment variable LITGPT_LITE_API_KEY (out of sight of `ps`); the flag wins.
        workers_per_device: inference worker processes per device (each holds its own copy of the model).
        max_request_bytes: largest request body accepted (default 4 MiB); a bigger one gets a 413.
        max_choices: most choices one request may ask for: prompts x `n` on /v1/completions, `n` on chat (400 beyond).
        kernels: device fast paths: "auto" (where they help on this hardware) or "none" (torch's modules only).
    """
    run(
        ServeSettings(
            checkpoint_dir, host, port, max_new_tokens, temperature, top_k, top_p, quantize, precision, devices,
            max_batch_size, batch_timeout, api_key, workers_per_device, max_request_bytes, max_choices, kernels,
        )
    )  # fmt: skip


def run(settings: ServeSettings, api_class: type[GenerationAPI] = GenerationAPI) -> None:
    """Check `settings`, start the server, and serve until Ctrl-C or SIGTERM: `serve` from Python.

    `api_class` is what each inference worker runs: `GenerationAPI` or a subclass of it (importable by name, since
    workers are spawned processes), e.g. one that wraps the model.
    """
    s, api_key_source = _checked(settings)
    manager = multiprocessing.Manager()  # each manager ignores Ctrl-C; both are stopped below
    helper = TokenizerHelper()
    helper.start()
    try:
        channel = WorkerChannel(manager)
        server = _build_server(s, api_class, channel, helper.tokenizer(str(s.checkpoint_dir)))
        signal.signal(signal.SIGTERM, partial(_on_stop_signal, os.getpid()))
        signal.signal(signal.SIGINT, partial(_on_stop_signal, os.getpid()))
        key = f"; requests need the API key from {api_key_source}" if api_key_source else ""
        url = f"http://{s.host}:{s.port}"
        print(f"Serving {s.checkpoint_dir} at {url}/v1 (OpenAI API), chat page {url}/{key}; Ctrl-C stops", flush=True)
        _run_until_stopped(server, s, channel)
    finally:
        # LitServe's worker monitor thread notices the stopped manager only after run() returns; its traceback
        # would be noise, not news.
        logging.getLogger("litserve.server").setLevel(logging.CRITICAL)
        manager.shutdown()
        helper.shutdown()
        _stop_children()


def _checked(settings: ServeSettings) -> tuple[ServeSettings, str | None]:
    """A copy of `settings` checked, with the host, devices and API key resolved; and where the key came from."""
    from litgpt_lite.checkpoint import validate_checkpoint_dir
    from litgpt_lite.generate import SamplingParams
    from litgpt_lite.kernels import check_kernels

    s = dataclasses.replace(settings)
    s.checkpoint_dir = validate_checkpoint_dir(s.checkpoint_dir, need_weights=not _prequantized(s.checkpoint_dir))
    s.host = "127.0.0.1" if s.host == "localhost" else s.host
    _check_serve_args(s.host, s.port, s.max_batch_size, s.batch_timeout, s.workers_per_device)
    _check_limits(s.max_request_bytes, s.max_choices)
    SamplingParams(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p).validate()
    _accelerator(s.devices)
    _check_model_args(s.precision, s.quantize)
    try:
        check_kernels(s.kernels)
    except ValueError as e:
        raise UserError(str(e)) from None
    s.api_key, source = _api_key(s.api_key)
    return s, source


def _api_key(flag: str | None) -> tuple[str | None, str | None]:
    """The key from --api_key, else from $LITGPT_LITE_API_KEY (an empty variable counts as unset); and its source."""
    if flag is not None:
        if not flag.strip():
            raise UserError(f"--api_key must not be empty (omit it, or unset {API_KEY_ENV}, to serve without a key)")
        return flag, "--api_key"
    from_env = os.environ.get(API_KEY_ENV, "").strip()
    return (from_env, API_KEY_ENV) if from_env else (None, None)


def _build_server(
    s: ServeSettings, api_class: type[GenerationAPI], channel: WorkerChannel, tokenizer_helper
) -> ls.LitServer:
    accelerator, devices = _accelerator(s.devices)
    defaults = {"max_new_tokens": s.max_new_tokens, "temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p}
    spec = OpenAIServeSpec(s.checkpoint_dir, defaults, s.api_key, channel, s.max_choices, tokenizer_helper)
    api = api_class(
        s.checkpoint_dir,
        s.precision,
        s.quantize,
        s.kernels,
        channel,
        max_batch_size=s.max_batch_size,
        batch_timeout=s.batch_timeout,
        spec=spec,
        loop=BatchingLoop(channel),
    )
    server = ls.LitServer(
        api,
        accelerator=accelerator,
        devices=devices,
        workers_per_device=s.workers_per_device,
        timeout=False,
        middlewares=[(BodyLimitMiddleware, {"max_bytes": s.max_request_bytes})],
    )
    _route_chat_page(server.app)
    server.app.add_exception_handler(HTTPException, http_error_handler)  # 404, 405, 413: OpenAI's error shape
    server.app.add_exception_handler(Exception, server_error_handler)
    server.uvicorn_graceful_timeout = 3  # on shutdown, open requests get 3 s (LitServe's 30 s outlasts a SIGTERM)
    return server


def _route_chat_page(app) -> None:
    """GET / is the chat page, in place of LitServe's own "litserve running" (registered ahead of any spec route)."""
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) != "/"]
    app.add_api_route("/", chat_page, methods=["GET"], include_in_schema=False)


def _run_until_stopped(server: ls.LitServer, s: ServeSettings, channel: WorkerChannel) -> None:
    try:
        server.run(host=s.host, port=s.port, generate_client_file=False, log_level="warning")
    except KeyboardInterrupt:
        pass
    except RuntimeError as e:
        if "workers failed to start" not in str(e):
            raise
        reason = channel.failure() or "the worker's error is in the log above"
        raise UserError(f"The inference worker could not load the model from {s.checkpoint_dir}: {reason}") from None


def _check_limits(max_request_bytes: int, max_choices: int) -> None:
    if max_request_bytes < 1:
        raise UserError(f"--max_request_bytes must be >= 1, got {max_request_bytes}")
    if max_choices < 1:
        raise UserError(f"--max_choices must be >= 1, got {max_choices}")


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
