"""Which precision is fast on this hardware, decided by what the hardware has, not by habit.

LitGPT defaults to bf16-true everywhere; on a CPU without native bf16 (AVX2 machines) a bf16 matmul runs at about
1 GFLOP/s against 60-170 GFLOP/s in fp32, so there the default is fp32.
"""

from __future__ import annotations

import functools

import torch

from litgpt_lite.errors import UserError

PRECISIONS = {
    "32-true": torch.float32,
    "bf16-true": torch.bfloat16,
    "16-true": torch.float16,
    "bf16-mixed": torch.float32,
    "16-mixed": torch.float32,
    "64-true": torch.float64,
}
# The one table of dtype names a user may type (--dtype, --precision, quantize's --dtype): each name -> the torch
# dtype's attribute name. It lives here, not in checkpoint.py, because it is about which floating type weights are held
# in, and this module imports nothing of ours but errors: checkpoint, convert, quantize and model can all read it. The
# values are names, not torch dtypes, so the table itself needs no torch.
DTYPE_NAMES: dict[str, str] = {
    "float32": "float32",
    "fp32": "float32",
    "32": "float32",
    "32-true": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "bf16-true": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "16": "float16",
    "16-true": "float16",
}
_TRUE_PRECISION = {"float32": "32-true", "bfloat16": "bf16-true", "float16": "16-true"}


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """The torch dtype a user-facing name means (None and torch dtypes pass through), or a UserError listing names."""
    if name is None or isinstance(name, torch.dtype):
        return name
    if str(name) not in DTYPE_NAMES:
        raise UserError(f"Unknown dtype {name!r}. Choose one of: {', '.join(DTYPE_NAMES)}")
    return getattr(torch, DTYPE_NAMES[str(name)])


@functools.cache  # the hardware does not change within a process; `CPULinear` asks on every bf16 matmul
def cpu_has_native_bf16() -> bool:
    """True when the CPU executes bf16 matmuls natively (AVX512-BF16 or AMX tiles)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def default_precision(device: str | torch.device = "cpu", training: bool = False) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16-mixed" if training else "bf16-true"
        return "16-mixed" if training else "16-true"
    return "bf16-true" if cpu_has_native_bf16() else "32-true"


def normalize_precision(precision: str | None, device: str | torch.device = "cpu", training: bool = False) -> str:
    if precision is None:
        return default_precision(device, training)
    precision = str(precision)
    if precision in DTYPE_NAMES:  # a dtype name means holding the weights in it: bf16 -> bf16-true
        precision = _TRUE_PRECISION[DTYPE_NAMES[precision]]
    if precision not in PRECISIONS:
        raise UserError(f"Unknown precision {precision!r}. Choose one of: {', '.join(PRECISIONS)}")
    return precision


def precision_dtype(precision: str | None, device: str | torch.device = "cpu") -> torch.dtype:
    """The dtype the weights are held in for `precision` (None: the hardware's fast default)."""
    return PRECISIONS[normalize_precision(precision, device)]


def resolve_device(device: str | None = None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"Unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available")
    return dev
