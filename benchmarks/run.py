"""Benchmarks side by side against LitGPT: the same configs, seeds and weights, run alternately in fresh processes.

    python benchmarks/run.py [--workloads a,b] [--repeats N] [--out benchmarks/RESULTS.md]
    python benchmarks/run.py --gpu-suite [--smoke]      # the GPU suite in minutes (gpu_suite.py; benchmarks/gpu.sh)

For each workload the runner starts LitGPT and litgpt_lite alternately (A B A B ...), each in a fresh subprocess,
takes the median of each metric per side and reports the ratio ours / LitGPT. The machine is shared and noisy, so
the interleaved ratio is the number to read, not the absolute rates. LitGPT runs from its own interpreter
(`--litgpt-python`, default /work/bench-venv/bin/python): its huggingface_hub pin conflicts with transformers 5.
Writes benchmarks/results.json and the markdown table (with the machine and the command) to --out.

This module is the runner: process orchestration (fresh worker processes, lockstep turns), summarising and the
report. What each workload runs, its metrics and targets are in `catalogue.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from bench_common import TURN_ENV, emit, parse_result  # noqa: E402
from catalogue import EXTRA, LOCKSTEP_FNS, Metric, Side, Workload, flops_per_token, workloads  # noqa: E402, F401

DEFAULT_LITGPT_PYTHON = Path(os.environ.get("LITGPT_PYTHON", "/work/bench-venv/bin/python"))


# ---------------------------------------------------------------- assets
def prepare_assets(wl: list[Workload], a: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Build what the selected workloads need (once per run); returns the paths the sides read."""
    import bench_assets as assets

    paths: dict[str, Any] = {"init": {}}
    needs = {n for w in wl for n in w.needs}
    for need in sorted(needs):
        if need.startswith("init:"):
            name = need[5:]
            ours, theirs = assets.random_init(name, root)
            _litgpt_prepare(a, theirs, name)
            paths["init"][name] = {"ours": str(ours), "litgpt": str(theirs)}
        elif need == "tokens":
            paths["tokens"] = str(assets.token_stream(root, a.micro_batch * a.seq_len * (a.steps + 3) + 1))
        elif need == "sft":
            paths["sft"] = str(assets.sft_records(root, a.sft_samples))
        elif need == "sft_long":
            n = a.micro_batch * (a.steps + 1)
            paths["sft_long"] = str(assets.sft_records(root, n, min_words=a.seq_len + 16))
        elif need == "real":
            ours, theirs = assets.real_smollm2(root)
            _litgpt_prepare(a, theirs, "SmolLM2-135M-Instruct")
            paths["real"] = {"ours": str(ours), "litgpt": str(theirs)}
            paths["hf"] = str(assets.smollm2_hf())
    return paths


def _litgpt_prepare(a: argparse.Namespace, ckpt: Path, name: str) -> None:
    if not (ckpt / "model_config.yaml").is_file() and a.litgpt_available:
        res = run_worker(a, "litgpt", "prepare", {"checkpoint_dir": str(ckpt), "name": name})
        if "error" in res:
            raise SystemExit(f"LitGPT could not load the shared {name} weights: {res['error']}")


def resolve_params(side: Side, paths: dict[str, Any]) -> dict[str, Any]:
    p = dict(side.params)
    if "init" in p:
        p["checkpoint_dir"] = paths["init"][p.pop("init")][side.env]
    data = p.pop("data", None)
    if data in ("tokens", "sft", "sft_long"):
        p["data_dir"] = paths[data]
    elif data == "real":
        p["checkpoint_dir"] = paths["real"][side.env]
    elif data == "hf":
        p["hf_dir"] = paths["hf"]
    if side.fn == "pretrain":
        p["data_dir"] = paths["tokens"]
    if side.fn == "dpo_trl":
        p["hf_dir"] = paths["hf"]
    return p


# ---------------------------------------------------------------- running one side in a fresh process
def _env(side_env: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(HERE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _worker_cmd(a: argparse.Namespace, env: str, fn: str, params: dict[str, Any]) -> list[str]:
    python = sys.executable if env == "ours" else str(a.litgpt_python)
    return [python, str(Path(__file__).resolve()), "--worker", env, fn, json.dumps(params)]


def _worker_result(returncode: int, stdout: str, stderr: str) -> dict[str, Any]:
    res = parse_result(stdout)
    if res is None:
        tail = (stderr or stdout).strip().splitlines()[-3:]
        return {"error": f"exit {returncode}: " + " | ".join(tail)}
    return res


def run_worker(a: argparse.Namespace, env: str, fn: str, params: dict[str, Any]) -> dict[str, Any]:
    cmd = _worker_cmd(a, env, fn, params)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout, env=_env(env), cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {a.timeout}s"}
    return _worker_result(proc.returncode, proc.stdout, proc.stderr)


def run_lockstep(commands: list[tuple[list[str], dict[str, str]]], first: int, timeout: float) -> list[tuple]:
    """Run two training processes at once, taking turns step by step (`bench_common.Turnstile`): each pipe carries
    one process's turn to the other. Startup and warm-up overlap; every timed step runs alone. `first` starts.
    Returns (returncode, stdout, stderr) per command; returncode None where it ran past `timeout` seconds."""
    to_0, from_1 = os.pipe()  # process 1 writes, process 0 reads
    to_1, from_0 = os.pipe()
    ends = [(to_0, from_0), (to_1, from_1)]
    procs, files = [], []
    try:
        for i, (cmd, env) in enumerate(commands):
            read_fd, write_fd = ends[i]
            child_env = {**env, TURN_ENV: f"{read_fd},{write_fd},{int(i == first)}"}
            out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()  # files: a full pipe would stall it
            files.append((out, err))
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=err, env=child_env, cwd=REPO, pass_fds=ends[i]))
    finally:
        for fd in (to_0, from_1, to_1, from_0):
            os.close(fd)  # each process holds its own ends: one that exits closes its pipe to the other
    deadline, results = time.monotonic() + timeout, []
    for proc, (out, err) in zip(procs, files):
        try:
            code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            proc.wait()
            code = None
        texts = []
        for f in (out, err):
            f.seek(0)
            texts.append(f.read().decode(errors="replace"))
            f.close()
        results.append((code, *texts))
    return results


def run_lockstep_workers(a: argparse.Namespace, jobs: list[tuple[str, str, dict[str, Any]]], first: int) -> list:
    """Both sides of a training workload as `run_lockstep` processes; each side's result (or error)."""
    commands = [(_worker_cmd(a, env, fn, params), _env(env)) for env, fn, params in jobs]
    return [
        {"error": f"timed out after {a.timeout}s"} if code is None else _worker_result(code, out, err)
        for code, out, err in run_lockstep(commands, first, a.timeout)
    ]


def run_ttft(a: argparse.Namespace, env: str, params: dict[str, Any]) -> dict[str, Any]:
    """Start the `generate` CLI and time the first line of generated text on stdout, from process start."""
    ckpt = params["checkpoint_dir"]
    common = [
        ckpt,
        "--prompt",
        "What food do llamas eat?",
        "--max_new_tokens",
        "1",
        "--temperature",
        "0",
        "--precision",
        params.get("precision", "32-true"),
    ]
    if env == "ours":
        cmd = [sys.executable, "-m", "litgpt_lite", "generate", *common]
    else:
        cmd = [str(Path(a.litgpt_python).parent / "litgpt"), "generate", *common]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(env), cwd=REPO)
    lines: list[tuple[float, str]] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append((time.perf_counter() - t0, line))
    _, err = proc.communicate(timeout=a.timeout)
    total = time.perf_counter() - t0
    if proc.returncode:
        return {"error": f"exit {proc.returncode}: {err.strip().splitlines()[-1:]}"}
    first = _first_generated_line(lines, skip_arg_dump=env == "litgpt")
    if first is None:
        return {"error": "no generated text on stdout"}
    return {"ttft_s": first, "process_s": total}


def run_convert_cli(a: argparse.Namespace, env: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run the `convert_to_litgpt` CLI on the HF folder; wall time and the child's own peak RSS (wait4)."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        if env == "ours":
            cmd = [sys.executable, "-m", "litgpt_lite", "convert_to_litgpt", params["hf_dir"], "--out_dir", tmp]
        else:  # LitGPT writes lit_model.pth into the folder it reads: a copy with the weights linked, not copied
            for f in Path(params["hf_dir"]).iterdir():
                (Path(tmp) / f.name).symlink_to(f) if f.stat().st_size > 1 << 20 else shutil.copy2(f, tmp)
            litgpt = str(Path(a.litgpt_python).parent / "litgpt")
            cmd = [litgpt, "convert_to_litgpt", tmp, "--model_name", params["litgpt_model_name"]]
        with tempfile.TemporaryFile() as err:  # a file, not a pipe: a full pipe would stall the child
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=_env(env), cwd=REPO)
            _, status, usage = os.wait4(proc.pid, 0)
            seconds = time.perf_counter() - t0
            proc.returncode = code = os.waitstatus_to_exitcode(status)
            err.seek(0)
            message = err.read().decode(errors="replace").strip().splitlines()[-1:]
    if code:
        return {"error": f"exit {code}: {message}"}
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024}


def _first_generated_line(lines: list[tuple[float, str]], skip_arg_dump: bool) -> float | None:
    """Time of the first generated line; LitGPT's generate first pprints its arguments as a dict on stdout."""
    i = 0
    if skip_arg_dump and lines and lines[0][1].startswith("{"):
        while i < len(lines) and not lines[i][1].rstrip().endswith("}"):
            i += 1
        i += 1
    return lines[i][0] if i < len(lines) else None


# ---------------------------------------------------------------- a workload: A B A B ...
def run_workload(w: Workload, a: argparse.Namespace, paths: dict[str, Any]) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    measured: dict[tuple, dict[str, Any]] = {}
    unavailable: str | None = None
    runnable = a.litgpt_available or all(s.env != "litgpt" for s in w.sides)
    lockstep = a.lockstep and runnable and all(s.fn in LOCKSTEP_FNS for s in w.sides)

    def record(side: Side, rep: int, res: dict[str, Any], started: float) -> None:
        nonlocal unavailable
        res = _derive(w, side, res)
        runs.append({"side": side.label, "repeat": rep, "wall_s": round(time.perf_counter() - started, 1), **res})
        how = " (lockstep)" if lockstep else ""
        print(f"  {w.name} [{side.label}] rep {rep}{how}: {_short(res)}", flush=True)
        if "unavailable" in res:
            unavailable = res["unavailable"]

    for rep in range(a.repeats):
        if lockstep:
            t = time.perf_counter()
            jobs = [(s.env, s.fn, resolve_params(s, paths)) for s in w.sides]
            for side, res in zip(w.sides, run_lockstep_workers(a, jobs, first=rep % 2)):
                record(side, rep, res, t)
        else:
            for side in w.sides:
                if side.env == "litgpt" and not a.litgpt_available:
                    unavailable = f"LitGPT is not importable from {a.litgpt_python}"
                    continue
                params = resolve_params(side, paths)
                t = time.perf_counter()
                same = (side.env, side.fn, json.dumps(params, sort_keys=True), rep)
                if same in measured:  # one process measured both sides (batched decode)
                    res = measured[same]
                elif side.fn == "ttft":
                    res = run_ttft(a, side.env, params)
                elif side.fn == "convert_cli":
                    res = run_convert_cli(a, side.env, params)
                else:
                    res = run_worker(a, side.env, side.fn, params)
                measured[same] = res
                record(side, rep, res, t)
        if unavailable and all("unavailable" in r or "error" in r for r in runs if r["side"] == w.sides[1].label):
            break
    return {**summarize(w, runs, unavailable, paired=lockstep), "lockstep": lockstep}


def _derive(w: Workload, side: Side, res: dict[str, Any]) -> dict[str, Any]:
    """Per-run derived metrics: MFU for pretraining; batched decode splits into its two sides."""
    if "error" in res or "unavailable" in res:
        return res
    if side.fn == "batched_decode":
        prefix = "batched" if side.label.endswith("8") else "batch1"
        return {
            **res,
            "tokens_per_s": res[f"{prefix}_tokens_per_s"],
            "eos_tokens_per_s": res[f"{prefix}_eos_tokens_per_s"],
        }
    if side.fn == "pretrain" and res.get("matmul_peak_flops"):
        res = {
            **res,
            "mfu": res["tokens_per_s"]
            * flops_per_token(side.params["name"], side.params["seq_len"])
            / res["matmul_peak_flops"],
        }
    return res


def _short(res: dict[str, Any]) -> str:
    if "error" in res or "unavailable" in res:
        return str(res.get("error") or f"not available: {res['unavailable']}")
    return ", ".join(f"{k}={v:.4g}" for k, v in res.items() if isinstance(v, float))


def summarize(w: Workload, runs: list[dict[str, Any]], unavailable: str | None, paired: bool = False) -> dict[str, Any]:
    """Medians per side and the ratio ours / reference: the ratio of the medians, or with `paired` (lockstep runs,
    whose two sides took turns step by step) the median of each pair's own ratio, which cancels what the pair
    shared: the machine's load while it ran."""
    medians: dict[str, dict[str, float]] = {}
    errors = [f"{r['side']}: {r['error']}" for r in runs if "error" in r]
    for side in w.sides:
        ok = [r for r in runs if r["side"] == side.label and "error" not in r and "unavailable" not in r]
        medians[side.label] = {
            m.key: statistics.median(r[m.key] for r in ok) for m in w.metrics if ok and all(m.key in r for r in ok)
        }
    a_label, b_label = w.sides[0].label, w.sides[1].label
    ratios, pair_ratios = {}, {}
    for m in w.metrics:
        va, vb = medians[a_label].get(m.key), medians[b_label].get(m.key)
        pairs = _pairs(runs, a_label, b_label, m.key) if paired else []
        if pairs:
            pair_ratios[m.key] = pairs
            ratios[m.key] = statistics.median(pairs)
        elif va and vb is not None:
            ratios[m.key] = vb / va
    return {
        "title": w.title,
        "repeats": max((r["repeat"] for r in runs), default=-1) + 1,
        "sides": [a_label, b_label],
        "runs": runs,
        "medians": medians,
        "ratios": ratios,
        "pair_ratios": pair_ratios,
        "unavailable": unavailable if not ratios else None,
        "errors": errors,
        "note": w.note,
        "metrics": [vars(m) for m in w.metrics],
    }


def _pairs(runs: list[dict[str, Any]], a_label: str, b_label: str, key: str) -> list[float]:
    """Each repeat's ours / reference for `key`, where both sides of that repeat measured it."""
    by_rep: dict[int, dict[str, float]] = {}
    for r in runs:
        if "error" not in r and "unavailable" not in r and isinstance(r.get(key), (int, float)):
            by_rep.setdefault(r["repeat"], {})[r["side"]] = r[key]
    return [v[b_label] / v[a_label] for _, v in sorted(by_rep.items()) if v.get(a_label) and b_label in v]


# ---------------------------------------------------------------- report
def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory": mem,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def litgpt_version(a: argparse.Namespace) -> str | None:
    try:
        out = subprocess.run(
            [str(a.litgpt_python), "-c", "import importlib.metadata as m; print(m.version('litgpt'))"],
            capture_output=True,
            text=True,
            timeout=120,
            env=_env("litgpt"),
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Benchmarks: litgpt_lite vs LitGPT, side by side",
        "",
        f"Measured {report['started']} - {report['finished']} on {m['cpu']}, {m['cores']} cores "
        f"({m['torch_threads']} torch threads), {m['memory']}, {m['gpu'] or 'no GPU'}; torch {m['torch']}, "
        f"Python {m['python']}, LitGPT {report['litgpt_version']}. Load average at start "
        f"{m['load_average_start']}, at end {report['load_average_end']}.",
        "",
        "The machine is shared with other jobs, so absolute rates are noisy: read the **ratio** column. Each "
        "workload ran its two sides alternately (A B A B ...) in fresh processes on identical configs, seeds and "
        "weights; values are medians over the runs per side (column `runs`). Ratio = ours / reference; higher is "
        "better for throughput, lower for time and memory."
        + (
            " Workloads marked *lockstep* ran both sides' processes at once, taking turns step by step: one timed "
            "step runs at a time, and waiting for the turn is not timed (see benchmarks/README.md). Their ratio is "
            "the median of the per-pair ratios, since each pair shared the machine's load; other rows give the "
            "ratio of the medians."
            if any(w.get("lockstep") for w in report["workloads"].values())
            else ""
        ),
        "",
        "Reproduce with:",
        "",
        "```",
        *report["commands"],
        "```",
        "",
        "| workload | runs | metric | reference | ours | ratio | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["workloads"].items():
        lines += _rows(name, r)
    lines += ["", "Workloads:", ""]
    for name, r in report["workloads"].items():
        note = f" ({r['note']})" if r.get("note") else ""
        if r.get("lockstep"):
            pairs = r.get("pair_ratios", {}).get(r["metrics"][0]["key"], [])
            note += "; *lockstep*, ratio = median of the pairs' ratios " + ", ".join(f"{x:.2f}" for x in pairs)
        lines.append(f"- `{name}`: {r['title']}{note}; reference = {r['sides'][0]}, ours = {r['sides'][1]}.")
        lines += [f"  - error: {_cell(e)}" for e in r["errors"]]
    lines.append("")
    return "\n".join(lines)


def _cell(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _rows(name: str, r: dict[str, Any]) -> list[str]:
    a_label, b_label = r["sides"]
    if r.get("unavailable"):
        return [f"| {name} | - | - | - | - | not available: {_cell(r['unavailable'], 120)} | | |"]
    rows = []
    for m in r["metrics"]:
        va, vb = r["medians"][a_label].get(m["key"]), r["medians"][b_label].get(m["key"])
        ratio, target = r["ratios"].get(m["key"]), m["target"]
        met = ""
        if target is not None and ratio is not None:
            ok = ratio >= target if m["higher_is_better"] else ratio <= target
            met = "yes" if ok else "**no**"
        tgt = "" if target is None else ((">= " if m["higher_is_better"] else "<= ") + f"{target:g}x")
        shown = "-" if ratio is None else f"**{_fmt(ratio)}x**"
        runs = r.get("repeats", "")
        rows.append(f"| {name} | {runs} | {m['name']} | {_fmt(va)} | {_fmt(vb)} | {shown} | {tgt} | {met} |")
    return rows


# ---------------------------------------------------------------- entry points
def worker_main(env: str, fn: str, params_json: str) -> int:
    """Run one side of one workload in this fresh process and print its result line."""
    params = json.loads(params_json)
    try:
        module = __import__("bench_ours" if env == "ours" else "bench_litgpt")
        result = module.WORKLOADS[fn](params)
    except ImportError as e:
        emit({"unavailable": f"{type(e).__name__}: {e}"})
        return 0
    except Exception as e:  # noqa: BLE001 - report it in the table, keep the suite going
        traceback.print_exc()
        emit({"error": f"{type(e).__name__}: {e}"[:300]})
        return 1
    emit(result)
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workloads", default="all", help="comma-separated names (see --list), or all")
    p.add_argument("--repeats", type=int, default=2, help="runs per side, interleaved A B A B")
    p.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="the markdown report")
    p.add_argument("--json", type=Path, default=None, help="the JSON results (default: results.json beside --out)")
    p.add_argument("--micro-batch", type=int, default=2, help="training micro-batch size (the issue: 4)")
    p.add_argument("--seq-len", type=int, default=256, help="training sequence length (the issue: 512)")
    p.add_argument("--steps", type=int, default=2, help="timed training steps after the warm-up step")
    p.add_argument("--full", action="store_true", help="the issue's shape: micro-batch 4 x 512, 3 timed steps")
    p.add_argument("--sft-model", default="pythia-70m", help="config of the full fine-tune workload")
    p.add_argument("--sft-samples", type=int, default=24, help="Alpaca-like samples in the SFT epoch (--full: 96)")
    p.add_argument("--sft-seq-len", type=int, default=512, help="max_seq_length of the SFT workload")
    p.add_argument("--chunked-ce", type=int, default=128, help="ours: --train.chunked_ce for the LoRA workloads")
    p.add_argument("--new-tokens", type=int, default=48, help="new tokens per decode")
    p.add_argument("--dpo-pairs", type=int, default=4, help="preference pairs per DPO step (8 sequences)")
    p.add_argument("--dpo-seq-len", type=int, default=128, help="max_seq_length of the DPO workload")
    p.add_argument("--litgpt-python", type=Path, default=DEFAULT_LITGPT_PYTHON, help="interpreter with litgpt")
    p.add_argument("--assets", type=Path, default=None, help="where shared weights/data go (default: a temp dir)")
    p.add_argument("--timeout", type=int, default=1200, help="seconds per process")
    p.add_argument("--merge", action="store_true", help="add to the existing results.json instead of replacing it")
    p.add_argument(
        "--lockstep",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="training workloads: run both sides' processes at once, taking turns step by step, so each pair of\n"
        "timed steps sees the same machine load (--no-lockstep: one process after the other; needs half the RAM)",
    )
    p.add_argument("--list", action="store_true", help="list the workloads and exit")
    p.add_argument("--gpu-suite", action="store_true", help="run the GPU suite instead (see --gpu-suite --help)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda when present")
    p.add_argument(
        "--decode-weights",
        choices=("auto", "real", "init"),
        default="auto",
        help="decode/ttft weights: the real SmolLM2-135M-Instruct, or random-init SmolLM2-135M (auto: real when its\n"
        "HF folder exists or can be built here)",
    )
    a = p.parse_args(argv)
    if a.device == "auto":
        import torch

        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.decode_weights == "auto":
        import bench_assets

        a.decode_weights = "real" if bench_assets.real_weights_available() else "init"
    if a.full:
        a.micro_batch, a.seq_len, a.steps = 4, 512, 3
        if a.sft_model == "pythia-70m":
            a.sft_model = "SmolLM2-135M"
        if a.sft_samples == 24:  # enough micro batches of 4 that one epoch is more than a couple of steps
            a.sft_samples = 96
    if a.repeats < 1 or a.steps < 1:
        p.error("--repeats and --steps must be at least 1")
    return a


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker_main(*argv[1:4])
    if "--gpu-suite" in argv:  # the GPU suite (gpu_suite.py) on this runner's process machinery
        import gpu_suite

        return gpu_suite.main([x for x in argv if x != "--gpu-suite"], sys.modules[__name__])
    a = parse_args(argv)
    table = workloads(a)
    if a.list:
        for name, w in table.items():
            print(f"{name:20s} {w.title}{'  (not in all)' if name in EXTRA else ''}")
        return 0
    skip = EXTRA
    names = (
        [n for n in table if n not in skip]
        if a.workloads == "all"
        else [n.strip() for n in a.workloads.split(",") if n.strip()]
    )
    unknown = [n for n in names if n not in table]
    if unknown:
        print(f"error: unknown workload(s) {', '.join(unknown)}; choose from {', '.join(table)}", file=sys.stderr)
        return 2
    a.litgpt_available = Path(a.litgpt_python).is_file() and litgpt_version(a) is not None
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "commands": ["python benchmarks/run.py " + " ".join(shlex.quote(x) for x in argv)],
        "litgpt_version": litgpt_version(a) if a.litgpt_available else None,
        "shape": {"micro_batch": a.micro_batch, "seq_len": a.seq_len, "timed_steps": a.steps},
        "workloads": {},
    }
    json_path = a.json or a.out.with_name("results.json")
    if a.merge and json_path.is_file():  # add these workloads to an earlier run's report
        earlier = json.loads(json_path.read_text())
        report["commands"] = earlier.get("commands", []) + report["commands"]
        report["started"], report["machine"] = earlier["started"], earlier["machine"]
        report["workloads"] = {k: v for k, v in earlier["workloads"].items() if k not in names}
    with tempfile.TemporaryDirectory(prefix="litgpt_lite_bench_") as tmp:
        root = a.assets or Path(tmp)
        print(f"preparing assets in {root} ...", flush=True)
        paths = prepare_assets([table[n] for n in names], a, root)
        for name in names:
            print(f"{name}: {table[name].title}", flush=True)
            report["workloads"][name] = run_workload(table[name], a, paths)
            _write(report, a.out, json_path)
    _write(report, a.out, json_path)
    print(markdown(report))
    return 0


def _write(report: dict[str, Any], md_path: Path, json_path: Path) -> None:
    report["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    md_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(markdown(report))


if __name__ == "__main__":
    sys.exit(main())
