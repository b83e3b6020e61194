"""Resumable training checkpoints: trainable weights, optimizer, scheduler, RNG and data position, saved atomically.

    out_dir/checkpoints/step-000100/
        trainable.safetensors   the recipe's trainable state (all weights for full/pretrain, adapters for LoRA)
        optimizer.pt            optimizer state dict (read back with torch.load(weights_only=True))
        state.json              step, epoch, tokens, scheduler state
        rng-rank0.pt ...        every process's RNG states
        dcp/                    under FSDP: the sharded model and optimizer (torch.distributed.checkpoint)

Everything is written into `.step-000100.tmp` and renamed into place at the end, so a kill mid-save leaves the
previous checkpoints whole and never a half-written one under a real name.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from litgpt_lite.errors import UserError
from litgpt_lite.modules import unwrap_model

CHECKPOINTS = "checkpoints"
SLEEP_HOOK = "LITGPT_LITE_TEST_SAVE_SLEEP"  # tests: seconds to sleep halfway through a save (kill-during-save)


@dataclass
class TrainState:
    """Where the run is. The data position is a function of `step`: step s trains on samples [s*G, (s+1)*G) of the
    seeded, per-epoch shuffled sample stream."""

    step: int = 0
    epoch: int = 0
    tokens: int = 0
    first_loss: float | None = None


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / CHECKPOINTS / f"step-{step:06d}"


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint under out_dir/checkpoints (temporary dirs start with a dot and are skipped)."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return None
    done = sorted(p for p in root.glob("step-*") if p.is_dir() and (p / "state.json").is_file())
    return done[-1] if done else None


def resolve_resume(resume: bool | str | Path, out_dir: Path) -> Path | None:
    """The checkpoint dir to resume from: None (fresh), the newest one ("auto"/True), or an explicit path."""
    if resume is False or resume is None or resume == "false":
        return None
    if resume is True or resume == "auto" or resume == "true":
        found = latest_checkpoint(out_dir)
        if found is None and resume is True:
            raise UserError(f"--resume: {out_dir}/{CHECKPOINTS} has no checkpoint; drop --resume to start fresh")
        return found  # "auto" with nothing saved yet starts fresh
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise UserError(
            f"--resume {path} is not a training checkpoint (no state.json): pass out_dir/checkpoints/step-*"
        )
    return path


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]) + [random.getstate()[2] or 0],
        "python_version": random.getstate()[0],
        "numpy": np.random.get_state()[1].tolist(),
        "numpy_pos": int(np.random.get_state()[2]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    python = state["python"]
    random.setstate((state["python_version"], tuple(python[:-1]), python[-1] or None))
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _maybe_sleep(step: int) -> None:
    """Test hook: LITGPT_LITE_TEST_SAVE_SLEEP="<step>:<seconds>" pauses that step's save halfway."""
    spec = os.environ.get(SLEEP_HOOK)
    if spec:
        at, seconds = spec.split(":")
        if int(at) == step:
            time.sleep(float(seconds))


def is_sharded(fabric) -> bool:
    from lightning.fabric.strategies import ModelParallelStrategy

    return isinstance(fabric.strategy, ModelParallelStrategy)


def save_training_checkpoint(fabric, out_dir: Path, recipe, model, optimizer, scheduler, state: TrainState) -> Path:
    """Write the checkpoint for `state.step` atomically; every rank must call it."""
    final = checkpoint_dir(out_dir, state.step)
    tmp = final.with_name(f".{final.name}.tmp")
    if fabric.global_rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # a stale one from a killed run
        tmp.mkdir(parents=True)
    fabric.barrier()
    raw = unwrap_model(model)
    if is_sharded(fabric):
        _save_sharded(raw, optimizer, tmp)
    elif fabric.global_rank == 0:
        from litgpt_lite.checkpoint import save_state_dict

        save_state_dict(
            {k: v.detach().cpu() for k, v in recipe.trainable_state(raw).items()}, tmp / "trainable.safetensors"
        )
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(_rng_state(), tmp / f"rng-rank{fabric.global_rank}.pt")
    if fabric.global_rank == 0:
        _maybe_sleep(state.step)
        info = {"train_state": asdict(state), "scheduler": scheduler.state_dict(), "world_size": fabric.world_size}
        (tmp / "state.json").write_text(json.dumps(info, indent=2, default=_jsonable))
    fabric.barrier()
    if fabric.global_rank == 0:
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    fabric.barrier()
    return final


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "__dict__"):
        return vars(value)
    raise TypeError(f"cannot store {type(value).__name__} in state.json")


def load_training_checkpoint(fabric, path: Path, recipe, model, optimizer, scheduler) -> TrainState:
    """Restore weights, optimizer, scheduler and this rank's RNG from `path`; return the train state."""
    info = json.loads((path / "state.json").read_text())
    if info.get("world_size", fabric.world_size) != fabric.world_size and not is_sharded(fabric):
        fabric.print(f"note: {path} was written by {info['world_size']} process(es), resuming on {fabric.world_size}")
    raw = unwrap_model(model)
    if is_sharded(fabric):
        _load_sharded(raw, optimizer, path)
    else:
        from litgpt_lite.checkpoint import read_safetensors

        if not (path / "trainable.safetensors").is_file():
            raise UserError(f"{path} was saved by a sharded (FSDP) run: resume it with --strategy fsdp")
        device = next(raw.parameters()).device
        recipe.load_trainable_state(raw, read_safetensors(path / "trainable.safetensors", device))
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
    scheduler.load_state_dict(info["scheduler"])
    rng_file = path / f"rng-rank{fabric.global_rank}.pt"
    if rng_file.is_file():
        _set_rng_state(torch.load(rng_file, weights_only=True))
    return TrainState(**info["train_state"])


def _save_sharded(model, optimizer, tmp: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(ignore_frozen_params=True)
    model_state, optim_state = get_state_dict(model, optimizer, options=options)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp / "dcp"))


def _load_sharded(model, optimizer, path: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    if not (path / "dcp").is_dir():
        raise UserError(f"{path} is not a sharded checkpoint: resume it without --strategy fsdp")
    options = StateDictOptions(ignore_frozen_params=True, strict=False)
    model_state, optim_state = get_state_dict(model, optimizer, options=options)
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=str(path / "dcp"))
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"], options=options
    )
