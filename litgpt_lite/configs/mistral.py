"""Mistral 7B (v0.1 - v0.3) and Mixtral (sparse mixture of experts)."""

_mistral = dict(
    architecture="MistralForCausalLM",
    block_size=32768,
    vocab_size=32000,
    padded_vocab_size=32000,
    n_layer=32,
    n_embd=4096,
    n_head=32,
    n_query_groups=8,
    intermediate_size=14336,
    norm_class="RMSNorm",
    norm_eps=1e-5,
    mlp_class="LLaMAMLP",
)
_v01 = dict(**_mistral, sliding_window_size=4096)  # v0.1 attends within a 4096-token window on every layer
_v02 = dict(**_mistral, rope_base=1000000.0)
_v03 = {**_v02, "vocab_size": 32768, "padded_vocab_size": 32768}
_mixtral = dict(
    architecture="MixtralForCausalLM",
    block_size=32768,
    vocab_size=32000,
    padded_vocab_size=32000,
    n_layer=32,
    n_embd=4096,
    n_head=32,
    n_query_groups=8,
    intermediate_size=14336,
    norm_class="RMSNorm",
    norm_eps=1e-5,
    mlp_class="LLaMAMoE",
    n_expert=8,
    n_expert_per_token=2,
    rope_base=1000000.0,
)
_mixtral_8x22b = {
    **_mixtral,
    "block_size": 65536,
    "vocab_size": 32768,
    "padded_vocab_size": 32768,
    "n_layer": 56,
    "n_embd": 6144,
    "n_head": 48,
    "intermediate_size": 16384,
}


def _mistralai(name: str, base: dict) -> dict:
    return dict(hf_config=dict(org="mistralai", name=name), **base)


configs = [
    # https://huggingface.co/mistralai/Mistral-7B-v0.1/blob/main/config.json
    _mistralai("Mistral-7B-v0.1", _v01),
    # https://huggingface.co/mistralai/Mistral-7B-Instruct-v0.1/blob/main/config.json
    _mistralai("Mistral-7B-Instruct-v0.1", _v01),
    # https://huggingface.co/mistralai/Mistral-7B-Instruct-v0.2/blob/main/config.json
    _mistralai("Mistral-7B-Instruct-v0.2", _v02),
    # https://huggingface.co/mistralai/Mistral-7B-v0.3/blob/main/config.json
    _mistralai("Mistral-7B-v0.3", _v03),
    # https://huggingface.co/mistralai/Mistral-7B-Instruct-v0.3/blob/main/config.json
    _mistralai("Mistral-7B-Instruct-v0.3", _v03),
    # https://huggingface.co/mistralai/Mixtral-8x7B-v0.1/blob/main/config.json
    _mistralai("Mixtral-8x7B-v0.1", _mixtral),
    # https://huggingface.co/mistralai/Mixtral-8x7B-Instruct-v0.1/blob/main/config.json
    _mistralai("Mixtral-8x7B-Instruct-v0.1", _mixtral),
    # https://huggingface.co/mistralai/Mixtral-8x22B-v0.1/blob/main/config.json
    _mistralai("Mixtral-8x22B-v0.1", _mixtral_8x22b),
    # https://huggingface.co/mistralai/Mixtral-8x22B-Instruct-v0.1/blob/main/config.json
    _mistralai("Mixtral-8x22B-Instruct-v0.1", _mixtral_8x22b),
]
