"""Optimizer and learning-rate schedule from the command line: `--optimizer AdamW`, a class_path/init_args dict, or
shorthands like `--optimizer.lr 3e-4`."""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
import warnings
from collections.abc import Iterable
from typing import Any

import torch

from litgpt_lite.errors import UserError

OptimizerSpec = str | dict


def _number(value: Any) -> Any:
    """Command-line shorthands arrive as strings: "3e-4" -> 3e-4, "[0.9, 0.95]" -> [0.9, 0.95], "true" -> True."""
    if not isinstance(value, str):
        return value
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    import yaml

    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    return parsed if isinstance(parsed, (bool, list, dict)) or parsed is None else value


def split_spec(spec: OptimizerSpec, default_name: str = "AdamW") -> tuple[str, dict[str, Any]]:
    """(class name or path, init args) of an optimizer spec."""
    if isinstance(spec, str):
        return spec, {}
    if not isinstance(spec, dict):
        raise UserError(f"--optimizer must be a name or a class_path/init_args dict, got {spec!r}")
    spec = dict(spec)
    name = spec.pop("class_path", None) or default_name
    init_args = dict(spec.pop("init_args", None) or {})
    init_args.update(spec)  # shorthands (--optimizer.lr) sit beside class_path
    return str(name), {k: _number(v) for k, v in init_args.items()}


def resolve_optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The optimizer class for a short name (torch.optim, then bitsandbytes.optim) or a dotted class path."""
    if "." in name:
        module_name, _, attr = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError):
            raise UserError(f"Optimizer {name!r} cannot be imported: check the class path") from None
    else:
        cls = getattr(torch.optim, name, None)
        if cls is None:
            cls = _bitsandbytes_class(name)
        if cls is None:
            known = [
                n for n, c in vars(torch.optim).items() if inspect.isclass(c) and issubclass(c, torch.optim.Optimizer)
            ]
            close = difflib.get_close_matches(name, known, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else f" Choose one of {', '.join(sorted(known))}"
            raise UserError(
                f"Unknown optimizer {name!r}.{hint} (or pass a class path like bitsandbytes.optim.AdamW8bit)"
            )
    if not (inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer)):
        raise UserError(f"{name!r} is not a torch.optim.Optimizer subclass")
    return cls


def _bitsandbytes_class(name: str):
    try:
        import bitsandbytes.optim as bnb_optim
    except Exception:  # noqa: BLE001 - bitsandbytes absent or broken: the name is simply unknown
        return None
    return getattr(bnb_optim, name, None)


def _paged_fallback(cls: type, device_type: str) -> type:
    """bitsandbytes' paged optimizers page state through CUDA unified memory; on CPU use the unpaged twin."""
    if device_type == "cuda" or not cls.__name__.startswith("Paged"):
        return cls
    twin = getattr(importlib.import_module(cls.__module__.rsplit(".", 1)[0]), cls.__name__[len("Paged") :], None)
    if twin is None:
        import bitsandbytes.optim as bnb_optim

        twin = getattr(bnb_optim, cls.__name__[len("Paged") :])
    warnings.warn(
        f"{cls.__name__} pages memory through CUDA; on {device_type} it runs as {twin.__name__}", stacklevel=2
    )
    return twin


def build_optimizer(
    spec: OptimizerSpec, params: Iterable, defaults: dict[str, Any] | None = None, device_type: str = "cpu"
) -> torch.optim.Optimizer:
    """Instantiate the optimizer a spec names over `params`; `defaults` fill the init args the spec leaves out."""
    name, init_args = split_spec(spec)
    cls = _paged_fallback(resolve_optimizer_class(name), device_type)
    check_init_args(cls, init_args)
    accepted = inspect.signature(cls.__init__).parameters
    args = {k: v for k, v in (defaults or {}).items() if k in accepted}
    args.update(init_args)
    # groups' params may be one-shot iterators: list them once, as both the check below and the optimizer read them
    params = [{**g, "params": list(g["params"])} if isinstance(g, dict) else g for g in params]
    if _can_fuse(cls, params, args):
        args["fused"] = True
    return cls(params, **args)


def _can_fuse(cls: type, params: list, args: dict[str, Any]) -> bool:
    """Whether to run torch's Adam/AdamW as its fused kernel (one pass over each parameter instead of a dozen
    elementwise ops): when the user chose neither `fused` nor `foreach`, and every parameter is a plain floating
    tensor on the CPU or a CUDA GPU (FSDP2's DTensors keep torch's default). Same update, rounded in a different order:
    SmolLM2-135M's step on 2 CPU cores takes 100 ms instead of 280-470 ms."""
    if cls not in (torch.optim.Adam, torch.optim.AdamW) or "fused" in args or "foreach" in args:
        return False
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    return bool(tensors) and all(
        type(p) in (torch.Tensor, torch.nn.Parameter) and p.device.type in ("cpu", "cuda") and p.is_floating_point()
        for p in tensors
    )


def check_init_args(cls: type, init_args: dict[str, Any]) -> None:
    """A UserError for an init arg the optimizer does not take (before any compute)."""
    accepted = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        return
    for key in init_args:
        if key not in accepted:
            names = [n for n in accepted if n not in ("self", "params")]
            raise UserError(f"{cls.__name__} takes no argument {key!r}: it takes {', '.join(names)}")


class WarmupCosine:
    """lr multiplier: linear warmup over `warmup` steps, then cosine from 1 down to `min_ratio` at `total` steps.

    A plain object (not a closure) so LambdaLR can put its fields in the scheduler's state dict.
    """

    def __init__(self, warmup: int, total: int, min_ratio: float) -> None:
        self.warmup, self.total, self.min_ratio = warmup, max(total, 1), min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        span = max(self.total - self.warmup, 1)
        progress = min((step - self.warmup) / span, 1.0)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup then cosine decay to `min_lr` (per parameter group, relative to its lr)."""
    base_lr = optimizer.param_groups[0]["lr"]
    min_ratio = min(min_lr / base_lr, 1.0) if base_lr > 0 else 0.0
    warmup = min(warmup_steps, max(total_steps - 1, 0))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total_steps, min_ratio))
