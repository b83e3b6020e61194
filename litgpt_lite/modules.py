"""Module-tree helpers shared by the loader, LoRA, quantization and the training loop (no model math here)."""

from __future__ import annotations

import torch.nn as nn

# Fabric's `_FabricModule` keeps the user's module in `_original_module` (and what runs forward, e.g. a compiled
# module, in `_forward_module`); torch.compile's `OptimizedModule` keeps it in `_orig_mod`
_WRAPPER_ATTRS = ("_original_module", "_forward_module", "_orig_mod")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside any stack of Fabric, torch.compile and DDP wrappers (the model itself if none)."""
    while True:
        inner = next(
            (getattr(model, a) for a in _WRAPPER_ATTRS if isinstance(getattr(model, a, None), nn.Module)), None
        )
        if inner is None and isinstance(model, nn.parallel.DistributedDataParallel):
            inner = model.module
        if inner is None or inner is model:
            return model
        model = inner


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted `name` (the module swap behind quantization, LoRA and kernels)."""
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)
