"""AllenAI OLMo (non-parametric LayerNorm) and OLMo 2 (norms after attention/MLP, whole-width q/k norm)."""

_olmo = dict(
    architecture="OlmoForCausalLM",
    block_size=2048,
    vocab_size=50304,
    padded_vocab_size=50304,
    norm_class="LayerNorm",
    norm_eps=1e-5,
    norm_affine=False,
    mlp_class="LLaMAMLP",
)
_olmo2 = dict(
    architecture="Olmo2ForCausalLM",
    block_size=4096,
    vocab_size=100352,
    padded_vocab_size=100352,
    norm_class="RMSNorm",
    norm_eps=1e-6,
    mlp_class="LLaMAMLP",
    rope_base=500000.0,
    pre_norm=False,
    post_attention_norm=True,
    post_mlp_norm=True,
    norm_qk=True,
    norm_qk_type="all",
)
_olmo2_7b = dict(_olmo2, n_layer=32, n_embd=4096, n_head=32, intermediate_size=11008)
_olmo2_13b = dict(_olmo2, n_layer=40, n_embd=5120, n_head=40, intermediate_size=13824)


def _allenai(name: str, base: dict, **fields) -> dict:
    return dict(hf_config=dict(org="allenai", name=name), **{**base, **fields})


configs = [
    # https://huggingface.co/allenai/OLMo-1B-hf/blob/main/config.json
    _allenai("OLMo-1B-hf", _olmo, n_layer=16, n_embd=2048, n_head=16, intermediate_size=8192, tie_embeddings=True),
    # https://huggingface.co/allenai/OLMo-7B-hf/blob/main/config.json
    _allenai("OLMo-7B-hf", _olmo, n_layer=32, n_embd=4096, n_head=32, intermediate_size=11008),
]
for _suffix in ("", "-SFT", "-DPO", "-Instruct"):
    # https://huggingface.co/allenai/OLMo-2-1124-7B{,-SFT,-DPO,-Instruct}/blob/main/config.json
    configs.append(_allenai(f"OLMo-2-1124-7B{_suffix}", _olmo2_7b))
    # https://huggingface.co/allenai/OLMo-2-1124-13B{,-SFT,-DPO,-Instruct}/blob/main/config.json
    configs.append(_allenai(f"OLMo-2-1124-13B{_suffix}", _olmo2_13b))
