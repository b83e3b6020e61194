"""Meta Llama 3.x (the Llama 2 / CodeLlama / TinyLlama entries live beside them)."""

_llama3 = dict(
    architecture="LlamaForCausalLM",
    vocab_size=128000,
    padded_vocab_size=128256,
    norm_class="RMSNorm",
    norm_eps=1e-5,
    mlp_class="LLaMAMLP",
    rope_base=500000.0,
)
_rope31 = dict(
    type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
)
_rope32 = {**_rope31, "factor": 32.0}

configs = [
    # https://huggingface.co/meta-llama/Meta-Llama-3-8B/blob/main/config.json
    dict(
        hf_config=dict(org="meta-llama", name="Meta-Llama-3-8B"),
        **_llama3,
        block_size=8192,
        n_layer=32,
        n_embd=4096,
        n_head=32,
        n_query_groups=8,
        intermediate_size=14336,
    ),
    # https://huggingface.co/meta-llama/Llama-3.1-8B/blob/main/config.json
    dict(
        hf_config=dict(org="meta-llama", name="Llama-3.1-8B"),
        **_llama3,
        block_size=131072,
        n_layer=32,
        n_embd=4096,
        n_head=32,
        n_query_groups=8,
        intermediate_size=14336,
        rope_scaling=_rope31,
    ),
    # https://huggingface.co/meta-llama/Llama-3.2-1B/blob/main/config.json
    dict(
        hf_config=dict(org="meta-llama", name="Llama-3.2-1B"),
        **_llama3,
        block_size=131072,
        n_layer=16,
        n_embd=2048,
        n_head=32,
        n_query_groups=8,
        intermediate_size=8192,
        tie_embeddings=True,
        rope_scaling=_rope32,
    ),
]
