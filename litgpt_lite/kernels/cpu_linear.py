"""`CPULinear`: nn.Linear with faster CPU inference paths; the same parameters, state dict and math.

Decoding a token streams every weight from memory once, and for a handful of rows torch's CPU matmul does so on one
core. Without autograd, on the CPU:
- eager fp32, up to `SPLIT_MAX_ROWS` rows: the weight is viewed as `n` blocks of output rows multiplied as one bmm,
  which spreads the blocks over the cores (bf16 matmuls already use every core, and gain nothing);
- one row under `torch.compile` (the compiled decode step): a multiply-sum over the weight in float32, which inductor
  fuses into one vectorised, multi-threaded pass over the weight (bf16 included). The input is first stored once
  (`as_strided` makes inductor realize it), so the norm that produces it is not recomputed for every output row:
  15 -> 18 GB/s over the weights of a bf16 SmolLM2 step;
- bf16 on a CPU without native bf16, where torch's bf16 kernel costs about a matrix-vector product per row (27 ms for
  256 rows of a 1536 x 576 weight). Up to `KERNEL_MAX_ROWS` rows, `cpu_bf16.bf16_linear` (C, AVX2) converts each
  weight once for 8 rows: a 7-token SmolLM2-135M prefill's matmuls take 22 instead of 97 ms. From `UPCAST_MIN_ROWS`
  rows without that kernel, and above its rows, the matmul runs in float32 on upcast copies (3.8 ms for those 256
  rows). Both round the float32 sums to bf16, as torch's kernel does.
On 2 cores this took fp32 batch-1 decode of SmolLM2-135M from 1.09x to 1.46x LitGPT's tokens/s, and 2.16x with both
sides compiled (`benchmarks/RESULTS.md`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import litgpt_lite.kernels.cpu_bf16 as cpu_bf16
from litgpt_lite.precision import cpu_has_native_bf16


class CPULinear(nn.Linear):
    """nn.Linear whose forward takes the fast paths above; swapped in for `nn.Linear` by `install_kernels`."""

    SPLIT_MAX_ROWS = 128
    KERNEL_MAX_ROWS = 32
    UPCAST_MIN_ROWS = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        if not x.is_cpu or (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad)):
            return F.linear(x, w, b)
        rows = x.numel() // self.in_features
        if rows == 1 and torch.compiler.is_compiling():
            return self._one_row_compiled(x)
        if x.dtype == w.dtype == torch.bfloat16 and not torch.is_autocast_enabled("cpu"):
            few = rows <= self.KERNEL_MAX_ROWS and w.is_contiguous() and (b is None or b.dtype == w.dtype)
            if few and not torch.compiler.is_compiling() and cpu_bf16.available():
                return cpu_bf16.bf16_linear(x, w, b)
            if rows >= self.UPCAST_MIN_ROWS and not cpu_has_native_bf16():
                return F.linear(x.float(), w.float(), None if b is None else b.float()).to(x.dtype)
        split = rows <= self.SPLIT_MAX_ROWS and x.dtype == w.dtype == torch.float32 and w.is_contiguous()
        if not split or self.out_features % 2:
            return F.linear(x, w, b)
        # the weight's output rows in `n` blocks, multiplied as one bmm (one block per core)
        n = next(n for n in (8, 4, 2) if self.out_features % n == 0)
        blocks = torch.bmm(x.reshape(1, rows, self.in_features).expand(n, -1, -1), w.view(n, -1, self.in_features).mT)
        y = blocks.transpose(0, 1).reshape(*x.shape[:-1], self.out_features)  # (n, rows, out / n) -> (..., out)
        return y if b is None else y + b

    def _one_row_compiled(self, x: torch.Tensor) -> torch.Tensor:
        """One row as a float32 multiply-sum over the weight, for inductor to fuse into one pass."""
        w, b = self.weight, self.bias
        xf = x.float()
        xf = torch.as_strided(xf, xf.shape, xf.stride())  # realized once, not recomputed per output row
        y = (xf.unsqueeze(-2) * w.float()).sum(-1)
        return (y if b is None else y + b.float()).to(x.dtype)
