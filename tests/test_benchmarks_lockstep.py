"""The benchmark runner's lockstep mode: two real training processes (torch optimizers, the runner's pipes and
`StepClock` hooks) take turns step by step, and a step is timed without the time spent waiting for the peer."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
WORK_S = 0.08  # each step's "work": sleeping leaves the CPU to the peer, so without turns the steps would overlap

TRAINER = f"""
import json, sys, time
sys.path.insert(0, {str(BENCH)!r})
import torch
from bench_common import StepClock

steps = int(sys.argv[1])
w = torch.nn.Parameter(torch.zeros(1))
opt = torch.optim.SGD([w], lr=0.1)
clock = StepClock()
spans = []
for _ in range(steps):
    start = time.monotonic()
    time.sleep({WORK_S})
    w.grad = torch.ones(1)
    spans.append((start, time.monotonic()))  # this step's work
    opt.step()  # the clock's hook runs here: it hands the turn over and waits for it
clock.close()
print(json.dumps({{"spans": spans, "steady": clock.steady(), "w": w.item()}}))
"""


def _runner():
    spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_run", module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _lockstep(steps: tuple[int, int], first: int) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "BENCH_TURN"}
    commands = [([sys.executable, "-c", TRAINER, str(n)], env) for n in steps]
    results = _runner().run_lockstep(commands, first=first, timeout=120)
    for code, _, err in results:
        assert code == 0, err[-2000:]
    return [json.loads(out.strip().splitlines()[-1]) for _, out, _ in results]


def _timed_spans(result: dict) -> list[tuple[float, float, int]]:
    return [(start, end, i) for i, (start, end) in enumerate(result["spans"][1:])]  # step 1 is warm-up


@pytest.mark.parametrize("first", [0, 1])
def test_timed_steps_alternate_and_never_overlap(first):
    a, b = _lockstep((4, 6), first)  # unequal: the longer one must run on alone once its peer has exited
    tagged = sorted([(s, e, 0) for s, e, _ in _timed_spans(a)] + [(s, e, 1) for s, e, _ in _timed_spans(b)])
    for (_, end, _), (start, _, _) in zip(tagged, tagged[1:]):
        assert end <= start, "two timed steps ran at the same time"
    owners = [side for _, _, side in tagged]
    assert owners[:6] == [first, 1 - first] * 3  # strict turns while both have steps left
    assert owners[6:] == [1, 1]  # then the longer one alone
    assert a["w"] == pytest.approx(-0.4) and b["w"] == pytest.approx(-0.6)  # every optimizer step ran


def test_waiting_for_the_peer_is_not_timed():
    a, b = _lockstep((5, 5), 0)
    for result in (a, b):
        seconds, steps = result["steady"]
        assert steps == 4
        # each timed step sleeps WORK_S; counting the peer's turn as well would double it
        assert 4 * WORK_S <= seconds < 4 * WORK_S * 1.6
        spans = result["spans"]
        wall = spans[-1][1] - spans[0][1]  # from the warm-up's end to the last step's end, the peer's turns included
        assert wall > 1.7 * seconds


def test_lockstep_ratio_is_the_median_of_the_pairs():
    run = _runner()
    w = run.Workload(
        "w",
        "t",
        (run.Side("LitGPT", "litgpt", "pretrain"), run.Side("ours", "ours", "pretrain")),
        [run.Metric("tokens_per_s", "tokens/s", True, 1.1)],
    )
    rates = [(100, 130), (200, 210), (120, 150)]  # pair ratios 1.3, 1.05, 1.25; medians 120 and 150
    runs = [
        {"side": side, "repeat": rep, "tokens_per_s": value}
        for rep, pair in enumerate(rates)
        for side, value in zip(("LitGPT", "ours"), pair)
    ]
    paired = run.summarize(w, runs, None, paired=True)
    assert paired["pair_ratios"]["tokens_per_s"] == pytest.approx([1.3, 1.05, 1.25])
    assert paired["ratios"]["tokens_per_s"] == pytest.approx(1.25)
    assert run.summarize(w, runs, None)["ratios"]["tokens_per_s"] == pytest.approx(150 / 120)
    runs[1] = {"side": "LitGPT", "repeat": 0, "error": "boom"}  # a failed run drops its pair, not the others
    assert run.summarize(w, runs, None, paired=True)["pair_ratios"]["tokens_per_s"] == pytest.approx([1.05, 1.25])


DECODER = f"""
import json, sys, time
sys.path.insert(0, {str(BENCH)!r})
from bench_common import TimedTurn

time.sleep(float(sys.argv[1]))  # loading and warming up (compiling) take a different time on each side
ready = time.monotonic()
TimedTurn().begin()
start = time.monotonic()
time.sleep({WORK_S} * 3)  # the timed decode calls
print(json.dumps({{"ready": ready, "span": (start, time.monotonic())}}))
"""


@pytest.mark.parametrize("first", [0, 1])
def test_decode_workers_warm_up_together_and_time_one_after_the_other(first):
    env = {k: v for k, v in os.environ.items() if k != "BENCH_TURN"}
    warmups = ("0.5", "0.05")  # side 0 warms up slower: side 1 must still wait for it before timing
    commands = [([sys.executable, "-c", DECODER, w], env) for w in warmups]
    results = _runner().run_lockstep(commands, first=first, timeout=120)
    runs = []
    for code, out, err in results:
        assert code == 0, err[-2000:]
        runs.append(json.loads(out.strip().splitlines()[-1]))
    (a0, a1), (b0, _) = runs[first]["span"], runs[1 - first]["span"]
    assert a0 >= max(r["ready"] for r in runs), "a side timed before the other had warmed up"
    assert a1 <= b0, "the second side timed while the first was still timing"
