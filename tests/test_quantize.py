"""bitsandbytes quantization: every mode loads and generates, stays close to full precision, round-trips bit-exactly,
streams layer by layer, and QLoRA trains only the adapters. CPU throughout; CUDA variants are marked."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")

from generation_helpers import greedy  # noqa: E402
from tiny_configs import tiny_llama  # noqa: E402

from litgpt_lite.checkpoint import QUANTIZED_WEIGHTS, save_checkpoint  # noqa: E402
from litgpt_lite.config import Config  # noqa: E402
from litgpt_lite.errors import UserError  # noqa: E402
from litgpt_lite.kernels import is_plain_linear  # noqa: E402
from litgpt_lite.loading import load_model  # noqa: E402
from litgpt_lite.lora import LoRALinear, LoRARecipe  # noqa: E402
from litgpt_lite.model import GPT  # noqa: E402
from litgpt_lite.quantize import MODES, quantize_model, quantized_layers_bf16_bytes, weight_bytes  # noqa: E402
from litgpt_lite.quantize_cli import quantize_cli  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def tiny_config(**overrides) -> Config:
    return tiny_llama(**{"vocab_size": 256, "intermediate_size": 128, "attn_bias": True, **overrides})


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = tiny_config()
    out = tmp_path_factory.mktemp("tiny") / "ckpt"
    save_checkpoint(GPT(config), config, out)
    return out


def quantized_types(model) -> set[str]:
    return {type(m).__name__ for m in model.modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))}


@pytest.mark.parametrize("mode", list(MODES))
def test_each_mode_loads_and_generates(tiny_ckpt, mode):
    model = load_model(tiny_ckpt, quantize=mode)
    assert quantized_types(model) == {"Linear8bitLt" if mode == "bnb.int8" else "Linear4bit"}
    assert is_plain_linear(model.lm_head)  # the head stays in full precision
    assert model.lm_head.weight is model.transformer.wte.weight  # and stays tied
    prompt = [5, 17, 42, 7]
    tokens = greedy(model, prompt, max_new_tokens=6)
    assert len(tokens) == 6 and all(0 <= t < 256 for t in tokens)
    # the KV-cache decode agrees with recomputing the whole sequence each step
    with torch.no_grad():
        seq = list(prompt)
        for _ in range(6):
            seq.append(int(model(torch.tensor([seq]))[0, -1, :256].argmax()))
    assert tokens == seq[len(prompt) :]


@pytest.mark.parametrize("mode", ["bnb.nf4", "bnb.fp4", "bnb.int8"])
def test_quantized_logits_close_to_full_precision(tiny_ckpt, mode):
    ref = load_model(tiny_ckpt)
    model = load_model(tiny_ckpt, quantize=mode)
    idx = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = ref(idx), model(idx)
    rel = ((got - expected).norm() / expected.norm()).item()
    assert 0 < rel < (0.02 if mode == "bnb.int8" else 0.12), rel


# ||nf4 logits - fp32 logits|| / ||fp32 logits|| on SmolLM2-135M-Instruct over the text below measures 0.326 (every
# Linear of the blocks in nf4, head kept); a wrong block size, data type or absmax would land far above the bound
SMOLLM2_NF4_REL_ERROR_BOUND = 0.40
TEXT = (
    "The river rose slowly through the night, and by morning the lower fields were under water. Farmers moved "
    "their animals to the ridge, where the old church stood, and waited for the rain to stop."
)


def test_nf4_logits_close_on_smollm2(smollm2_lit):
    from litgpt_lite.tokenizer import Tokenizer

    idx = torch.tensor([Tokenizer(smollm2_lit).encode(TEXT)])
    with torch.no_grad():
        expected = load_model(smollm2_lit)(idx)
        got = load_model(smollm2_lit, quantize="bnb.nf4")(idx)
    rel = ((got - expected).norm() / expected.norm()).item()
    assert rel < SMOLLM2_NF4_REL_ERROR_BOUND, rel


def test_bad_mode_lists_the_valid_ones(tiny_ckpt, tmp_path):
    for call in (
        lambda: load_model(tiny_ckpt, quantize="nf4"),
        lambda: load_model(tmp_path / "does-not-exist", quantize="bnb.nf5"),
        lambda: quantize_model(GPT(tiny_config()), "int4"),
        lambda: quantize_cli(tiny_ckpt, "bnb.int4", tmp_path / "q"),
        lambda: LoRARecipe(quantize="bnb.nf4dq"),
    ):
        with pytest.raises(UserError) as e:
            call()
        message = str(e.value)
        assert "Unknown quantization mode" in message
        assert all(mode in message for mode in MODES), message
    with pytest.raises(UserError, match="Did you mean bnb.nf4-dq"):
        LoRARecipe(quantize="bnb.nf4dq")


@pytest.mark.parametrize("mode", list(MODES))
def test_prequantized_checkpoint_round_trips_bit_exactly(tiny_ckpt, tmp_path, monkeypatch, mode):
    out = tmp_path / "quantized"
    quantize_cli(tiny_ckpt, mode, out)
    assert (out / QUANTIZED_WEIGHTS).is_file() and (out / "model_config.yaml").is_file()
    original = load_model(tiny_ckpt, quantize=mode)

    def no_requantizing(*args, **kwargs):
        raise AssertionError("a pre-quantized checkpoint must load without re-quantizing")

    monkeypatch.setattr(bnb.functional, "quantize_4bit", no_requantizing)
    monkeypatch.setattr(bnb.functional, "int8_vectorwise_quant", no_requantizing)
    reloaded = load_model(out)
    monkeypatch.undo()
    a, b = original.state_dict(), reloaded.state_dict()
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
    idx = torch.randint(0, 256, (1, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(original(idx), reloaded(idx))
    other = "bnb.fp4" if mode != "bnb.fp4" else "bnb.nf4"
    with pytest.raises(UserError, match=f"pre-quantized with {mode}"):
        load_model(out, quantize=other)


def test_skip_controls_which_linears_are_quantized():
    torch.manual_seed(0)
    model = GPT(tiny_config())
    embedding = model.transformer.wte.weight.detach().clone()
    quantize_model(model, "bnb.nf4", skip=("mlp.fc_2",))
    assert isinstance(model.lm_head, bnb.nn.Linear4bit)  # asked for: the tied head is quantized from a copy
    assert torch.equal(model.transformer.wte.weight, embedding)  # and the embedding keeps full precision
    assert all(is_plain_linear(block.mlp.fc_2) for block in model.transformer.h)
    assert all(isinstance(block.mlp.fc_1, bnb.nn.Linear4bit) for block in model.transformer.h)
    assert len(greedy(model, [1, 2, 3], max_new_tokens=3)) == 3


def test_qlora_output_dir_loads_for_inference_with_a_quantized_base(tiny_ckpt, tmp_path):
    recipe = LoRARecipe(quantize="bnb.nf4", mlp=True)
    model = recipe.prepare(load_model(tiny_ckpt))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.1)
    recipe.export(model, tmp_path / "qlora", tiny_ckpt)
    loaded = load_model(tmp_path / "qlora", quantize="bnb.nf4")
    qkv = loaded.transformer.h[0].attn.qkv
    assert isinstance(qkv, LoRALinear) and isinstance(qkv.base, bnb.nn.Linear4bit)  # adapters stay unmerged
    idx = torch.randint(0, 256, (1, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        # like with like: QLoRA trains on the embedding, norms and head stored in bf16 (the inference load holds them
        # in float32) and keeps bitsandbytes' differentiable 4-bit layout (inference repacks it for its AVX512-BF16
        # kernel, which rounds differently)
        for module in loaded.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.support_avx512bf16_for_cpu = False
            elif not isinstance(module, LoRALinear):
                for p in module.parameters(recurse=False):
                    p.copy_(p.to(torch.bfloat16))
        torch.testing.assert_close(loaded(idx), model.eval()(idx))
    assert len(greedy(loaded, [3, 4, 5], max_new_tokens=3)) == 3


@pytest.mark.parametrize("mode", ["bnb.nf4", "bnb.nf4-dq"])
def test_dense_weight_reads_the_cpu_packed_layout(mode):
    """On AVX512-BF16 CPUs bitsandbytes repacks 4-bit weights at the first inference forward (absmax in bf16);
    DoRA still needs the dense weight from that layout, without disturbing the layer."""
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    from litgpt_lite.quantize import dense_weight, quantize_linear

    torch.manual_seed(0)
    layer = quantize_linear(torch.randn(128, 64), None, mode)
    expected = dense_weight(layer).clone()
    layer.weight.data, layer.weight.quant_state = _convert_weight_packed_for_cpu(
        layer.weight.data, layer.weight.quant_state
    )
    packed = layer.weight.data.clone()
    torch.testing.assert_close(dense_weight(layer), expected, rtol=0, atol=0.02)  # bf16 absmax rounding
    assert layer.weight.quant_state.packing_format_for_cpu and torch.equal(layer.weight.data, packed)


def test_quantize_cli_refuses_its_own_source(tiny_ckpt):
    with pytest.raises(UserError, match="must differ"):
        quantize_cli(tiny_ckpt, "bnb.nf4", tiny_ckpt)


def test_quantized_linear_bytes():
    """nf4 Linear layers take at most 0.3x their bf16 bytes (quant state included); double quant takes less."""
    config = tiny_config(n_embd=256, n_head=8, n_query_groups=4, intermediate_size=768, attn_bias=False)
    torch.manual_seed(0)
    model = GPT(config).to(torch.bfloat16)
    ratios = {}
    for mode in ("bnb.nf4", "bnb.nf4-dq", "bnb.int8"):
        quantized = quantize_model(_copy(model), mode)
        ratios[mode] = weight_bytes(quantized, only_quantized=True) / quantized_layers_bf16_bytes(quantized)
    assert ratios["bnb.nf4"] <= 0.3, ratios
    assert ratios["bnb.nf4-dq"] < ratios["bnb.nf4"], ratios
    assert ratios["bnb.int8"] <= 0.52, ratios


def _copy(model):
    clone = GPT(model.config).to(torch.bfloat16)
    clone.load_state_dict(model.state_dict())
    return clone


def test_qlora_step_reaches_only_the_adapters():
    torch.manual_seed(0)
    config = tiny_config()
    model = GPT(config)
    recipe = LoRARecipe(r=4, quantize="bnb.nf4", mlp=True, projection=True)
    model = recipe.prepare(model)
    linears4 = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linears4) == 2 * 5  # qkv, proj, fc_1, fc_2, proj per layer
    assert all(isinstance(m, LoRALinear) for n, m in model.named_modules() if n.endswith(("attn.qkv", "mlp.fc_1")))
    # QLoRA's base Linear weights take at most 0.3x their bf16 bytes
    assert weight_bytes(model, only_quantized=True) <= 0.3 * quantized_layers_bf16_bytes(model)
    packed_before = {id(m): m.weight.data.clone() for m in linears4}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    idx = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(3))
    model.train()
    losses = []
    for _ in range(3):
        logits = model(idx[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
        loss.backward()
        with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
        assert with_grad == set(recipe.trainable_state(model)) and with_grad, with_grad
        assert all(".lora_" in n for n in with_grad)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for m in linears4:
        assert m.weight.grad is None and not m.weight.requires_grad
        assert torch.equal(m.weight.data, packed_before[id(m)])
    frozen = [n for n, p in model.named_parameters() if p.requires_grad and ".lora_" not in n]
    assert frozen == []


@pytest.mark.parametrize("name", ["AdamW8bit", "PagedAdamW", "PagedAdamW8bit", "Lion8bit"])
def test_bitsandbytes_optimizers_step_on_cpu(name):
    torch.manual_seed(0)
    target = torch.randn(64, 128)
    weight = torch.nn.Parameter(torch.zeros(64, 128))  # 8192 elements: above bnb's 4096 minimum for 8-bit state
    optimizer = getattr(bnb.optim, name)([weight], lr=1e-2)
    losses = []
    for _ in range(20):
        loss = (weight - target).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
    if "8bit" in name:
        state = optimizer.state[weight]
        assert any(t.dtype == torch.uint8 for t in state.values() if isinstance(t, torch.Tensor)), state.keys()


@pytest.mark.slow  # ~30 s: loads SmolLM2 in a fresh process
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures peak RSS through Linux /proc")
def test_streaming_load_peak_memory_on_smollm2(smollm2_lit):
    """Peak RSS growth while loading nf4 stays under the quantized model + 1.3x the largest layer in bf16."""
    from litgpt_lite.checkpoint import load_config

    script = textwrap.dedent(
        f"""
        import json, re, torch
        from litgpt_lite.loading import load_model
        from litgpt_lite.quantize import weight_bytes
        import bitsandbytes  # imports settle before the baseline

        def status(key):
            return int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

        torch.nn.Linear(8, 8)(torch.randn(2, 8))
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak-RSS counter (VmHWM)
        before = status("VmRSS")
        model = load_model({str(smollm2_lit)!r}, "cpu", torch.bfloat16, quantize="bnb.nf4")
        print(json.dumps({{"grown": status("VmHWM") - before, "model": weight_bytes(model)}}))
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    stats = json.loads(run.stdout.strip().splitlines()[-1])
    config = load_config(smollm2_lit)
    largest_bf16 = 2 * max(config.padded_vocab_size, config.intermediate_size) * config.n_embd  # the embedding
    full_fp32 = (smollm2_lit / "lit_model.safetensors").stat().st_size
    # measured: grows 144 MiB for a 111 MiB model (largest layer 54 MiB in bf16); loading then quantizing: 774 MiB
    assert stats["model"] < stats["grown"] < stats["model"] + 1.3 * largest_bf16, (stats, largest_bf16)
    assert stats["grown"] < 0.35 * full_fp32, (stats, full_fp32)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("mode", list(MODES))
def test_each_mode_on_cuda(tiny_ckpt, tmp_path, mode):
    model = load_model(tiny_ckpt, device="cuda", quantize=mode)
    assert model.transformer.h[0].attn.qkv.weight.device.type == "cuda"
    assert len(greedy(model, [5, 17, 42], max_new_tokens=4)) == 4
    quantize_cli(tiny_ckpt, mode, tmp_path / "q")
    reloaded = load_model(tmp_path / "q", device="cuda")
    idx = torch.randint(0, 256, (1, 8), device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(model(idx), reloaded(idx), rtol=0, atol=0)


@pytest.mark.cuda
@cuda
def test_qlora_step_on_cuda():
    model = LoRARecipe(quantize="bnb.nf4-dq").prepare(GPT(tiny_config())).cuda()
    idx = torch.randint(0, 256, (2, 16), device="cuda")
    model(idx).logsumexp(-1).mean().backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == {
        n for n, p in model.named_parameters() if ".lora_" in n
    }
