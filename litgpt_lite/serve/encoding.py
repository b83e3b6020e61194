"""Prompt tokenization for the API servers, off their event loops.

The `tokenizers` library holds the GIL for a whole `encode` (about 0.8 s per MB of text on a 2-core CPU), so a
thread of the API server would not keep its event loop answering. A big prompt goes to a tokenizer helper process
instead: a multiprocessing manager started by the serve process (and stopped with it), shared by every API server;
the API server's thread waits on a socket meanwhile, which releases the GIL. Prompts up to `INLINE_CHARS`
characters, nearly all of them, are encoded in place, where a round trip would cost more than the encoding.
"""

from __future__ import annotations

import asyncio
from multiprocessing.managers import BaseManager
from pathlib import Path

from litgpt_lite.tokenizer import Tokenizer

INLINE_CHARS = 32_768  # about 25 ms of encoding: the most the event loop waits on a prompt


class _HelperTokenizer:
    """The tokenizer in the helper process, built on first use."""

    def __init__(self, checkpoint_dir: str) -> None:
        self.checkpoint_dir, self.tokenizer = Path(checkpoint_dir), None

    def encode(self, texts: list[str]) -> list[list[int]]:
        if self.tokenizer is None:
            self.tokenizer = Tokenizer(self.checkpoint_dir)
        return [self.tokenizer.encode(t) for t in texts]


class TokenizerHelper(BaseManager):
    """The helper process; `TokenizerHelper.start()`, then `.tokenizer(checkpoint_dir)` is a proxy to its tokenizer."""


TokenizerHelper.register("tokenizer", _HelperTokenizer)


class PromptEncoder:
    """Token ids of prompt texts, without stalling the event loop on a big one."""

    def __init__(self, tokenizer: Tokenizer, helper) -> None:
        self.tokenizer, self.helper = tokenizer, helper  # helper: the proxy to a _HelperTokenizer

    async def encode(self, texts: list[str]) -> list[list[int]]:
        if sum(len(t) for t in texts) <= INLINE_CHARS:
            return [self.tokenizer.encode(t) for t in texts]
        return await asyncio.to_thread(self.helper.encode, texts)
