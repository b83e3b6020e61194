"""Google Gemma 1, Gemma 2 and Gemma 3 (text).

All use (1 + weight) RMSNorm, embeddings scaled by sqrt(n_embd), tied embeddings and a tanh-GELU gated MLP.
Gemma 3 4B and larger are `Gemma3ForConditionalGeneration` on the Hub (vision + text); their entries keep that
architecture so conversion reads the text model out of the checkpoint.
"""

_gemma = dict(
    architecture="GemmaForCausalLM",
    block_size=8192,
    vocab_size=256000,
    padded_vocab_size=256000,
    norm_class="RMSNorm",
    norm_eps=1e-6,
    norm_unit_offset=True,
    mlp_class="GemmaMLP",
    gelu_approximate="tanh",
    scale_embeddings=True,
    tie_embeddings=True,
    head_size=256,
)
_gemma_2b = dict(**_gemma, n_layer=18, n_embd=2048, n_head=8, n_query_groups=1, intermediate_size=16384)
_gemma_7b = dict(**_gemma, n_layer=28, n_embd=3072, n_head=16, n_query_groups=16, intermediate_size=24576)


def _gemma2(n_layer: int, **fields) -> dict:
    conf = dict(
        _gemma,
        architecture="Gemma2ForCausalLM",
        n_layer=n_layer,
        post_attention_norm=True,
        post_mlp_norm=True,
        attention_scores_scalar=256,
        attention_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        sliding_window_size=4096,
        sliding_window_layers=list(range(0, n_layer, 2)),  # even layers are local, odd ones global
    )
    conf.update(fields)
    return conf


_gemma2_2b = _gemma2(26, n_embd=2304, n_head=8, n_query_groups=4, intermediate_size=9216)
_gemma2_9b = _gemma2(42, n_embd=3584, n_head=16, n_query_groups=8, intermediate_size=14336)
_gemma2_27b = _gemma2(
    46, n_embd=4608, n_head=32, n_query_groups=16, head_size=128, intermediate_size=36864, attention_scores_scalar=144
)


def _gemma3(n_layer: int, **fields) -> dict:
    conf = dict(
        _gemma,
        architecture="Gemma3ForConditionalGeneration",
        block_size=131072,
        vocab_size=262208,
        padded_vocab_size=262208,
        n_layer=n_layer,
        post_attention_norm=True,
        post_mlp_norm=True,
        norm_qk=True,
        attention_scores_scalar=256,
        rope_base=1000000.0,
        rope_local_base=10000.0,
        rope_scaling=dict(type="linear", factor=8.0),
        sliding_window_size=1024,
        sliding_window_layers=[i for i in range(n_layer) if (i + 1) % 6],  # every 6th layer is global
    )
    conf.update(fields)
    return conf


_gemma3_1b = _gemma3(
    26,
    architecture="Gemma3ForCausalLM",
    block_size=32768,
    vocab_size=262144,
    padded_vocab_size=262144,
    n_embd=1152,
    n_head=4,
    n_query_groups=1,
    intermediate_size=6912,
    rope_scaling=None,
    sliding_window_size=512,
)
_gemma3_4b = _gemma3(34, n_embd=2560, n_head=8, n_query_groups=4, intermediate_size=10240)
_gemma3_12b = _gemma3(48, n_embd=3840, n_head=16, n_query_groups=8, intermediate_size=15360)
_gemma3_27b = _gemma3(
    62, n_embd=5376, n_head=32, n_query_groups=16, head_size=128, intermediate_size=21504, attention_scores_scalar=168
)


def _google(name: str, base: dict) -> dict:
    return dict(hf_config=dict(org="google", name=name), **base)


configs = [
    # https://huggingface.co/google/gemma-2b/blob/main/config.json
    _google("gemma-2b", _gemma_2b),
    # https://huggingface.co/google/gemma-2b-it/blob/main/config.json
    _google("gemma-2b-it", _gemma_2b),
    # https://huggingface.co/google/gemma-7b/blob/main/config.json
    _google("gemma-7b", _gemma_7b),
    # https://huggingface.co/google/gemma-7b-it/blob/main/config.json
    _google("gemma-7b-it", _gemma_7b),
    # https://huggingface.co/google/gemma-1.1-2b-it/blob/main/config.json
    _google("gemma-1.1-2b-it", _gemma_2b),
    # https://huggingface.co/google/gemma-1.1-7b-it/blob/main/config.json
    _google("gemma-1.1-7b-it", _gemma_7b),
    # https://huggingface.co/google/gemma-2-2b/blob/main/config.json
    _google("gemma-2-2b", _gemma2_2b),
    # https://huggingface.co/google/gemma-2-2b-it/blob/main/config.json
    _google("gemma-2-2b-it", _gemma2_2b),
    # https://huggingface.co/google/gemma-2-9b/blob/main/config.json
    _google("gemma-2-9b", _gemma2_9b),
    # https://huggingface.co/google/gemma-2-9b-it/blob/main/config.json
    _google("gemma-2-9b-it", _gemma2_9b),
    # https://huggingface.co/google/gemma-2-27b/blob/main/config.json
    _google("gemma-2-27b", _gemma2_27b),
    # https://huggingface.co/google/gemma-2-27b-it/blob/main/config.json
    _google("gemma-2-27b-it", _gemma2_27b),
    # https://huggingface.co/google/gemma-3-1b-pt/blob/main/config.json
    _google("gemma-3-1b-pt", _gemma3_1b),
    # https://huggingface.co/google/gemma-3-1b-it/blob/main/config.json
    _google("gemma-3-1b-it", _gemma3_1b),
    # https://huggingface.co/google/gemma-3-4b-pt/blob/main/config.json
    _google("gemma-3-4b-pt", _gemma3_4b),
    # https://huggingface.co/google/gemma-3-4b-it/blob/main/config.json
    _google("gemma-3-4b-it", _gemma3_4b),
    # https://huggingface.co/google/gemma-3-12b-pt/blob/main/config.json
    _google("gemma-3-12b-pt", _gemma3_12b),
    # https://huggingface.co/google/gemma-3-12b-it/blob/main/config.json
    _google("gemma-3-12b-it", _gemma3_12b),
    # https://huggingface.co/google/gemma-3-27b-pt/blob/main/config.json
    _google("gemma-3-27b-pt", _gemma3_27b),
    # https://huggingface.co/google/gemma-3-27b-it/blob/main/config.json
    _google("gemma-3-27b-it", _gemma3_27b),
]
