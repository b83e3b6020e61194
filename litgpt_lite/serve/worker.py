"""The inference worker side: the model, and the loop that batches work items and generates them together.

An inference worker (a process spawned by LitServe) runs `BatchingLoop`: it waits for a work item, gathers more for
up to `batch_timeout` seconds (at most `max_batch_size`), and runs the whole batch as ONE `stream_generate` call with
per-row sampling parameters. Each row's deltas go back to the API server that owns it. Between decode steps the loop
reads which rows' clients went away (`WorkerChannel`): their output is dropped and their rows leave the batch (the
generation core cancels them, freeing their KV cache), and once every row still running is abandoned the generation
stops, so the next batch starts at once.
"""

from __future__ import annotations

import logging
import os
import queue
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import litserve as ls
from litserve.loops.base import LitLoop
from litserve.utils import LitAPIStatus, LoopResponseType

logger = logging.getLogger("litgpt_lite.serve")

_STALE_SECONDS = 3600.0  # a cancellation nobody claimed for this long is for a request no worker has


class WorkerChannel:
    """What passes between the serve processes besides work items and answers, held by a multiprocessing manager:
    the requests whose client went away (API servers -> inference workers), and why a worker could not load the model
    (worker -> the serve process, which prints it as one line)."""

    def __init__(self, manager) -> None:
        self._gone = manager.dict()  # str(uid) -> when the client left
        self._failures = manager.dict()  # worker pid -> one-line message

    def cancel(self, uid: uuid.UUID | str) -> None:
        try:
            self._gone[str(uid)] = time.time()
        except (OSError, EOFError):  # the manager has stopped: the server is shutting down
            pass

    def cancelled(self) -> set[str]:
        try:
            return set(self._gone.keys())
        except (OSError, EOFError):
            return set()

    def forget(self, uids: list[str]) -> None:
        """Drop claimed cancellations, and any so old that no worker holds their request."""
        try:
            stale = time.time() - _STALE_SECONDS
            for uid, when in list(self._gone.items()):
                if uid in uids or when < stale:
                    self._gone.pop(uid, None)
        except (OSError, EOFError):
            pass

    def report_failure(self, message: str) -> None:
        self._failures[os.getpid()] = message

    def failure(self) -> str | None:
        messages = list(self._failures.values())
        return messages[0] if messages else None


def load_model(checkpoint_dir: Path, device, precision: str | None, quantize: str | None, kernels: str):
    """The one place serve loads its model (in each inference worker)."""
    from litgpt_lite.loading import load_for_inference

    return load_for_inference(checkpoint_dir, device, precision, quantize, kernels=kernels)[0]


class GenerationAPI(ls.LitAPI):
    """The model in an inference worker: runs a batch of work items as one `stream_generate` call.

    Subclass it to change what a worker does around generation (wrap the model, time the steps), and pass the
    subclass to `litgpt_lite.serve.run`.

    `cancelled_rows` is set by the worker loop before each `predict` call: it returns the indices (into that call's
    items) of the rows whose client went away, and `predict` hands it to the generation core, which drops them.
    """

    def __init__(
        self,
        checkpoint_dir: Path,
        precision: str | None,
        quantize: str | None,
        kernels: str,
        channel: WorkerChannel,
        **litapi_kwargs,
    ) -> None:
        super().__init__(**litapi_kwargs)
        self.checkpoint_dir, self.precision, self.quantize, self.kernels = (
            Path(checkpoint_dir), precision, quantize, kernels
        )  # fmt: skip
        self.channel = channel
        self.model = self.tokenizer = None
        self.cancelled_rows: Callable[[], set[int]] = set

    def setup(self, device) -> None:
        from litgpt_lite.errors import UserError
        from litgpt_lite.tokenizer import Tokenizer

        _log_to_stderr()
        try:
            self.model = load_model(self.checkpoint_dir, device, self.precision, self.quantize, self.kernels)
            self.tokenizer = Tokenizer(self.checkpoint_dir)
        except Exception as e:
            message = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
            self.channel.report_failure(" ".join(message.split()))  # one line
            # the serve process prints the message; LitServe's traceback of it would be noise
            logging.getLogger("litserve.loops.loops").addFilter(lambda record: not record.exc_info)
            raise

    def predict(self, items: list[dict[str, Any]]) -> Iterator[list[Any]]:
        """Per decode step, the TokenDeltas of the rows that changed (`row` indexes `items`)."""
        from litgpt_lite.generate import SamplingParams, stream_generate

        params = [SamplingParams(**item["params"]) for item in items]
        prompts = [item["prompt"] for item in items]
        yield from stream_generate(self.model, self.tokenizer, prompts, params, cancelled=self.cancelled_rows)


def _log_to_stderr() -> None:
    if not logger.handlers:  # a spawned worker starts with no logging set up
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[worker %(process)d] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


class BatchingLoop(LitLoop):
    """Worker loop: block for the first work item, gather more for `batch_timeout`, generate them together.

    LitServe's stock batched loop polls the queue without blocking, which keeps a CPU core busy while idle.
    A row that finishes is answered at once; the others keep decoding.
    """

    def __init__(self, channel: WorkerChannel) -> None:
        super().__init__()
        self.channel = channel

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
        rows = _BatchRows([(qid, str(uid), uid) for qid, uid, _, _ in batch])
        rows.abandon(self.channel.cancelled())  # clients that left while their request waited in the queue
        live = [i for i in range(len(rows.routes)) if not rows.done[i]]
        start = time.perf_counter()
        status, payload = LitAPIStatus.FINISH_STREAMING, ""
        if live:
            # read after every decode step, once the loop below has marked the rows whose client left
            lit_api.cancelled_rows = lambda: {j for j, i in enumerate(live) if rows.gone[i]}
            steps = lit_api.predict([batch[i][3] for i in live])
            try:
                for deltas in steps:
                    for d in deltas:
                        rows.send(self, transport, live[d.row], d)
                    rows.abandon(self.channel.cancelled())
                    if rows.all_done():  # every row finished or was abandoned: nobody waits for more
                        break
            except Exception as e:  # the batch failed: every unfinished row reports it
                logger.exception("generation failed")
                status, payload = LitAPIStatus.ERROR, {"message": f"{type(e).__name__}: {e}"}
            finally:
                close = getattr(steps, "close", None)  # stops the generation and frees its KV cache now
                if close is not None:
                    close()
        rows.finish(self, transport, status, payload)
        self.channel.forget([uid for uid, gone in zip(rows.keys, rows.gone) if gone])
        seconds = time.perf_counter() - start
        cancelled = f", {sum(rows.gone)} cancelled (client gone)" if any(rows.gone) else ""
        logger.info(
            "batch of %d request(s): %d tokens in %.2f s (%.1f tokens/s)%s", len(batch), rows.tokens, seconds,
            rows.tokens / max(seconds, 1e-9), cancelled,
        )  # fmt: skip


class _BatchRows:
    """Where each row of a batch is answered, and which rows are done (finished, or their client gone)."""

    def __init__(self, routes: list[tuple[int, str, Any]]) -> None:
        self.routes = [(qid, uid) for qid, _, uid in routes]
        self.keys = [key for _, key, _ in routes]
        self.done = [False] * len(routes)
        self.gone = [False] * len(routes)
        self.tokens = 0

    def abandon(self, cancelled: set[str]) -> None:
        """Mark the unfinished rows whose client left."""
        for i, key in enumerate(self.keys):
            if not self.done[i] and key in cancelled:
                self.done[i] = self.gone[i] = True

    def all_done(self) -> bool:
        return all(self.done)

    def send(self, loop: LitLoop, transport, i: int, delta) -> None:
        if self.done[i]:
            return
        qid, uid = self.routes[i]
        self.tokens += 1
        message = {"text": delta.text, "finish_reason": delta.finish_reason}
        loop.put_response(transport, qid, uid, message, LitAPIStatus.OK, LoopResponseType.STREAMING)
        if delta.finish_reason:
            self.done[i] = True
            loop.put_response(transport, qid, uid, "", LitAPIStatus.FINISH_STREAMING, LoopResponseType.STREAMING)

    def finish(self, loop: LitLoop, transport, status: LitAPIStatus, payload: Any) -> None:
        """Close every row not answered yet (the abandoned ones too, so no API server waits on them)."""
        for i, (qid, uid) in enumerate(self.routes):
            if not self.done[i] or self.gone[i]:
                loop.put_response(transport, qid, uid, payload, status, LoopResponseType.STREAMING)
