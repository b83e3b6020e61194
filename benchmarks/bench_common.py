"""Helpers shared by both sides of a benchmark worker. Imports neither litgpt nor litgpt_lite, so it runs in either
environment (LitGPT lives in its own venv: its huggingface_hub pin does not fit beside transformers 5)."""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

RESULT_TAG = "BENCH_RESULT "


# ---------------------------------------------------------------- memory (Linux /proc)
def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (since start, or since the last `reset_peak_rss`)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- step timing through a global optimizer hook
TURN_ENV = "BENCH_TURN"  # "read_fd,write_fd,first": a pipe pair to the other side's worker (see Turnstile)


class Turnstile:
    """Step-by-step turn taking between the two sides of a workload, run as two concurrent processes.

    Each worker holds the read end of one pipe and the write end of the other. At the end of its warm-up step a
    worker says it is ready and waits until its peer is too; from then on exactly one of them runs a step at a time:
    after each optimizer step the worker hands the turn over (one byte) and blocks until the peer hands it back. So
    the two sides' timed steps alternate A B A B within seconds of each other, and a load change on the shared
    machine hits both. When a worker exits (or dies) its write end closes; the peer reads EOF and runs on alone.
    """

    def __init__(self, spec: str) -> None:
        read_fd, write_fd, first = spec.split(",")
        self.read_fd, self.write_fd, self.first = int(read_fd), int(write_fd), first == "1"
        self.peer_gone = False

    def _send(self, byte: bytes) -> None:
        try:
            os.write(self.write_fd, byte)
        except BrokenPipeError:  # the peer has finished
            self.peer_gone = True

    def _receive(self) -> None:
        if not self.peer_gone and not os.read(self.read_fd, 1):
            self.peer_gone = True

    def start(self) -> None:
        """End of the warm-up step: wait for the peer's, then take the first turn or wait for it."""
        self._send(b"r")
        self._receive()  # the peer's "ready"
        if not self.first:
            self._receive()

    def hand_over(self) -> None:
        """End of a timed step: give the turn to the peer and wait to get it back."""
        self._send(b"t")
        self._receive()


class StepClock:
    """Times training steps from outside the training loop: a global `optimizer.step` post-hook records when each
    optimizer step ends and the peak RSS since the end of the previous one. Both sides' loops call
    `optimizer.step()` once per step, so neither needs a benchmark-only code path.

    Step 1 is warm-up (first allocations, optimizer state); the peak-RSS counter is reset when it ends, so `peak_mb`
    is the steady-state peak of steps 2..n. Under a `Turnstile` (the runner's lockstep mode) the hook also takes
    turns with the other side's worker, and a step is timed from when this worker got its turn to when its
    optimizer step ended; the time spent waiting for the peer is not counted.
    """

    def __init__(self) -> None:
        import torch
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.ends: list[float] = []
        self.starts: list[float] = []  # when each step after the warm-up got under way
        self.peaks: list[float] = []
        self.gpu_peaks: list[float] = []
        self._cuda = torch.cuda if torch.cuda.is_available() else None
        spec = os.environ.get(TURN_ENV)
        self.turnstile = Turnstile(spec) if spec else None
        self._handle = register_optimizer_step_post_hook(self._hook)

    def _hook(self, optimizer, args, kwargs) -> None:
        if self._cuda is not None:
            self._cuda.synchronize()
            self.gpu_peaks.append(self._cuda.max_memory_allocated() / 2**20)
        self.ends.append(time.perf_counter())
        self.peaks.append(peak_rss_mb())
        first = len(self.ends) == 1
        if first:
            reset_peak_rss()
            if self._cuda is not None:
                self._cuda.reset_peak_memory_stats()
        if self.turnstile is not None:
            if first:
                self.turnstile.start()
            else:
                self.turnstile.hand_over()
        self.starts.append(time.perf_counter())

    def close(self) -> None:
        """Stop timing. Under a `Turnstile` this process keeps the turn until it exits, so whatever it does after
        its last step (saving, measuring the matmul peak, tearing down) never overlaps the peer's work."""
        self._handle.remove()

    def steady(self) -> tuple[float, int]:
        """(seconds, steps) of the steps after the warm-up: from each step's start to its optimizer step's end."""
        if len(self.ends) < 2:
            raise RuntimeError(f"need at least 2 optimizer steps to time, got {len(self.ends)}")
        return sum(end - start for start, end in zip(self.starts, self.ends[1:])), len(self.ends) - 1

    @property
    def peak_mb(self) -> float:
        return max(self.peaks[1:]) if len(self.peaks) > 1 else float("nan")

    def memory(self) -> dict[str, float]:
        """Steady-state peaks: RSS, and GPU memory allocated where a GPU ran."""
        out = {"peak_rss_mb": self.peak_mb}
        if len(self.gpu_peaks) > 1:
            out["peak_gpu_mb"] = max(self.gpu_peaks[1:])
        return out


# ---------------------------------------------------------------- matmul peak for MFU
def measured_matmul_flops(n: int = 1024, seconds: float = 1.5, device: str = "cpu") -> float:
    """The best matmul FLOP/s this process gets right now (the MFU denominator): fp32 on a CPU, bf16 n=8192 on a
    GPU (the precision the GPU runs train in)."""
    import torch

    cuda = device == "cuda"
    n = 8192 if cuda else n
    dtype = torch.bfloat16 if cuda else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        a @ b
        if cuda:
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def measured_copy_rate(device: str = "cpu", mib: int = 1024, seconds: float = 1.0) -> float:
    """The best device-to-device copy rate this process gets right now, in bytes moved per second (each copied byte
    is read once and written once, so a copy of n bytes moves 2n): the denominator of a decode's HBM fraction."""
    import torch

    cuda = device == "cuda"
    n = (mib if cuda else min(mib, 64)) * 2**20
    src, dst = torch.empty(n, dtype=torch.uint8, device=device), torch.empty(n, dtype=torch.uint8, device=device)
    src.fill_(1)
    for _ in range(2):
        dst.copy_(src)
    if cuda:
        torch.cuda.synchronize()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        dst.copy_(src)
        if cuda:
            torch.cuda.synchronize()
        best = max(best, 2 * n / (time.perf_counter() - t))
    return best


def decode_weight_bytes(model) -> int:
    """Bytes of the weights one decode step reads: every parameter once (shared storage counted once), bitsandbytes
    4-bit quant state included, the embedding table only where it is also the output head (a lookup reads one
    row). Works on either side's GPT, wrapped or not."""
    seen: set[int] = set()
    total = 0
    params = dict(model.named_parameters(remove_duplicate=False))
    head = next((t for name, t in params.items() if name.endswith("lm_head.weight")), None)
    for name, t in params.items():
        # a tensor's own address: a memory-mapped checkpoint keeps every weight in one shared storage
        key = t.data_ptr()
        if key in seen or (name.endswith("wte.weight") and (head is None or head.data_ptr() != key)):
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
        state = getattr(t, "quant_state", None)
        for extra in (getattr(state, "absmax", None), getattr(getattr(state, "state2", None), "absmax", None)):
            if extra is not None:
                total += extra.numel() * extra.element_size()
    return total


class TimedTurn:
    """The timed part of a non-training worker (decode) under the runner's lockstep: both sides' processes start at
    once, load and warm up (compile) side by side, then time one after the other. `begin()` waits until the peer has
    warmed up too and it is this process's turn; the turn passes when this process exits. A no-op when the runner
    started this worker alone."""

    def __init__(self) -> None:
        spec = os.environ.get(TURN_ENV)
        self.turnstile = Turnstile(spec) if spec else None

    def begin(self) -> None:
        if self.turnstile is not None:
            self.turnstile.start()


# ---------------------------------------------------------------- Alpaca-like SFT records
_WORDS = (
    "the of and to in is for that with on as are this be by from at an or it which can have not has their more "
    "data model time people system water energy example process result number different important write explain "
    "describe list give three reasons why how what following sentence paragraph story poem summary question answer "
    "computer science history language learning city country world government health food animal plant music art"
).split()


def alpaca_like_records(n: int, seed: int) -> list[dict[str, str]]:
    """`n` instruction records whose word counts follow Alpaca's shape: short instructions, an input in about 40% of
    records, and long-tailed outputs (median ~35 words, a few in the hundreds)."""
    rng = random.Random(seed)

    def text(median: float, sigma: float, cap: int) -> str:
        k = max(1, min(cap, int(rng.lognormvariate(math.log(median), sigma))))
        return " ".join(rng.choice(_WORDS) for _ in range(k))

    records = []
    for _ in range(n):
        rec = {"instruction": text(12, 0.45, 60), "input": "", "output": text(35, 0.9, 300)}
        if rng.random() < 0.4:
            rec["input"] = text(15, 0.8, 120)
        records.append(rec)
    return records


# ---------------------------------------------------------------- reporting
def emit(result: dict[str, Any]) -> None:
    """Hand the worker's measurements to the runner (one tagged JSON line on stdout)."""
    sys.stdout.flush()
    print(RESULT_TAG + json.dumps(result), flush=True)


def parse_result(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    return None
