"""Device fast paths, installed on a built model by one module swap; `model.py` never knows about them.

`install_kernels(model, kernels)` is the one entry point, called by the loader after weights (and any quantization)
are in place. `kernels="auto"` installs what measurably helps on this hardware; `"none"` leaves torch's modules.
"""

from __future__ import annotations

from torch import nn

KERNEL_CHOICES = ("auto", "none")


def check_kernels(kernels: str) -> str:
    """Validate a `--kernels` value, with one clear line for a wrong one."""
    if kernels not in KERNEL_CHOICES:
        raise ValueError(f"--kernels must be one of {', '.join(KERNEL_CHOICES)}, got {kernels!r}")
    return kernels


def install_kernels(model: nn.Module, kernels: str = "auto") -> nn.Module:
    """Swap the modules of `model` for this hardware's fast paths (in place) and return it."""
    check_kernels(kernels)
    return model
