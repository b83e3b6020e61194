"""Smoke test of the side-by-side benchmark runner: one tiny workload, one run per side, real LitGPT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LITGPT_PYTHON = Path(os.environ.get("LITGPT_PYTHON", "/work/bench-venv/bin/python"))


def _litgpt_importable() -> bool:
    if not LITGPT_PYTHON.is_file():
        return False
    probe = subprocess.run([str(LITGPT_PYTHON), "-c", "import litgpt"], capture_output=True, timeout=180)
    return probe.returncode == 0


# Three fresh processes (LitGPT's weight check, then one run per side): about a minute on an idle 2-core machine.
@pytest.mark.slow
@pytest.mark.skipif(not _litgpt_importable(), reason=f"litgpt is not importable from {LITGPT_PYTHON}")
def test_runner_writes_json_and_markdown(tmp_path):
    out = tmp_path / "RESULTS.md"
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "run.py"),
        "--workloads",
        "pretrain_pythia14m",
        "--repeats",
        "1",
        "--micro-batch",
        "1",
        "--seq-len",
        "32",
        "--steps",
        "1",
        "--out",
        str(out),
        "--assets",
        str(tmp_path / "assets"),
        "--litgpt-python",
        str(LITGPT_PYTHON),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]

    report = json.loads((tmp_path / "results.json").read_text())
    w = report["workloads"]["pretrain_pythia14m"]
    assert w["errors"] == [] and w["unavailable"] is None
    assert [r["side"] for r in w["runs"]] == ["LitGPT", "litgpt_lite"]  # interleaved, reference first
    for side in ("LitGPT", "litgpt_lite"):
        medians = w["medians"][side]
        assert medians["tokens_per_s"] > 0 and medians["peak_rss_mb"] > 50 and 0 < medians["mfu"] < 1
    expected = w["medians"]["litgpt_lite"]["tokens_per_s"] / w["medians"]["LitGPT"]["tokens_per_s"]
    assert w["ratios"]["tokens_per_s"] == pytest.approx(expected)
    assert report["machine"]["cores"] and report["litgpt_version"]

    md = out.read_text()
    assert "| workload | runs | metric | reference | ours | ratio | target | met |" in md
    assert "| pretrain_pythia14m | 1 | tokens/s |" in md
    assert "pretrain_pythia14m" in md and "--workloads pretrain_pythia14m" in md


def test_unknown_workload_is_one_line_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--workloads", "nope", "--out", str(tmp_path / "r.md")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 2
    assert "unknown workload(s) nope" in proc.stderr and "pretrain_smollm2" in proc.stderr
    assert not (tmp_path / "r.md").exists()
