"""Model FLOPs utilisation (MFU): the training FLOPs of a token and the peak FLOP/s of the device they ran on."""

from __future__ import annotations

import torch

# Dense bf16 peak FLOP/s of known accelerators, for MFU (matched on the device name).
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "L4": 121e12,
    "4090": 165e12,
    "3090": 71e12,
    "V100": 125e12,
    "A6000": 155e12,
}


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """Training FLOPs per token: 2N forward, 2N backward through activations, 2N' weight gradients (trainable).

    Args:
        model: the plain GPT (not wrapped), with its trainable parameters marked.
        seq_len: the training sequence length, for the attention term.
    """
    n = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    c = model.config
    attention = 6 * c.n_layer * c.n_head * c.head_size * seq_len  # causal QK^T and AV, forward + backward
    return 4 * n + 2 * n_train + attention


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The device's dense bf16 peak FLOP/s, or None where it is unknown (CPUs, other precisions, other GPUs)."""
    if device.type != "cuda" or "bf16" not in precision:
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)
