"""Meta Llama 2, Llama 3 / 3.1 / 3.2 / 3.3, CodeLlama and TinyLlama (all `LlamaForCausalLM`)."""

_llama = dict(
    architecture="LlamaForCausalLM",
    norm_class="RMSNorm",
    norm_eps=1e-5,
    mlp_class="LLaMAMLP",
)
_llama2 = dict(**_llama, block_size=4096, vocab_size=32000, padded_vocab_size=32000)
_llama3 = dict(**_llama, vocab_size=128256, padded_vocab_size=128256, rope_base=500000.0)
_rope31 = dict(
    type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
)
_rope32 = {**_rope31, "factor": 32.0}
_codellama = dict(**_llama, block_size=16384, rope_base=1000000.0)

_7b = dict(n_layer=32, n_embd=4096, n_head=32, intermediate_size=11008)
_13b = dict(n_layer=40, n_embd=5120, n_head=40, intermediate_size=13824)
_34b = dict(n_layer=48, n_embd=8192, n_head=64, n_query_groups=8, intermediate_size=22016)
_70b = dict(n_layer=80, n_embd=8192, n_head=64, n_query_groups=8, intermediate_size=28672)
_3_8b = dict(n_layer=32, n_embd=4096, n_head=32, n_query_groups=8, intermediate_size=14336)
_405b = dict(n_layer=126, n_embd=16384, n_head=128, n_query_groups=8, intermediate_size=53248)
_3_2_1b = dict(n_layer=16, n_embd=2048, n_head=32, n_query_groups=8, intermediate_size=8192, tie_embeddings=True)
_3_2_3b = dict(n_layer=28, n_embd=3072, n_head=24, n_query_groups=8, intermediate_size=8192, tie_embeddings=True)


def _meta(name: str, *parts: dict, **fields) -> dict:
    return dict(hf_config=dict(org="meta-llama", name=name), **{k: v for p in parts for k, v in p.items()}, **fields)


def _code(name: str, size: dict, vocab: int, **fields) -> dict:
    conf = dict(hf_config=dict(org="codellama", name=name), **_codellama, **size)
    conf.update(vocab_size=vocab, padded_vocab_size=vocab, **fields)
    return conf


configs = [
    # ---- Llama 2
    # https://huggingface.co/meta-llama/Llama-2-7b-hf/blob/main/config.json
    _meta("Llama-2-7b-hf", _llama2, _7b),
    # https://huggingface.co/meta-llama/Llama-2-7b-chat-hf/blob/main/config.json
    _meta("Llama-2-7b-chat-hf", _llama2, _7b),
    # https://huggingface.co/meta-llama/Llama-2-13b-hf/blob/main/config.json
    _meta("Llama-2-13b-hf", _llama2, _13b),
    # https://huggingface.co/meta-llama/Llama-2-13b-chat-hf/blob/main/config.json
    _meta("Llama-2-13b-chat-hf", _llama2, _13b),
    # https://huggingface.co/meta-llama/Llama-2-70b-hf/blob/main/config.json
    _meta("Llama-2-70b-hf", _llama2, _70b),
    # https://huggingface.co/meta-llama/Llama-2-70b-chat-hf/blob/main/config.json
    _meta("Llama-2-70b-chat-hf", _llama2, _70b),
    # ---- Llama 3
    # https://huggingface.co/meta-llama/Meta-Llama-3-8B/blob/main/config.json
    _meta("Meta-Llama-3-8B", _llama3, _3_8b, block_size=8192),
    # https://huggingface.co/meta-llama/Meta-Llama-3-8B-Instruct/blob/main/config.json
    _meta("Meta-Llama-3-8B-Instruct", _llama3, _3_8b, block_size=8192),
    # https://huggingface.co/meta-llama/Meta-Llama-3-70B/blob/main/config.json
    _meta("Meta-Llama-3-70B", _llama3, _70b, block_size=8192),
    # https://huggingface.co/meta-llama/Meta-Llama-3-70B-Instruct/blob/main/config.json
    _meta("Meta-Llama-3-70B-Instruct", _llama3, _70b, block_size=8192),
    # ---- Llama 3.1
    # https://huggingface.co/meta-llama/Llama-3.1-8B/blob/main/config.json
    _meta("Llama-3.1-8B", _llama3, _3_8b, block_size=131072, rope_scaling=_rope31),
    # https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct/blob/main/config.json
    _meta("Llama-3.1-8B-Instruct", _llama3, _3_8b, block_size=131072, rope_scaling=_rope31),
    # https://huggingface.co/meta-llama/Llama-3.1-70B/blob/main/config.json
    _meta("Llama-3.1-70B", _llama3, _70b, block_size=131072, rope_scaling=_rope31),
    # https://huggingface.co/meta-llama/Llama-3.1-70B-Instruct/blob/main/config.json
    _meta("Llama-3.1-70B-Instruct", _llama3, _70b, block_size=131072, rope_scaling=_rope31),
    # https://huggingface.co/meta-llama/Llama-3.1-405B/blob/main/config.json
    _meta("Llama-3.1-405B", _llama3, _405b, block_size=131072, rope_scaling=_rope31),
    # https://huggingface.co/meta-llama/Llama-3.1-405B-Instruct/blob/main/config.json
    _meta("Llama-3.1-405B-Instruct", _llama3, _405b, block_size=131072, rope_scaling=_rope31),
    # ---- Llama 3.2 (text)
    # https://huggingface.co/meta-llama/Llama-3.2-1B/blob/main/config.json
    _meta("Llama-3.2-1B", _llama3, _3_2_1b, block_size=131072, rope_scaling=_rope32),
    # https://huggingface.co/meta-llama/Llama-3.2-1B-Instruct/blob/main/config.json
    _meta("Llama-3.2-1B-Instruct", _llama3, _3_2_1b, block_size=131072, rope_scaling=_rope32),
    # https://huggingface.co/meta-llama/Llama-3.2-3B/blob/main/config.json
    _meta("Llama-3.2-3B", _llama3, _3_2_3b, block_size=131072, rope_scaling=_rope32),
    # https://huggingface.co/meta-llama/Llama-3.2-3B-Instruct/blob/main/config.json
    _meta("Llama-3.2-3B-Instruct", _llama3, _3_2_3b, block_size=131072, rope_scaling=_rope32),
    # ---- Llama 3.3
    # https://huggingface.co/meta-llama/Llama-3.3-70B-Instruct/blob/main/config.json
    _meta("Llama-3.3-70B-Instruct", _llama3, _70b, block_size=131072, rope_scaling=_rope31),
    # ---- CodeLlama: the Python and 34B models have no infilling tokens (vocab 32000 instead of 32016)
    # https://huggingface.co/codellama/CodeLlama-7b-hf/blob/main/config.json
    _code("CodeLlama-7b-hf", _7b, 32016),
    # https://huggingface.co/codellama/CodeLlama-13b-hf/blob/main/config.json
    _code("CodeLlama-13b-hf", _13b, 32016),
    # https://huggingface.co/codellama/CodeLlama-34b-hf/blob/main/config.json
    _code("CodeLlama-34b-hf", _34b, 32000),
    # https://huggingface.co/codellama/CodeLlama-70b-hf/blob/main/config.json
    _code("CodeLlama-70b-hf", _70b, 32016),
    # https://huggingface.co/codellama/CodeLlama-7b-Python-hf/blob/main/config.json
    _code("CodeLlama-7b-Python-hf", _7b, 32000),
    # https://huggingface.co/codellama/CodeLlama-13b-Python-hf/blob/main/config.json
    _code("CodeLlama-13b-Python-hf", _13b, 32000),
    # https://huggingface.co/codellama/CodeLlama-34b-Python-hf/blob/main/config.json
    _code("CodeLlama-34b-Python-hf", _34b, 32000),
    # https://huggingface.co/codellama/CodeLlama-70b-Python-hf/blob/main/config.json
    _code("CodeLlama-70b-Python-hf", _70b, 32016),
    # https://huggingface.co/codellama/CodeLlama-7b-Instruct-hf/blob/main/config.json
    _code("CodeLlama-7b-Instruct-hf", _7b, 32016),
    # https://huggingface.co/codellama/CodeLlama-13b-Instruct-hf/blob/main/config.json
    _code("CodeLlama-13b-Instruct-hf", _13b, 32016),
    # https://huggingface.co/codellama/CodeLlama-34b-Instruct-hf/blob/main/config.json
    _code("CodeLlama-34b-Instruct-hf", _34b, 32000),
    # https://huggingface.co/codellama/CodeLlama-70b-Instruct-hf/blob/main/config.json
    _code("CodeLlama-70b-Instruct-hf", _70b, 32016, block_size=4096),
]

# ---- TinyLlama (Llama 2 tokenizer, GQA with 4 key/value heads)
_tiny = dict(
    **_llama,
    block_size=2048,
    vocab_size=32000,
    padded_vocab_size=32000,
    n_layer=22,
    n_embd=2048,
    n_head=32,
    n_query_groups=4,
    intermediate_size=5632,
)
configs += [
    # https://huggingface.co/TinyLlama/TinyLlama-1.1B-Chat-v1.0/blob/main/config.json
    dict(hf_config=dict(org="TinyLlama", name="TinyLlama-1.1B-Chat-v1.0"), **_tiny),
    # https://huggingface.co/TinyLlama/TinyLlama_v1.1/blob/main/config.json
    dict(hf_config=dict(org="TinyLlama", name="TinyLlama_v1.1"), **_tiny),
    # https://huggingface.co/TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T/blob/main/config.json
    dict(hf_config=dict(org="TinyLlama", name="TinyLlama-1.1B-intermediate-step-1431k-3T"), **_tiny),
]
