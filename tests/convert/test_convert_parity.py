"""Every supported HF architecture: tiny random-init transformers model -> convert_to_litgpt -> our logits equal
transformers'; then convert_from_litgpt -> from_pretrained -> equal again."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from litgpt_lite.convert import convert_from_litgpt, convert_to_litgpt  # noqa: E402
from litgpt_lite.errors import UserError  # noqa: E402
from litgpt_lite.loading import load_model  # noqa: E402

BASE = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
)

CASES = {
    "LlamaForCausalLM": ("LlamaConfig", dict(num_key_value_heads=2)),
    "Llama3RopeScaled": (
        "LlamaConfig",
        dict(
            num_key_value_heads=2,
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=500000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            ),
        ),
    ),
    "LlamaYarn": (
        "LlamaConfig",
        dict(
            num_key_value_heads=2,
            rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=16),
        ),
    ),
    "MistralForCausalLM": ("MistralConfig", dict(num_key_value_heads=2, sliding_window=5, head_dim=8)),
    "MixtralForCausalLM": ("MixtralConfig", dict(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)),
    "Qwen2ForCausalLM": ("Qwen2Config", dict(num_key_value_heads=2)),
    "Qwen3ForCausalLM": ("Qwen3Config", dict(num_key_value_heads=2, head_dim=16)),
    "Qwen3MoeForCausalLM": (
        "Qwen3MoeConfig",
        dict(
            num_key_value_heads=2,
            head_dim=8,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
            norm_topk_prob=True,
        ),
    ),
    "GemmaForCausalLM": ("GemmaConfig", dict(num_key_value_heads=1, head_dim=16)),
    "Gemma2ForCausalLM": (
        "Gemma2Config",
        dict(num_key_value_heads=2, head_dim=8, sliding_window=4, query_pre_attn_scalar=12),
    ),
    "Gemma3ForCausalLM": (
        "Gemma3TextConfig",
        dict(
            num_key_value_heads=2,
            head_dim=8,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention"],
            rope_parameters=dict(
                full_attention=dict(rope_type="linear", factor=2.0, rope_theta=100000.0),
                sliding_attention=dict(rope_type="default", rope_theta=10000.0),
            ),
        ),
    ),
    "PhiForCausalLM": ("PhiConfig", dict()),
    "Phi3ForCausalLM": ("Phi3Config", dict(num_key_value_heads=2, pad_token_id=0)),
    "Phi3LongRope": (  # transformers takes the top-level original_max_position_embeddings over rope_parameters'
        "Phi3Config",
        dict(
            num_key_value_heads=2,
            pad_token_id=0,
            original_max_position_embeddings=16,
            rope_parameters=dict(
                rope_type="longrope",
                rope_theta=10000.0,
                short_factor=[1.0, 1.3, 2.1, 3.5],
                long_factor=[1.2, 2.4, 5.0, 9.0],
                original_max_position_embeddings=16,
            ),
        ),
    ),
    "GPTNeoXForCausalLM": ("GPTNeoXConfig", dict(rotary_pct=0.25)),
    "GPTNeoXSequential": ("GPTNeoXConfig", dict(use_parallel_residual=False)),
    "FalconForCausalLM": ("FalconConfig", dict()),
    "Falcon40B": ("FalconConfig", dict(new_decoder_architecture=True, num_kv_heads=2, num_ln_in_parallel_attn=2)),
    "OlmoForCausalLM": ("OlmoConfig", dict(clip_qkv=8.0)),
    "Olmo2ForCausalLM": ("Olmo2Config", dict(num_key_value_heads=2)),
}


def _hf_model(case: str):
    cls_name, extra = CASES[case]
    kwargs = {**BASE, **extra, "bos_token_id": 1, "eos_token_id": 2}
    if cls_name == "FalconConfig":
        kwargs.pop("intermediate_size")
    config = getattr(transformers, cls_name)(**kwargs)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # random norms and biases so a mix-up cannot hide behind ones and zeros
        for name, p in model.named_parameters():
            if "norm" in name or "layernorm" in name or name.endswith(".bias") or "ln_" in name:
                p.normal_(0, 0.3 if name.endswith(".bias") else 0.5).add_(0 if name.endswith(".bias") else 1)
    return model.eval()


def _hf_logits(model, idx):
    with torch.no_grad():
        return model(idx).logits


@pytest.mark.parametrize("case", list(CASES))
def test_hf_roundtrip_logits(case, tmp_path):
    hf = _hf_model(case)
    hf_dir = tmp_path / "hf"
    hf.save_pretrained(hf_dir)
    idx = torch.randint(0, BASE["vocab_size"], (2, 11), generator=torch.Generator().manual_seed(1))
    expected = _hf_logits(hf, idx)

    convert_to_litgpt(hf_dir, out_dir=tmp_path / "lit")
    ours = load_model(tmp_path / "lit")
    with torch.no_grad():
        got = ours(idx)[..., : BASE["vocab_size"]]
    torch.testing.assert_close(got, expected)

    convert_from_litgpt(tmp_path / "lit", tmp_path / "hf2")
    back, info = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "hf2", dtype=torch.float32, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    back.eval()
    torch.testing.assert_close(_hf_logits(back, idx), expected)


def test_longrope_takes_the_long_factors_past_the_original_context(tmp_path):
    """Phi-3's longrope: up to original_max_position_embeddings (16 here) positions rotate by the short factors (the
    round trip above, 11 tokens), beyond it by the long ones, and the attention scaling holds for both."""
    hf = _hf_model("Phi3LongRope")
    hf.save_pretrained(tmp_path / "hf")
    convert_to_litgpt(tmp_path / "hf", out_dir=tmp_path / "lit")
    ours = load_model(tmp_path / "lit")
    convert_from_litgpt(tmp_path / "lit", tmp_path / "hf2")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf2", dtype=torch.float32).eval()
    for T in (16, 17, 40):
        idx = torch.randint(0, BASE["vocab_size"], (2, T), generator=torch.Generator().manual_seed(T))
        with torch.no_grad():
            got = ours(idx)[..., : BASE["vocab_size"]]
        expected = _hf_logits(hf, idx)
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(_hf_logits(back, idx), expected)  # the exported config keeps the schedule


def test_sharded_export_loads_in_transformers_and_back(tmp_path, monkeypatch):
    """Past HF_SHARD_BYTES (5 GB; 40 KB here, so a tiny model spans several files) the export writes numbered shards
    and the index transformers reads; convert_to_litgpt reads that sharded folder back."""
    import litgpt_lite.convert

    monkeypatch.setattr(litgpt_lite.convert, "HF_SHARD_BYTES", 40_000)
    hf = _hf_model("LlamaForCausalLM")
    hf.save_pretrained(tmp_path / "hf")
    convert_to_litgpt(tmp_path / "hf", out_dir=tmp_path / "lit")
    convert_from_litgpt(tmp_path / "lit", tmp_path / "hf2")
    shards = sorted(p.name for p in (tmp_path / "hf2").glob("*.safetensors"))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors", shards
    index = json.loads((tmp_path / "hf2" / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards
    assert set(index["weight_map"]) == set(hf.state_dict())
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in hf.state_dict().values())
    idx = torch.randint(0, BASE["vocab_size"], (2, 11), generator=torch.Generator().manual_seed(1))
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf2", dtype=torch.float32).eval()
    torch.testing.assert_close(_hf_logits(back, idx), _hf_logits(hf, idx))
    convert_to_litgpt(tmp_path / "hf2", out_dir=tmp_path / "lit2")
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "lit2")(idx)[..., : BASE["vocab_size"]], _hf_logits(hf, idx))


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    with pytest.raises(UserError, match="Unsupported architecture 'BertModel'.*LlamaForCausalLM"):
        convert_to_litgpt(tmp_path)


def test_missing_and_corrupt_weights(tmp_path):
    hf = _hf_model("LlamaForCausalLM")
    hf.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt or truncated"):
        convert_to_litgpt(tmp_path)
    weights.unlink()
    with pytest.raises(UserError, match="no \\*.safetensors or \\*.bin"):
        convert_to_litgpt(tmp_path)


def test_shape_mismatch(tmp_path):
    hf = _hf_model("LlamaForCausalLM")
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] = 48
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="shape"):
        convert_to_litgpt(tmp_path)


def test_not_a_checkpoint_dir(tmp_path):
    with pytest.raises(UserError, match="has no model_config.yaml"):
        load_model(tmp_path)
