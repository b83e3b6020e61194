"""The one fit loop. It knows nothing about LoRA, quantization or where data comes from: a recipe prepared the
model, the entrypoint built the pieces, and `fit` runs optimizer steps, validates, logs and checkpoints.

Loss normalisation: every step's loss is the sum of token losses over the whole global batch divided by the
number of target tokens in it. So gradient accumulation, packing and the number of devices do not change the
numbers (a packed batch has the same loss as the same samples unpacked; 2 processes match 1).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from litgpt_lite.data.base import collate, flatten_packed
from litgpt_lite.train.args import EvalArgs, TrainArgs
from litgpt_lite.train.checkpoints import TrainState, save_training_checkpoint
from litgpt_lite.train.loggers import Metrics
from litgpt_lite.train.loss import count_targets, loss_sum
from litgpt_lite.train.recipes import Recipe

if TYPE_CHECKING:
    from lightning.fabric import Fabric


class Dataset(Protocol):
    """What `fit` reads training and validation samples from (the data modules' SampleList, PackedRows ...)."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]: ...


@dataclass
class FitArgs:
    """What `fit` needs besides the model, optimizer and data."""

    train: TrainArgs
    eval: EvalArgs
    out_dir: Path
    total_steps: int
    recipe: Recipe
    seed: int = 42
    pad_id: int = 0
    metrics: Metrics | None = None
    sample: Callable[[torch.nn.Module], str | None] | None = None  # one generation at each validation
    flops_per_token: float | None = None
    peak_flops: float | None = None  # per device; None where unknown (CPU)
    split_head: bool = True  # run the head outside the model's forward, on loss positions only (not under FSDP)
    flatten_packed: bool = False  # packed micro batches run as one row without padding (see `data.flatten_packed`)
    compiled: bool = False  # the model runs under torch.compile; the split head and its loss are compiled too


# ---------------------------------------------------------------- data order
def step_indices(step: int, n: int, global_batch: int, seed: int) -> tuple[list[int], int]:
    """The `global_batch` sample indices of optimizer step `step`, and the epoch its first sample is in.

    The sample stream is epoch 0's seeded permutation, then epoch 1's, and so on, so the position after any step is
    known from the step alone (exact resume needs no data-loader state).
    """
    start = step * global_batch
    out: list[int] = []
    epoch = start // n
    first_epoch = epoch
    offset = start % n
    while len(out) < global_batch:
        order = _epoch_order(n, seed, epoch)
        take = order[offset : offset + global_batch - len(out)]
        out += take
        epoch, offset = epoch + 1, 0
    return out, first_epoch


@functools.lru_cache(maxsize=2)
def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()


def micro_batches(
    dataset: Dataset, indices: list[int], rank: int, world: int, micro: int, pad_id: int, flatten: bool = False
):
    """This rank's share of a global batch, collated into micro batches (packed ones flattened with `flatten`)."""
    per_rank = len(indices) // world
    mine = indices[rank * per_rank : (rank + 1) * per_rank]
    batches = [collate([dataset[j] for j in mine[i : i + micro]], pad_id) for i in range(0, len(mine), micro)]
    return [flatten_packed(b) if flatten and "segment_ids" in b else b for b in batches]


def objective(recipe: Recipe) -> tuple[Callable, Callable]:
    """(loss_sum, count_targets) of a step: the recipe's own where it defines them (DPO: a loss summed over a micro
    batch's preference pairs, and the number of pairs), else token cross-entropy and the number of target tokens.
    The step's loss is sum / count over the global batch either way."""
    return getattr(recipe, "loss_sum", loss_sum), getattr(recipe, "count_targets", count_targets)


def recipe_metrics(fabric: Fabric, recipe: Recipe) -> dict[str, float]:
    """Extra metrics a recipe gathered in `loss_sum` since the last call (its `pop_metrics`), for the logger."""
    pop = getattr(recipe, "pop_metrics", None)
    return pop(fabric) if pop is not None else {}


def _all_sum(fabric: Fabric, value: float | int) -> float:
    if fabric.world_size == 1:
        return float(value)
    # on the run's device: NCCL reduces only CUDA tensors
    total = fabric.all_reduce(torch.tensor(float(value), dtype=torch.float64, device=fabric.device), reduce_op="sum")
    return float(total)


# ---------------------------------------------------------------- the loop
def fit(
    fabric: Fabric,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    train_data: Dataset,
    val_data: Dataset | None,
    args: FitArgs,
    state: TrainState,
) -> TrainState:
    """Train from `state` until the stopping point; returns the final state.

    Args:
        fabric: the launched Fabric; `model` and `optimizer` went through its `setup_*`.
        model: the model a recipe prepared.
        optimizer: over the trainable parameters.
        scheduler: stepped once per optimizer step.
        train_data: samples (dicts of input_ids, labels ...) indexed 0..len-1; `step_indices` picks each step's.
        val_data: validation samples, or None for no validation.
        args: everything else `fit` needs.
        state: where to start (step 0, or a resumed checkpoint's state).
    """
    t = args.train
    accum = t.gradient_accumulation_iters(fabric.world_size)
    step_loss_sum, step_count = objective(args.recipe)
    if hasattr(args.recipe, "before_fit"):  # a pass over the data before training (DPO's reference log-probs)
        args.recipe.before_fit(fabric, model, train_data, val_data, args, state)
    progress = Progress(fabric, args, state)
    if args.eval.initial_validation and val_data is not None and state.step == 0:
        progress.validated(_validate_and_log(fabric, model, val_data, args, state))
    while not _done(state, args):
        indices, state.epoch = step_indices(state.step, len(train_data), t.global_batch_size, args.seed)
        rank, world = fabric.global_rank, fabric.world_size
        batches = micro_batches(train_data, indices, rank, world, t.micro_batch_size, args.pad_id, args.flatten_packed)
        targets = max(_all_sum(fabric, step_count(batches)), 1.0)
        step_loss = torch.zeros((), dtype=torch.float32)
        for i, batch in enumerate(batches):
            batch = {k: fabric.to_device(v) for k, v in batch.items()}
            with fabric.no_backward_sync(model, enabled=i < accum - 1):
                s = step_loss_sum(fabric, model, batch, t.chunked_ce, args.split_head, args.compiled)
                # DDP/FSDP average gradients over ranks, so scale by world size: the result is sum / targets.
                fabric.backward(s * fabric.world_size / targets)
            step_loss += s.detach().float().cpu()
        if t.max_norm is not None:
            fabric.clip_gradients(model, optimizer, max_norm=t.max_norm)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        state.step += 1
        state.tokens += int(_all_sum(fabric, sum(b["input_ids"].numel() for b in batches)))
        loss = _all_sum(fabric, step_loss) / targets
        if state.first_loss is None:
            state.first_loss = loss
        progress.step(loss, lr, recipe_metrics(fabric, args.recipe))
        _after_step(fabric, model, optimizer, scheduler, val_data, args, state, progress)
    if args.eval.final_validation and val_data is not None and state.step % args.eval.interval:
        progress.validated(_validate_and_log(fabric, model, val_data, args, state))
    progress.finish()
    return state


def _done(state: TrainState, args: FitArgs) -> bool:
    if state.step >= args.total_steps:
        return True
    return args.train.max_tokens is not None and state.tokens >= args.train.max_tokens


def _after_step(
    fabric: Fabric,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    val_data: Dataset | None,
    args: FitArgs,
    state: TrainState,
    progress: Progress,
) -> None:
    if val_data is not None and state.step % args.eval.interval == 0:
        progress.validated(_validate_and_log(fabric, model, val_data, args, state))
    interval = args.train.save_interval
    if (interval is not None and state.step % interval == 0) or _done(state, args):
        path = save_training_checkpoint(fabric, args.out_dir, args.recipe, model, optimizer, scheduler, state)
        fabric.print(f"Saved checkpoint {path}")


@torch.no_grad()
def validate(fabric: Fabric, model: torch.nn.Module, val_data: Dataset, args: FitArgs) -> float:
    """Token-mean loss over the first `eval.max_iters` micro batches of the validation set (all ranks)."""
    was_training = model.training
    model.eval()
    mb, world, rank = args.train.micro_batch_size, fabric.world_size, fabric.global_rank
    total = count = 0.0
    batch_loss_sum, batch_count = objective(args.recipe)
    n_batches = min(args.eval.max_iters, math.ceil(len(val_data) / mb))
    # Every rank runs the same number of forwards (FSDP all-gathers inside each); a rank past the end repeats
    # batch 0 and drops the result.
    for r in range(math.ceil(n_batches / world)):
        b = r * world + rank
        keep = b < n_batches
        idx = list(range(b * mb, min((b + 1) * mb, len(val_data)))) if keep else list(range(min(mb, len(val_data))))
        batch = {k: fabric.to_device(v) for k, v in collate([val_data[i] for i in idx], args.pad_id).items()}
        s = float(batch_loss_sum(fabric, model, batch, args.train.chunked_ce, args.split_head, args.compiled))
        if keep:
            total += s
            count += batch_count([batch])
    total, count = _all_sum(fabric, total), _all_sum(fabric, count)
    model.train(was_training)
    return total / max(count, 1.0)


def _validate_and_log(
    fabric: Fabric, model: torch.nn.Module, val_data: Dataset, args: FitArgs, state: TrainState
) -> float:
    t0 = time.perf_counter()
    val_loss = validate(fabric, model, val_data, args)
    ppl = math.exp(min(val_loss, 50.0))
    # a recipe's own metrics (on several devices they count the batch a rank past the end repeats, too)
    extra = {f"val_{k}": v for k, v in recipe_metrics(fabric, args.recipe).items()}
    shown = "".join(f" | {k} {v:.4f}" for k, v in extra.items()) or f" | val ppl {ppl:.2f}"  # ppl: of token CE
    fabric.print(f"validation | step {state.step} | val loss {val_loss:.4f}{shown} | {time.perf_counter() - t0:.1f}s")
    if args.sample is not None and args.eval.max_new_tokens > 0 and fabric.global_rank == 0:
        text = args.sample(model)
        if text is not None:
            fabric.print(f"sample | {text!r}")
    if args.metrics is not None:
        args.metrics.log(
            {"val_loss": val_loss, **(extra or {"val_ppl": ppl}), "epoch": state.epoch, "tokens": state.tokens},
            state.step,
        )
    return val_loss


class Progress:
    """One line per `log_interval` steps: loss, lr, tokens/s, MFU where the peak is known, ETA."""

    def __init__(self, fabric: Fabric, args: FitArgs, state: TrainState) -> None:
        self.fabric, self.args = fabric, args
        self.start_step, self.start_tokens = state.step, state.tokens
        self.t0 = self.t_last = time.perf_counter()
        self.tokens_last = state.tokens
        self.state = state
        self.last_loss: float | None = None
        self.val_losses: list[float] = []  # this run's validations, for the closing summary

    def step(self, loss: float, lr: float, extra: dict[str, float] | None = None) -> None:
        s, args = self.state, self.args
        self.last_loss = loss
        now = time.perf_counter()
        tok_s = (s.tokens - self.tokens_last) / max(now - self.t_last, 1e-9)
        self.t_last, self.tokens_last = now, s.tokens
        metrics: dict[str, Any] = {
            "loss": loss,
            "lr": lr,
            "tokens": s.tokens,
            "epoch": s.epoch,
            "tokens_per_sec": tok_s,
            **(extra or {}),
        }
        mfu = None
        if args.flops_per_token and args.peak_flops:
            mfu = tok_s * args.flops_per_token / (args.peak_flops * self.fabric.world_size)
            metrics["mfu"] = mfu
        if s.step % args.train.log_interval and s.step != args.total_steps and s.step != self.start_step + 1:
            return
        if args.metrics is not None:
            args.metrics.log(metrics, s.step)
        done = s.step - self.start_step
        eta = (now - self.t0) / done * (args.total_steps - s.step)
        line = f"step {s.step}/{args.total_steps} | loss {loss:.4f} | lr {lr:.2e} | {tok_s:,.0f} tok/s"
        line += "".join(f" | {k} {v:.4f}" for k, v in (extra or {}).items())
        if mfu is not None:
            line += f" | MFU {100 * mfu:.1f}%"
        self.fabric.print(f"{line} | ETA {_duration(eta)}")

    def validated(self, val_loss: float) -> None:
        self.val_losses.append(val_loss)

    def finish(self) -> None:
        s = self.state
        elapsed = time.perf_counter() - self.t0
        if s.first_loss is not None and self.last_loss is not None:
            line = (
                f"Training done: {s.step} steps, {s.tokens:,} tokens in {_duration(elapsed)} | "
                f"train loss first step {s.first_loss:.4f} -> last step {self.last_loss:.4f}"
            )
            vals = self.val_losses
            if len(vals) > 1:
                line += f" | val loss {vals[0]:.4f} -> {vals[-1]:.4f}"
            self.fabric.print(line)


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
