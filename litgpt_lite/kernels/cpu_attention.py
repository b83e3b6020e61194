"""`CPUCausalSelfAttention`: the attention layer with CPU decode paths for its RoPE and its attend step; the same
parameters, state dict and math as `model.CausalSelfAttention`.

- One query per row (a decode step) under `torch.compile`: the attention as float32 multiply-sums, which inductor
  fuses into a few loops over the cache, where SDPA is an external call per layer (SmolLM2-135M bf16 on 2 cores:
  about 1.3 of 18 ms a step).
- One query per row in eager bf16, over the whole cache (no mask, no softcap, no autograd): `cpu_bf16.bf16_attend_one`.
- bf16 RoPE without autograd in eager mode: `cpu_bf16.bf16_rope`, the same bf16 ops bit for bit in one C call.
The C paths run only where `cpu_bf16.available()`.
"""

from __future__ import annotations

import torch

import litgpt_lite.kernels.cpu_bf16 as cpu_bf16
from litgpt_lite.model import CausalSelfAttention, apply_rope


class CPUCausalSelfAttention(CausalSelfAttention):
    """CausalSelfAttention whose `rotate` and `attend` take the CPU decode paths above."""

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if x.dtype == cos.dtype == sin.dtype == torch.bfloat16 and x.is_cpu and not torch.is_grad_enabled():
            dense = cos.shape[-1] > 0 and x.stride(-1) == cos.stride(-1) == 1 and sin.stride() == cos.stride()
            if dense and not torch.compiler.is_compiling() and cpu_bf16.available():
                return cpu_bf16.bf16_rope(x, cos, sin)
        return apply_rope(x, cos, sin)

    def attend(self, q, k, v, mask: torch.Tensor | None) -> torch.Tensor:
        if q.shape[2] == 1 and q.is_cpu:
            if torch.compiler.is_compiling():
                return self.attend_one_query(q, k, v, mask)
            one = q.dtype == torch.bfloat16 and mask is None and self.config.attention_logit_softcapping is None
            dense = q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
            if one and dense and not torch.is_grad_enabled() and cpu_bf16.available():
                return cpu_bf16.bf16_attend_one(q, k, v, self.scale)  # a decode step over its whole cache
        return super().attend(q, k, v, mask)

    def attend_one_query(self, q, k, v, mask: torch.Tensor | None) -> torch.Tensor:
        """Attention of one new token per row as multiply-sums in float32 (for the compiled decode step). Query head
        h reads key/value head h // (H // G), as SDPA's GQA does."""
        B, H, _, D = q.shape
        G = k.shape[1]
        qf = q.float().view(B, G, H // G, 1, D)
        scores = (qf * k.float().unsqueeze(2)).sum(-1) * self.scale  # (B, G, H // G, S)
        cap = self.config.attention_logit_softcapping
        if cap is not None:
            scores = torch.tanh(scores / cap) * cap
        if mask is not None:  # (B or 1, 1, 1, S)
            scores = scores.masked_fill(~mask.view(mask.shape[0], 1, 1, -1), float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out = (probs.unsqueeze(-1) * v.float().unsqueeze(2)).sum(-2)  # (B, G, H // G, D)
        return out.reshape(B, H, 1, D).to(q.dtype)
