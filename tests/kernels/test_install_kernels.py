"""install_kernels: one module swap that keeps the model's parameters, state dict and results; "none" is pure torch."""

import pytest
import torch
from tiny_configs import tiny_llama

import litgpt_lite.model as model_module
from litgpt_lite.kernels import CPU_SWAPS, cpu_bf16, install_kernels, is_plain_linear
from litgpt_lite.kernels.cpu_attention import CPUCausalSelfAttention
from litgpt_lite.kernels.cpu_linear import CPULinear
from litgpt_lite.kernels.cpu_norm import CPURMSNorm
from litgpt_lite.lora import LoRAConfig, LoRALinear, inject_lora
from litgpt_lite.model import GPT


def _model(dtype=torch.float32, **overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(tiny_llama(**overrides)).to(dtype).eval()


def _classes(model) -> dict[str, type]:
    return {name: type(m) for name, m in model.named_modules()}


def _prefill_and_step(model, idx: torch.Tensor):
    """Logits of a prefill and one cached decode step (batch 1: the few-row paths)."""
    model.set_kv_cache(1, 32)
    with torch.inference_mode():
        prefill = model(idx, input_pos=0)
        step = model(idx[:, :1], input_pos=idx.shape[1])
    model.clear_kv_cache()
    return prefill, step


def test_fp32_logits_equal_the_plain_model():
    model = _model()
    idx = torch.randint(0, 128, (1, 7))
    plain = _prefill_and_step(model, idx)
    install_kernels(model)
    assert type(model.lm_head) is CPULinear and type(model.transformer.h[0].attn) is CPUCausalSelfAttention
    for a, b in zip(_prefill_and_step(model, idx), plain):
        torch.testing.assert_close(a, b)  # the row-split matmul sums in another order: fp32 rounding apart


def test_bf16_logits_stay_within_bf16_rounding():
    """As this CPU runs them (the C kernels wherever they build). Both sides round to bf16 at other points (oneDNN's
    native bf16 kernels included), so logits of ~3 may part by a few bf16 ulps (0.047 measured); a wrong kernel
    moves them by their whole size."""
    model = _model(torch.bfloat16)
    idx = torch.randint(0, 128, (1, 7))
    plain = _prefill_and_step(model, idx)
    install_kernels(model)
    assert (type(model.transformer.ln_f) is CPURMSNorm) == cpu_bf16.supported()
    for a, b in zip(_prefill_and_step(model, idx), plain):
        torch.testing.assert_close(a.float(), b.float(), atol=8e-2, rtol=2**-6)


def test_state_dict_parameters_and_ties_are_kept():
    model = _model()
    before = {k: v.data_ptr() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    install_kernels(model)
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == before  # same names, same tensors
    assert [id(p) for p in model.parameters()] == params
    assert model.lm_head.weight is model.transformer.wte.weight  # tied embeddings stay tied


def test_installing_twice_changes_nothing_and_none_restores_the_model_classes():
    model = _model()
    plain = _classes(model)
    installed = _classes(install_kernels(model))
    assert installed != plain
    assert _classes(install_kernels(model, "auto")) == installed
    assert _classes(install_kernels(model, "none")) == plain
    for m in model.modules():  # torch's classes or model.py's, nothing else
        assert type(m).__module__.startswith("torch.") or type(m).__module__ == model_module.__name__


def test_none_on_a_fresh_model_leaves_every_module():
    model = _model()
    plain = _classes(model)
    assert _classes(install_kernels(model, "none")) == plain


def test_a_bad_value_is_one_line():
    with pytest.raises(ValueError, match=r"^--kernels must be one of auto, none, got 'fast'$"):
        install_kernels(_model(), "fast")


def test_only_plain_linears_are_swapped_in_a_lora_model():
    """The LoRA wrappers stay; the plain Linears they wrap (and the rest) take the CPU paths; results unchanged."""
    model = _model()
    inject_lora(model, LoRAConfig(r=4, alpha=8, dropout=0.0, query=True, value=True))
    for name, p in model.named_parameters():
        if name.endswith("lora_B"):
            torch.nn.init.normal_(p, std=0.1)  # a non-zero update
    idx = torch.randint(0, 128, (1, 7))
    plain = _prefill_and_step(model, idx)
    wrappers = {name for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    install_kernels(model)
    assert wrappers and {name for name, m in model.named_modules() if type(m) is LoRALinear} == wrappers
    assert all(type(model.get_submodule(name).base) is CPULinear for name in wrappers)
    for a, b in zip(_prefill_and_step(model, idx), plain):
        torch.testing.assert_close(a, b)


def test_quantized_linears_are_left_alone():
    bnb = pytest.importorskip("bitsandbytes")
    from litgpt_lite.quantize import quantize_model

    model = quantize_model(_model(), "bnb.nf4")
    quantized = {name for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    install_kernels(model)
    assert quantized and {n for n, m in model.named_modules() if type(m) is bnb.nn.Linear4bit} == quantized
    assert type(model.lm_head) is CPULinear  # the full-precision head


def test_is_plain_linear():
    layer = torch.nn.Linear(4, 4)
    assert is_plain_linear(layer)
    install_kernels(layer)
    assert type(layer) is CPULinear and is_plain_linear(layer)
    assert not is_plain_linear(LoRALinear(layer, [(0, 4)], 2, 4.0, 0.0, False))


def test_nothing_is_swapped_off_the_cpu_and_the_c_norm_follows_the_off_switch(monkeypatch):
    with torch.device("meta"):
        meta = GPT(tiny_llama())
    assert _classes(install_kernels(meta)) == _classes(GPT(tiny_llama()))  # not a CPU model: nothing to install
    monkeypatch.setenv(cpu_bf16.OFF_ENV, "0")
    assert not cpu_bf16.supported()
    model = install_kernels(_model())
    assert not any(type(m) is CPURMSNorm for m in model.modules())
    assert {type(m) for m in model.modules()} >= {CPULinear, CPUCausalSelfAttention}  # torch-only fast paths stay
    assert set(CPU_SWAPS.values()) == {CPULinear, CPUCausalSelfAttention, CPURMSNorm}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cuda_model_gets_no_swap():
    model = GPT(tiny_llama()).cuda()
    plain = _classes(model)
    assert _classes(install_kernels(model)) == plain
