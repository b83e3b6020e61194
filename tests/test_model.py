"""model.py, the math alone: attention against a written-out reference, the KV cache against the full forward, packed
segments against separate forwards, RoPE against the textbook formula, and plain torch modules throughout."""

import math

import pytest
import torch
import torch.nn.functional as F
from test_generate import VARIANTS, tiny

from litgpt_lite.model import GPT, RMSNorm, apply_rope


def _reference_attention(q, k, v, scale: float, cap: float | None, mask: torch.Tensor | None = None):
    """softmax(q k^T * scale [softcapped] + causal mask) v in float64, key/value heads repeated for the groups."""
    H, G = q.shape[1], k.shape[1]
    q, k, v = q.double(), k.double().repeat_interleave(H // G, 1), v.double().repeat_interleave(H // G, 1)
    scores = q @ k.transpose(-1, -2) * scale
    if cap is not None:
        scores = torch.tanh(scores / cap) * cap
    if mask is None:
        T, S = scores.shape[-2:]
        mask = torch.ones(T, S, dtype=torch.bool).tril(S - T)
    return torch.softmax(scores.masked_fill(~mask, -math.inf), dim=-1) @ v


@pytest.mark.parametrize("variant", ["llama_gqa", "gemma2_softcap"])
@pytest.mark.parametrize("T,S", [(6, 6), (1, 9), (3, 9)])
def test_attend_equals_the_written_out_causal_attention(variant, T, S):
    """SDPA's causal path (or the softcapped one) over grouped heads, queries at the end of the keys."""
    attn = tiny(variant).transformer.h[0].attn
    gen = torch.Generator().manual_seed(T * S)
    q = torch.randn(2, 4, T, 8, generator=gen)
    k, v = (torch.randn(2, attn.config.n_query_groups, S, 8, generator=gen) for _ in range(2))
    mask = None if T == S else torch.ones(T, S, dtype=torch.bool).tril(S - T)[None, None]
    with torch.no_grad():
        y = attn.attend(q, k, v, mask)
    cap = attn.config.attention_logit_softcapping
    torch.testing.assert_close(y, _reference_attention(q, k, v, attn.scale, cap).float())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_kv_cache_decode_equals_the_full_forward(variant):
    """A prefill and then one token at a time through the KV cache give the full forward's logits, batch of 2."""
    model = tiny(variant)
    idx = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(idx)
        model.set_kv_cache(2, 12)
        steps = [model(idx[:, :4], input_pos=0)] + [model(idx[:, t : t + 1], input_pos=t) for t in range(4, 10)]
        model.clear_kv_cache()
    torch.testing.assert_close(torch.cat(steps, dim=1), full)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_packed_segments_equal_separate_forwards(variant):
    """Sequences packed into one row with `segment_ids` see only their own earlier tokens, with positions restarting:
    each gives the logits of its own forward (the per-segment SDPA path, and the mask where a window or softcap
    needs one)."""
    model = tiny(variant)
    gen = torch.Generator().manual_seed(4)
    pieces = [torch.randint(0, 50, (n,), generator=gen) for n in (5, 3, 7)]
    segment_ids = torch.cat([torch.full((len(p),), i) for i, p in enumerate(pieces)])[None]
    with torch.no_grad():
        packed = model(torch.cat(pieces)[None], segment_ids=segment_ids)[0]
        alone = torch.cat([model(p[None])[0] for p in pieces])
    torch.testing.assert_close(packed, alone)


def test_rope_equals_the_textbook_rotation():
    """`rope` + `apply_rope` rotate each pair (x_i, x_{i + d/2}) by position * base^(-2i/d), in float64 here;
    dims past the rotary part (rotary_percentage 0.5) pass through unchanged."""
    model = tiny("neox_partial")
    config = model.config
    n, D = config.rope_n_elem, config.head_size
    positions = torch.tensor([[0, 1, 5, 17]])
    cos, sin = model.rope(positions, "cpu", torch.float32)["global"]
    x = torch.randn(1, 4, 3, D, generator=torch.Generator().manual_seed(5))
    y = apply_rope(x, cos, sin)
    i = torch.arange(n // 2, dtype=torch.float64)
    angle = positions[0, :, None].double() * config.rope_base ** (-2 * i / n)  # (T, n/2)
    c, s = angle.cos()[None, :, None], angle.sin()[None, :, None]
    x1, x2 = x[..., : n // 2].double(), x[..., n // 2 : n].double()
    expected = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s, x[..., n:].double()], dim=-1)
    torch.testing.assert_close(y.double(), expected, atol=1e-5, rtol=1e-5)


def test_rms_norm_equals_the_formula():
    """x / sqrt(mean(x^2) + eps) * weight; Gemma's unit offset scales by (1 + weight)."""
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(6))
    for unit_offset in (False, True):
        norm = RMSNorm(16, eps=1e-5, unit_offset=unit_offset)
        torch.nn.init.normal_(norm.weight)
        w = (1 + norm.weight) if unit_offset else norm.weight
        expected = x / (x.square().mean(-1, keepdim=True) + 1e-5).sqrt() * w
        torch.testing.assert_close(norm(x), expected.detach())


def test_the_model_is_built_from_plain_torch_modules():
    """model.py builds torch's own Linear (device fast paths are swapped in later by `install_kernels`)."""
    model = tiny("llama_gqa")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m) is torch.nn.Linear for m in linears)
    assert all(
        type(m).__module__ in ("litgpt_lite.model",) or type(m).__module__.startswith("torch.") for m in model.modules()
    )
    assert isinstance(model, GPT) and F.linear is torch.nn.functional.linear
