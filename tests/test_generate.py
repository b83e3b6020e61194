"""KV cache and the generation core."""

import pytest
import torch

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


@pytest.mark.parametrize("prompts", [[[1, 2, 3], [4, 5, 6, 7, 8, 9]], [[4, 5, 6]]], ids=["batch", "one_row"])
def test_compiled_decode_step_gives_the_eager_tokens(prompts):
    """`compile_decode` (what `--compile` turns on): same greedy tokens, batched rows with padding included, and
    one row (tests/kernels/test_cpu_attention.py runs this with the CPU kernels installed)."""
    model = tiny("llama_gqa", block_size=64)
    tok = CharTokenizer()
    tok.stop_ids = set()
    params = SamplingParams(max_new_tokens=6)

    def run():
        out = [[] for _ in prompts]
        for deltas in stream_generate(model, tok, prompts, params):
            for d in deltas:
                out[d.row].append(d.token_id)
        return out

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
