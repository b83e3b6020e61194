"""Two CPU processes (gloo): DDP and FSDP2 give the losses of one process on the same global batch, and a sharded
checkpoint resumes exactly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from litgpt_lite.train.loggers import read_metrics

REPO = Path(__file__).resolve().parents[2]
ARGS = [
    "--config",
    "config_hub/pretrain/debug.yaml",
    "--train.max_steps",
    "4",
    "--train.save_interval",
    "2",
    "--train.global_batch_size",
    "8",
    "--train.micro_batch_size",
    "2",
    "--train.max_seq_length",
    "64",
    "--eval.interval",
    "2",
    "--eval.max_new_tokens",
    "0",
    "--train.log_interval",
    "1",
    "--precision",  # the processes must match one to 1e-5: float32, whatever the hardware's default
    "32-true",
]


def _pretrain(out_dir: Path, *extra: str) -> dict[int, float]:
    cmd = [sys.executable, "-m", "litgpt_lite", "pretrain", *ARGS, "--out_dir", str(out_dir), *extra]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = read_metrics(out_dir / "logs" / "metrics.csv")
    return {int(r["step"]): float(r["loss"]) for r in rows if r["loss"]}


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict[int, float]:
    return _pretrain(tmp_path_factory.mktemp("single") / "out")


def _assert_same(a: dict[int, float], b: dict[int, float]) -> None:
    assert a.keys() == b.keys() and len(a) == 4
    for step in a:
        assert abs(a[step] - b[step]) < 1e-5, (a, b)


@pytest.mark.slow
def test_ddp_two_processes_match_one(single, tmp_path):
    _assert_same(_pretrain(tmp_path / "ddp", "--devices", "2"), single)


@pytest.mark.slow
def test_fsdp2_matches_one_process_and_resumes_from_sharded_checkpoint(single, tmp_path):
    losses = _pretrain(tmp_path / "fsdp", "--devices", "2", "--strategy", "fsdp")
    _assert_same(losses, single)
    step2 = tmp_path / "fsdp" / "checkpoints" / "step-000002"
    assert (step2 / "dcp").is_dir() and (step2 / "rng-rank1.pt").is_file()  # sharded, one RNG state per rank
    resumed = _pretrain(tmp_path / "resumed", "--devices", "2", "--strategy", "fsdp", "--resume", str(step2))
    assert sorted(resumed) == [3, 4]
    for step in (3, 4):
        assert abs(resumed[step] - single[step]) < 1e-5
    from litgpt_lite.loading import load_model

    load_model(tmp_path / "resumed" / "final")  # the gathered export is a normal checkpoint
