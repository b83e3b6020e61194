"""Each training memory/speed lever on its own: tokens/s and peak RSS of a short pretraining run, lever off vs on.

usage: python benchmarks/levers.py [--steps 8] [--out benchmarks/LEVERS.md]

Runs `litgpt_lite pretrain` (the ordinary CLI, bundled corpus) on a 6-layer, 512-wide model with a 32k vocabulary at
micro-batch 4 x 512, once per lever, in fresh processes, and reports the median per-step tokens/s after warm-up
(compile's warm-up is excluded the same way) and the process's peak RSS.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = """name: levers
block_size: 512
vocab_size: 32768
padding_multiple: 64
n_layer: 6
n_embd: 512
n_head: 8
n_query_groups: 4
intermediate_size: 1376
norm_class: RMSNorm
mlp_class: LLaMAMLP
"""

LEVERS = {
    "baseline": ["--train.compile", "false"],
    "activation_checkpointing": ["--train.activation_checkpointing", "true"],
    "chunked_ce (128)": ["--train.chunked_ce", "128"],
    "compile": ["--train.compile", "true"],
}
STEP = re.compile(r"step (\d+)/\d+ \|.*\| ([\d,.]+) tok/s")


def run(flags: list[str], steps: int, work: Path) -> tuple[float, float]:
    model = work / "model.yaml"
    model.write_text(MODEL)
    cmd = [
        sys.executable,
        "-c",
        "import resource, sys; from litgpt_lite.__main__ import main; rc = main(sys.argv[1:]); "
        "print('PEAK_RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024); sys.exit(rc)",
        "pretrain",
        "--config",
        "config_hub/pretrain/debug.yaml",
        "--model_config",
        str(model),
        "--train.max_steps",
        str(steps),
        "--train.max_seq_length",
        "512",
        "--train.micro_batch_size",
        "4",
        "--train.global_batch_size",
        "4",
        "--train.log_interval",
        "1",
        "--eval.interval",
        "100000",
        "--eval.initial_validation",
        "false",
        "--eval.final_validation",
        "false",
        "--out_dir",
        str(work / "out"),
        *flags,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(flags) or 'baseline'} failed:\n{out.stderr[-2000:]}")
    rates = [float(m.group(2).replace(",", "")) for m in STEP.finditer(out.stdout + out.stderr) if int(m.group(1)) > 2]
    peak = int(re.search(r"PEAK_RSS (\d+)", out.stdout).group(1))
    return statistics.median(rates), peak / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/LEVERS.md"))
    args = ap.parse_args()
    rows = []
    for name, flags in LEVERS.items():
        with tempfile.TemporaryDirectory() as tmp:
            rate, peak = run(flags, args.steps, Path(tmp))
        rows.append((name, rate, peak))
        print(f"{name:28s} {rate:8.0f} tok/s  {peak:8.0f} MiB peak RSS", flush=True)
    base_rate, base_peak = rows[0][1], rows[0][2]
    lines = [
        "# Training levers, each on its own",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, CPU fp32, 6-layer 512-wide model, 32k vocab, "
        f"micro-batch 4 x 512, median step tokens/s after 2 warm-up steps, {args.steps} steps. "
        f"Load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}.",
        "",
        f"Reproduce: `python benchmarks/levers.py --steps {args.steps}`",
        "",
        "| lever | tokens/s | vs baseline | peak RSS MiB | vs baseline |",
        "|---|---|---|---|---|",
    ]
    for name, rate, peak in rows:
        lines.append(f"| {name} | {rate:,.0f} | {rate / base_rate:.2f}x | {peak:,.0f} | {peak / base_peak:.2f}x |")
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
