"""Devices and processes: Fabric with its strategy (one device, DDP, FSDP2), activation checkpointing, the plain
model under Fabric's and torch.compile's wrappers, and the full state of a sharded model for export."""

from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING, Any, Literal

import torch

if TYPE_CHECKING:
    from lightning.fabric import Fabric

Strategy = Literal["auto", "ddp", "fsdp"]
STRATEGIES = ("auto", "ddp", "fsdp")


def world_size(devices: int | str, num_nodes: int) -> int:
    """The number of training processes `--devices` and `--num_nodes` ask for."""
    if isinstance(devices, str):
        devices = (
            torch.cuda.device_count()
            if devices in ("auto", "-1") and torch.cuda.is_available()
            else (int(devices) if devices.isdigit() else 1)
        )
    return max(int(devices), 1) * num_nodes


def make_fabric(
    devices: int | str,
    num_nodes: int,
    strategy: Strategy,
    precision: str,
    activation_checkpointing: bool = False,
    fsdp_cpu_offload: bool = False,
) -> Fabric:
    """A Fabric for the run: FSDP2 shards each block (checkpointed if asked) when `strategy` is "fsdp"; DDP when
    asked or when there is more than one process."""
    import lightning as L

    accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    chosen: Any = "auto"
    processes = world_size(devices, num_nodes)
    if strategy == "fsdp":
        from lightning.fabric.strategies import ModelParallelStrategy

        parallelize = functools.partial(_fully_shard, activation_checkpointing, fsdp_cpu_offload)
        chosen = ModelParallelStrategy(parallelize_fn=parallelize, data_parallel_size=processes, tensor_parallel_size=1)
    elif strategy == "ddp" or processes > 1:
        chosen = "ddp"
    return L.Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=chosen, precision=precision)


def _fully_shard(activation_checkpointing: bool, cpu_offload: bool, model: torch.nn.Module, device_mesh) -> Any:
    """FSDP2: shard each block, then the root (embeddings, final norm, head)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    mesh = device_mesh["data_parallel"]
    kwargs: dict[str, Any] = {"mesh": mesh}
    if cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    if activation_checkpointing:
        checkpoint_blocks(model)
    for block in model.transformer.h:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


def is_sharded(fabric: Fabric) -> bool:
    """Whether the model is sharded over the processes (FSDP2), so weights and optimizer state are too."""
    from lightning.fabric.strategies import ModelParallelStrategy

    return isinstance(fabric.strategy, ModelParallelStrategy)


def checkpoint_blocks(model: torch.nn.Module) -> None:
    """Activation checkpointing: each block recomputes its activations in backward (state dict keys unchanged)."""
    from torch.utils.checkpoint import checkpoint

    for block in model.transformer.h:
        inner = block.forward

        def forward(*args, _inner=inner, **kwargs):
            if not torch.is_grad_enabled():
                return _inner(*args, **kwargs)
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward


def compile_settings(compiled: bool) -> contextlib.AbstractContextManager:
    """Dynamo settings for the training run of a compiled model (nothing when not `compiled`).

    With activation checkpointing (`checkpoint_blocks`) each block traces as a checkpoint region, and its attention
    writes the forward's mask memo (`MaskSpec.build`), a side effect outside the region that a replay in backward
    would repeat: dynamo refuses it and runs the whole forward eagerly, block by block. The memo only caches a mask
    the region can rebuild, so its write need not replay; this lets the forward compile as one graph.
    """
    if not compiled:
        return contextlib.nullcontext()
    import torch._dynamo.config as dynamo_config

    name = "skip_fwd_side_effects_in_bwd_under_checkpoint"
    if not hasattr(dynamo_config, name):  # an older torch: checkpointed blocks compile one by one
        return contextlib.nullcontext()
    return dynamo_config.patch(**{name: True})


def gather_full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict of an FSDP2 model on CPU; every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(getattr(model, "module", model), options=options)
