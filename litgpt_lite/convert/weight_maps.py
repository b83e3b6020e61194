"""One declarative weight map per architecture and file format (Hugging Face, GGUF). Each rule ties the other
format's tensor names ("theirs") to ours, with the few transforms that are real (fuse q/k/v, split Phi-3's gate_up,
undo GPT-NeoX/Falcon head interleaving, undo llama.cpp's q/k row permutation, take off the 1 llama.cpp folds into
Gemma's norms). `engine.py` runs the same table in both directions, so the round trip holds by construction.

Patterns use `{i}` for the layer and `{j}` for the expert index. A rule whose tensors a checkpoint lacks (biases some
variants have, a tied lm_head) simply never fires; `checkpoint.check_state_dict` then reports what the config needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Rule:
    theirs: tuple[str, ...]  # the other format's tensor names (patterns): HF or GGUF
    lit: tuple[str, ...]  # our tensor names (patterns)
    transform: str = "rename"  # rename | fuse_qkv | split_halves | neox_qkv | falcon_qkv | gguf_qkv | unit_offset
    when: str | None = None  # applies only when this Config field is truthy ("!field": falsy)

    def applies(self, config) -> bool:
        if self.when is None:
            return True
        negate = self.when.startswith("!")
        return bool(getattr(config, self.when.lstrip("!"))) != negate


def rename(theirs: str, lit: str, when: str | None = None) -> Rule:
    return Rule((theirs,), (lit,), when=when)


def fuse_qkv(hf_prefix: str, lit: str, suffix: str = "weight") -> Rule:
    hf = tuple(f"{hf_prefix}.{p}_proj.{suffix}" for p in "qkv")
    return Rule(hf, (lit,), "fuse_qkv")


# ---------------------------------------------------------------- transforms: (config, tensors) -> tensors
def _qkv_sizes(config) -> tuple[int, int, int]:
    D = config.head_size
    return config.n_head * D, config.n_query_groups * D, config.n_query_groups * D


def _neox_perm(config) -> torch.Tensor:
    """Row order that turns GPT-NeoX's per-head [q_h, k_h, v_h] blocks into [Q; K; V]."""
    H, D = config.n_head, config.head_size
    idx = torch.arange(3 * H * D).view(H, 3, D)
    return idx.transpose(0, 1).reshape(-1)


def _falcon_perm(config) -> torch.Tensor:
    """Row order that turns Falcon's fused layout into [Q; K; V]."""
    H, G, D = config.n_head, config.n_query_groups, config.head_size
    if config.shared_attention_norm and G == 1:  # Falcon-7B multi-query: already [Q; K; V]
        return torch.arange((H + 2) * D)
    if config.shared_attention_norm:  # old layout without MQA: per head [q, k, v], like GPT-NeoX
        return _neox_perm(config)
    q_per_kv = H // G
    idx = torch.arange((H + 2 * G) * D).view(G, q_per_kv + 2, D)
    q = idx[:, :q_per_kv].reshape(-1)
    k = idx[:, q_per_kv].reshape(-1)
    v = idx[:, q_per_kv + 1].reshape(-1)
    return torch.cat((q, k, v))


def _gguf_permute(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's q/k row order: within each head, the two rotary halves interleaved row by row."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _gguf_unpermute(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo `_gguf_permute`: back to HF's (and our) order, each head's rotary halves in two blocks."""
    rows = weight.shape[0]
    return weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


# transforms that do arithmetic on the values: the engine hands them float32 and casts their result afterwards
FLOAT32_TRANSFORMS = frozenset({"unit_offset"})


def to_lit(rule: Rule, config, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    if rule.transform == "rename":
        return tensors
    if rule.transform == "fuse_qkv":
        return [torch.cat(tensors, dim=0)]
    if rule.transform == "split_halves":
        return list(tensors[0].chunk(2, dim=0))
    if rule.transform in ("neox_qkv", "falcon_qkv"):
        perm = (_neox_perm if rule.transform == "neox_qkv" else _falcon_perm)(config)
        return [tensors[0][perm]]
    if rule.transform == "gguf_qkv":
        q, k, v = tensors
        return [torch.cat((_gguf_unpermute(q, config.n_head), _gguf_unpermute(k, config.n_query_groups), v), dim=0)]
    if rule.transform == "unit_offset":  # llama.cpp stores Gemma's (1 + w); our RMSNorm adds the 1 itself
        return [(tensors[0].float() - 1.0).to(tensors[0].dtype)]
    raise ValueError(rule.transform)


def to_theirs(rule: Rule, config, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    if rule.transform == "rename":
        return tensors
    if rule.transform == "fuse_qkv":
        return list(tensors[0].split(_qkv_sizes(config), dim=0))
    if rule.transform == "split_halves":
        return [torch.cat(tensors, dim=0)]
    if rule.transform in ("neox_qkv", "falcon_qkv"):
        perm = (_neox_perm if rule.transform == "neox_qkv" else _falcon_perm)(config)
        return [tensors[0][torch.argsort(perm)]]
    if rule.transform == "gguf_qkv":
        q, k, v = tensors[0].split(_qkv_sizes(config), dim=0)
        return [_gguf_permute(q, config.n_head), _gguf_permute(k, config.n_query_groups), v]
    if rule.transform == "unit_offset":
        return [(tensors[0].float() + 1.0).to(tensors[0].dtype)]
    raise ValueError(rule.transform)


# ---------------------------------------------------------------- the maps
L = "transformer.h.{i}"


def _llama_attn(prefix: str = "model.layers.{i}", bias: bool = False) -> list[Rule]:
    rules = [
        fuse_qkv(f"{prefix}.self_attn", f"{L}.attn.qkv.weight"),
        rename(f"{prefix}.self_attn.o_proj.weight", f"{L}.attn.proj.weight"),
        fuse_qkv(f"{prefix}.self_attn", f"{L}.attn.qkv.bias", "bias"),
        rename(f"{prefix}.self_attn.o_proj.bias", f"{L}.attn.proj.bias"),
        rename(f"{prefix}.self_attn.q_norm.weight", f"{L}.attn.norm_q.weight"),
        rename(f"{prefix}.self_attn.k_norm.weight", f"{L}.attn.norm_k.weight"),
    ]
    return rules


def _swiglu(prefix: str = "model.layers.{i}.mlp", ours: str = f"{L}.mlp") -> list[Rule]:
    return [
        rename(f"{prefix}.gate_proj.weight", f"{ours}.fc_1.weight"),
        rename(f"{prefix}.up_proj.weight", f"{ours}.fc_2.weight"),
        rename(f"{prefix}.down_proj.weight", f"{ours}.proj.weight"),
        rename(f"{prefix}.gate_proj.bias", f"{ours}.fc_1.bias"),
        rename(f"{prefix}.up_proj.bias", f"{ours}.fc_2.bias"),
        rename(f"{prefix}.down_proj.bias", f"{ours}.proj.bias"),
    ]


def _ends(prefix: str = "model", head: str = "lm_head") -> list[Rule]:
    return [
        rename(f"{prefix}.embed_tokens.weight", "transformer.wte.weight"),
        rename(f"{prefix}.norm.weight", "transformer.ln_f.weight"),
        rename(f"{head}.weight", "lm_head.weight"),  # absent when tied
    ]


LLAMA = [
    *_ends(),
    rename("model.layers.{i}.input_layernorm.weight", f"{L}.norm_1.weight"),
    rename("model.layers.{i}.post_attention_layernorm.weight", f"{L}.norm_2.weight"),
    *_llama_attn(),
    *_swiglu(),
]

MIXTRAL = [
    *_ends(),
    rename("model.layers.{i}.input_layernorm.weight", f"{L}.norm_1.weight"),
    rename("model.layers.{i}.post_attention_layernorm.weight", f"{L}.norm_2.weight"),
    *_llama_attn(),
    rename("model.layers.{i}.block_sparse_moe.gate.weight", f"{L}.mlp.gate.weight"),
    rename("model.layers.{i}.block_sparse_moe.experts.{j}.w1.weight", f"{L}.mlp.experts.{{j}}.fc_1.weight"),
    rename("model.layers.{i}.block_sparse_moe.experts.{j}.w3.weight", f"{L}.mlp.experts.{{j}}.fc_2.weight"),
    rename("model.layers.{i}.block_sparse_moe.experts.{j}.w2.weight", f"{L}.mlp.experts.{{j}}.proj.weight"),
]

QWEN3_MOE = [
    *_ends(),
    rename("model.layers.{i}.input_layernorm.weight", f"{L}.norm_1.weight"),
    rename("model.layers.{i}.post_attention_layernorm.weight", f"{L}.norm_2.weight"),
    *_llama_attn(),
    rename("model.layers.{i}.mlp.gate.weight", f"{L}.mlp.gate.weight"),
    *_swiglu("model.layers.{i}.mlp.experts.{j}", f"{L}.mlp.experts.{{j}}"),
]

GEMMA2 = [  # also Gemma 3 and OLMo 2 (which has no input/pre-feedforward norms)
    *_ends(),
    rename("model.layers.{i}.input_layernorm.weight", f"{L}.norm_1.weight"),
    rename("model.layers.{i}.post_attention_layernorm.weight", f"{L}.post_attention_norm.weight"),
    rename("model.layers.{i}.pre_feedforward_layernorm.weight", f"{L}.norm_2.weight"),
    rename("model.layers.{i}.post_feedforward_layernorm.weight", f"{L}.post_mlp_norm.weight"),
    *_llama_attn(),
    *_swiglu(),
]

OLMO = [  # non-parametric norms: no norm weights at all
    rename("model.embed_tokens.weight", "transformer.wte.weight"),
    rename("lm_head.weight", "lm_head.weight"),
    *_llama_attn(),
    *_swiglu(),
]

PHI = [
    rename("model.embed_tokens.weight", "transformer.wte.weight"),
    rename("model.final_layernorm.weight", "transformer.ln_f.weight"),
    rename("model.final_layernorm.bias", "transformer.ln_f.bias"),
    rename("lm_head.weight", "lm_head.weight"),
    rename("lm_head.bias", "lm_head.bias"),
    rename("model.layers.{i}.input_layernorm.weight", f"{L}.norm_1.weight"),
    rename("model.layers.{i}.input_layernorm.bias", f"{L}.norm_1.bias"),
    fuse_qkv("model.layers.{i}.self_attn", f"{L}.attn.qkv.weight"),
    fuse_qkv("model.layers.{i}.self_attn", f"{L}.attn.qkv.bias", "bias"),
    rename("model.layers.{i}.self_attn.dense.weight", f"{L}.attn.proj.weight"),
    rename("model.layers.{i}.self_attn.dense.bias", f"{L}.attn.proj.bias"),
    rename("model.layers.{i}.mlp.fc1.weight", f"{L}.mlp.fc.weight"),
    rename("model.layers.{i}.mlp.fc1.bias", f"{L}.mlp.fc.bias"),
    rename("model.layers.{i}.mlp.fc2.weight", f"{L}.mlp.proj.weight"),
    rename("model.layers.{i}.mlp.fc2.bias", f"{L}.mlp.proj.bias"),
]

PHI3 = [
    *_ends(),
    rename("model.layers.{i}.input_layernorm.weight", f"{L}.norm_1.weight"),
    rename("model.layers.{i}.post_attention_layernorm.weight", f"{L}.norm_2.weight"),
    rename("model.layers.{i}.self_attn.qkv_proj.weight", f"{L}.attn.qkv.weight"),
    rename("model.layers.{i}.self_attn.o_proj.weight", f"{L}.attn.proj.weight"),
    Rule(
        ("model.layers.{i}.mlp.gate_up_proj.weight",), (f"{L}.mlp.fc_1.weight", f"{L}.mlp.fc_2.weight"), "split_halves"
    ),
    rename("model.layers.{i}.mlp.down_proj.weight", f"{L}.mlp.proj.weight"),
]

_NX = "gpt_neox.layers.{i}"
GPT_NEOX = [
    rename("gpt_neox.embed_in.weight", "transformer.wte.weight"),
    rename("gpt_neox.final_layer_norm.weight", "transformer.ln_f.weight"),
    rename("gpt_neox.final_layer_norm.bias", "transformer.ln_f.bias"),
    rename("embed_out.weight", "lm_head.weight"),
    rename(f"{_NX}.input_layernorm.weight", f"{L}.norm_1.weight"),
    rename(f"{_NX}.input_layernorm.bias", f"{L}.norm_1.bias"),
    rename(f"{_NX}.post_attention_layernorm.weight", f"{L}.norm_2.weight"),
    rename(f"{_NX}.post_attention_layernorm.bias", f"{L}.norm_2.bias"),
    Rule((f"{_NX}.attention.query_key_value.weight",), (f"{L}.attn.qkv.weight",), "neox_qkv"),
    Rule((f"{_NX}.attention.query_key_value.bias",), (f"{L}.attn.qkv.bias",), "neox_qkv"),
    rename(f"{_NX}.attention.dense.weight", f"{L}.attn.proj.weight"),
    rename(f"{_NX}.attention.dense.bias", f"{L}.attn.proj.bias"),
    rename(f"{_NX}.mlp.dense_h_to_4h.weight", f"{L}.mlp.fc.weight"),
    rename(f"{_NX}.mlp.dense_h_to_4h.bias", f"{L}.mlp.fc.bias"),
    rename(f"{_NX}.mlp.dense_4h_to_h.weight", f"{L}.mlp.proj.weight"),
    rename(f"{_NX}.mlp.dense_4h_to_h.bias", f"{L}.mlp.proj.bias"),
]

_FA = "transformer.h.{i}"
FALCON = [
    rename("transformer.word_embeddings.weight", "transformer.wte.weight"),
    rename("transformer.ln_f.weight", "transformer.ln_f.weight"),
    rename("transformer.ln_f.bias", "transformer.ln_f.bias"),
    rename("lm_head.weight", "lm_head.weight"),
    # Falcon-7B: one shared input norm; Falcon-40B ("new decoder architecture"): one norm per branch
    rename(f"{_FA}.input_layernorm.weight", f"{L}.norm_1.weight", when="shared_attention_norm"),
    rename(f"{_FA}.input_layernorm.bias", f"{L}.norm_1.bias", when="shared_attention_norm"),
    rename(f"{_FA}.ln_attn.weight", f"{L}.norm_1.weight", when="!shared_attention_norm"),
    rename(f"{_FA}.ln_attn.bias", f"{L}.norm_1.bias", when="!shared_attention_norm"),
    rename(f"{_FA}.ln_mlp.weight", f"{L}.norm_2.weight", when="!shared_attention_norm"),
    rename(f"{_FA}.ln_mlp.bias", f"{L}.norm_2.bias", when="!shared_attention_norm"),
    Rule((f"{_FA}.self_attention.query_key_value.weight",), (f"{L}.attn.qkv.weight",), "falcon_qkv"),
    Rule((f"{_FA}.self_attention.query_key_value.bias",), (f"{L}.attn.qkv.bias",), "falcon_qkv"),
    rename(f"{_FA}.self_attention.dense.weight", f"{L}.attn.proj.weight"),
    rename(f"{_FA}.self_attention.dense.bias", f"{L}.attn.proj.bias"),
    rename(f"{_FA}.mlp.dense_h_to_4h.weight", f"{L}.mlp.fc.weight"),
    rename(f"{_FA}.mlp.dense_h_to_4h.bias", f"{L}.mlp.fc.bias"),
    rename(f"{_FA}.mlp.dense_4h_to_h.weight", f"{L}.mlp.proj.weight"),
    rename(f"{_FA}.mlp.dense_4h_to_h.bias", f"{L}.mlp.proj.bias"),
]

WEIGHT_MAPS: dict[str, list[Rule]] = {
    "LlamaForCausalLM": LLAMA,
    "MistralForCausalLM": LLAMA,
    "Qwen2ForCausalLM": LLAMA,
    "Qwen3ForCausalLM": LLAMA,
    "GemmaForCausalLM": LLAMA,
    "MixtralForCausalLM": MIXTRAL,
    "Qwen3MoeForCausalLM": QWEN3_MOE,
    "Gemma2ForCausalLM": GEMMA2,
    "Gemma3ForCausalLM": GEMMA2,
    "Olmo2ForCausalLM": GEMMA2,
    "OlmoForCausalLM": OLMO,
    "PhiForCausalLM": PHI,
    "Phi3ForCausalLM": PHI3,
    "GPTNeoXForCausalLM": GPT_NEOX,
    "FalconForCausalLM": FALCON,
}

# HF name prefixes of multimodal wrappers whose text model we take (Gemma3ForConditionalGeneration)
HF_PREFIX_ALIASES = {
    "Gemma3ForConditionalGeneration": (("model.language_model.", "model."), ("language_model.model.", "model.")),
}


# ---------------------------------------------------------------- GGUF maps (llama.cpp's tensor names)
B = "blk.{i}"


def _gguf_core(qkv: str, norm: str = "rename") -> list[Rule]:
    """What every GGUF family shares: embeddings, the final norm, attention and the gated MLP."""
    return [
        rename("token_embd.weight", "transformer.wte.weight"),
        Rule(("output_norm.weight",), ("transformer.ln_f.weight",), norm),
        rename("output.weight", "lm_head.weight"),  # absent when tied
        Rule((f"{B}.attn_norm.weight",), (f"{L}.norm_1.weight",), norm),
        Rule((f"{B}.ffn_norm.weight",), (f"{L}.norm_2.weight",), norm),
        Rule(tuple(f"{B}.attn_{p}.weight" for p in "qkv"), (f"{L}.attn.qkv.weight",), qkv),
        Rule(tuple(f"{B}.attn_{p}.bias" for p in "qkv"), (f"{L}.attn.qkv.bias",), qkv),
        rename(f"{B}.attn_output.weight", f"{L}.attn.proj.weight"),
        rename(f"{B}.ffn_gate.weight", f"{L}.mlp.fc_1.weight"),
        rename(f"{B}.ffn_up.weight", f"{L}.mlp.fc_2.weight"),
        rename(f"{B}.ffn_down.weight", f"{L}.mlp.proj.weight"),
    ]


def _gguf_qk_norms(norm: str = "rename") -> list[Rule]:
    return [
        Rule((f"{B}.attn_q_norm.weight",), (f"{L}.attn.norm_q.weight",), norm),
        Rule((f"{B}.attn_k_norm.weight",), (f"{L}.attn.norm_k.weight",), norm),
    ]


GGUF_GEMMA2 = [  # every Gemma norm is stored as (1 + w)
    *_gguf_core("fuse_qkv", norm="unit_offset"),
    Rule((f"{B}.post_attention_norm.weight",), (f"{L}.post_attention_norm.weight",), "unit_offset"),
    Rule((f"{B}.post_ffw_norm.weight",), (f"{L}.post_mlp_norm.weight",), "unit_offset"),
]

GGUF_MAPS: dict[str, list[Rule]] = {  # keyed by the GGUF's general.architecture
    "llama": _gguf_core("gguf_qkv"),  # llama.cpp permutes Llama's q/k rows (for its own RoPE kernel)
    "qwen2": _gguf_core("fuse_qkv"),  # Qwen keeps HF's row order
    "qwen3": [*_gguf_core("fuse_qkv"), *_gguf_qk_norms()],
    "gemma2": GGUF_GEMMA2,
    "gemma3": [*GGUF_GEMMA2, *_gguf_qk_norms("unit_offset")],
}
# GGUF tensors that hold no weight of ours: llama.cpp's Llama 3 RoPE divisors, which become Config.rope_scaling
GGUF_FOLDED_INTO_CONFIG = frozenset({"rope_freqs.weight"})
