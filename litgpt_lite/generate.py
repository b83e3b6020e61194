"""The one generation core: prefill, decode with the KV cache, sampling, stop tokens and strings, batching, streaming.

`generate`, `chat`, `serve`, `evaluate` and `LLM.generate` all run through `stream_generate`. Nothing else touches
the KV cache. A batch of prompts of different lengths is left-padded; each row keeps its own positions, so a row's
greedy output is the same as generating that prompt alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from litgpt_lite.errors import UserError


@dataclass
class SamplingParams:
    """How to pick the next token. temperature 0 means greedy."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = ()  # stop strings (may span token boundaries)
    stop_token_ids: Sequence[Sequence[int]] = ()  # stop token sequences besides the tokenizer's eos
    ignore_eos: bool = False  # run on past the tokenizer's eos/stop ids (fixed-length outputs, throughput runs)

    def validate(self) -> None:
        if self.temperature < 0:
            raise UserError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise UserError(f"top_k must be >= 1, got {self.top_k}")
        if self.max_new_tokens < 0:
            raise UserError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")


@dataclass
class TokenDelta:
    """What one row gained in one decode step."""

    row: int
    text: str  # new text (never a split multi-byte character; held back while it may start a stop string)
    token_id: int | None = None
    finish_reason: str | None = None  # "stop" | "length" once the row is done


@dataclass
class _Row:
    prompt_len: int
    params: SamplingParams
    decoder: object
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    text: str = ""  # decoded text so far
    emitted: int = 0  # how much of `text` has been handed out
    finish_reason: str | None = None


def check_prompt_lengths(lengths: Sequence[int], max_seq_length: int) -> None:
    for n in lengths:
        if n == 0:
            raise UserError("The prompt is empty: it has no tokens")
        if n >= max_seq_length:
            raise UserError(
                f"The prompt has {n} tokens but the model's context is {max_seq_length}: shorten the prompt"
            )


@torch.inference_mode()
def stream_generate(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams | Sequence[SamplingParams],
) -> Iterator[list[TokenDelta]]:
    """Generate for a batch of tokenized prompts; yield, per step, the deltas of the rows that changed."""
    B = len(prompts)
    per_row = list(params) if isinstance(params, Sequence) else [params] * B
    for p in per_row:
        p.validate()
    block = model.config.block_size
    lengths = [len(p) for p in prompts]
    check_prompt_lengths(lengths, block)
    T = max(lengths)
    budget = min(max(p.max_new_tokens for p in per_row), block - T)
    rows = [_new_row(n, p, tokenizer) for n, p in zip(lengths, per_row)]
    for row in rows:
        row.params = _clamp(row.params, block - row.prompt_len)
    device = model.lm_head.weight.device
    compiled = getattr(model, "decode_step", None)  # a compiled step has static shapes: the cache size is in its graph
    model.set_kv_cache(B, cache_length(T + budget, block, static=compiled is not None))
    try:
        yield from _decode(model, compiled, tokenizer, prompts, rows, T, budget, device)
    finally:
        model.clear_kv_cache()


def cache_length(needed: int, block_size: int, static: bool) -> int:
    """KV-cache slots for one call. A compiled decode step has static shapes, so the cache length is part of its
    graph: it is rounded up to a power of two (at least 64, at most the context), so prompts of many lengths share a
    few graphs instead of recompiling (a minute on a CPU) for every new length, and the turns of a chat keep theirs."""
    if not static:
        return needed
    return min(block_size, max(64, 1 << (needed - 1).bit_length()))


def _new_row(prompt_len: int, params: SamplingParams, tokenizer) -> _Row:
    generator = None
    if params.seed is not None:
        generator = torch.Generator().manual_seed(params.seed)
    return _Row(prompt_len, params, tokenizer.decode_stream(skip_special_tokens=True), generator)


def _clamp(params: SamplingParams, room: int) -> SamplingParams:
    if params.max_new_tokens <= room:
        return params
    return SamplingParams(**{**params.__dict__, "max_new_tokens": room})


def _decode(
    model, compiled, tokenizer, prompts, rows: list[_Row], T: int, budget: int, device
) -> Iterator[list[TokenDelta]]:
    B = len(prompts)
    pad_lens = torch.tensor([T - len(p) for p in prompts], device=device)
    idx = torch.zeros(B, T, dtype=torch.long, device=device)
    for b, p in enumerate(prompts):
        idx[b, T - len(p) :] = torch.tensor(list(p), dtype=torch.long)
    has_pad = bool(pad_lens.any())
    stop_ids = set(tokenizer.stop_ids or ())
    for row in rows:  # rows asking for nothing are done before any compute
        if row.params.max_new_tokens == 0:
            row.finish_reason = "length"
    if all(r.finish_reason for r in rows):
        yield [TokenDelta(b, "", None, "length") for b in range(B)]
        return
    hidden = model(idx, input_pos=0, pad_lens=pad_lens if has_pad else None, return_hidden=True)
    logits = model.logits(hidden[:, -1])  # (B, V)
    live = list(range(B))  # batch slot -> row; finished rows leave the batch so no step is spent on them
    # a compiled decode step has static shapes: it keeps its batch (no recompiles) and takes the position as a
    # device tensor, advanced in place
    step_fn = compiled or model
    pos = torch.tensor(T, device=device) if compiled else T
    for step in range(budget):
        next_tokens = _sample(logits, [rows[b] for b in live])
        deltas = [_advance(rows[b], b, int(next_tokens[i]), tokenizer, stop_ids) for i, b in enumerate(live)]
        yield [d for d in deltas if d is not None]
        keep = [i for i, b in enumerate(live) if not rows[b].finish_reason]
        if not keep or step == budget - 1:
            break
        if len(keep) < len(live) and not compiled:
            keep_t = torch.tensor(keep, device=device)
            model.keep_kv_cache_rows(keep_t)
            pad_lens, next_tokens = pad_lens[keep_t], next_tokens[keep]
            live = [live[i] for i in keep]
            has_pad = bool(pad_lens.any())
        feed = next_tokens.view(len(live), 1).to(device)
        logits = step_fn(feed, input_pos=pos, pad_lens=pad_lens if has_pad else None)[:, -1]
        pos = pos.add_(1) if compiled else pos + 1


def _advance(row: _Row, b: int, token: int, tokenizer, stop_ids: set[int]) -> TokenDelta | None:
    """Append one sampled token to a row; return what it adds for the caller."""
    if row.finish_reason:
        return None
    if token in stop_ids and not row.params.ignore_eos:
        return _finish(row, b, "stop")
    row.tokens.append(token)
    row.text += row.decoder.step(token)
    for seq in row.params.stop_token_ids:
        if seq and row.tokens[-len(seq) :] == list(seq):
            row.tokens = row.tokens[: -len(seq)]
            row.text = tokenizer.decode(row.tokens, skip_special_tokens=True)
            return _finish(row, b, "stop")
    cut = _find_stop(row.text, row.params.stop, row.emitted)
    if cut is not None:
        row.text = row.text[:cut]
        return _finish(row, b, "stop")
    if len(row.tokens) >= row.params.max_new_tokens:
        row.text += row.decoder.flush()
        return _finish(row, b, "length", token)
    safe = len(row.text) - _held_back(row.text, row.params.stop)
    delta = row.text[row.emitted : safe]
    row.emitted = max(row.emitted, safe)
    return TokenDelta(b, delta, token)


def _finish(row: _Row, b: int, reason: str, token: int | None = None) -> TokenDelta:
    row.finish_reason = reason
    delta = row.text[row.emitted :]
    row.emitted = len(row.text)
    return TokenDelta(b, delta, token, reason)


def _find_stop(text: str, stops: Sequence[str], emitted: int) -> int | None:
    """Index where the earliest stop string starts, searching only text not yet handed out (plus overlap)."""
    best = None
    for s in stops:
        if not s:
            continue
        i = text.find(s, max(0, emitted - len(s) + 1))
        if i != -1 and (best is None or i < best):
            best = i
    return best


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that could still grow into a stop string."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return hold


def _sample(logits: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
    """One token per row, each with its own sampling parameters and generator."""
    out = torch.empty(logits.shape[0], dtype=torch.long)
    logits = logits.float()
    for b, row in enumerate(rows):
        out[b] = sample_token(logits[b], row.params, row.generator)
    return out


def sample_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> int:
    """Greedy when temperature is 0; else temperature, top-k and top-p (nucleus) sampling."""
    if params.temperature == 0:
        return int(torch.argmax(logits))
    logits = logits / params.temperature
    if params.top_k is not None and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = sorted_probs.cumsum(-1)
        drop = cumulative - sorted_probs > params.top_p  # keep the smallest set whose mass reaches top_p
        sorted_probs[drop] = 0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


# ---------------------------------------------------------------- conveniences over the stream
@dataclass
class Completion:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str


def generate_completions(model, tokenizer, prompts, params) -> list[Completion]:
    """Run `stream_generate` to the end and collect one Completion per prompt."""
    texts = [""] * len(prompts)
    tokens: list[list[int]] = [[] for _ in prompts]
    reasons = ["length"] * len(prompts)
    for deltas in stream_generate(model, tokenizer, prompts, params):
        for d in deltas:
            texts[d.row] += d.text
            if d.token_id is not None and d.finish_reason != "stop":
                tokens[d.row].append(d.token_id)
            if d.finish_reason:
                reasons[d.row] = d.finish_reason
    return [Completion(t, ids, len(p), r) for t, ids, p, r in zip(texts, tokens, prompts, reasons)]


def greedy_tokens(model, tokenizer, prompt: Sequence[int], max_new_tokens: int) -> list[int]:
    """Exactly `max_new_tokens` greedy token ids, run past end-of-sequence and stop tokens (to compare token by token
    with another implementation). `tokenizer` needs what `stream_generate` uses: `decode_stream`, `decode` and
    `stop_ids`."""
    params = SamplingParams(max_new_tokens=max_new_tokens, ignore_eos=True)
    return generate_completions(model, tokenizer, [prompt], params)[0].token_ids
