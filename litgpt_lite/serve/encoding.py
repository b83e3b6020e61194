"""Prompt tokenization for an API server, off its event loop.

The `tokenizers` library holds the GIL for a whole `encode` (about 0.8 s per MB of text on a 2-core CPU), so a
thread would not keep the event loop answering: a big prompt goes to a helper process instead (spawned on first
need, one per API server process). Prompts up to `INLINE_CHARS` characters, nearly all of them, are encoded in place,
where a process round trip would cost more than the encoding.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from litgpt_lite.serve.openai import RequestError
from litgpt_lite.tokenizer import Tokenizer

INLINE_CHARS = 32_768  # about 25 ms of encoding: the most the event loop waits on a prompt

_helper_tokenizer: Tokenizer | None = None  # the tokenizer of a helper process


class PromptEncoder:
    """Token ids of prompt texts, without stalling the event loop on a big one."""

    def __init__(self, checkpoint_dir: Path, tokenizer: Tokenizer) -> None:
        self.checkpoint_dir, self.tokenizer = Path(checkpoint_dir), tokenizer
        self._pool: ProcessPoolExecutor | None = None

    async def encode(self, texts: list[str]) -> list[list[int]]:
        if sum(len(t) for t in texts) <= INLINE_CHARS:
            return [self.tokenizer.encode(t) for t in texts]
        try:
            return await asyncio.get_running_loop().run_in_executor(self._helper(), _encode, texts)
        except BrokenProcessPool:
            self._pool = None  # the next big prompt starts a new helper
            raise RequestError("The tokenizer process died while encoding the prompt", 500, "tokenizer_error") from None

    def _helper(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),  # this process has threads: never fork it
                initializer=_start_helper,
                initargs=(str(self.checkpoint_dir),),
            )
        return self._pool


def _start_helper(checkpoint_dir: str) -> None:
    global _helper_tokenizer
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the API server stops us
    _helper_tokenizer = Tokenizer(Path(checkpoint_dir))


def _encode(texts: list[str]) -> list[list[int]]:
    return [_helper_tokenizer.encode(t) for t in texts]
