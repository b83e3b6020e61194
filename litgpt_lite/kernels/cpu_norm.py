"""`CPURMSNorm`: RMSNorm whose bf16 inference runs as one C call (`cpu_bf16.bf16_rms_norm`) instead of eight small
torch ops (~50 us each norm inside a SmolLM2 decode step); the same float32 math, parameters and state dict."""

from __future__ import annotations

import torch

import litgpt_lite.kernels.cpu_bf16 as cpu_bf16
from litgpt_lite.model import RMSNorm


class CPURMSNorm(RMSNorm):
    """RMSNorm with the C kernel for bf16 CPU tensors without autograd, outside `torch.compile`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if x.dtype == w.dtype == torch.bfloat16 and x.is_cpu and not torch.compiler.is_compiling():
            no_grad = not (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad))
            if no_grad and cpu_bf16.available():
                return cpu_bf16.bf16_rms_norm(x, w, self.eps, self.unit_offset)
        return super().forward(x)
