"""kernels.cpu_attention: the one-query attention of the compiled CPU decode step equals the model's attention, and
a compiled decode through every CPU swap gives the eager tokens."""

import pytest
import torch
from test_generate import tiny, token_rows

from litgpt_lite.kernels import install_kernels
from litgpt_lite.kernels.cpu_attention import CPUCausalSelfAttention
from litgpt_lite.kernels.cpu_linear import CPULinear


@pytest.mark.parametrize("variant", ["llama_gqa", "gemma2_softcap"])
@pytest.mark.parametrize("masked", [False, True])
def test_one_query_attention_equals_the_model_attention(variant, masked):
    """The compiled CPU decode step's attention (multiply-sums in float32) gives SDPA's / the softcapped path's
    values: grouped key/value heads, a mask with hidden slots, and a softcap included."""
    attn = install_kernels(tiny(variant)).transformer.h[1].attn
    assert type(attn) is CPUCausalSelfAttention
    gen = torch.Generator().manual_seed(2)
    B, S = 2, 9
    q = torch.randn(B, 4, 1, 8, generator=gen)
    k, v = (torch.randn(B, attn.config.n_query_groups, S, 8, generator=gen) for _ in range(2))
    mask = None
    if masked:
        mask = torch.rand(B, 1, 1, S, generator=gen) > 0.4
        mask[..., -1] = True  # a query always sees itself
    reference = super(CPUCausalSelfAttention, attn).attend(q, k, v, mask)  # the model's own attend
    torch.testing.assert_close(attn.attend_one_query(q, k, v, mask), reference)


@pytest.mark.parametrize("prompts", [[[1, 2, 3], [4, 5, 6, 7, 8, 9]], [[4, 5, 6]]], ids=["batch", "one_row"])
def test_compiled_decode_with_kernels_gives_the_eager_tokens(prompts):
    """`compile_decode` over the CPU swaps (one-row Linears as fused multiply-sums, one-query attention): the greedy
    tokens of the eager model without kernels, padded batch and one row."""
    model = tiny("llama_gqa", block_size=64)

    def run():
        return token_rows(model, prompts)

    plain = run()
    install_kernels(model)
    assert type(model.lm_head) is CPULinear
    model.compile_decode()
    try:
        assert run() == plain
    finally:
        model.decode_step = None
