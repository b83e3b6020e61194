"""Resumable training checkpoints: trainable weights, optimizer, scheduler, RNG and data position, saved atomically.

    out_dir/checkpoints/step-000100/
        trainable.safetensors   the recipe's trainable state (all weights for full/pretrain, adapters for LoRA)
        optimizer.pt            optimizer state dict (read back with torch.load(weights_only=True))
        state.json              step, epoch, tokens, scheduler state
        rng-rank0.pt ...        every process's RNG states
        dcp/                    under FSDP: the sharded model and optimizer (torch.distributed.checkpoint)

Everything is written into `.step-000100.tmp` and renamed into place at the end, so a kill mid-save leaves the
previous checkpoints whole and never a half-written one under a real name; a full disk removes the temporary dir
and says how much the save needed. `--resume auto` skips a newest checkpoint whose files are missing or cut short
(with a warning naming it) and resumes from the newest whole one.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from litgpt_lite.errors import UserError
from litgpt_lite.modules import unwrap_model
from litgpt_lite.train.distributed import is_sharded
from litgpt_lite.train.recipes import Recipe

if TYPE_CHECKING:
    from lightning.fabric import Fabric

CHECKPOINTS = "checkpoints"


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


def latest_checkpoint(out_dir: Path, warn: Callable[[str], None] = print) -> Path | None:
    """The newest whole checkpoint under out_dir/checkpoints; newer ones with a missing or damaged file are skipped
    with a warning (temporary dirs start with a dot and are never considered)."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return None
    for path in sorted((p for p in root.glob("step-*") if p.is_dir()), reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        warn(f"warning: skipping checkpoint {path}: {problem}")
    return None


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` cannot be resumed from (a missing, cut short or unreadable file), or None where it is whole.

    Checks the structure only (the JSON parses, the safetensors header fits the file, each .pt is a complete zip
    archive), which is what a save cut off by a kill, a full disk or a truncated copy leaves wrong.
    """
    from litgpt_lite.checkpoint import SafetensorsReader

    try:
        info = json.loads((path / "state.json").read_text())
    except FileNotFoundError:
        return "no state.json"
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "state.json is cut short or damaged"
    if not isinstance(info, dict) or not {"train_state", "scheduler"} <= info.keys():
        return "state.json lacks train_state or scheduler"
    if (path / "dcp").is_dir():
        return None if (path / "dcp" / ".metadata").is_file() else "dcp/.metadata is missing"
    for name in ("trainable.safetensors", "optimizer.pt"):
        if not (path / name).is_file():
            return f"no {name}"
    try:
        SafetensorsReader(path / "trainable.safetensors")
    except UserError:
        return "trainable.safetensors is cut short or damaged"
    for file in [path / "optimizer.pt", *sorted(path.glob("rng-rank*.pt"))]:
        if not _is_whole_zip(file):
            return f"{file.name} is cut short or damaged"
    return None


def _is_whole_zip(file: Path) -> bool:
    """Whether `file` (a torch.save archive) ends in its zip directory and every member lies inside the file."""
    size = file.stat().st_size
    try:
        with zipfile.ZipFile(file) as archive:
            return all(m.header_offset + m.compress_size <= size for m in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def resolve_resume(resume: bool | str | Path, out_dir: Path, warn: Callable[[str], None] = print) -> Path | None:
    """The checkpoint dir to resume from: None (fresh), the newest whole one ("auto"/True), or an explicit path."""
    if resume is False or resume is None or resume == "false":
        return None
    if resume is True or resume == "auto" or resume == "true":
        found = latest_checkpoint(out_dir, warn)
        if found is None and resume is True:
            raise UserError(f"--resume: {out_dir}/{CHECKPOINTS} has no checkpoint; drop --resume to start fresh")
        return found  # "auto" with nothing saved yet starts fresh
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise UserError(
            f"--resume {path} is not a training checkpoint (no state.json): pass out_dir/checkpoints/step-*"
        )
    problem = checkpoint_problem(path)
    if problem is not None:
        raise UserError(f"--resume {path}: {problem}; pass an earlier checkpoint or --resume auto")
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


def save_training_checkpoint(
    fabric: Fabric,
    out_dir: Path,
    recipe: Recipe,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainState,
) -> Path:
    """Write the checkpoint for `state.step` atomically; every rank must call it.

    A full disk is a UserError naming the directory and the size of the save; the partial temporary directory is
    removed and the earlier checkpoints stay as they were.
    """
    final = checkpoint_dir(out_dir, state.step)
    tmp = final.with_name(f".{final.name}.tmp")
    raw = unwrap_model(model)
    try:
        _write_checkpoint(fabric, tmp, recipe, raw, optimizer, scheduler, state)
    except (OSError, RuntimeError) as e:
        needed = tensor_bytes(recipe.trainable_state(raw)) + tensor_bytes(optimizer.state_dict())
        full = is_disk_full(e, tmp, needed)
        shutil.rmtree(tmp, ignore_errors=True)
        if not full:
            raise
        raise no_space_error(final, needed) from None
    fabric.barrier()
    if fabric.global_rank == 0:
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    fabric.barrier()
    return final


def _write_checkpoint(
    fabric: Fabric,
    tmp: Path,
    recipe: Recipe,
    raw: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainState,
) -> None:
    if fabric.global_rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # a stale one from a killed run
        tmp.mkdir(parents=True)
    fabric.barrier()
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
        info = {"train_state": asdict(state), "scheduler": scheduler.state_dict(), "world_size": fabric.world_size}
        _write_state(tmp, info)


def _write_state(tmp: Path, info: dict[str, Any]) -> None:
    """state.json, the last file of a save: a checkpoint dir without it was never completed."""
    (tmp / "state.json").write_text(json.dumps(info, indent=2, default=_jsonable))


def tensor_bytes(value: Any) -> int:
    """The bytes of every tensor in `value` (nested dicts, lists and tuples): what saving it writes, give or take
    the headers."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def is_disk_full(error: BaseException, target: Path, needed: int) -> bool:
    """Whether `error`, raised while writing `needed` bytes under `target`, means the disk filled up: an ENOSPC
    OSError, or torch.save's RuntimeError ("unexpected pos ...") with less than `needed` bytes left there."""
    if isinstance(error, OSError):
        return error.errno == errno.ENOSPC
    return isinstance(error, RuntimeError) and shutil.disk_usage(_existing_parent(target)).free < needed


def no_space_error(target: Path, needed: int) -> UserError:
    """The one line for a save that filled the disk: where, how much it needed, how much is free there now."""
    free = shutil.disk_usage(_existing_parent(target)).free
    return UserError(
        f"No space left on the device while saving {target}: the save needs about {_megabytes(needed)}, "
        f"{_megabytes(free)} free there; free some space (earlier checkpoints are intact) or pick another --out_dir"
    )


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _megabytes(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "__dict__"):
        return vars(value)
    raise TypeError(f"cannot store {type(value).__name__} in state.json")


def load_training_checkpoint(
    fabric: Fabric,
    path: Path,
    recipe: Recipe,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> TrainState:
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
        optimizer.load_state_dict(_load_pt(path / "optimizer.pt", device))
    scheduler.load_state_dict(info["scheduler"])
    rng_file = path / f"rng-rank{fabric.global_rank}.pt"
    if rng_file.is_file():
        _set_rng_state(_load_pt(rng_file, "cpu"))
    return TrainState(**info["train_state"])


def _load_pt(file: Path, device: torch.device | str) -> Any:
    """torch.load(weights_only=True), with a damaged file (past the structure check) as one UserError line."""
    try:
        return torch.load(file, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{file} is damaged ({reason}): resume from an earlier checkpoint with --resume DIR") from None


def _save_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, tmp: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(ignore_frozen_params=True)
    model_state, optim_state = get_state_dict(model, optimizer, options=options)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp / "dcp"))


def _load_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
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
