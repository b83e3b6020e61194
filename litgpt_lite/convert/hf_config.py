"""HF `config.json` <-> `Config` fields, for every supported architecture. Torch-free.

Reads both dialects of `config.json`: the older one (`rope_theta`, `rope_scaling`, `sliding_window_pattern`) that
most Hub checkpoints have, and the one transformers 5.x writes (`rope_parameters`, `layer_types`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from litgpt_lite.config import Config
from litgpt_lite.errors import UserError

# HF architecture -> (model_type, family defaults that the HF config does not spell out)
ARCHITECTURES: dict[str, tuple[str, dict]] = {
    "LlamaForCausalLM": ("llama", {}),
    "MistralForCausalLM": ("mistral", {}),
    "MixtralForCausalLM": ("mixtral", {}),
    "Qwen2ForCausalLM": ("qwen2", {}),
    "Qwen3ForCausalLM": ("qwen3", {}),
    "Qwen3MoeForCausalLM": ("qwen3_moe", {}),
    "GemmaForCausalLM": ("gemma", {}),
    "Gemma2ForCausalLM": ("gemma2", {}),
    "Gemma3ForCausalLM": ("gemma3_text", {}),
    "Gemma3ForConditionalGeneration": ("gemma3", {}),
    "PhiForCausalLM": ("phi", {}),
    "Phi3ForCausalLM": ("phi3", {}),
    "GPTNeoXForCausalLM": ("gpt_neox", {}),
    "FalconForCausalLM": ("falcon", {}),
    "OlmoForCausalLM": ("olmo", {}),
    "Olmo2ForCausalLM": ("olmo2", {}),
}
_MODEL_TYPE_TO_ARCH = {mt: arch for arch, (mt, _) in ARCHITECTURES.items()}


def architecture_of(hf: dict) -> str:
    archs = hf.get("architectures") or []
    for arch in archs:
        if arch in ARCHITECTURES:
            return arch
    if hf.get("model_type") in _MODEL_TYPE_TO_ARCH:
        return _MODEL_TYPE_TO_ARCH[hf["model_type"]]
    name = archs[0] if archs else hf.get("model_type", "unknown")
    raise UserError(f"Unsupported architecture {name!r}. Supported: {', '.join(ARCHITECTURES)}")


def config_from_hf(path_or_dict: str | Path | dict, **overrides: Any) -> Config:
    """The `Config` of any HF checkpoint of a supported architecture, from its `config.json`.

    Args:
        path_or_dict: the parsed config.json, the file, or the folder holding it.
        overrides: Config fields to set instead of what config.json says (e.g. `name`).
    """
    if isinstance(path_or_dict, dict):
        hf = path_or_dict
    else:
        path = Path(path_or_dict)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise UserError(f"No config.json at {path}")
        try:
            hf = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not valid JSON: {e}") from None
    return Config(**{**config_fields_from_hf(hf), **overrides})


def config_fields_from_hf(hf: dict) -> dict[str, Any]:
    """`Config` keyword arguments for the HF config dict `hf`."""
    arch = architecture_of(hf)
    if arch == "Gemma3ForConditionalGeneration":  # the text model of the multimodal checkpoint
        hf = {**hf["text_config"], "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text"}
        arch = "Gemma3ForCausalLM"
    builder = _BUILDERS[ARCHITECTURES[arch][0]]
    name = str(hf.get("_name_or_path") or "").rstrip("/").split("/")[-1]
    conf = {"name": name, "architecture": arch, **_common(hf), **builder(hf)}
    return conf


# ---------------------------------------------------------------- readers shared by the families
def _common(hf: dict) -> dict:
    n_head = hf["num_attention_heads"]
    out = dict(
        block_size=hf.get("max_position_embeddings", 2048),
        vocab_size=hf["vocab_size"],
        padded_vocab_size=hf["vocab_size"],
        n_layer=hf["num_hidden_layers"],
        n_embd=hf["hidden_size"],
        n_head=n_head,
        n_query_groups=hf.get("num_key_value_heads") or n_head,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )
    if hf.get("head_dim"):
        out["head_size"] = hf["head_dim"]
    if hf.get("intermediate_size"):
        out["intermediate_size"] = hf["intermediate_size"]
    out.update(_rope(hf))
    return out


def _rope_params(hf: dict) -> tuple[dict, dict | None]:
    """(global rope params, local rope params or None), from either config dialect."""
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and "full_attention" in params:  # 5.x, per layer type (Gemma 3)
        return params["full_attention"], params.get("sliding_attention")
    if isinstance(params, dict):
        return params, None
    legacy = dict(hf.get("rope_scaling") or {})
    legacy.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
    if "partial_rotary_factor" in hf:
        legacy["partial_rotary_factor"] = hf["partial_rotary_factor"]
    local = {"rope_theta": hf["rope_local_base_freq"]} if "rope_local_base_freq" in hf else None
    return legacy, local


def _rope(hf: dict) -> dict:
    glob, local = _rope_params(hf)
    out: dict[str, Any] = {"rope_base": float(glob.get("rope_theta", 10000.0))}
    partial = glob.get("partial_rotary_factor", hf.get("partial_rotary_factor"))
    if partial is not None:
        out["rotary_percentage"] = float(partial)
    if local is not None:
        out["rope_local_base"] = float(local.get("rope_theta", 10000.0))
    rope_type = glob.get("rope_type", glob.get("type", "default"))
    if rope_type not in ("default", None):
        keep = (
            "factor",
            "low_freq_factor",
            "high_freq_factor",
            "original_max_position_embeddings",
            "beta_fast",
            "beta_slow",
            "mscale",
            "mscale_all_dim",
            "attention_factor",
            "truncate",
            "short_factor",
            "long_factor",
        )
        scaling = {"type": rope_type, **{k: glob[k] for k in keep if glob.get(k) is not None}}
        if rope_type == "longrope":
            scaling.setdefault("original_max_position_embeddings", hf.get("original_max_position_embeddings"))
        if rope_type not in ("linear", "llama3", "yarn", "longrope"):
            raise UserError(f"RoPE scaling type {rope_type!r} is not supported (linear, llama3, yarn, longrope are)")
        out["rope_scaling"] = scaling
    return out


def _sliding(hf: dict, default_all: bool) -> dict:
    window = hf.get("sliding_window")
    if window is None or hf.get("use_sliding_window") is False:
        return {}
    n = hf["num_hidden_layers"]
    if hf.get("layer_types"):
        layers = [i for i, t in enumerate(hf["layer_types"]) if t == "sliding_attention"]
    elif hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern"):
        pattern = hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern")
        layers = [i for i in range(n) if (i + 1) % pattern != 0]
    elif not default_all:
        return {}
    else:
        layers = list(range(n))
    if not layers:
        return {}
    return {"sliding_window_size": window, "sliding_window_layers": None if len(layers) == n else layers}


def _gelu_approx(act: str) -> str:
    return "tanh" if act in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast") else "none"


def _llama_like(hf: dict, **extra: Any) -> dict:
    bias = bool(hf.get("attention_bias", False))
    out = dict(
        norm_class="RMSNorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        mlp_class="LLaMAMLP",
        attn_bias=bias,
        attn_proj_bias=bias,
        mlp_bias=bool(hf.get("mlp_bias", False)),
    )
    out.update(extra)
    return out


# ---------------------------------------------------------------- one builder per family
def _llama(hf: dict) -> dict:
    return _llama_like(hf)


def _mistral(hf: dict) -> dict:
    return _llama_like(hf, **_sliding(hf, default_all=True))


def _mixtral(hf: dict) -> dict:
    return _llama_like(
        hf,
        mlp_class="LLaMAMoE",
        n_expert=hf["num_local_experts"],
        n_expert_per_token=hf["num_experts_per_tok"],
        **_sliding(hf, default_all=True),
    )


def _qwen2(hf: dict) -> dict:
    return _llama_like(hf, attn_bias=True, attn_proj_bias=False, **_sliding(hf, default_all=False))


def _qwen3(hf: dict) -> dict:
    return _llama_like(hf, norm_qk=True, **_sliding(hf, default_all=False))


def _qwen3_moe(hf: dict) -> dict:
    if hf.get("mlp_only_layers") or hf.get("decoder_sparse_step", 1) != 1:
        raise UserError("Qwen3-MoE with dense layers (mlp_only_layers / decoder_sparse_step) is not supported")
    return _llama_like(
        hf,
        norm_qk=True,
        mlp_class="LLaMAMoE",
        n_expert=hf["num_experts"] if "num_experts" in hf else hf["num_local_experts"],
        n_expert_per_token=hf["num_experts_per_tok"],
        moe_intermediate_size=hf["moe_intermediate_size"],
        moe_norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
    )


def _gemma(hf: dict) -> dict:
    act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    return _llama_like(
        hf,
        mlp_class="GemmaMLP",
        gelu_approximate=_gelu_approx(act),
        norm_unit_offset=True,
        scale_embeddings=True,
        tie_embeddings=hf.get("tie_word_embeddings", True),
    )


def _gemma2(hf: dict) -> dict:
    out = _gemma(hf)
    out.update(
        post_attention_norm=True,
        post_mlp_norm=True,
        attention_scores_scalar=hf.get("query_pre_attn_scalar"),
        attention_logit_softcapping=hf.get("attn_logit_softcapping"),
        final_logit_softcapping=hf.get("final_logit_softcapping"),
        **_sliding(hf, default_all=False),
    )
    if "sliding_window_size" not in out and hf.get("sliding_window") and not hf.get("layer_types"):
        out.update(
            sliding_window_size=hf["sliding_window"], sliding_window_layers=list(range(0, hf["num_hidden_layers"], 2))
        )
    return out


def _gemma3(hf: dict) -> dict:
    out = _gemma2(hf)
    out["norm_qk"] = True
    out.setdefault("rope_local_base", 10000.0)
    return out


def _phi(hf: dict) -> dict:
    return dict(
        norm_class="LayerNorm",
        norm_eps=hf.get("layer_norm_eps", 1e-5),
        mlp_class="GptNeoxMLP",
        gelu_approximate=_gelu_approx(hf.get("hidden_act", "gelu_new")),
        parallel_residual=True,
        shared_attention_norm=True,
        attn_bias=True,
        attn_proj_bias=True,
        mlp_bias=True,
        lm_head_bias=True,
    )


def _phi3(hf: dict) -> dict:
    return _llama_like(hf, **_sliding(hf, default_all=True))


def _gpt_neox(hf: dict) -> dict:
    bias = bool(hf.get("attention_bias", True))
    return dict(
        norm_class="LayerNorm",
        norm_eps=hf.get("layer_norm_eps", 1e-5),
        mlp_class="GptNeoxMLP",
        gelu_approximate=_gelu_approx(hf.get("hidden_act", "gelu")),
        parallel_residual=bool(hf.get("use_parallel_residual", True)),
        attn_bias=bias,
        attn_proj_bias=bias,
        mlp_bias=True,
    )


def _falcon(hf: dict) -> dict:
    if hf.get("alibi"):
        raise UserError("Falcon with ALiBi is not supported (rotary Falcon models are)")
    new_arch = bool(hf.get("new_decoder_architecture"))
    if new_arch:
        groups = hf.get("num_kv_heads") or hf["num_attention_heads"]
    else:
        groups = 1 if hf.get("multi_query", True) else hf["num_attention_heads"]
    if new_arch and hf.get("num_ln_in_parallel_attn") == 1:
        raise UserError("Falcon with new_decoder_architecture and one layer norm is not supported")
    bias = bool(hf.get("bias", False))
    return dict(
        n_query_groups=groups,
        intermediate_size=hf.get("ffn_hidden_size") or 4 * hf["hidden_size"],
        norm_class="LayerNorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        mlp_class="GptNeoxMLP",
        gelu_approximate="none",
        parallel_residual=bool(hf.get("parallel_attn", True)),
        shared_attention_norm=not new_arch,
        attn_bias=bias,
        attn_proj_bias=bias,
        mlp_bias=bias,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )


def _olmo(hf: dict) -> dict:
    bias = bool(hf.get("attention_bias", False))
    return dict(
        norm_class="LayerNorm",
        norm_eps=1e-5,
        norm_affine=False,
        mlp_class="LLaMAMLP",
        attn_bias=bias,
        attn_proj_bias=bias,
        clip_qkv=hf.get("clip_qkv"),
    )


def _olmo2(hf: dict) -> dict:
    return _llama_like(
        hf, pre_norm=False, post_attention_norm=True, post_mlp_norm=True, norm_qk=True, norm_qk_type="all"
    )


_BUILDERS = {
    "llama": _llama,
    "mistral": _mistral,
    "mixtral": _mixtral,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
    "qwen3_moe": _qwen3_moe,
    "gemma": _gemma,
    "gemma2": _gemma2,
    "gemma3_text": _gemma3,
    "phi": _phi,
    "phi3": _phi3,
    "gpt_neox": _gpt_neox,
    "falcon": _falcon,
    "olmo": _olmo,
    "olmo2": _olmo2,
}


# ---------------------------------------------------------------- Config -> config.json
def config_to_hf(config: Any, extra: dict | None = None) -> dict:
    """A `config.json` dict that transformers loads for `config` (both the 4.x and 5.x rope keys)."""
    c = config
    arch = "Gemma3ForCausalLM" if c.architecture == "Gemma3ForConditionalGeneration" else c.architecture
    model_type = ARCHITECTURES[arch][0]
    hf: dict[str, Any] = dict(
        architectures=[arch],
        model_type=model_type,
        vocab_size=c.padded_vocab_size,
        hidden_size=c.n_embd,
        num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head,
        num_key_value_heads=c.n_query_groups,
        head_dim=c.head_size,
        intermediate_size=c.intermediate_size,
        max_position_embeddings=c.block_size,
        tie_word_embeddings=c.tie_embeddings,
        torch_dtype="float32",
    )
    hf.update(_rope_to_hf(c))
    hf.update(_FAMILY_TO_HF[model_type](c))
    if model_type == "falcon":  # a read-only property there
        del hf["head_dim"]
    if extra:
        hf.update(extra)
    return hf


def _rope_to_hf(c: Any) -> dict:
    params: dict[str, Any] = {"rope_theta": c.rope_base, "rope_type": "default"}
    if c.rotary_percentage != 1.0:
        params["partial_rotary_factor"] = c.rotary_percentage
    if c.rope_scaling:
        scaling = dict(c.rope_scaling)
        params.update(rope_type=scaling.pop("type"), **scaling)
    legacy_scaling = {k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")}
    out: dict[str, Any] = {"rope_theta": c.rope_base}
    if c.rotary_percentage != 1.0:
        out["partial_rotary_factor"] = c.rotary_percentage
    if c.rope_local_base is not None:
        local = {"rope_theta": c.rope_local_base, "rope_type": "default"}
        out["rope_parameters"] = {"full_attention": params, "sliding_attention": local}
        out["rope_local_base_freq"] = c.rope_local_base
    else:
        out["rope_parameters"] = params
    out["rope_scaling"] = (
        None
        if legacy_scaling.get("rope_type") == "default"
        else {"type": legacy_scaling["rope_type"], **legacy_scaling}
    )
    if c.rope_scaling and c.rope_scaling.get("type") == "longrope":
        out["original_max_position_embeddings"] = c.rope_scaling.get("original_max_position_embeddings")
    return out


def _layer_types(c: Any) -> dict:
    if c.sliding_window_size is None:
        return {}
    kinds = ["sliding_attention" if c.is_sliding(i) else "full_attention" for i in range(c.n_layer)]
    return {"sliding_window": c.sliding_window_size, "layer_types": kinds}


def _llama_to_hf(c: Any) -> dict:
    return dict(
        hidden_act="silu",
        rms_norm_eps=c.norm_eps,
        attention_bias=c.attn_bias,
        mlp_bias=c.mlp_bias,
        sliding_window=c.sliding_window_size,
    )


def _qwen_to_hf(c: Any) -> dict:
    out = _llama_to_hf(c)
    out.update(use_sliding_window=c.sliding_window_size is not None, **_layer_types(c))
    return out


def _moe_to_hf(c: Any) -> dict:
    out = _llama_to_hf(c)
    out.update(num_local_experts=c.n_expert, num_experts=c.n_expert, num_experts_per_tok=c.n_expert_per_token)
    if c.moe_intermediate_size:
        out.update(
            moe_intermediate_size=c.moe_intermediate_size,
            norm_topk_prob=c.moe_norm_topk_prob,
            decoder_sparse_step=1,
            mlp_only_layers=[],
        )
    return out


def _gemma_to_hf(c: Any) -> dict:
    act = "gelu_pytorch_tanh" if c.gelu_approximate == "tanh" else "gelu"
    out = dict(hidden_act=act, hidden_activation=act, rms_norm_eps=c.norm_eps, attention_bias=c.attn_bias)
    if c.post_attention_norm:
        out.update(
            query_pre_attn_scalar=c.attention_scores_scalar or c.head_size,
            attn_logit_softcapping=c.attention_logit_softcapping,
            final_logit_softcapping=c.final_logit_softcapping,
            **_layer_types(c),
        )
    return out


def _phi_to_hf(c: Any) -> dict:
    act = "gelu_new" if c.gelu_approximate == "tanh" else "gelu"
    return dict(hidden_act=act, layer_norm_eps=c.norm_eps, qk_layernorm=False)


def _gpt_neox_to_hf(c: Any) -> dict:
    act = "gelu_new" if c.gelu_approximate == "tanh" else "gelu"
    return dict(
        hidden_act=act,
        layer_norm_eps=c.norm_eps,
        use_parallel_residual=c.parallel_residual,
        attention_bias=c.attn_bias,
        rotary_pct=c.rotary_percentage,
        rotary_emb_base=c.rope_base,
    )


def _falcon_to_hf(c: Any) -> dict:
    new_arch = not c.shared_attention_norm
    return dict(
        layer_norm_epsilon=c.norm_eps,
        new_decoder_architecture=new_arch,
        multi_query=c.n_query_groups == 1,
        num_kv_heads=c.n_query_groups,
        parallel_attn=c.parallel_residual,
        bias=c.attn_bias,
        ffn_hidden_size=c.intermediate_size,
        alibi=False,
        num_ln_in_parallel_attn=2 if new_arch else None,
    )


def _olmo_to_hf(c: Any) -> dict:
    return dict(hidden_act="silu", attention_bias=c.attn_bias, clip_qkv=c.clip_qkv)


def _olmo2_to_hf(c: Any) -> dict:
    return dict(hidden_act="silu", attention_bias=c.attn_bias, rms_norm_eps=c.norm_eps)


_FAMILY_TO_HF = {
    "llama": _llama_to_hf,
    "mistral": _llama_to_hf,
    "mixtral": _moe_to_hf,
    "qwen2": _qwen_to_hf,
    "qwen3": _qwen_to_hf,
    "qwen3_moe": _moe_to_hf,
    "gemma": _gemma_to_hf,
    "gemma2": _gemma_to_hf,
    "gemma3_text": _gemma_to_hf,
    "phi": _phi_to_hf,
    "phi3": _llama_to_hf,
    "gpt_neox": _gpt_neox_to_hf,
    "falcon": _falcon_to_hf,
    "olmo": _olmo_to_hf,
    "olmo2": _olmo2_to_hf,
}
