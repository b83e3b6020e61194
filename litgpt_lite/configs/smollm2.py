"""SmolLM2 (Llama architecture, tied embeddings)."""

_common = dict(
    architecture="LlamaForCausalLM",
    block_size=8192,
    vocab_size=49152,
    padded_vocab_size=49152,
    norm_class="RMSNorm",
    norm_eps=1e-5,
    mlp_class="LLaMAMLP",
    tie_embeddings=True,
    rope_base=100000.0,
)

configs = [
    # https://huggingface.co/HuggingFaceTB/SmolLM2-135M/blob/main/config.json
    dict(
        hf_config=dict(org="HuggingFaceTB", name="SmolLM2-135M"),
        **_common,
        n_layer=30,
        n_embd=576,
        n_head=9,
        n_query_groups=3,
        intermediate_size=1536,
    ),
    # https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/blob/main/config.json
    dict(
        hf_config=dict(org="HuggingFaceTB", name="SmolLM2-135M-Instruct"),
        **_common,
        n_layer=30,
        n_embd=576,
        n_head=9,
        n_query_groups=3,
        intermediate_size=1536,
    ),
    # https://huggingface.co/HuggingFaceTB/SmolLM2-360M/blob/main/config.json
    dict(
        hf_config=dict(org="HuggingFaceTB", name="SmolLM2-360M"),
        **_common,
        n_layer=32,
        n_embd=960,
        n_head=15,
        n_query_groups=5,
        intermediate_size=2560,
    ),
    # https://huggingface.co/HuggingFaceTB/SmolLM2-360M-Instruct/blob/main/config.json
    dict(
        hf_config=dict(org="HuggingFaceTB", name="SmolLM2-360M-Instruct"),
        **_common,
        n_layer=32,
        n_embd=960,
        n_head=15,
        n_query_groups=5,
        intermediate_size=2560,
    ),
    # https://huggingface.co/HuggingFaceTB/SmolLM2-1.7B/blob/main/config.json
    dict(
        hf_config=dict(org="HuggingFaceTB", name="SmolLM2-1.7B"),
        **{**_common, "rope_base": 130000.0},
        n_layer=24,
        n_embd=2048,
        n_head=32,
        n_query_groups=32,
        intermediate_size=8192,
    ),
    # https://huggingface.co/HuggingFaceTB/SmolLM2-1.7B-Instruct/blob/main/config.json
    dict(
        hf_config=dict(org="HuggingFaceTB", name="SmolLM2-1.7B-Instruct"),
        **{**_common, "rope_base": 130000.0},
        n_layer=24,
        n_embd=2048,
        n_head=32,
        n_query_groups=32,
        intermediate_size=8192,
    ),
]
