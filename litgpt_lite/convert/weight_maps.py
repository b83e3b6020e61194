"""One declarative weight map per HF architecture. Each rule ties HF tensor names to ours, with the few transforms
that are real (fuse q/k/v, split Phi-3's gate_up, undo GPT-NeoX/Falcon head interleaving). `engine.py` runs the
same table in both directions, so the round trip holds by construction.

Patterns use `{i}` for the layer and `{j}` for the expert index. A rule whose tensors a checkpoint lacks (biases some
variants have, a tied lm_head) simply never fires; `checkpoint.check_state_dict` then reports what the config needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Rule:
    hf: tuple[str, ...]  # HF tensor names (patterns)
    lit: tuple[str, ...]  # our tensor names (patterns)
    transform: str = "rename"  # rename | fuse_qkv | split_halves | neox_qkv | falcon_qkv
    when: str | None = None  # applies only when this Config field is truthy ("!field": falsy)

    def applies(self, config) -> bool:
        if self.when is None:
            return True
        negate = self.when.startswith("!")
        return bool(getattr(config, self.when.lstrip("!"))) != negate


def rename(hf: str, lit: str, when: str | None = None) -> Rule:
    return Rule((hf,), (lit,), when=when)


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
    raise ValueError(rule.transform)


def to_hf(rule: Rule, config, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    if rule.transform == "rename":
        return tensors
    if rule.transform == "fuse_qkv":
        return list(tensors[0].split(_qkv_sizes(config), dim=0))
    if rule.transform == "split_halves":
        return [torch.cat(tensors, dim=0)]
    if rule.transform in ("neox_qkv", "falcon_qkv"):
        perm = (_neox_perm if rule.transform == "neox_qkv" else _falcon_perm)(config)
        return [tensors[0][torch.argsort(perm)]]
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
