"""`Config`: every architectural switch of the one `GPT`, as plain data. This module never imports torch.

A named config comes from the registry in `litgpt_lite/configs/` (one module per family); any Hugging Face
checkpoint of a supported architecture builds one with `litgpt_lite.convert.hf_config.config_from_hf`.
Every field is checked against its annotation when a Config is built, so a bad `model_config.yaml` fails with one
line naming the field, not later inside the model.
"""

from __future__ import annotations

import difflib
import functools
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from litgpt_lite.errors import UserError

ROPE_SCALING_TYPES = ("linear", "llama3", "yarn", "longrope")


class ConfigError(UserError, ValueError):
    """A config field with a value of the wrong type or outside its allowed values."""


@dataclass
class Config:
    name: str = ""
    hf_config: dict = field(default_factory=dict)  # {"org": ..., "name": ...}: where the weights live on the Hub
    architecture: str = "LlamaForCausalLM"  # the HF architecture: picks the weight map used by conversion
    block_size: int = 4096  # longest context the model supports
    vocab_size: int = 50254
    padding_multiple: int = 512
    padded_vocab_size: int | None = None
    n_layer: int = 16
    n_embd: int = 4096
    n_head: int = 32
    head_size: int | None = None  # defaults to n_embd // n_head
    n_query_groups: int | None = None  # GQA: number of key/value heads (1 = MQA); defaults to n_head
    intermediate_size: int | None = None
    # --- rotary position embedding
    rotary_percentage: float = 1.0  # partial rotary (Phi, Pythia)
    rope_base: float = 10000.0
    rope_local_base: float | None = None  # base of the sliding-window layers when it differs (Gemma 3)
    rope_scaling: dict | None = None  # {"type": "linear"|"llama3"|"yarn"|"longrope", ...} (global layers only)
    # --- norms
    norm_class: Literal["RMSNorm", "LayerNorm"] = "LayerNorm"
    norm_eps: float = 1e-5
    norm_unit_offset: bool = False  # Gemma's RMSNorm scales by (1 + weight)
    norm_affine: bool = True  # False: LayerNorm with no weight and no bias (OLMo 1)
    pre_norm: bool = True  # False: no norm before attention/MLP, only after (OLMo 2)
    post_attention_norm: bool = False  # norm on the attention output before the residual add (Gemma 2/3, OLMo 2)
    post_mlp_norm: bool = False
    norm_qk: bool = False  # norm on queries and keys (Qwen3, Gemma 3, OLMo 2)
    norm_qk_type: Literal["head", "all"] = "head"  # per head (Qwen3, Gemma 3) or over all heads at once (OLMo 2)
    # --- residual layout
    parallel_residual: bool = False  # x + attn(norm(x)) + mlp(norm(x)) (GPT-NeoX, Phi-2, Falcon)
    shared_attention_norm: bool = False  # attention and MLP read the same norm (Phi-2, Falcon-7B)
    # --- biases
    attn_bias: bool = False  # bias on the q/k/v projection
    attn_proj_bias: bool = False  # bias on the attention output projection
    mlp_bias: bool = False
    lm_head_bias: bool = False
    # --- MLP
    mlp_class: Literal["GptNeoxMLP", "LLaMAMLP", "GemmaMLP", "LLaMAMoE"] = "GptNeoxMLP"
    gelu_approximate: Literal["none", "tanh"] = "none"
    n_expert: int = 0
    n_expert_per_token: int = 0
    moe_intermediate_size: int | None = None
    moe_norm_topk_prob: bool = True  # renormalise the top-k router weights (Mixtral: yes; Qwen3-MoE: per config)
    # --- attention details
    attention_scores_scalar: float | None = None  # scale = 1/sqrt(this) instead of 1/sqrt(head_size) (Gemma 2/3)
    attention_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    sliding_window_size: int | None = None
    sliding_window_layers: list[int] | None = None  # indices of sliding layers; None = all (when a window is set)
    clip_qkv: float | None = None  # clamp q/k/v to [-clip, clip] (OLMo)
    # --- embeddings
    scale_embeddings: bool = False  # multiply token embeddings by sqrt(n_embd) (Gemma)
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        _check_fields(self)
        if not self.name:
            self.name = self.hf_config.get("name", "")
        if self.head_size is None:
            if self.n_embd % self.n_head:
                raise UserError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: set head_size")
            self.head_size = self.n_embd // self.n_head
        if self.padded_vocab_size is None:
            self.padded_vocab_size = find_multiple(self.vocab_size, self.padding_multiple)
        else:
            self.vocab_size = min(self.vocab_size, self.padded_vocab_size)
        if self.n_query_groups is None:
            self.n_query_groups = self.n_head
        if self.n_head % self.n_query_groups:
            raise UserError(f"n_head={self.n_head} is not divisible by n_query_groups={self.n_query_groups}")
        if self.intermediate_size is None:
            if self.mlp_class in ("LLaMAMLP", "GemmaMLP", "LLaMAMoE"):
                raise UserError(f"{self.mlp_class} needs intermediate_size in the config")
            self.intermediate_size = 4 * self.n_embd
        if self.mlp_class == "LLaMAMoE" and (self.n_expert < 1 or self.n_expert_per_token < 1):
            raise UserError("LLaMAMoE needs n_expert and n_expert_per_token >= 1")

    # ---- derived sizes
    @property
    def rope_n_elem(self) -> int:
        """How many dimensions of each head get the rotary embedding."""
        return int(self.rotary_percentage * self.head_size)

    @property
    def expert_intermediate_size(self) -> int:
        return self.moe_intermediate_size or self.intermediate_size

    def is_sliding(self, layer: int) -> bool:
        """Whether `layer` attends within a sliding window."""
        if self.sliding_window_size is None:
            return False
        return self.sliding_window_layers is None or layer in self.sliding_window_layers

    # ---- constructors
    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> Config:
        """The registered config called `name` (case-insensitive), with `overrides` applied."""
        from litgpt_lite.configs import name_to_config

        key = name if name in name_to_config else _casefold_lookup(name)
        if key is None:
            close = difflib.get_close_matches(name, list(name_to_config), n=5, cutoff=0.5)
            hint = f" Closest: {', '.join(close)}." if close else ""
            raise UserError(f"Unknown model name {name!r}.{hint} `litgpt_lite download list` prints all.")
        conf = dict(name_to_config[key])
        conf.update(overrides)
        return cls(**conf)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> Config:
        """Read a `model_config.yaml` (ours, or LitGPT's, which uses the same keys)."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"No model config at {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise UserError(f"{path} must hold a mapping of config fields")
        data.update(overrides)
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> Config:
        data = _upgrade_litgpt_keys(dict(data))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"{source} has unknown config fields: {', '.join(unknown)}")
        try:
            return cls(**data)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


# ---------------------------------------------------------------- field checks
@functools.cache
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(Config)


def _check_fields(config: Config) -> None:
    """ConfigError for the first field whose value does not fit its annotation; float fields read from YAML as
    strings ("1e-5": YAML 1.1 wants a dot in a float) become floats."""
    for f in fields(config):
        setattr(config, f.name, _checked(f.name, getattr(config, f.name), _field_types()[f.name]))
    scaling = config.rope_scaling
    if scaling is not None and scaling.get("type") not in ROPE_SCALING_TYPES:
        allowed = ", ".join(ROPE_SCALING_TYPES)
        raise ConfigError(f"rope_scaling type must be one of {allowed}; got {scaling.get('type')!r}")


def _checked(name: str, value: Any, annotation: Any) -> Any:
    optional = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    if optional:
        if value is None:
            return None
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        if isinstance(value, str) and value in args:
            return value
        raise ConfigError(f"{name} must be one of {', '.join(args)}; got {value!r}")
    if annotation is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if _fits(value, annotation, origin, args):
        return value
    kind = _KIND_NAMES.get(origin or annotation, str(annotation))
    raise ConfigError(f"{name} must be {kind}{' or null' if optional else ''}; got {value!r}")


_KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping"}
_KIND_NAMES[list] = "a list of integers"


def _fits(value: Any, annotation: Any, origin: Any, args: tuple) -> bool:
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0], None, ()) for v in value)
    return isinstance(value, origin or annotation)


def find_multiple(n: int, k: int) -> int:
    """Smallest multiple of `k` that is >= `n`."""
    return n if n % k == 0 else n + k - (n % k)


def _casefold_lookup(name: str) -> str | None:
    from litgpt_lite.configs import name_to_config

    lowered = {k.lower(): k for k in name_to_config}
    return lowered.get(name.lower())


# LitGPT `model_config.yaml` keys that carry nothing our model needs (defaults or names of its classes)
_LITGPT_IGNORED = {
    "rotary_adjacent_pairs",
    "rope_indices",
    "norm_1",
    "norm_2",
    "moe_shared_expert",
    "n_shared_expert",
    "latent_attention",
    "rope_interleave",
}


def _upgrade_litgpt_keys(data: dict) -> dict:
    """Map the LitGPT `model_config.yaml` keys whose name or meaning differs from ours."""
    if data.get("lm_head_bias") is None:
        data.pop("lm_head_bias", None)
    if "bias" in data:  # LitGPT's one `bias` switch covers attention, projection and MLP
        bias = bool(data.pop("bias"))
        data["attn_bias"] = bias or bool(data.get("attn_bias"))
        data.setdefault("attn_proj_bias", bias)
        data.setdefault("mlp_bias", bias)
    if adj := data.pop("rope_adjustments", None):
        data["rope_scaling"] = {"type": "llama3", **adj}
    if data.pop("rope_condense_ratio", 1) not in (1, None):
        raise UserError("rope_condense_ratio != 1 is not supported: use rope_scaling {type: linear, factor: ...}")
    if "rope_local_base_freq" in data:
        data["rope_local_base"] = data.pop("rope_local_base_freq")
    if "norm_class_name" in data:
        data["norm_class"] = data.pop("norm_class_name")
    if "mlp_class_name" in data:
        data["mlp_class"] = data.pop("mlp_class_name")
    if data.get("gelu_approximate") is None and "gelu_approximate" in data:
        data["gelu_approximate"] = "none"
    if "sliding_window_indices" in data:  # LitGPT: a 0/1 flag per layer
        flags = data.pop("sliding_window_indices") or []
        data["sliding_window_layers"] = [i for i, f in enumerate(flags) if f] or None
    for key in _LITGPT_IGNORED:
        data.pop(key, None)
    return data
