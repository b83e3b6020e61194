"""The training and evaluation knobs every entrypoint shares (`--train.*`, `--eval.*`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from litgpt_lite.errors import UserError

Compile = bool | Literal["auto"]


@dataclass
class TrainArgs:
    """How long and how to train.

    Args:
        global_batch_size: samples per optimizer step, over all devices.
        micro_batch_size: samples per forward/backward on one device; gradient accumulation makes up the rest.
        max_tokens: stop after this many tokens (input tokens, padding included).
        max_steps: stop after this many optimizer steps.
        epochs: stop after this many passes over the training data.
        max_seq_length: longest sample in tokens (longer ones are truncated and counted); defaults to the
            model's block_size.
        lr_warmup_steps: linear warmup from 0 to the optimizer's lr over this many steps.
        min_lr: the lr the cosine decay ends at (on the last step).
        max_norm: clip the gradient norm to this value (None: no clipping).
        save_interval: save a resumable checkpoint every this many steps (None: only at the end).
        log_interval: print a progress line and log metrics every this many steps.
        activation_checkpointing: recompute each block's activations in the backward pass to save memory.
        chunked_ce: compute the cross-entropy over this many tokens at a time, recomputing each chunk's logits in
            the backward pass, so full-vocabulary logits are never all kept (0: one pass).
        compile: run the model, and the head with its loss, through `torch.compile`: true, false, or auto (the
            default: on a CUDA GPU, as LitGPT's pretraining does; not on a CPU, where compiling costs more than a
            short run gains).
        reuse_freed_memory: on a CPU run, keep the memory that freed tensors give back inside the process for the
            next allocation (glibc malloc: no `mmap`/`munmap` per large tensor, no trimming of the heap). By default
            glibc returns every block over 32 MB to the kernel when it is freed, so each step's logits, their
            gradient and the large activations are page-faulted and zeroed by the kernel again: about 1.5 s of
            system CPU time per pythia-70m step at 4 x 512 on 2 cores; pythia-14m at 4 x 512 trained 1.19x faster
            with it (lockstep pairs). The cost: the process keeps its peak memory between steps instead of
            shrinking. No effect on a GPU run or without glibc (litgpt_lite/host_memory.py).
    """

    global_batch_size: int = 16
    micro_batch_size: int = 1
    max_tokens: int | None = None
    max_steps: int | None = None
    epochs: int | None = None
    max_seq_length: int | None = None
    lr_warmup_steps: int = 100
    min_lr: float = 0.0
    max_norm: float | None = 1.0
    save_interval: int | None = 1000
    log_interval: int = 1
    activation_checkpointing: bool = False
    chunked_ce: int = 0
    compile: Compile = "auto"
    reuse_freed_memory: bool = True

    def validate(self, world_size: int) -> None:
        """A UserError for a combination that cannot run, before any compute."""
        for name in ("global_batch_size", "micro_batch_size", "log_interval"):
            if getattr(self, name) < 1:
                raise UserError(f"--train.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_tokens", "max_steps", "epochs", "save_interval", "max_seq_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--train.{name} must be at least 1 (or null), got {value}")
        if self.compile not in (True, False, "auto"):
            raise UserError(f"--train.compile must be true, false or auto, got {self.compile!r}")
        if self.lr_warmup_steps < 0 or self.chunked_ce < 0:
            raise UserError("--train.lr_warmup_steps and --train.chunked_ce must not be negative")
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size % per_step:
            raise UserError(
                f"--train.global_batch_size {self.global_batch_size} is not divisible by micro_batch_size "
                f"{self.micro_batch_size} x {world_size} device(s) = {per_step}: make it a multiple of {per_step}"
            )
        if self.max_tokens is None and self.max_steps is None and self.epochs is None:
            raise UserError("Set a stopping point: --train.max_steps, --train.max_tokens or --train.epochs")

    def compiles(self, device_type: str) -> bool:
        """Whether the run on a `device_type` ("cuda", "cpu" ...) device compiles: `compile` with auto resolved."""
        if self.compile == "auto":
            return device_type == "cuda"
        return bool(self.compile)

    def gradient_accumulation_iters(self, world_size: int) -> int:
        """Micro batches per optimizer step on each device."""
        return self.global_batch_size // (self.micro_batch_size * world_size)


@dataclass
class EvalArgs:
    """When and how much to validate.

    Args:
        interval: validate every this many optimizer steps (and generate one sample).
        max_iters: at most this many validation micro batches per validation.
        max_new_tokens: tokens of the sample generation at each validation (0: no sample).
        initial_validation: validate before the first step.
        final_validation: validate after the last step.
    """

    interval: int = 100
    max_iters: int = 100
    max_new_tokens: int = 50
    initial_validation: bool = False
    final_validation: bool = True

    def validate(self) -> None:
        if self.interval < 1 or self.max_iters < 1 or self.max_new_tokens < 0:
            raise UserError("--eval.interval and --eval.max_iters must be at least 1, --eval.max_new_tokens >= 0")
