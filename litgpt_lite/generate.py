"""The one generation core: prefill, decode with the KV cache, sampling, stop tokens and strings, batching, streaming.

`generate`, `chat`, `serve`, `evaluate` and `LLM.generate` all run through `stream_generate`. Nothing else touches
the KV cache. A batch of prompts of different lengths is left-padded; each row keeps its own positions, so a row's
greedy output is the same as generating that prompt alone.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
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
    cancelled: Callable[[], Collection[int]] | None = None,
) -> Iterator[list[TokenDelta]]:
    """Generate for a batch of tokenized prompts; yield, per step, the deltas of the rows that changed.

    Args:
        model: a GPT (with `decode_step` set by `compile_decode` to decode with its compiled step).
        tokenizer: what decodes the tokens: `decode_stream`, `decode` and `stop_ids`.
        prompts: token ids per row (rows of different lengths are left-padded).
        params: sampling parameters for every row, or one per row.
        cancelled: called after every yield; the rows it names stop at once and yield nothing more (e.g. a server's
            client that went away). They leave the batch like finished rows, freeing their KV-cache rows.
    """
    B = len(prompts)
    per_row = list(params) if isinstance(params, Sequence) else [params] * B
    for p in per_row:
        p.validate()
    block = model.config.block_size
    lengths = [len(p) for p in prompts]
    check_prompt_lengths(lengths, block)
    T = max(lengths)
    budget = min(max(p.max_new_tokens for p in per_row), block - T)
    device = model.lm_head.weight.device
    rows = [_new_row(n, p, tokenizer, device) for n, p in zip(lengths, per_row)]
    for row in rows:
        row.params = _clamp(row.params, block - row.prompt_len)
    compiled = getattr(model, "decode_step", None)  # a compiled step has static shapes: the cache size is in its graph
    model.set_kv_cache(B, cache_length(T + budget, block, static=compiled is not None))
    try:
        yield from _decode(_DecodeBatch(model, compiled, prompts, T, device), tokenizer, rows, budget, cancelled)
    finally:
        model.clear_kv_cache()


def cache_length(needed: int, block_size: int, static: bool) -> int:
    """KV-cache slots for one call. A compiled decode step has static shapes, so the cache length is part of its
    graph: it is rounded up to a power of two (at least 64, at most the context), so prompts of many lengths share a
    few graphs instead of recompiling (a minute on a CPU) for every new length, and the turns of a chat keep theirs."""
    if not static:
        return needed
    return min(block_size, max(64, 1 << (needed - 1).bit_length()))


def _new_row(prompt_len: int, params: SamplingParams, tokenizer, device: torch.device) -> _Row:
    generator = None
    if params.seed is not None:  # on the model's device: tokens are sampled there, without a host round trip
        generator = torch.Generator(device=device).manual_seed(params.seed)
    return _Row(prompt_len, params, tokenizer.decode_stream(skip_special_tokens=True), generator)


def _clamp(params: SamplingParams, room: int) -> SamplingParams:
    if params.max_new_tokens <= room:
        return params
    return SamplingParams(**{**params.__dict__, "max_new_tokens": room})


def _decode(
    batch: _DecodeBatch, tokenizer, rows: list[_Row], budget: int, cancelled: Callable[[], Collection[int]] | None
) -> Iterator[list[TokenDelta]]:
    """The decode loop, one step ahead of the host: step t+1 is queued on the device before the host waits for step
    t's token ids (copied without blocking), so the host's stop checks run while the device computes. A row's finish
    is thus seen one step late: its token of that step is discarded (at most one wasted step per row); rows that
    reach max_new_tokens are known in advance and cost nothing."""
    stop_ids = set(tokenizer.stop_ids or ())
    for row in rows:  # rows asking for nothing are done before any compute
        if row.params.max_new_tokens == 0:
            row.finish_reason = "length"
    if all(r.finish_reason for r in rows):
        yield [TokenDelta(b, "", None, "length") for b in range(len(rows))]
        return
    copies = _HostCopies(len(rows), batch.device)
    tokens = _sample(batch.prefill(), rows)  # (B,) on the device
    pending = (list(batch.live), copies.start(tokens))
    for step in range(budget):
        # rows that need step + 1: unfinished, not cancelled, and wanting more than the step + 1 tokens they will have
        wanted = [b for b in batch.live if not rows[b].finish_reason and rows[b].params.max_new_tokens > step + 1]
        launched = None
        if wanted and step < budget - 1:
            tokens = batch.keep(wanted, tokens)
            tokens = _sample(batch.step(tokens), [rows[b] for b in batch.live])
            launched = (list(batch.live), copies.start(tokens))
        order, copy = pending
        deltas = [_advance(rows[b], b, t, tokenizer, stop_ids) for b, t in zip(order, tokens_to_host(copy))]
        deltas = [d for d in deltas if d is not None]
        if deltas:
            yield deltas
        _cancel(rows, cancelled)
        if launched is None:
            break
        pending = launched


def _cancel(rows: list[_Row], cancelled: Callable[[], Collection[int]] | None) -> None:
    if cancelled is None:
        return
    for b in cancelled():
        if 0 <= b < len(rows) and not rows[b].finish_reason:
            rows[b].finish_reason = "cancelled"


class _DecodeBatch:
    """The device side of one generation: the rows in the batch, their left padding, the position, and the steps.

    Finished rows leave the batch (their KV-cache rows are dropped) so no step is spent on them, except under a
    compiled decode step: it has static shapes, so it keeps its batch (no recompiles) and takes the position as a
    device tensor, advanced in place, so its graph (a CUDA graph under `mode="reduce-overhead"`) replays back to back
    with nothing created on the host per step."""

    def __init__(self, model, compiled, prompts: Sequence[Sequence[int]], T: int, device: torch.device) -> None:
        self.model, self.compiled, self.prompts, self.T, self.device = model, compiled, prompts, T, device
        self.live = list(range(len(prompts)))  # batch slot -> row
        self.pads = [T - len(p) for p in prompts]  # on the host too: "any padding?" needs no device read
        self.pad_lens = _to_device(self.pads, device)
        self.pos: int | torch.Tensor = torch.tensor(T, device=device) if compiled else T

    def _pad_arg(self) -> torch.Tensor | None:
        return self.pad_lens if any(self.pads) else None

    def prefill(self) -> torch.Tensor:
        """Run the prompts through the model (filling the KV cache); the last position's logits (B, V)."""
        idx = torch.zeros(len(self.prompts), self.T, dtype=torch.long)
        for b, p in enumerate(self.prompts):
            idx[b, self.T - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        hidden = self.model(idx.to(self.device), input_pos=0, pad_lens=self._pad_arg(), return_hidden=True)
        return self.model.logits(hidden[:, -1])

    def keep(self, rows: list[int], tokens: torch.Tensor) -> torch.Tensor:
        """Shrink the batch to `rows` (a subsequence of `live`); return their entries of `tokens`."""
        if rows == self.live or self.compiled:
            return tokens
        slot = {b: i for i, b in enumerate(self.live)}
        keep = _to_device([slot[b] for b in rows], self.device)
        self.model.keep_kv_cache_rows(keep)
        self.pad_lens = self.pad_lens.index_select(0, keep)
        self.pads = [self.pads[slot[b]] for b in rows]
        self.live = rows
        return tokens.index_select(0, keep)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """One decode step for the batch's tokens (len(live),); the logits (len(live), V)."""
        if self.compiled is None:
            logits = self.model(tokens.view(-1, 1), input_pos=self.pos, pad_lens=self._pad_arg())[:, -1]
            self.pos += 1
            return logits
        torch.compiler.cudagraph_mark_step_begin()  # the last replay's outputs are consumed: reuse its memory
        logits = self.compiled(tokens.view(-1, 1), input_pos=self.pos, pad_lens=self._pad_arg())[:, -1]
        self.pos.add_(1)
        return logits


def _to_device(values: list[int], device: torch.device) -> torch.Tensor:
    """Host ints as a device tensor, without waiting for the device's queued work (pinned, async copy on CUDA)."""
    t = torch.tensor(values, dtype=torch.long)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class _HostCopies:
    """Copies of each step's token ids to the host, started without blocking: pinned buffers and an event on CUDA
    (a plain copy elsewhere). Two buffers used in turn: step t+1's copy is queued while step t's is read."""

    def __init__(self, batch_size: int, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.buffers = [torch.empty(batch_size, dtype=torch.long, pin_memory=self.cuda) for _ in range(2)]
        self.turn = 0

    def start(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        buffer = self.buffers[self.turn][: tokens.shape[0]]
        self.turn ^= 1
        buffer.copy_(tokens, non_blocking=self.cuda)
        if not self.cuda:
            return buffer, None
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        return buffer, event


def tokens_to_host(copy: tuple[torch.Tensor, torch.cuda.Event | None]) -> list[int]:
    """The token ids of a started copy (`_HostCopies.start`), waiting for it: the decode loop's one host read per
    step."""
    buffer, event = copy
    if event is not None:
        event.synchronize()
    return buffer.tolist()


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
    """One token per row (B,), on the logits' device, each row with its own sampling parameters and generator."""
    if all(row.params.temperature == 0 for row in rows):
        return logits.argmax(-1)
    logits = logits.float()
    return torch.stack([_sample_one(logits[b], row.params, row.generator) for b, row in enumerate(rows)])


def sample_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> int:
    """Greedy when temperature is 0; else temperature, top-k and top-p (nucleus) sampling."""
    return int(_sample_one(logits.float(), params, generator))


def _sample_one(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """`sample_token` as a 0-dim device tensor: nothing in it waits for the device."""
    if params.temperature == 0:
        return logits.argmax()
    logits = logits / params.temperature
    if params.top_k is not None and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = sorted_probs.cumsum(-1)
        drop = cumulative - sorted_probs > params.top_p  # keep the smallest set whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs.masked_fill(drop, 0))
    # torch.multinomial's own one-sample draw (argmax of probs over exponential noise: the same tokens from the same
    # generator state), without its validity checks, which read the device from the host
    noise = torch.empty_like(probs).exponential_(1, generator=generator)
    return (probs / noise).argmax()


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
