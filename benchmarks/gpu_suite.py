"""One GPU suite that runs in minutes: a Llama-3.2-1B-shaped random-init model at micro-batch 4 x 2048, ours side by
side with LitGPT where LitGPT can run the workload, written to benchmarks/RESULTS_gpu.md.

    python benchmarks/run.py --gpu-suite [--budget-s 450] [--workloads pretrain,decode]
    python benchmarks/run.py --gpu-suite --smoke      # the whole suite on a CPU at a tiny size, in a couple of minutes

Workloads: pretraining eager and compiled (`--train.compile true`), LoRA, QLoRA (nf4, both sides), and batch-1
greedy decode eager, compiled and nf4. Before them one process measures the device: its best bf16 matmul rate (the
MFU denominator) and its device-to-device copy rate (the denominator of a decode's HBM fraction). Both sides of a
workload start at once and take turns for their timed parts (training: step by step; decode: one after the other),
so setup and compilation overlap and no timed work overlaps. Each workload has its own timeout, and the suite stops
starting workloads when its time budget is spent (the rest read "skipped"). The target rows are the GPU-targets
issue's. `bash benchmarks/gpu.sh` runs it on a machine without network (wheels carried in .whl/).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catalogue import PROMPT, Side, Workload, flops_per_token

HERE = Path(__file__).resolve().parent
MODEL = "Llama-3.2-1B"
SMOKE_MODEL = {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_query_groups": 2, "head_size": 16}
SMOKE_MODEL.update(intermediate_size=128, vocab_size=1024, padded_vocab_size=1024)
LABELS = ("LitGPT", "litgpt_lite")
MIN_START_S = 20  # a workload does not start with less of the budget left


@dataclass
class Shape:
    """The suite's size: the GPU shape, or the smoke test's tiny one."""

    micro_batch: int
    seq_len: int
    steps: int  # timed steps after the warm-up step
    new_tokens: int
    reps: int
    overrides: dict[str, Any] = field(default_factory=dict)  # on top of the named config, both sides


GPU = Shape(micro_batch=4, seq_len=2048, steps=8, new_tokens=128, reps=2, overrides={"block_size": 2048})
# 128 tokens: the Alpaca prompt of an SFT record must fit with room for its response, or the LoRA set is empty
SMOKE = Shape(micro_batch=2, seq_len=128, steps=2, new_tokens=4, reps=1, overrides={**SMOKE_MODEL, "block_size": 160})


@dataclass
class Entry:
    """A workload of the suite, its timeout, and the matmul passes per weight its MFU counts (6: full training,
    4: frozen base weights, 2: a forward alone)."""

    workload: Workload
    timeout_s: int
    passes: int
    smoke_timeout_s: int = 180


@dataclass
class Target:
    """`measured` (workload, side label, metric) against `value`, or against `value` x `ref` where a ref is set."""

    label: str
    measured: tuple[str, str, str]
    higher_is_better: bool
    value: float
    ref: tuple[str, str, str] | None = None


TARGETS = [
    Target("compiled pretraining MFU", ("pretrain_compiled", "litgpt_lite", "mfu"), True, 0.60),
    Target(
        "compiled pretraining tokens/s vs LitGPT's compiled pretraining",
        ("pretrain_compiled", "litgpt_lite", "tokens_per_s"),
        True,
        1.2,
        ("pretrain_compiled", "LitGPT", "tokens_per_s"),
    ),
    Target(
        "QLoRA nf4 peak memory vs our LoRA's",
        ("qlora", "litgpt_lite", "peak_mb"),
        False,
        0.6,
        ("lora", "litgpt_lite", "peak_mb"),
    ),
    Target(
        "QLoRA nf4 tokens/s vs LitGPT's QLoRA",
        ("qlora", "litgpt_lite", "tokens_per_s"),
        True,
        1.1,
        ("qlora", "LitGPT", "tokens_per_s"),
    ),
    Target(
        "batch-1 bf16 compiled decode: fraction of the copy rate", ("decode_compiled", "litgpt_lite", "hbm"), True, 0.6
    ),
    Target(
        "batch-1 nf4 decode tokens/s vs our bf16 eager decode",
        ("decode_nf4", "litgpt_lite", "tokens_per_s"),
        True,
        1.0,
        ("decode", "litgpt_lite", "tokens_per_s"),
    ),
]


def entries(shape: Shape, device: str) -> dict[str, Entry]:
    """The suite's workloads in the order they run (those the targets read first), for `shape` on `device`."""
    gpu = device == "cuda"
    train = {"micro_batch": shape.micro_batch, "seq_len": shape.seq_len, "steps": shape.steps + 1, "seed": 42}
    train.update(device=device, name=MODEL, config_overrides=shape.overrides, init="model")
    mixed, true = ("bf16-mixed", "bf16-true") if gpu else ("bf16-mixed", "32-true")
    lora = {**train, "precision": true, "data": "sft_long"}
    dec = {"device": device, "init": "model", "prompt": PROMPT, "max_new_tokens": shape.new_tokens}
    dec.update(reps=shape.reps, precision="bf16-true")
    shape_txt = f"{MODEL} shape, micro-batch {shape.micro_batch} x {shape.seq_len}"

    def pair(fn: str, params: dict[str, Any]) -> tuple[Side, Side]:
        return Side(LABELS[0], "litgpt", fn, params), Side(LABELS[1], "ours", fn, params)

    out = {
        "pretrain": (f"pretraining, {mixed}, eager, {shape_txt}", "pretrain", {**train, "precision": mixed}, 120, 6),
        "pretrain_compiled": (
            f"pretraining, {mixed}, compiled (ours --train.compile true; LitGPT's pretrain main's torch.compile), "
            + shape_txt,
            "pretrain",
            {**train, "precision": mixed, "compile": True},
            240,
            6,
        ),
        "lora": (f"LoRA r=8 (query, value), {true}, {shape_txt}", "finetune_lora", lora, 120, 4),
        "qlora": (
            f"QLoRA: LoRA r=8 on an nf4 base (--quantize bnb.nf4), {true}, {shape_txt}",
            "finetune_lora",
            {**lora, "quantize": "bnb.nf4"},
            150,
            4,
        ),
        "decode": (f"greedy decode, batch 1, bf16, eager, {shape.new_tokens} new tokens", "decode", dec, 100, 2),
        "decode_compiled": (
            f"greedy decode, batch 1, bf16, decode step compiled (ours --compile: CUDA graph; LitGPT's generate "
            f"--compile), {shape.new_tokens} new tokens",
            "decode",
            {**dec, "compile": True},
            180,
            2,
        ),
        "decode_nf4": (
            f"greedy decode, batch 1, nf4 weights (--quantize bnb.nf4), bf16 compute, {shape.new_tokens} new tokens",
            "decode",
            {**dec, "quantize": "bnb.nf4"},
            100,
            2,
        ),
    }
    out["pretrain"] = out.pop("pretrain")  # the one without a target runs last: the first a tight budget skips
    return {
        name: Entry(Workload(name, title, pair(fn, params), [], needs=_needs(fn)), timeout, passes)
        for name, (title, fn, params, timeout, passes) in out.items()
    }


def _needs(fn: str) -> tuple[str, ...]:
    return {"pretrain": ("model", "tokens"), "finetune_lora": ("model", "sft_long")}.get(fn, ("model",))


# ---------------------------------------------------------------- inputs
def build_assets(runner, a: argparse.Namespace, shape: Shape, root: Path, needs: set[str]) -> dict[str, Any]:
    """The shared inputs: the random-init model in both formats (bf16, seeded), the token stream and the SFT
    records, under `root` (kept and reused when `--assets` names a folder)."""
    import bench_assets

    from litgpt_lite.tokenizer import Tokenizer

    tok_dir = _tokenizer_dir(a)
    paths: dict[str, Any] = {"init": {"model": _random_init(runner, a, shape, root, tok_dir)}}
    if "tokens" in needs:
        vocab = min(Tokenizer(tok_dir).vocab_size, _config(shape).padded_vocab_size)
        n = shape.micro_batch * shape.seq_len * (shape.steps + 3) + 1
        paths["tokens"] = str(bench_assets.token_stream(root, n, vocab_size=vocab))
    if "sft_long" in needs:
        n = shape.micro_batch * (shape.steps + 1)
        paths["sft_long"] = str(bench_assets.sft_records(root, n, min_words=shape.seq_len + 16))
    return paths


def _tokenizer_dir(a: argparse.Namespace) -> Path:
    """The bundled 1024-token tokenizer for the smoke test; on the GPU SmolLM2's (BENCH_TOKENIZER_DIR)."""
    if a.smoke:
        from litgpt_lite.data.text import BUNDLED_TOKENIZER

        return BUNDLED_TOKENIZER
    import bench_assets

    return bench_assets.tokenizer_dir()


def _config(shape: Shape):
    from litgpt_lite.config import Config

    return Config.from_name(MODEL, **shape.overrides)


def _random_init(runner, a: argparse.Namespace, shape: Shape, root: Path, tok_dir: Path) -> dict[str, str]:
    """Our checkpoint and LitGPT's (lit_model.pth: the same tensors, the tied head stored twice, as LitGPT's GPT
    keeps its own lm_head), then LitGPT's model_config.yaml written and the weights loaded strictly by LitGPT."""
    ours, theirs = root / "ours" / "model", root / "litgpt" / "model"
    if not (ours / "lit_model.safetensors").is_file() or not (theirs / "lit_model.pth").is_file():
        import torch

        from litgpt_lite.checkpoint import save_checkpoint
        from litgpt_lite.model import GPT

        torch.manual_seed(1234)
        config = _config(shape)
        model = GPT(config).to(torch.bfloat16)  # half the bytes to write and read; training upcasts as it loads
        save_checkpoint(model, config, ours, tokenizer_dir=tok_dir, prompt_style="alpaca")
        state = dict(model.state_dict())
        state.setdefault("lm_head.weight", state["transformer.wte.weight"])
        theirs.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.contiguous() for k, v in state.items()}, theirs / "lit_model.pth")
        for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
            if (tok_dir / name).is_file():
                shutil.copy2(tok_dir / name, theirs / name)
    if a.litgpt_available and not (theirs / "model_config.yaml").is_file():
        params = {"checkpoint_dir": str(theirs), "name": MODEL, "config_overrides": shape.overrides}
        res = runner.run_worker(a, "litgpt", "prepare", params)
        if "error" in res or "unavailable" in res:  # our side still runs: the borrowed minutes are not lost
            a.litgpt_available = False
            a.litgpt_missing = f"LitGPT could not load the shared weights: {res.get('error') or res['unavailable']}"
            print(a.litgpt_missing, flush=True)
    return {"ours": str(ours), "litgpt": str(theirs)}


# ---------------------------------------------------------------- running
def run_entry(runner, a: argparse.Namespace, e: Entry, paths: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Both sides of one workload: at once in lockstep where LitGPT runs here, else ours alone. Per side, the
    worker's result, an error, or why it did not run."""
    sub = argparse.Namespace(**{**vars(a), "timeout": int(timeout)})
    w = e.workload
    jobs = [(s.env, s.fn, runner.resolve_params(s, paths)) for s in w.sides]
    started = time.perf_counter()
    if a.litgpt_available:
        results = runner.run_lockstep_workers(sub, jobs, first=0)
    else:
        results = [{"unavailable": a.litgpt_missing}]
        results.append(runner.run_worker(sub, *jobs[1]))
    wall = round(time.perf_counter() - started, 1)
    return {label: {**res, "wall_s": wall} for label, res in zip(LABELS, results)}


def derive(e: Entry, res: dict[str, Any], shape: Shape, peaks: dict[str, float]) -> dict[str, Any]:
    """A side's table values: tokens/s, peak memory (GPU; RSS where no GPU ran), MFU and, for decode, HBM fraction."""
    if "tokens_per_s" not in res:
        return res
    out = {**res, "peak_mb": res.get("peak_gpu_mb", res.get("peak_rss_mb"))}
    out["memory_kind"] = "GPU" if "peak_gpu_mb" in res else "RSS" if "peak_rss_mb" in res else None
    decode = e.workload.sides[1].fn == "decode"
    context = shape.new_tokens if decode else shape.seq_len
    flops = flops_per_token(MODEL, context, shape.overrides, passes=e.passes)
    if peaks.get("matmul_peak_flops"):
        out["mfu"] = res["tokens_per_s"] * flops / peaks["matmul_peak_flops"]
    if decode and res.get("weight_bytes") and peaks.get("copy_bytes_per_s"):
        out["hbm"] = res["weight_bytes"] * res["tokens_per_s"] / peaks["copy_bytes_per_s"]
    return out


def run_suite(runner, a: argparse.Namespace, names: list[str], report: dict[str, Any], write) -> None:
    """Measure the device, build the inputs, then run the workloads in order while the time budget lasts."""
    shape, table = (SMOKE if a.smoke else GPU), entries(SMOKE if a.smoke else GPU, a.device)
    deadline = time.monotonic() + a.budget_s
    peaks = runner.run_worker(a, "ours", "device_peaks", {"device": a.device})
    report["peaks"] = peaks
    print(f"device peaks: {runner._short(peaks)}", flush=True)
    needs = {n for name in names for n in table[name].workload.needs}
    with tempfile.TemporaryDirectory(prefix="litgpt_lite_gpu_suite_") as tmp:
        root = a.assets or Path(tmp)
        print(f"preparing inputs in {root} ...", flush=True)
        paths = build_assets(runner, a, shape, root, needs)
        report["setup_s"] = round(a.budget_s - (deadline - time.monotonic()), 1)
        for name in names:
            e, left = table[name], deadline - time.monotonic()
            print(f"{name}: {e.workload.title}", flush=True)
            if left < MIN_START_S:
                sides = {label: {"skipped": f"the suite's {a.budget_s}s budget was spent"} for label in LABELS}
            else:
                timeout = min(e.smoke_timeout_s if a.smoke else e.timeout_s, left)
                sides = {k: derive(e, v, shape, peaks) for k, v in run_entry(runner, a, e, paths, timeout).items()}
            for label, res in sides.items():
                print(f"  {name} [{label}]: {runner._short(res)}", flush=True)
            report["workloads"][name] = {"title": e.workload.title, "sides": sides}
            write(report)
    report["suite_s"] = round(a.budget_s - (deadline - time.monotonic()), 1)


# ---------------------------------------------------------------- report
def _value(report: dict[str, Any], key: tuple[str, str, str]) -> float | None:
    workload, side, metric = key
    v = report["workloads"].get(workload, {}).get("sides", {}).get(side, {}).get(metric)
    return v if isinstance(v, (int, float)) else None


def check_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measured value (a ratio where it has a reference) and whether it is met."""
    rows = []
    for t in TARGETS:
        v = _value(report, t.measured)
        if t.ref is not None:
            ref = _value(report, t.ref)
            v = v / ref if v is not None and ref else None
        met = None if v is None else (v >= t.value if t.higher_is_better else v <= t.value)
        want = (">= " if t.higher_is_better else "<= ") + f"{t.value:g}" + ("x" if t.ref else "")
        rows.append({"target": t.label, "measured": v, "want": want, "met": met, "ratio": t.ref is not None})
        rows[-1].update(key=list(t.measured), ref=list(t.ref) if t.ref else None)
    return rows


METRIC_NAMES = {"mfu": "MFU", "tokens_per_s": "tokens/s", "peak_mb": "peak memory", "hbm": "HBM fraction"}


def _targets_cell(targets: list[dict[str, Any]], name: str, label: str) -> str:
    """The targets on one row of the main table, each with whether it is met (yes / **no** / - not measured)."""
    cells = []
    for t in targets:
        if t["key"][:2] != [name, label]:
            continue
        of = f" {t['ref'][0]} {t['ref'][1]}" if t["ref"] else ""
        met = "-" if t["met"] is None else ("yes" if t["met"] else "**no**")
        cells.append(f"{METRIC_NAMES[t['key'][2]]} {t['want']}{of}: {met}")
    return "; ".join(cells)


def _cell(res: dict[str, Any], key: str, fmt) -> str:
    v = res.get(key)
    return fmt(v) if isinstance(v, (int, float)) else "-"


def _side_row(runner, name: str, label: str, res: dict[str, Any], ref: dict[str, Any] | None, targets: str) -> str:
    fmt = runner._fmt
    ratio = "-"
    if ref is not None and res.get("tokens_per_s") and ref.get("tokens_per_s"):
        ratio = f"**{res['tokens_per_s'] / ref['tokens_per_s']:.2f}x**"
    note = ""
    for key in ("unavailable", "skipped", "error"):
        if key in res:
            note = {"unavailable": "not available: ", "skipped": "skipped: ", "error": ""}[key] + str(res[key])
    mem = _cell(res, "peak_mb", fmt) + (" (RSS)" if res.get("memory_kind") == "RSS" else "")
    cells = [name, label, _cell(res, "tokens_per_s", fmt), mem, _cell(res, "mfu", lambda v: f"{v:.3g}")]
    cells += [_cell(res, "hbm", lambda v: f"{v:.3g}"), ratio, targets, _cell(res, "wall_s", fmt)]
    cells.append(runner._cell(note, 160))
    return "| " + " | ".join(cells) + " |"


def markdown(runner, report: dict[str, Any]) -> str:
    """RESULTS_gpu.md: the machine and peaks, one row per workload and side, then the targets."""
    m, peaks = report["machine"], report.get("peaks", {})
    mm, cp = peaks.get("matmul_peak_flops"), peaks.get("copy_bytes_per_s")
    lines = [
        f"# GPU suite: litgpt_lite vs LitGPT, {report['model']}{' (smoke: tiny, CPU)' if report['smoke'] else ''}",
        "",
        f"Measured {report['started']} - {report.get('finished', '')} on {m['gpu'] or 'no GPU'}, {m['cpu']}, "
        f"{m['cores']} cores, {m['memory']}; torch {m['torch']}, Python {m['python']}, LitGPT "
        f"{report['litgpt_version'] or 'not available'}. Suite {report.get('suite_s', '-')} s (inputs ready after "
        f"{report.get('setup_s', '-')} s) of a {report['budget_s']} s budget.",
        "",
        f"Measured in this run, alone on the device: best {'bf16 8192' if m['gpu'] else 'fp32 1024'}-square matmul "
        f"{runner._fmt(mm / 1e12) if mm else '-'} TFLOP/s (the MFU denominator); device-to-device copy "
        f"{runner._fmt(cp / 1e9) if cp else '-'} GB/s counting bytes read plus written (a decode's HBM fraction is "
        "the bytes of the weights a step reads x tokens/s over it).",
        "",
        "```",
        *report["commands"],
        "```",
        "",
        "| workload | side | tokens/s | peak memory MiB | MFU | HBM fraction | ours / LitGPT tokens/s | targets "
        "| process s | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    targets = check_targets(report)
    for name, w in report["workloads"].items():
        ref = w["sides"].get(LABELS[0])
        for label, res in w["sides"].items():
            cell = _targets_cell(targets, name, label)
            lines.append(_side_row(runner, name, label, res, ref if label == LABELS[1] else None, cell))
    lines += ["", "## Targets", "", "| target | measured | target | met |", "|---|---|---|---|"]
    for t in targets:
        v = "-" if t["measured"] is None else f"{t['measured']:.3g}" + ("x" if t["ratio"] else "")
        met = "-" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {v} | {t['want']} | {met} |")
    lines += ["", "Workloads:", ""]
    lines += [f"- `{name}`: {w['title']}." for name, w in report["workloads"].items()]
    lines += ["", NOTES, ""]
    return "\n".join(lines)


NOTES = (
    "Both sides load the same seeded random-init weights (ours as lit_model.safetensors, LitGPT's as lit_model.pth "
    "with the tied head stored twice, since LitGPT's GPT keeps its own lm_head) and train on the same random token "
    "stream or Alpaca-like records longer than the context. Training: step 1 is warm-up (and compilation); tokens/s "
    "and peak memory are over the timed steps. MFU counts 6 matmul FLOPs per weight per token for pretraining, 4 for "
    "LoRA/QLoRA (no weight gradients for the frozen base) and 2 for decode, plus causal attention. Decode tokens/s is "
    "over the whole generate call (prefill + decode), exactly the new tokens (no stop at eos), median of the timed "
    "calls after one warm-up call."
)


# ---------------------------------------------------------------- entry point
def parse_args(argv: list[str], runner) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="run.py --gpu-suite", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="the whole suite on a CPU at a tiny size")
    p.add_argument("--workloads", default="all", help="comma-separated names, or all: " + ", ".join(entries(GPU, "")))
    p.add_argument("--out", type=Path, default=None, help="the markdown report (default benchmarks/RESULTS_gpu.md)")
    p.add_argument("--json", type=Path, default=None, help="the JSON results (default: results_gpu.json beside --out)")
    p.add_argument("--litgpt-python", type=Path, default=runner.DEFAULT_LITGPT_PYTHON, help="interpreter with litgpt")
    p.add_argument("--assets", type=Path, default=None, help="where shared weights/data go (default: a temp dir)")
    p.add_argument("--budget-s", type=int, default=450, help="stop starting workloads after this many seconds")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda when present")
    a = p.parse_args(argv)
    if a.device == "auto":
        import torch

        a.device = "cpu" if a.smoke or not torch.cuda.is_available() else "cuda"
    if a.out is None:
        smoke_dir = Path(tempfile.gettempdir()) / "litgpt_lite_gpu_smoke"
        a.out = smoke_dir / "RESULTS_gpu.md" if a.smoke else HERE / "RESULTS_gpu.md"
    names = list(entries(GPU, "")) if a.workloads == "all" else [n.strip() for n in a.workloads.split(",") if n]
    unknown = [n for n in names if n not in entries(GPU, "")]
    if unknown:
        _fail(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(entries(GPU, ''))}")
    if a.budget_s < MIN_START_S:
        _fail(f"--budget-s must be at least {MIN_START_S}, got {a.budget_s}")
    a.names = names
    a.timeout = 600  # setup processes (LitGPT's weight check); each workload gets its own
    return a


def _shrunk(overrides: dict[str, Any]) -> str:
    return " shrunk to " + ", ".join(f"{k} {v}" for k, v in overrides.items())


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str], runner) -> int:
    """`run.py --gpu-suite ...`: run the suite with the runner's process machinery (`runner` is run.py's module)."""
    a = parse_args(argv, runner)
    if a.smoke:  # compiling on a CPU takes minutes; the smoke run checks the plumbing, torch.compile is a no-op
        os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")
    version = runner.litgpt_version(a) if Path(a.litgpt_python).is_file() else None
    a.litgpt_available = version is not None
    a.litgpt_missing = f"LitGPT is not importable from {a.litgpt_python}"
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": runner.machine(),
        "commands": ["python benchmarks/run.py --gpu-suite " + " ".join(shlex.quote(x) for x in argv)],
        "litgpt_version": version,
        "model": f"{MODEL}-shaped random init" + (_shrunk(SMOKE.overrides) if a.smoke else ""),
        "smoke": a.smoke,
        "budget_s": a.budget_s,
        "workloads": {},
    }
    json_path = a.json or a.out.with_name("results_gpu.json")

    def write(rep: dict[str, Any]) -> None:
        rep["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        rep["targets"] = check_targets(rep)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(rep, indent=2) + "\n")
        a.out.write_text(markdown(runner, rep))

    run_suite(runner, a, a.names, report, write)
    write(report)
    print(markdown(runner, report))
    print(f"wrote {a.out} and {json_path}")
    return 0
