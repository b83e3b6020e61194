"""Test stand-ins for the generation core: a tokenizer for comparing raw token ids, with no text and no stop."""

from __future__ import annotations

from collections.abc import Sequence

from litgpt_lite.generate import greedy_tokens


class _SilentStream:
    def step(self, _token: int) -> str:
        return ""

    def flush(self) -> str:
        return ""


class NoStopTokenizer:
    """What `stream_generate` needs from a tokenizer, for models without one: no stop ids, every token decodes to ''."""

    stop_ids: set[int] = set()

    @staticmethod
    def decode_stream(skip_special_tokens: bool = True) -> _SilentStream:
        return _SilentStream()

    @staticmethod
    def decode(ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return ""


def greedy(model, prompt: Sequence[int], max_new_tokens: int) -> list[int]:
    """`max_new_tokens` greedy token ids of a model that has no tokenizer at hand."""
    return greedy_tokens(model, NoStopTokenizer(), prompt, max_new_tokens)
