"""The command line: one-line errors before any compute, and a kill during a checkpoint save loses nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_helpers import tiny_checkpoint

from litgpt_lite.__main__ import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt")


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err  # one line, no traceback
    return err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--data", "JSON", "--data.json_path", "missing.json"], "missing.json does not exist"),
        (["--train.global_batch_size", "6", "--train.micro_batch_size", "4"], "not divisible"),
        (["--optimizer", "AdamWW"], "Unknown optimizer 'AdamWW'. Did you mean AdamW"),
        (["--optimizer.lr", "1e-3", "--optimizer.warp", "9"], "AdamW takes no argument 'warp'"),
        (["--logger_name", "nope"], "logger_name"),
        (["--train.max_steps", "null"], "stopping point"),
    ],
)
def test_bad_input_is_one_line_before_compute(capsys, tmp_path, tiny_ckpt, extra, message):
    t0 = time.perf_counter()
    err = _error(capsys, ["finetune_full", str(tiny_ckpt), "--out_dir", str(tmp_path / "out"), *extra])
    assert message in err
    assert not (tmp_path / "out").exists()  # nothing started
    assert time.perf_counter() - t0 < 30


def test_empty_dataset_is_one_line(capsys, tmp_path, tiny_ckpt):
    (tmp_path / "empty.jsonl").write_text("\n")
    err = _error(
        capsys,
        [
            "finetune_full",
            str(tiny_ckpt),
            "--data",
            "JSON",
            "--data.json_path",
            str(tmp_path / "empty.jsonl"),
            "--out_dir",
            str(tmp_path / "out"),
        ],
    )
    assert "empty" in err


def test_non_utf8_json_data_is_one_line(capsys, tmp_path, tiny_ckpt):
    data = tmp_path / "latin1.json"
    data.write_bytes('[{"instruction": "Say caf\xe9", "output": "ok"}]'.encode("latin-1"))
    argv = ["finetune_full", str(tiny_ckpt), "--data", "JSON", "--data.json_path", str(data)]
    err = _error(capsys, [*argv, "--out_dir", str(tmp_path / "out")])
    assert f"{data} is not UTF-8 text: byte 25 (line 1" in err


def test_missing_checkpoint_is_one_line(capsys, tmp_path):
    assert "does not exist" in _error(capsys, ["finetune_lora", str(tmp_path / "nowhere")])


def _cli(out_dir: Path, ckpt: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "litgpt_lite",
        "finetune_full",
        str(ckpt),
        "--out_dir",
        str(out_dir),
        "--train.max_steps",
        "4",
        "--train.save_interval",
        "2",
        "--train.global_batch_size",
        "4",
        "--train.micro_batch_size",
        "4",
        "--train.max_seq_length",
        "128",
        "--eval.max_new_tokens",
        "0",
        "--precision",
        "32-true",
        *extra,
    ]


# The CLI in a process whose step-4 checkpoint save stalls halfway: after the weights, optimizer and RNG files,
# before state.json (the file that completes a save).
STALLED_SAVE = """
import sys, time
import litgpt_lite.train.checkpoints as checkpoints
from litgpt_lite.__main__ import main

write_state = checkpoints._write_state

def stalled(tmp, info):
    if info["train_state"]["step"] == 4:
        time.sleep(120)
    write_state(tmp, info)

checkpoints._write_state = stalled
sys.exit(main(sys.argv[1:]))
"""


def test_kill_during_save_keeps_the_previous_checkpoint(tmp_path, tiny_ckpt):
    out = tmp_path / "out"
    argv = [sys.executable, "-c", STALLED_SAVE, *_cli(out, tiny_ckpt)[3:]]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    partial = out / "checkpoints" / ".step-000004.tmp"
    deadline = time.time() + 240
    while not (partial / "rng-rank0.pt").is_file():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.time() < deadline, "the save never started"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    step2 = out / "checkpoints" / "step-000002"
    assert not (out / "checkpoints" / "step-000004").exists()
    assert {p.name for p in step2.iterdir()} == {"trainable.safetensors", "optimizer.pt", "state.json", "rng-rank0.pt"}
    assert json.loads((step2 / "state.json").read_text())["train_state"]["step"] == 2

    done = subprocess.run(_cli(out, tiny_ckpt, "--resume", "auto"), cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Resumed from" in done.stdout and "step-000002 at step 2" in done.stdout
    assert (out / "checkpoints" / "step-000004" / "state.json").is_file()
    assert not partial.exists()
    assert (out / "final" / "lit_model.safetensors").is_file()
