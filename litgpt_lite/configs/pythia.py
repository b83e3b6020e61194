"""Pythia (GPT-NeoX architecture): parallel residual, partial rotary (25%), LayerNorm, GELU."""

_common = dict(
    architecture="GPTNeoXForCausalLM",
    block_size=2048,
    rotary_percentage=0.25,
    parallel_residual=True,
    attn_bias=True,
    attn_proj_bias=True,
    mlp_bias=True,
    norm_class="LayerNorm",
    norm_eps=1e-5,
    mlp_class="GptNeoxMLP",
)

_sizes = {  # name: (n_layer, n_embd, n_head, padded_vocab_size)
    "pythia-14m": (6, 128, 4, 50304),
    "pythia-31m": (6, 256, 8, 50304),
    "pythia-70m": (6, 512, 8, 50304),
    "pythia-160m": (12, 768, 12, 50304),
    "pythia-410m": (24, 1024, 16, 50304),
    "pythia-1b": (16, 2048, 8, 50304),
    "pythia-1.4b": (24, 2048, 16, 50304),
    "pythia-2.8b": (32, 2560, 32, 50304),
    "pythia-6.9b": (32, 4096, 32, 50432),
    "pythia-12b": (36, 5120, 40, 50688),
}

# https://huggingface.co/EleutherAI/pythia-{14m,31m,70m,160m,410m,1b,1.4b,2.8b,6.9b,12b}/blob/main/config.json
# https://huggingface.co/EleutherAI/pythia-{70m,160m,410m,1b,1.4b,2.8b,6.9b,12b}-deduped/blob/main/config.json
configs = []
for _name, (_n_layer, _n_embd, _n_head, _padded) in _sizes.items():
    for _suffix in ("", "-deduped"):
        if _name in ("pythia-14m", "pythia-31m") and _suffix:
            continue
        configs.append(
            dict(
                hf_config=dict(org="EleutherAI", name=_name + _suffix),
                **_common,
                n_layer=_n_layer,
                n_embd=_n_embd,
                n_head=_n_head,
                vocab_size=_padded,  # the HF vocab_size: embedding rows (the tokenizer has 50277 ids)
                padded_vocab_size=_padded,
            )
        )
