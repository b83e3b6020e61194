"""Microsoft Phi-1.5 / Phi-2 (`PhiForCausalLM`), Phi-3, Phi-3.5 and Phi-4 (`Phi3ForCausalLM`, Llama-like).

The long-context entries (Phi-3-mini-128k, Phi-3.5-mini, Phi-4-mini) use LongRoPE on the Hub, whose per-dimension
`short_factor`/`long_factor` lists live in their config.json. The registry holds them at their native 4096-token
context without those factors, so use them to train from scratch; converting the Hub checkpoint
(`litgpt_lite download` / `convert_to_litgpt`) reads config.json and keeps the exact LongRoPE schedule.
"""

_phi = dict(
    architecture="PhiForCausalLM",
    block_size=2048,
    vocab_size=51200,
    padded_vocab_size=51200,
    n_head=32,
    norm_class="LayerNorm",
    norm_eps=1e-5,
    mlp_class="GptNeoxMLP",
    gelu_approximate="tanh",
    parallel_residual=True,
    shared_attention_norm=True,
    attn_bias=True,
    attn_proj_bias=True,
    mlp_bias=True,
    lm_head_bias=True,
)
_phi3 = dict(
    architecture="Phi3ForCausalLM",
    block_size=4096,
    vocab_size=32064,
    padded_vocab_size=32064,
    n_layer=32,
    n_embd=3072,
    n_head=32,
    intermediate_size=8192,
    norm_class="RMSNorm",
    norm_eps=1e-5,
    mlp_class="LLaMAMLP",
)
_phi4 = dict(
    _phi3,
    block_size=16384,
    vocab_size=100352,
    padded_vocab_size=100352,
    n_layer=40,
    n_embd=5120,
    n_head=40,
    n_query_groups=10,
    intermediate_size=17920,
    rope_base=250000.0,
)
_phi4_mini = dict(
    _phi3,
    vocab_size=200064,
    padded_vocab_size=200064,
    n_head=24,
    n_query_groups=8,
    rotary_percentage=0.75,
    tie_embeddings=True,
)


def _microsoft(name: str, base: dict, **fields) -> dict:
    return dict(hf_config=dict(org="microsoft", name=name), **{**base, **fields})


configs = [
    # https://huggingface.co/microsoft/phi-1_5/blob/main/config.json
    _microsoft("phi-1_5", _phi, n_layer=24, n_embd=2048, intermediate_size=8192, rotary_percentage=0.5),
    # https://huggingface.co/microsoft/phi-2/blob/main/config.json
    _microsoft("phi-2", _phi, n_layer=32, n_embd=2560, intermediate_size=10240, rotary_percentage=0.4),
    # https://huggingface.co/microsoft/Phi-3-mini-4k-instruct/blob/main/config.json
    _microsoft("Phi-3-mini-4k-instruct", _phi3, sliding_window_size=2047),
    # https://huggingface.co/microsoft/Phi-3-mini-128k-instruct/blob/main/config.json (LongRoPE: see module docstring)
    _microsoft("Phi-3-mini-128k-instruct", _phi3),
    # https://huggingface.co/microsoft/Phi-3.5-mini-instruct/blob/main/config.json (LongRoPE: see module docstring)
    _microsoft("Phi-3.5-mini-instruct", _phi3),
    # https://huggingface.co/microsoft/phi-4/blob/main/config.json
    _microsoft("phi-4", _phi4),
    # https://huggingface.co/microsoft/Phi-4-mini-instruct/blob/main/config.json (LongRoPE: see module docstring)
    _microsoft("Phi-4-mini-instruct", _phi4_mini),
]
