"""The one loader: every kind of checkpoint dir gives the logits of a model built by hand from the same weights, and
the one dtype-name table accepts every name the three old tables did."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_configs import tiny_llama

from litgpt_lite import loading
from litgpt_lite.checkpoint import WEIGHTS, read_safetensors, save_checkpoint
from litgpt_lite.errors import UserError
from litgpt_lite.loading import load_for_inference, load_model
from litgpt_lite.lora import LORA_WEIGHTS, LoRALinear, LoRARecipe, inject_lora
from litgpt_lite.model import GPT
from litgpt_lite.precision import DTYPE_NAMES, normalize_precision, parse_dtype

FLAGS = dict(key=True, mlp=True)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = tiny_llama(attn_bias=True, intermediate_size=128)  # bitsandbytes packs 4-bit rows in 64s
    out = tmp_path_factory.mktemp("loading") / "base"
    save_checkpoint(GPT(config), config, out)
    return out


@pytest.fixture(scope="module")
def lora_dir(base) -> Path:
    """A finetune_lora output dir with non-zero adapters on the base."""
    recipe = LoRARecipe(**FLAGS)
    model = recipe.prepare(load_model(base))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    out = base.with_name("lora")
    recipe.export(model, out, base)
    return out


def by_hand(base: Path, dtype: torch.dtype | None = None) -> GPT:
    """The reference: GPT(config) + load_state_dict of the stored weights (cast to `dtype`), nothing of the loader."""
    from litgpt_lite.checkpoint import load_config

    config = load_config(base)
    model = GPT(config)
    missing, unexpected = model.load_state_dict(read_safetensors(base / WEIGHTS), strict=False)
    assert not unexpected and missing == (["lm_head.weight"] if config.tie_embeddings else [])
    for p in model.parameters():  # the weights only: RoPE's buffers stay float32
        p.data = p.data.to(dtype or p.dtype)
    return model.eval()


def with_adapters_by_hand(base: Path, lora_dir: Path) -> GPT:
    model = by_hand(base)
    inject_lora(model, LoRARecipe(**FLAGS, dropout=0.0).config)
    model.load_state_dict(read_safetensors(lora_dir / LORA_WEIGHTS), strict=False)
    return model.eval()


def logits(model: torch.nn.Module) -> torch.Tensor:
    idx = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model(idx)


def test_plain_dir_equals_the_model_built_by_hand(base):
    model = load_model(base, kernels="none")
    assert torch.equal(logits(model), logits(by_hand(base)))
    # the CPU fast paths (the default) sum in another order: the same logits up to float32 rounding
    torch.testing.assert_close(logits(load_model(base)), logits(model), rtol=1e-5, atol=1e-5)
    assert model.lm_head.weight is model.transformer.wte.weight  # tied, as GPT ties it
    assert not model.training


def test_precision_casts_the_weights(base):
    model = load_model(base, precision="bf16-true")
    assert model.transformer.wte.weight.dtype == torch.bfloat16
    assert torch.equal(logits(model), logits(by_hand(base, torch.bfloat16)))  # RoPE stays fp32
    assert load_model(base, precision=torch.bfloat16).transformer.h[0].attn.qkv.weight.dtype == torch.bfloat16
    with pytest.raises(UserError, match="Unknown precision 'bf17'"):
        load_model(base, precision="bf17")


def test_lora_dir_and_explicit_adapter_equal_the_adapted_model(base, lora_dir):
    expected = logits(with_adapters_by_hand(base, lora_dir))
    auto = load_model(lora_dir)  # detected: adapters and no full weights; the base comes from lora.yaml
    explicit = load_model(base, adapter=lora_dir)
    assert not any(isinstance(m, LoRALinear) for m in auto.modules())  # merged into plain Linears
    torch.testing.assert_close(logits(auto), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(logits(explicit), logits(auto))
    assert not torch.allclose(logits(auto), logits(by_hand(base)), atol=1e-3)  # the adapters do change the output


def test_a_missing_adapter_dir_is_one_clear_error(base, tmp_path):
    with pytest.raises(UserError, match="is not a directory: pass a LoRA fine-tuning output dir"):
        load_model(base, adapter=tmp_path / "nope")


def test_nf4_equals_quantizing_the_model_built_by_hand(base):
    pytest.importorskip("bitsandbytes")
    from litgpt_lite.quantize import quantize_model

    model = load_model(base, quantize="bnb.nf4")
    assert torch.equal(logits(model), logits(quantize_model(by_hand(base), "bnb.nf4").eval()))


def test_prequantized_dir_and_qlora_adapters(base, lora_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    from litgpt_lite.quantize import quantize_model
    from litgpt_lite.quantize_cli import quantize_cli

    quantize_cli(base, "bnb.nf4", tmp_path / "nf4")
    expected = quantize_model(by_hand(base), "bnb.nf4").eval()  # the swapped-in layers start in training mode
    assert torch.equal(logits(load_model(tmp_path / "nf4")), logits(expected))
    # the adapters on a quantized base stay beside it, unmerged, whether the base is quantized now or was before
    now = load_model(base, quantize="bnb.nf4", adapter=lora_dir)
    stored = load_model(tmp_path / "nf4", adapter=lora_dir)
    assert isinstance(now.transformer.h[0].attn.qkv, LoRALinear)
    assert torch.equal(logits(now), logits(stored))
    hand = with_adapters_by_hand(base, lora_dir)
    quantize_model(hand, "bnb.nf4").eval()  # LoRALinear's base is a plain Linear: it is quantized under the adapters
    assert torch.equal(logits(now), logits(hand))


def test_kernels_are_installed_last_and_the_flag_is_checked(base, monkeypatch):
    seen = []
    real = loading.install_kernels

    def spy(model, kernels):
        seen.append((kernels, any(p.device.type == "meta" for p in model.parameters())))
        return real(model, kernels)

    monkeypatch.setattr(loading, "install_kernels", spy)
    load_model(base)
    load_model(base, kernels="none")
    assert seen == [("auto", False), ("none", False)]  # called once per load, on a model with its weights in place
    with pytest.raises(UserError, match="--kernels must be one of auto, none, got 'fast'"):
        load_model(base, kernels="fast")
    assert len(seen) == 2


def test_load_for_inference_adds_tokenizer_and_prompt_style(tmp_path):
    from tokenizer_fixtures import build_bpe_dir

    torch.manual_seed(0)
    config = tiny_llama(vocab_size=600)
    ckpt = save_checkpoint(GPT(config), config, tmp_path / "ckpt", tokenizer_dir=build_bpe_dir(tmp_path / "tok"))
    model, tokenizer, style = load_for_inference(ckpt, device="cpu", precision="32-true", kernels="none")
    assert model.transformer.wte.weight.dtype == torch.float32
    assert tokenizer.encode("hello") and style is not None


# ---------------------------------------------------------------- the one dtype-name table
# every name the three old tables accepted, and the dtype each meant
OLD_PRECISION_ALIASES = {  # precision._ALIASES (to a precision; its weights' dtype)
    "32": torch.float32,
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "16": torch.float16,
    "fp16": torch.float16,
    "float16": torch.float16,
}
OLD_CONVERT_DTYPES = {  # convert.DTYPES
    "float32": torch.float32,
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "16-true": torch.float16,
    "bf16-true": torch.bfloat16,
    "32-true": torch.float32,
}
OLD_QUANTIZE_DTYPES = {  # quantize._parse_dtype
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
}


@pytest.mark.parametrize("table", [OLD_PRECISION_ALIASES, OLD_CONVERT_DTYPES, OLD_QUANTIZE_DTYPES])
def test_one_dtype_table_accepts_every_old_name(table):
    for name, dtype in table.items():
        assert name in DTYPE_NAMES
        assert parse_dtype(name) is dtype
        assert torch.tensor(0.0).to(parse_dtype(name)).dtype is dtype


def test_precision_aliases_still_name_the_same_precisions():
    expected = {"32": "32-true", "fp32": "32-true", "float32": "32-true", "bf16": "bf16-true"}
    expected |= {"bfloat16": "bf16-true", "16": "16-true", "fp16": "16-true", "float16": "16-true"}
    for name, precision in expected.items():
        assert normalize_precision(name) == precision
    for precision in ("32-true", "bf16-true", "16-true", "bf16-mixed", "16-mixed", "64-true"):
        assert normalize_precision(precision) == precision


def test_unknown_dtype_is_one_clear_error_everywhere(base, tmp_path):
    from litgpt_lite.convert import convert_from_litgpt
    from litgpt_lite.quantize_cli import quantize_cli

    with pytest.raises(UserError) as e:
        parse_dtype("float8")
    assert str(e.value) == f"Unknown dtype 'float8'. Choose one of: {', '.join(DTYPE_NAMES)}"
    with pytest.raises(UserError, match="Unknown dtype 'float8'. Choose one of: float32"):
        convert_from_litgpt(base, tmp_path / "hf", dtype="float8")
    pytest.importorskip("bitsandbytes")
    with pytest.raises(UserError, match="Unknown dtype 'float8'. Choose one of: float32"):
        quantize_cli(base, "bnb.nf4", tmp_path / "q", dtype="float8")
