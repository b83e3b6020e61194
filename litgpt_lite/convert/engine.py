"""Runs a weight map (weight_maps.py) in either direction, tensor by tensor: HF or GGUF names -> ours, and back.

Inputs are `(name, tensor)` pairs, or `(name, load)` pairs where `load(dtype)` reads the tensor only when its rule
fires (the GGUF reader dequantizes straight to the target dtype that way, so no float32 copy of a large embedding
sits next to its bf16 one).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from litgpt_lite.convert.weight_maps import (
    FLOAT32_TRANSFORMS,
    GGUF_FOLDED_INTO_CONFIG,
    GGUF_MAPS,
    HF_PREFIX_ALIASES,
    WEIGHT_MAPS,
    Rule,
    to_lit,
    to_theirs,
)
from litgpt_lite.errors import UserError

# buffers some HF checkpoints carry that are not weights
_IGNORED_HF = re.compile(r"(rotary_emb\.inv_freq|attention\.bias$|attention\.masked_bias$|\.rotary_emb\.)")
FORMATS = {"hf": "Hugging Face", "gguf": "GGUF"}

TensorOrLoad = torch.Tensor | Callable[[torch.dtype | None], torch.Tensor]


@dataclass
class _Compiled:
    rule: Rule
    side: tuple[str, ...]  # the names on the side we read
    other: tuple[str, ...]  # the names on the side we write
    regexes: tuple[re.Pattern, ...]


@dataclass
class _Plan:
    """One run of a map: the compiled rules, and what to do with names no rule matches."""

    architecture: str
    side: str  # the format we read, in words
    compiled: list[_Compiled]
    transform: Callable
    aliases: tuple[tuple[str, str], ...]
    skip: Callable[[str], bool]


def _regex(pattern: str) -> re.Pattern:
    escaped = re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{j\}", r"(?P<j>\d+)")
    return re.compile(f"^{escaped}$")


def _compile(rules: list[Rule], read_theirs: bool) -> list[_Compiled]:
    out = []
    for rule in rules:
        side, other = (rule.theirs, rule.lit) if read_theirs else (rule.lit, rule.theirs)
        out.append(_Compiled(rule, side, other, tuple(_regex(p) for p in side)))
    return out


def _fill(pattern: str, slots: dict[str, str]) -> str:
    return pattern.replace("{i}", slots.get("i", "")).replace("{j}", slots.get("j", ""))


def _plan(architecture: str, config, to: str, source: str) -> _Plan:
    """The rules of one architecture's map for one direction. `to` is "lit", or the format to write ("hf", "gguf")."""
    fmt = source if to == "lit" else to
    if fmt not in FORMATS:
        raise ValueError(f"unknown tensor-name format {fmt!r}")
    read_theirs = to == "lit"
    maps = WEIGHT_MAPS if fmt == "hf" else GGUF_MAPS
    if architecture not in maps and (fmt != "hf" or architecture not in HF_PREFIX_ALIASES):
        raise UserError(f"No {FORMATS[fmt]} weight map for {architecture}. Supported: {', '.join(maps)}")
    if fmt == "hf":
        key = "Gemma3ForCausalLM" if architecture == "Gemma3ForConditionalGeneration" else architecture
        aliases = HF_PREFIX_ALIASES.get(architecture, ()) if read_theirs else ()
        skip = lambda name: bool(_IGNORED_HF.search(name)) or _is_other_modality(architecture, name)  # noqa: E731
    else:
        key, aliases, skip = architecture, (), GGUF_FOLDED_INTO_CONFIG.__contains__
    compiled = _compile([r for r in maps[key] if r.applies(config)], read_theirs)
    side = FORMATS[fmt] if read_theirs else "litgpt_lite"
    return _Plan(architecture, side, compiled, to_lit if read_theirs else to_theirs, aliases, skip)


def convert_tensors(
    architecture: str,
    config,
    tensors: Iterable[tuple[str, TensorOrLoad]],
    to: str,
    source: str = "hf",
    dtype: torch.dtype | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream `(name, tensor)` pairs of one side into the other side's names.

    Args:
        architecture: the map to run: an HF architecture ("LlamaForCausalLM") for HF names, a GGUF
            `general.architecture` ("llama") for GGUF names.
        config: our Config (head counts for the q/k/v transforms, switches for conditional rules).
        tensors: `(name, tensor)` or `(name, load)` pairs, `load(dtype)` returning the tensor.
        to: "lit" to read `source` names and write ours; "hf" or "gguf" to read ours and write that format's names.
        source: the format read when `to` is "lit": "hf" or "gguf".
        dtype: the dtype of the floating-point tensors written; default: as read.
    """
    plan = _plan(architecture, config, to, source)
    pending: dict[tuple[int, tuple], dict[str, TensorOrLoad]] = {}
    for name, tensor in tensors:
        for old, new in plan.aliases:
            if name.startswith(old):
                name = new + name[len(old) :]
        match = _match(plan.compiled, name)
        if match is None:
            if to == "lit" and plan.skip(name):
                continue
            raise UserError(
                f"{plan.side} tensor {name} has no counterpart in the {plan.architecture} weight map: "
                "is this the right architecture?"
            )
        k, slots = match
        group = pending.setdefault((k, tuple(sorted(slots.items()))), {})
        group[name] = tensor
        c = plan.compiled[k]
        names = [_fill(p, slots) for p in c.side]
        if all(n in group for n in names):
            del pending[(k, tuple(sorted(slots.items())))]
            outputs = _apply(plan, c.rule, config, [group[n] for n in names], dtype)
            for pattern, out in zip(c.other, outputs):
                yield _fill(pattern, slots), out
    if pending:
        (k, _), group = next(iter(pending.items()))
        raise UserError(f"Incomplete weights: {sorted(group)[0]} came without its partners {plan.compiled[k].side}")


def _apply(plan: _Plan, rule: Rule, config, inputs: list[TensorOrLoad], dtype: torch.dtype | None) -> list:
    """Load what is still lazy (in float32 for a transform that does arithmetic), transform, cast to `dtype`."""
    read_as = torch.float32 if dtype is not None and rule.transform in FLOAT32_TRANSFORMS else dtype
    tensors = [t if isinstance(t, torch.Tensor) else t(read_as) for t in inputs]
    outputs = plan.transform(rule, config, tensors)
    if dtype is None:
        return outputs
    return [t.to(dtype) if t.is_floating_point() else t for t in outputs]


def _match(compiled: list[_Compiled], name: str) -> tuple[int, dict[str, str]] | None:
    for k, c in enumerate(compiled):
        for regex in c.regexes:
            m = regex.match(name)
            if m:
                return k, {key: v for key, v in m.groupdict().items() if v is not None}
    return None


def _is_other_modality(architecture: str, name: str) -> bool:
    """Vision tower and projector weights of a multimodal checkpoint, which the text model does not use."""
    return architecture == "Gemma3ForConditionalGeneration" and ("vision_tower" in name or "multi_modal" in name)
