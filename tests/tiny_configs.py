"""Tiny configs shared by the LoRA and quantization tests (seconds-long on a CPU)."""

from __future__ import annotations

from litgpt_lite.config import Config


def tiny_llama(**overrides) -> Config:
    """A 2-layer Llama-style config (GQA, SwiGLU, RMSNorm, tied embeddings); `overrides` change any field."""
    base = dict(
        name="tiny-llama",
        n_layer=2,
        n_embd=64,
        n_head=4,
        n_query_groups=2,
        vocab_size=128,
        padding_multiple=64,
        block_size=64,
        mlp_class="LLaMAMLP",
        intermediate_size=96,
        norm_class="RMSNorm",
        tie_embeddings=True,
    )
    return Config(**{**base, **overrides})
