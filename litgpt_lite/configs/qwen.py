"""Qwen2.5 (base, Instruct, Coder, Math), Qwen3 dense and Qwen3 MoE.

Qwen2.5 has a bias on q/k/v only; Qwen3 drops it and normalises queries and keys per head instead.
"""

_qwen2 = dict(
    architecture="Qwen2ForCausalLM",
    norm_class="RMSNorm",
    norm_eps=1e-6,
    mlp_class="LLaMAMLP",
    attn_bias=True,
    rope_base=1000000.0,
)
_v151936 = dict(vocab_size=151936, padded_vocab_size=151936)
_v152064 = dict(vocab_size=152064, padded_vocab_size=152064)
# Qwen2.5 sizes: the three small ones tie their embeddings and share the 151936-row vocabulary
_q25 = {
    "0.5B": dict(**_v151936, n_layer=24, n_embd=896, n_head=14, n_query_groups=2, intermediate_size=4864,
                 tie_embeddings=True),
    "1.5B": dict(**_v151936, n_layer=28, n_embd=1536, n_head=12, n_query_groups=2, intermediate_size=8960,
                 tie_embeddings=True),
    "3B": dict(**_v151936, n_layer=36, n_embd=2048, n_head=16, n_query_groups=2, intermediate_size=11008,
               tie_embeddings=True),
    "7B": dict(**_v152064, n_layer=28, n_embd=3584, n_head=28, n_query_groups=4, intermediate_size=18944),
    "14B": dict(**_v152064, n_layer=48, n_embd=5120, n_head=40, n_query_groups=8, intermediate_size=13824,
                norm_eps=1e-5),
    "32B": dict(**_v152064, n_layer=64, n_embd=5120, n_head=40, n_query_groups=8, intermediate_size=27648,
                norm_eps=1e-5),
    "72B": dict(**_v152064, n_layer=80, n_embd=8192, n_head=64, n_query_groups=8, intermediate_size=29568,
                norm_eps=1e-5),
}  # fmt: skip
# max_position_embeddings of the base models (the Instruct and Coder models say 32768)
_q25_base_context = {"0.5B": 32768, "1.5B": 131072, "3B": 32768, "7B": 131072, "14B": 131072, "32B": 131072,
                     "72B": 131072}  # fmt: skip


def _qwen(name: str, *parts: dict, **fields) -> dict:
    conf = dict(hf_config=dict(org="Qwen", name=name))
    for part in parts:
        conf.update(part)
    conf.update(fields)
    return conf


configs = []
for _size, _dims in _q25.items():
    # https://huggingface.co/Qwen/Qwen2.5-{0.5B,1.5B,3B,7B,14B,32B,72B}/blob/main/config.json
    configs.append(_qwen(f"Qwen2.5-{_size}", _qwen2, _dims, block_size=_q25_base_context[_size]))
    # https://huggingface.co/Qwen/Qwen2.5-{0.5B,1.5B,3B,7B,14B,32B,72B}-Instruct/blob/main/config.json
    configs.append(_qwen(f"Qwen2.5-{_size}-Instruct", _qwen2, _dims, block_size=32768))
for _size in ("0.5B", "1.5B", "3B", "7B", "14B", "32B"):
    # https://huggingface.co/Qwen/Qwen2.5-Coder-{0.5B,1.5B,3B,7B,14B,32B}/blob/main/config.json
    configs.append(_qwen(f"Qwen2.5-Coder-{_size}", _qwen2, _q25[_size], block_size=32768))
    # https://huggingface.co/Qwen/Qwen2.5-Coder-{0.5B,1.5B,3B,7B,14B,32B}-Instruct/blob/main/config.json
    configs.append(_qwen(f"Qwen2.5-Coder-{_size}-Instruct", _qwen2, _q25[_size], block_size=32768))
for _size in ("1.5B", "7B", "72B"):
    # https://huggingface.co/Qwen/Qwen2.5-Math-{1.5B,7B,72B}/blob/main/config.json
    configs.append(_qwen(f"Qwen2.5-Math-{_size}", _qwen2, _q25[_size], block_size=4096, rope_base=10000.0))
    # https://huggingface.co/Qwen/Qwen2.5-Math-{1.5B,7B,72B}-Instruct/blob/main/config.json
    configs.append(_qwen(f"Qwen2.5-Math-{_size}-Instruct", _qwen2, _q25[_size], block_size=4096, rope_base=10000.0))

_qwen3 = dict(
    architecture="Qwen3ForCausalLM",
    vocab_size=151936,
    padded_vocab_size=151936,
    head_size=128,
    norm_class="RMSNorm",
    norm_eps=1e-6,
    mlp_class="LLaMAMLP",
    norm_qk=True,
    rope_base=1000000.0,
)
_q3 = {
    "0.6B": dict(n_layer=28, n_embd=1024, n_head=16, n_query_groups=8, intermediate_size=3072, tie_embeddings=True),
    "1.7B": dict(n_layer=28, n_embd=2048, n_head=16, n_query_groups=8, intermediate_size=6144, tie_embeddings=True),
    "4B": dict(n_layer=36, n_embd=2560, n_head=32, n_query_groups=8, intermediate_size=9728, tie_embeddings=True),
    "8B": dict(n_layer=36, n_embd=4096, n_head=32, n_query_groups=8, intermediate_size=12288),
    "14B": dict(n_layer=40, n_embd=5120, n_head=40, n_query_groups=8, intermediate_size=17408),
    "32B": dict(n_layer=64, n_embd=5120, n_head=64, n_query_groups=8, intermediate_size=25600),
}
for _size, _dims in _q3.items():
    # https://huggingface.co/Qwen/Qwen3-{0.6B,1.7B,4B,8B,14B,32B}/blob/main/config.json
    configs.append(_qwen(f"Qwen3-{_size}", _qwen3, _dims, block_size=40960))
    if _size != "32B":  # no Qwen3-32B-Base was released
        # https://huggingface.co/Qwen/Qwen3-{0.6B,1.7B,4B,8B,14B}-Base/blob/main/config.json
        configs.append(_qwen(f"Qwen3-{_size}-Base", _qwen3, _dims, block_size=32768))

_qwen3_moe = dict(
    _qwen3,
    architecture="Qwen3MoeForCausalLM",
    mlp_class="LLaMAMoE",
    n_expert=128,
    n_expert_per_token=8,
    moe_norm_topk_prob=True,
)
_30b_a3b = dict(n_layer=48, n_embd=2048, n_head=32, n_query_groups=4, intermediate_size=6144, moe_intermediate_size=768)
_235b_a22b = dict(
    n_layer=94, n_embd=4096, n_head=64, n_query_groups=4, intermediate_size=12288, moe_intermediate_size=1536
)
configs += [
    # https://huggingface.co/Qwen/Qwen3-30B-A3B/blob/main/config.json
    _qwen("Qwen3-30B-A3B", _qwen3_moe, _30b_a3b, block_size=40960),
    # https://huggingface.co/Qwen/Qwen3-30B-A3B-Base/blob/main/config.json
    _qwen("Qwen3-30B-A3B-Base", _qwen3_moe, _30b_a3b, block_size=32768),
    # https://huggingface.co/Qwen/Qwen3-235B-A22B/blob/main/config.json
    _qwen("Qwen3-235B-A22B", _qwen3_moe, _235b_a22b, block_size=40960),
]
