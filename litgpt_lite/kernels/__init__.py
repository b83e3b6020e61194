"""Device fast paths, installed on a built model by one module swap; `model.py` never knows about them.

`install_kernels(model, kernels)` is the one entry point, called by the loader after weights (and any quantization)
are in place. `kernels="auto"` installs what measurably helps on this hardware; `"none"` leaves torch's modules.

The swap changes the class of a module in place (`module.__class__`) to a subclass that only overrides how it
computes: parameters, buffers, state-dict names, tied weights and the math stay the model's own. On a CPU model:
- `nn.Linear` -> `CPULinear` (`cpu_linear.py`): row-split fp32 matmuls for a few rows, a fused one-row path in the
  compiled decode step, float32 or C (`cpu_bf16`) matmuls for bf16 on CPUs without native bf16;
- `CausalSelfAttention` -> `CPUCausalSelfAttention` (`cpu_attention.py`): one-query attention for the compiled decode
  step, and C RoPE and one-query attention for bf16;
- `RMSNorm` -> `CPURMSNorm` (`cpu_norm.py`), only where the C bf16 kernels can help (`cpu_bf16.supported()`).
Every C path runs only where `cpu_bf16.available()` (built; `LITGPT_LITE_CPU_KERNEL=0` turns them off). A CUDA model
gets nothing for now. Only plain `nn.Linear` modules are swapped (a LoRA wrapper's base included): quantized
Linears keep their bitsandbytes classes, so install after quantizing.
"""

from __future__ import annotations

import torch
from torch import nn

from litgpt_lite.kernels import cpu_bf16
from litgpt_lite.kernels.cpu_attention import CPUCausalSelfAttention
from litgpt_lite.kernels.cpu_linear import CPULinear
from litgpt_lite.kernels.cpu_norm import CPURMSNorm
from litgpt_lite.model import CausalSelfAttention, RMSNorm

KERNEL_CHOICES = ("auto", "none")
# each swap: the model's class -> its fast-path subclass (only the exact class is swapped, never a subclass of it)
CPU_SWAPS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: CPULinear,
    CausalSelfAttention: CPUCausalSelfAttention,
    RMSNorm: CPURMSNorm,
}
_ORIGINALS = {fast: plain for plain, fast in CPU_SWAPS.items()}


def check_kernels(kernels: str) -> str:
    """Validate a `--kernels` value, with one clear line for a wrong one."""
    if kernels not in KERNEL_CHOICES:
        raise ValueError(f"--kernels must be one of {', '.join(KERNEL_CHOICES)}, got {kernels!r}")
    return kernels


def install_kernels(model: nn.Module, kernels: str = "auto") -> nn.Module:
    """Swap the modules of `model` for this hardware's fast paths (in place) and return it.

    Args:
        model: a built model with its weights (and any quantization) in place.
        kernels: "auto" installs the swaps this hardware gains from (see the module docstring); installing again
            changes nothing. "none" puts back the model's own classes, so the model runs torch's ops only.
    """
    check_kernels(kernels)
    swaps = _ORIGINALS if kernels == "none" else chosen_swaps(_device(model))
    for module in model.modules():
        new_class = swaps.get(type(module))
        if new_class is not None:
            module.__class__ = new_class
    return model


def chosen_swaps(device: torch.device | None) -> dict[type[nn.Module], type[nn.Module]]:
    """The swaps "auto" installs on a model on `device`: the CPU ones on a CPU (the C norm only where the C bf16
    kernels can run there), none elsewhere."""
    if device is None or device.type != "cpu":
        return {}
    return {old: new for old, new in CPU_SWAPS.items() if new is not CPURMSNorm or cpu_bf16.supported()}


def is_plain_linear(module: nn.Module) -> bool:
    """A full-precision Linear (torch's, or its kernel swap), not a quantized or LoRA one."""
    return type(module) is nn.Linear or type(module) is CPULinear


def _device(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter (or buffer); None for a model without tensors."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return None
