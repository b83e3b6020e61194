"""TII Falcon (7B: multi-query attention, one shared norm; 40B: grouped queries, two norms) and Falcon3 (Llama)."""

_falcon = dict(
    architecture="FalconForCausalLM",
    block_size=2048,
    vocab_size=65024,
    padded_vocab_size=65024,
    norm_class="LayerNorm",
    norm_eps=1e-5,
    mlp_class="GptNeoxMLP",
    parallel_residual=True,
    tie_embeddings=True,
)
_falcon_7b = dict(
    _falcon, n_layer=32, n_embd=4544, n_head=71, n_query_groups=1, intermediate_size=18176, shared_attention_norm=True
)
_falcon_40b = dict(_falcon, n_layer=60, n_embd=8192, n_head=128, n_query_groups=8, intermediate_size=32768)

_falcon3 = dict(
    architecture="LlamaForCausalLM",
    block_size=32768,
    vocab_size=131072,
    padded_vocab_size=131072,
    n_embd=3072,
    n_head=12,
    n_query_groups=4,
    head_size=256,
    norm_class="RMSNorm",
    norm_eps=1e-6,
    mlp_class="LLaMAMLP",
    rope_base=1000042.0,
)
_falcon3_sizes = {
    "1B": dict(block_size=4096, n_layer=18, n_embd=2048, n_head=8, intermediate_size=8192),
    "3B": dict(n_layer=22, intermediate_size=9216),
    "7B": dict(n_layer=28, intermediate_size=23040),
    "10B": dict(n_layer=40, intermediate_size=23040),
}


def _tiiuae(name: str, base: dict, **fields) -> dict:
    return dict(hf_config=dict(org="tiiuae", name=name), **{**base, **fields})


configs = [
    # https://huggingface.co/tiiuae/falcon-7b/blob/main/config.json
    _tiiuae("falcon-7b", _falcon_7b),
    # https://huggingface.co/tiiuae/falcon-7b-instruct/blob/main/config.json
    _tiiuae("falcon-7b-instruct", _falcon_7b),
    # https://huggingface.co/tiiuae/falcon-40b/blob/main/config.json
    _tiiuae("falcon-40b", _falcon_40b),
    # https://huggingface.co/tiiuae/falcon-40b-instruct/blob/main/config.json
    _tiiuae("falcon-40b-instruct", _falcon_40b),
]
for _size, _dims in _falcon3_sizes.items():
    # https://huggingface.co/tiiuae/Falcon3-{1B,3B,7B,10B}-Base/blob/main/config.json
    configs.append(_tiiuae(f"Falcon3-{_size}-Base", _falcon3, **_dims))
    # https://huggingface.co/tiiuae/Falcon3-{1B,3B,7B,10B}-Instruct/blob/main/config.json
    configs.append(_tiiuae(f"Falcon3-{_size}-Instruct", _falcon3, **_dims))
