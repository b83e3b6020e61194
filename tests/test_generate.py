"""KV cache and the generation core."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from litgpt_lite import generate
from litgpt_lite.config import Config
from litgpt_lite.errors import UserError
from litgpt_lite.generate import (
    SamplingParams,
    _find_stop,
    _held_back,
    cache_length,
    greedy_tokens,
    stream_generate,
)
from litgpt_lite.model import GPT

VARIANTS = {
    "llama_gqa": dict(mlp_class="LLaMAMLP", norm_class="RMSNorm", n_query_groups=2, intermediate_size=48),
    "sliding_ring": dict(
        mlp_class="LLaMAMLP",
        norm_class="RMSNorm",
        n_query_groups=2,
        intermediate_size=48,
        sliding_window_size=4,
        sliding_window_layers=[0],
    ),
    "gemma2_softcap": dict(
        mlp_class="GemmaMLP",
        norm_class="RMSNorm",
        norm_unit_offset=True,
        intermediate_size=48,
        post_attention_norm=True,
        post_mlp_norm=True,
        attention_logit_softcapping=20.0,
        final_logit_softcapping=15.0,
        sliding_window_size=3,
        sliding_window_layers=[1],
        rope_local_base=100.0,
        scale_embeddings=True,
    ),
    "neox_partial": dict(parallel_residual=True, rotary_percentage=0.5, attn_bias=True, mlp_bias=True),
}


def tiny(variant: str, block_size: int = 32) -> GPT:
    torch.manual_seed(0)
    config = Config(
        block_size=block_size, vocab_size=50, padded_vocab_size=50, n_layer=2, n_head=4, n_embd=32, **VARIANTS[variant]
    )
    return GPT(config).eval()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_step_by_step_equals_full_forward(variant):
    model = tiny(variant)
    idx = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(idx)
        model.set_kv_cache(2, 16)
        prefill = model(idx[:, :5], input_pos=0)
        steps = [model(idx[:, t : t + 1], input_pos=t) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat([prefill, *steps], dim=1), full)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_left_padded_rows_equal_unpadded(variant):
    """Rows at different positions (left padding) give the logits each row gets alone, past a sliding window."""
    model = tiny(variant)
    gen = torch.Generator().manual_seed(1)
    long, short = torch.randint(0, 50, (10,), generator=gen), torch.randint(0, 50, (4,), generator=gen)
    with torch.no_grad():
        alone = model(short[None])
        padded = torch.cat([torch.zeros(6, dtype=torch.long), short])[None]
        batch = torch.stack([long, padded[0]])
        model.set_kv_cache(2, 14)
        pad_lens = torch.tensor([0, 6])
        out = model(batch[:, :8], input_pos=0, pad_lens=pad_lens)
        out = torch.cat([out] + [model(batch[:, t : t + 1], input_pos=t, pad_lens=pad_lens) for t in (8, 9)], 1)
    torch.testing.assert_close(out[1, 6:], alone[0])
    torch.testing.assert_close(out[0], model(long[None])[0])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_static_decode_path_equals_the_sliced_one(variant):
    """A tensor `input_pos` (the compiled decode step's static shapes: whole cache, masked) changes no logit."""
    model = tiny(variant)
    gen = torch.Generator().manual_seed(2)
    idx = torch.randint(0, 50, (2, 12), generator=gen)
    pad_lens = torch.tensor([0, 3])
    outs = []
    with torch.no_grad():
        for static in (False, True):
            model.set_kv_cache(2, 16)
            steps = [model(idx[:, :5], input_pos=0, pad_lens=pad_lens)]
            for t in range(5, 12):
                pos = torch.tensor(t) if static else t
                steps.append(model(idx[:, t : t + 1], input_pos=pos, pad_lens=pad_lens))
            outs.append(torch.cat(steps, dim=1))
    torch.testing.assert_close(outs[1], outs[0])


def token_rows(model, prompts: list[list[int]], max_new_tokens: int = 6) -> list[list[int]]:
    """Each prompt's greedy token ids from the generation core (no stop tokens), in prompt order."""
    tok = CharTokenizer()
    tok.stop_ids = set()
    out = [[] for _ in prompts]
    for deltas in stream_generate(model, tok, prompts, SamplingParams(max_new_tokens=max_new_tokens)):
        for d in deltas:
            out[d.row].append(d.token_id)
    return out


@pytest.mark.parametrize("prompts", [[[1, 2, 3], [4, 5, 6, 7, 8, 9]], [[4, 5, 6]]], ids=["batch", "one_row"])
def test_compiled_decode_step_gives_the_eager_tokens(prompts):
    """`compile_decode` (what `--compile` turns on): same greedy tokens, batched rows with padding included, and
    one row (tests/kernels/test_cpu_attention.py runs this with the CPU kernels installed)."""
    model = tiny("llama_gqa", block_size=64)

    def run():
        return token_rows(model, prompts)

    eager = run()
    model.compile_decode()
    try:
        assert run() == eager
    finally:
        model.decode_step = None


def test_compiled_decode_step_serves_prompts_of_other_lengths_without_recompiling():
    """The cache of a compiled step is sized in powers of two: prompts of 3 and 9 tokens (8 new tokens each) share
    one 64-slot graph; each would be its own graph with caches of 11 and 17 slots."""
    from torch._dynamo.utils import counters

    assert [cache_length(n, 2048, True) for n in (11, 17, 64, 65, 3000)] == [64, 64, 64, 128, 2048]
    assert cache_length(17, 2048, False) == 17
    model = tiny("llama_gqa", block_size=256)
    tok = CharTokenizer()
    tok.stop_ids = set()
    torch._dynamo.reset()  # graphs of earlier tests could serve these shapes
    model.compile_decode()
    try:
        before = counters["stats"]["unique_graphs"]
        for prompt in ([1, 2, 3], [4, 5, 6, 7, 8, 9, 1, 2, 3]):
            list(stream_generate(model, tok, [prompt], SamplingParams(max_new_tokens=8)))
        assert counters["stats"]["unique_graphs"] - before == 1
    finally:
        model.decode_step = None


class CharTokenizer:
    """Characters as tokens, for driving the core on a tiny model."""

    stop_ids = {0}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(97 + (i % 26)) for i in ids if i != 0)

    def decode_stream(self, skip_special_tokens=True):
        tok = self

        class Stream:
            def step(self, i):
                return tok.decode([i])

            def flush(self):
                return ""

        return Stream()


def test_batched_greedy_equals_one_at_a_time():
    model = tiny("sliding_ring", block_size=64)
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(1, 50, (n,), generator=gen).tolist() for n in (3, 9, 6)]
    params = SamplingParams(max_new_tokens=12)
    tok = CharTokenizer()
    tok.stop_ids = set()
    batched = [[] for _ in prompts]
    for deltas in stream_generate(model, tok, prompts, params):
        for d in deltas:
            if d.token_id is not None:
                batched[d.row].append(d.token_id)
    for p, got in zip(prompts, batched):
        assert got == greedy_tokens(model, tok, p, 12)
        assert len(got) == 12


def test_finished_rows_leave_the_batch_and_the_rest_is_unchanged():
    """Rows that finish early are dropped from the KV cache batch; the rows left go on exactly as alone."""
    model = tiny("gemma2_softcap", block_size=64)  # sliding ring buffer + softcaps + padding
    gen = torch.Generator().manual_seed(4)
    prompts = [torch.randint(1, 50, (n,), generator=gen).tolist() for n in (3, 9, 6, 2)]
    budgets = [2, 12, 5, 9]
    tok = CharTokenizer()
    tok.stop_ids = set()
    got = [[] for _ in prompts]
    cache_rows = []
    params = [SamplingParams(max_new_tokens=n) for n in budgets]
    for deltas in stream_generate(model, tok, prompts, params):
        cache_rows.append(model.transformer.h[0].attn.kv_cache.k.shape[0])
        for d in deltas:
            if d.token_id is not None:
                got[d.row].append(d.token_id)
    for p, n, row in zip(prompts, budgets, got):
        assert row == greedy_tokens(model, tok, p, n)
    assert cache_rows[0] == 4 and cache_rows[-1] == 1  # the batch shrank as rows finished
    assert sorted(set(cache_rows), reverse=True) == [4, 3, 2, 1]


def test_ignore_eos_runs_to_max_new_tokens():
    model = tiny("llama_gqa", block_size=64)
    tok = CharTokenizer()
    tok.stop_ids = set()
    free = greedy_tokens(model, tok, [1, 2, 3], 8)
    tok.stop_ids = {free[0]}  # the first greedy token is now the end-of-sequence token

    def run(**kw):
        out = [d for ds in stream_generate(model, tok, [[1, 2, 3]], SamplingParams(max_new_tokens=8, **kw)) for d in ds]
        return [d.token_id for d in out if d.finish_reason != "stop"], out[-1].finish_reason

    assert run() == ([], "stop")
    assert run(ignore_eos=True) == (free, "length")


def test_stop_strings_across_token_boundaries():
    assert _find_stop("hello wor", ["lo w"], 0) == 3
    assert _held_back("abc</", ["</s>"]) == 2
    assert _held_back("abc", ["</s>"]) == 0
    model = tiny("llama_gqa", block_size=64)
    tok = CharTokenizer()
    tok.stop_ids = set()
    full = "".join(
        d.text for ds in stream_generate(model, tok, [[1, 2, 3]], SamplingParams(max_new_tokens=20)) for d in ds
    )
    stop = full[5:8]  # three characters = three tokens: the stop spans token boundaries
    deltas = [
        d for ds in stream_generate(model, tok, [[1, 2, 3]], SamplingParams(max_new_tokens=20, stop=[stop])) for d in ds
    ]
    text = "".join(d.text for d in deltas)
    assert text == full[: full.index(stop)]
    assert deltas[-1].finish_reason == "stop"


def test_max_new_tokens_clamped_and_prompt_too_long():
    model = tiny("llama_gqa", block_size=16)
    tok = CharTokenizer()
    tok.stop_ids = set()
    tokens = [
        d.token_id for ds in stream_generate(model, tok, [[1] * 10], SamplingParams(max_new_tokens=100)) for d in ds
    ]
    assert len(tokens) == 6  # clamped to the context
    with pytest.raises(UserError, match="prompt has 16 tokens but the model's context is 16"):
        next(stream_generate(model, tok, [[1] * 16], SamplingParams()))


def test_sampling_is_seeded():
    model = tiny("llama_gqa", block_size=64)
    tok = CharTokenizer()
    tok.stop_ids = set()

    def run(seed):
        p = SamplingParams(max_new_tokens=10, temperature=1.0, top_k=20, top_p=0.9, seed=seed)
        return [d.token_id for ds in stream_generate(model, tok, [[1, 2]], p) for d in ds]

    assert run(1) == run(1)
    assert run(1) != run(2)


# ---------------------------------------------------------------- the pipelined decode loop against a plain one
def reference_loop(model, tok, prompt: list[int], params: SamplingParams) -> tuple[str, list[int], str]:
    """One prompt alone, one token at a time, each token read on the host before the next step: the loop the core
    had before it ran a step ahead. Sampling as it did: torch.multinomial on the CPU with the row's seeded generator.
    Returns (text, reported token ids, finish reason), as the stream reports them."""
    gen = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
    step = model.decode_step or model  # a compiled step takes its position as a tensor
    model.set_kv_cache(1, cache_length(len(prompt) + params.max_new_tokens, 64, static=model.decode_step is not None))
    try:
        logits = model(torch.tensor([prompt]), input_pos=0)[0, -1]
        out: list[int] = []
        for i in range(params.max_new_tokens):
            token = _reference_sample(logits.float(), params, gen)
            if token in tok.stop_ids:
                return tok.decode(out), out, "stop"
            out.append(token)
            text = tok.decode(out)
            cuts = [text.find(s) for s in params.stop if s in text]
            if cuts:
                return text[: min(cuts)], out[:-1], "stop"
            pos = len(prompt) + i
            logits = step(torch.tensor([[token]]), input_pos=torch.tensor(pos) if model.decode_step else pos)[0, -1]
        return tok.decode(out), out, "length"
    finally:
        model.clear_kv_cache()


def _reference_sample(logits, params: SamplingParams, gen) -> int:
    if params.temperature == 0:
        return int(torch.argmax(logits))
    logits = logits / params.temperature
    if params.top_k is not None:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        drop = sorted_probs.cumsum(-1) - sorted_probs > params.top_p
        sorted_probs[drop] = 0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=gen))


def run_stream(model, tok, prompts, params, **kw) -> list[tuple[str, list[int], str]]:
    return collect(stream_generate(model, tok, prompts, params, **kw), len(prompts))


def collect(steps, n_rows: int) -> list[tuple[str, list[int], str]]:
    """Per row: the text, the token ids and the finish reason of a stream's deltas."""
    texts, ids, reasons = [""] * n_rows, [[] for _ in range(n_rows)], [None] * n_rows
    for deltas in steps:
        for d in deltas:
            texts[d.row] += d.text
            if d.token_id is not None:
                ids[d.row].append(d.token_id)
            reasons[d.row] = d.finish_reason or reasons[d.row]
    return list(zip(texts, ids, reasons))


MIXED_PARAMS = [
    dict(),  # greedy
    dict(temperature=0.8, top_k=20, top_p=0.9, seed=11),
    dict(temperature=1.2, seed=12),
    dict(temperature=0.7, top_p=0.8, seed=13),
]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_pipelined_batch_equals_a_plain_loop_per_prompt(compiled):
    """Greedy and seeded sampled rows in one batch (left padding), with a stop token and stop strings: every row's
    text, token ids and finish reason are the plain loop's, eager and with the compiled decode step."""
    model = tiny("llama_gqa", block_size=64)
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(1, 50, (n,), generator=gen).tolist() for n in (3, 9, 6, 4)]
    tok = CharTokenizer()
    tok.stop_ids = set()
    free = [SamplingParams(max_new_tokens=14, **kw) for kw in MIXED_PARAMS]
    texts = [reference_loop(model, tok, p, sp)[0] for p, sp in zip(prompts, free)]
    # a stop token from row 0's 6th token, and a two-character stop string from row 3's text, across a token boundary
    tok.stop_ids = {reference_loop(model, tok, prompts[0], free[0])[1][5]}
    params = [SamplingParams(max_new_tokens=14, stop=[texts[3][7:9], "zzzz"], **kw) for kw in MIXED_PARAMS]
    if compiled:
        model.compile_decode()
    try:
        expected = [reference_loop(model, tok, p, sp) for p, sp in zip(prompts, params)]
        assert run_stream(model, tok, prompts, params) == expected
    finally:
        model.decode_step = None
    assert {r for _, _, r in expected} == {"stop", "length"}  # both ways to finish happen


class SyncCounter(TorchDispatchMode):
    """Counts the ops that read a device value on the host (`.item()`, `int(t)`, `bool(t)`; boolean indexing)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default):
            self.reads += 1
        return func(*args, **(kwargs or {}))


def test_one_host_copy_per_decode_step(monkeypatch):
    """The whole generation (prefill, sampling, stop checks, rows leaving the batch) reads nothing from the device
    but one copy of each step's token ids: no `.item()`, `int(tensor)`, boolean index or extra `tolist`."""
    model = tiny("gemma2_softcap", block_size=64)
    tok = CharTokenizer()
    tok.stop_ids = set()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [7, 8]]
    params = [SamplingParams(max_new_tokens=n, **kw) for n, kw in zip((9, 5, 7), MIXED_PARAMS)]
    copies, tolists = [], []
    monkeypatch.setattr(generate, "tokens_to_host", lambda copy, f=generate.tokens_to_host: copies.append(1) or f(copy))
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t, f=torch.Tensor.tolist: tolists.append(1) or f(t))
    counter = SyncCounter()
    with counter:
        got = run_stream(model, tok, prompts, params)
    assert [len(ids) for _, ids, _ in got] == [9, 5, 7]
    assert counter.reads == 0
    assert len(copies) == 9  # one per step: the longest row's 9 tokens
    assert len(tolists) == len(copies)


def test_cancelled_row_leaves_the_batch_and_the_others_are_unchanged():
    """Row 1 of 3 is cancelled after 4 tokens: it yields nothing more, its KV-cache row is freed, and rows 0 and 2
    give the tokens they give without the cancel."""
    model = tiny("sliding_ring", block_size=64)
    tok = CharTokenizer()
    tok.stop_ids = set()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [7, 8]]
    params = SamplingParams(max_new_tokens=10)
    free = run_stream(model, tok, prompts, params)
    steps, cache_rows = [], []

    def cancelled():
        steps.append(1)
        cache_rows.append(model.transformer.h[0].attn.kv_cache.k.shape[0])
        return {1} if len(steps) >= 4 else set()

    got = run_stream(model, tok, prompts, params, cancelled=cancelled)
    assert got[0] == free[0] and got[2] == free[2]
    assert got[1][1] == free[1][1][:4] and got[1][2] is None  # 4 tokens, then nothing (no finish reason either)
    assert cache_rows[:5] == [3, 3, 3, 3, 2] and cache_rows[-1] == 2


def test_nf4_batch_one_decode_feeds_its_linears_single_contiguous_rows():
    """bitsandbytes takes its batch-1 4-bit inference kernel for one contiguous row in the compute dtype, without
    autograd: every nf4 Linear of a batch-1 decode step gets such an input, and the tokens are the plain loop's."""
    from litgpt_lite.quantize import quantize_model

    pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    config = Config(block_size=64, vocab_size=50, padded_vocab_size=64, n_layer=2, n_head=4, n_embd=64,
                    **{**VARIANTS["llama_gqa"], "intermediate_size": 128})  # fmt: skip
    model = quantize_model(GPT(config).to(torch.bfloat16), "bnb.nf4").eval()
    linears = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    assert linears and all(m.compute_dtype == torch.bfloat16 for m in linears)
    seen = []

    def check(module, args):
        x = args[0]
        seen.append((x.shape[:-1].numel(), x.is_contiguous(), x.dtype, x.requires_grad or torch.is_grad_enabled()))

    for m in linears:
        m.register_forward_pre_hook(check)
    tok = CharTokenizer()
    tok.stop_ids = set()
    params = SamplingParams(max_new_tokens=6)
    got = run_stream(model, tok, [[1, 2, 3, 4]], params)
    decode = seen[len(linears) :]  # after the prefill's 4-row calls
    assert len(decode) == 5 * len(linears)
    assert set(decode) == {(1, True, torch.bfloat16, False)}
    assert got == [reference_loop(model, tok, [1, 2, 3, 4], params)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["eager", "default", "reduce-overhead", "nf4"])
def test_cuda_decode_steps_never_wait_for_the_device(mode):
    """On CUDA, after the prefill, no decode step synchronizes with the device (torch's sync debug mode raises on
    `.item()`, boolean indexing, a blocking copy ...): the host waits only on each step's token copy (an event). The
    compiled steps (a CUDA graph under reduce-overhead) and batch-1 nf4 give the eager tokens."""
    model = tiny("llama_gqa", block_size=64).cuda()
    tok = CharTokenizer()
    tok.stop_ids = set()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [7, 8]]
    params = [SamplingParams(max_new_tokens=n, **kw) for n, kw in zip((12, 5, 9), MIXED_PARAMS)]
    if mode == "nf4":
        pytest.importorskip("bitsandbytes")
        from litgpt_lite.quantize import quantize_model

        torch.manual_seed(0)
        config = Config(block_size=64, vocab_size=50, padded_vocab_size=64, n_layer=2, n_head=4, n_embd=64,
                        **{**VARIANTS["llama_gqa"], "intermediate_size": 128})  # fmt: skip
        model = quantize_model(GPT(config).to("cuda", torch.bfloat16), "bnb.nf4").eval()
        prompts, params = prompts[:1], SamplingParams(max_new_tokens=12)
    expected = run_stream(model, tok, prompts, params)
    if mode in ("default", "reduce-overhead"):
        model.compile_decode(mode=mode)
        run_stream(model, tok, prompts, params)  # compiles (and records the CUDA graph) outside the check
    stream = stream_generate(model, tok, prompts, params)
    first = next(stream)
    torch.cuda.set_sync_debug_mode("error")
    try:
        rest = list(stream)
    finally:
        torch.cuda.set_sync_debug_mode(0)
        model.decode_step = None
    assert collect([first, *rest], len(prompts)) == expected
