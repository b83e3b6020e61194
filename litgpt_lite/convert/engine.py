"""Runs a weight map (weight_maps.py) in either direction, tensor by tensor."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from litgpt_lite.convert.weight_maps import HF_PREFIX_ALIASES, WEIGHT_MAPS, Rule, to_hf, to_lit
from litgpt_lite.errors import UserError

# buffers some HF checkpoints carry that are not weights
_IGNORED_HF = re.compile(r"(rotary_emb\.inv_freq|attention\.bias$|attention\.masked_bias$|\.rotary_emb\.)")


@dataclass
class _Compiled:
    rule: Rule
    side: tuple[str, ...]  # the names on the side we read
    other: tuple[str, ...]  # the names on the side we write
    regexes: tuple[re.Pattern, ...]


def _regex(pattern: str) -> re.Pattern:
    escaped = re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{j\}", r"(?P<j>\d+)")
    return re.compile(f"^{escaped}$")


def _compile(rules: list[Rule], read_hf: bool) -> list[_Compiled]:
    out = []
    for rule in rules:
        side, other = (rule.hf, rule.lit) if read_hf else (rule.lit, rule.hf)
        out.append(_Compiled(rule, side, other, tuple(_regex(p) for p in side)))
    return out


def _fill(pattern: str, slots: dict[str, str]) -> str:
    return pattern.replace("{i}", slots.get("i", "")).replace("{j}", slots.get("j", ""))


def convert_tensors(
    architecture: str, config, tensors: Iterable[tuple[str, torch.Tensor]], to: str
) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream `(name, tensor)` pairs of one side into the other side's names (`to` is "lit" or "hf")."""
    if architecture not in WEIGHT_MAPS and architecture not in HF_PREFIX_ALIASES:
        raise UserError(f"No weight map for {architecture}. Supported: {', '.join(WEIGHT_MAPS)}")
    arch = "Gemma3ForCausalLM" if architecture == "Gemma3ForConditionalGeneration" else architecture
    read_hf = to == "lit"
    compiled = _compile([r for r in WEIGHT_MAPS[arch] if r.applies(config)], read_hf)
    aliases = HF_PREFIX_ALIASES.get(architecture, ()) if read_hf else ()
    pending: dict[tuple[int, tuple], dict[str, torch.Tensor]] = {}
    for name, tensor in tensors:
        for old, new in aliases:
            if name.startswith(old):
                name = new + name[len(old) :]
        match = _match(compiled, name)
        if match is None:
            if read_hf and (_IGNORED_HF.search(name) or _is_other_modality(architecture, name)):
                continue
            side = "Hugging Face" if read_hf else "litgpt_lite"
            raise UserError(f"Unexpected {side} tensor {name!r} for {architecture}: is this the right architecture?")
        k, slots = match
        key = (k, tuple(sorted(slots.items())))
        group = pending.setdefault(key, {})
        group[name] = tensor
        c = compiled[k]
        names = [_fill(p, slots) for p in c.side]
        if all(n in group for n in names):
            del pending[key]
            inputs = [group[n] for n in names]
            outputs = (to_lit if read_hf else to_hf)(c.rule, config, inputs)
            for pattern, out in zip(c.other, outputs):
                yield _fill(pattern, slots), out
    if pending:
        (k, _), group = next(iter(pending.items()))
        raise UserError(f"Incomplete weights: {sorted(group)[0]} came without its partners {compiled[k].side}")


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
