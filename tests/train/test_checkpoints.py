"""Training checkpoints under damage: a disk that fills during a save, a newest checkpoint cut short on resume.

Each failure is one line (exit code 2, no traceback) and nothing saved before is lost.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from train_helpers import tiny_checkpoint

from litgpt_lite.__main__ import main

PAGE = 4096


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt")


def _argv(ckpt: Path, out_dir: Path, steps: int, save_interval: str, *extra: str) -> list[str]:
    return [
        "finetune_full",
        str(ckpt),
        "--out_dir",
        str(out_dir),
        "--train.max_steps",
        str(steps),
        "--train.save_interval",
        save_interval,
        "--train.global_batch_size",
        "4",
        "--train.micro_batch_size",
        "4",
        "--train.max_seq_length",
        "128",
        "--eval.max_new_tokens",
        "0",
        "--eval.initial_validation",
        "false",
        "--eval.final_validation",
        "false",
        "--precision",
        "32-true",
        *extra,
    ]


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err  # one line, no traceback
    return err


def _disk_bytes(path: Path) -> int:
    """What the files under `path` take on a tmpfs (whole pages)."""
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    return sum(-(-p.stat().st_size // PAGE) * PAGE for p in files)


@contextlib.contextmanager
def _tmpfs(where: Path, size: int):
    where.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


@pytest.fixture(scope="module")
def full_run(tiny_ckpt, tmp_path_factory):
    """A 4-step run saved at steps 2 and 4 with its export, on an ordinary disk: what each part takes."""
    out = tmp_path_factory.mktemp("full") / "out"
    assert main(_argv(tiny_ckpt, out, 4, "2")) == 0
    return out


NEEDS_ROOT = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None,
    reason="mounting a small tmpfs to fill needs root and mount(8)",
)


@NEEDS_ROOT
def test_disk_full_during_a_step_checkpoint(capsys, tiny_ckpt, full_run, tmp_path):
    """Room for the step-2 checkpoint and half of the step-4 one: step 4's save fails with one line naming its
    directory and size; step-2 stays whole and no temporary dir is left."""
    step = _disk_bytes(full_run / "checkpoints" / "step-000002")
    logs = _disk_bytes(full_run / "logs") + _disk_bytes(full_run / "hyperparameters.yaml")
    with _tmpfs(tmp_path / "disk", logs + step + step // 2) as disk:
        out = disk / "out"
        err = _one_line_error(capsys, _argv(tiny_ckpt, out, 4, "2"))
        target = out / "checkpoints" / "step-000004"
        assert f"No space left on the device while saving {target}: the save needs about" in err
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002"]
        kept = out / "checkpoints" / "step-000002"
        for name in ("trainable.safetensors", "optimizer.pt", "state.json"):
            assert (kept / name).read_bytes() == (full_run / "checkpoints" / "step-000002" / name).read_bytes()


@NEEDS_ROOT
def test_disk_full_during_the_final_export(capsys, tiny_ckpt, full_run, tmp_path):
    """Room for the last step checkpoint but not for out_dir/final: one line naming final/, the checkpoint whole
    (a later --resume auto finishes the export), no partial final dir."""
    step = _disk_bytes(full_run / "checkpoints" / "step-000004")
    final = _disk_bytes(full_run / "final")
    logs = _disk_bytes(full_run / "logs") + _disk_bytes(full_run / "hyperparameters.yaml")
    with _tmpfs(tmp_path / "disk", logs + step + final // 2) as disk:
        out = disk / "out"
        err = _one_line_error(capsys, _argv(tiny_ckpt, out, 4, "null"))
        assert f"No space left on the device while saving {out / 'final'}: the save needs about" in err
        assert sorted(p.name for p in out.iterdir() if p.name.startswith((".", "final"))) == []
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000004"]
        assert (out / "checkpoints" / "step-000004" / "state.json").is_file()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damaged", ["optimizer.pt", "trainable.safetensors", "state.json", "rng-rank0.pt"])
def test_resume_auto_skips_a_cut_short_newest_checkpoint(capsys, tiny_ckpt, full_run, tmp_path, damaged):
    out = tmp_path / "out"
    shutil.copytree(full_run, out)
    _truncate(out / "checkpoints" / "step-000004" / damaged)
    capsys.readouterr()
    assert main(_argv(tiny_ckpt, out, 5, "null", "--resume", "auto")) == 0
    printed = capsys.readouterr().out
    skipped = out / "checkpoints" / "step-000004"
    assert f"warning: skipping checkpoint {skipped}: {damaged} is cut short or damaged" in printed
    assert f"Resumed from {out / 'checkpoints' / 'step-000002'} at step 2" in printed
    assert "step 3/5 | loss" in printed and "step 5/5 | loss" in printed


def test_resume_from_a_named_damaged_checkpoint_is_one_line(capsys, tiny_ckpt, full_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(full_run, out)
    step4 = out / "checkpoints" / "step-000004"
    _truncate(step4 / "optimizer.pt")
    err = _one_line_error(capsys, _argv(tiny_ckpt, out, 5, "null", "--resume", str(step4)))
    assert f"--resume {step4}: optimizer.pt is cut short or damaged" in err
