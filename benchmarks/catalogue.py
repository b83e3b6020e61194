"""The workload catalogue of the side-by-side benchmarks: what each workload runs on each side (the worker function
and its parameters), which inputs it needs, its metrics and the targets the issues set. `run.py` runs them.

A workload has two sides, A (the reference, usually LitGPT) and B (ours); the table reports B / A per metric.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

EXTRA = ("pretrain_pythia14m",)  # not part of `all`: a seconds-long workload for smoke tests
LOCKSTEP_FNS = ("pretrain", "finetune_full", "finetune_lora", "dpo", "dpo_trl")  # timed by bench_common.StepClock
PROMPT = "The history of the printing press begins"
BATCH_PROMPTS = [
    "Hi",
    "Tell me about rivers.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "List three facts about the moon",
    "Explain, step by step and with an example, how binary search finds a number in a sorted list of a thousand items.",
    "What is a prime number?",
    "Describe the water cycle in two sentences, mentioning evaporation, condensation and precipitation.",
    "Name a color",
]


@dataclass
class Side:
    """One side of a workload.

    Attributes:
        label: the column name in the table.
        env: "ours" | "litgpt": which interpreter and worker module run it.
        fn: the function name in bench_ours / bench_litgpt (or "ttft", "convert_cli": run as a CLI process).
        params: the worker's parameters; "init" and "data" name shared inputs that the runner resolves to paths.
    """

    label: str
    env: str
    fn: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Metric:
    """A measured quantity; `target` is the ratio B / A the issue asks for (None: shown without a target)."""

    key: str
    name: str
    higher_is_better: bool
    target: float | None = None


@dataclass
class Workload:
    """Two sides measured alike; `needs` lists the shared inputs ("init:<config>", "tokens", "sft", "sft_long",
    "real") the runner builds once before the first workload."""

    name: str
    title: str
    sides: tuple[Side, Side]  # (A: reference, B: ours); the ratio is B / A
    metrics: list[Metric]
    needs: tuple[str, ...] = ()
    note: str = ""


def workloads(a: argparse.Namespace) -> dict[str, Workload]:
    """Every workload of the CPU/GPU side-by-side suite for the runner's arguments (shape, device, weights)."""
    out: dict[str, Workload] = {}
    for part in (_training, _preference, _decoding, _processes):
        out.update(part(a))
    return out


def _base(a: argparse.Namespace) -> dict[str, Any]:
    """The training parameters both sides share: shape, steps (+1: the warm-up step), seed, device, precision."""
    prec = "bf16-mixed" if a.device == "cuda" else "32-true"
    return {
        "micro_batch": a.micro_batch,
        "seq_len": a.seq_len,
        "steps": a.steps + 1,
        "seed": 42,
        "device": a.device,
        "precision": prec,
    }


def _memory(a: argparse.Namespace, target: float | None) -> list[Metric]:
    """The steady-state memory rows: on a GPU its memory carries the target and RSS is shown beside it."""
    gpu = a.device == "cuda"
    rss = Metric("peak_rss_mb", "peak RSS MiB (steps 2..n)", False, None if gpu else target)
    return [Metric("peak_gpu_mb", "peak GPU memory MiB (steps 2..n)", False, target), rss] if gpu else [rss]


def _training(a: argparse.Namespace) -> dict[str, Workload]:
    base, mb, T = _base(a), a.micro_batch, a.seq_len
    plabel = "bf16-mixed" if a.device == "cuda" else "fp32"
    tok = Metric("tokens_per_s", "tokens/s", True, 1.10)
    out: dict[str, Workload] = {}
    for key, name in (("pythia14m", "pythia-14m"), ("pythia70m", "pythia-70m"), ("smollm2", "SmolLM2-135M")):
        p = {**base, "name": name, "init": name}
        out[f"pretrain_{key}"] = Workload(
            f"pretrain_{key}",
            f"pretraining step, {name}, {plabel}, micro-batch {mb} x {T}",
            (Side("LitGPT", "litgpt", "pretrain", p), Side("litgpt_lite", "ours", "pretrain", p)),
            [tok, *_memory(a, 1.0), Metric("mfu", "MFU vs measured matmul peak", True)],
            needs=(f"init:{name}", "tokens"),
        )
    sft = {**base, "name": a.sft_model, "init": a.sft_model, "data": "sft", "seq_len": a.sft_seq_len}
    out["sft_full"] = Workload(
        "sft_full",
        f"full fine-tune, {a.sft_model}, {a.sft_samples} Alpaca-like samples (one epoch), micro-batch "
        f"{mb}, max_seq_length {a.sft_seq_len}: ours packs, LitGPT pads",
        (Side("LitGPT", "litgpt", "finetune_full", sft), Side("litgpt_lite", "ours", "finetune_full", sft)),
        [Metric("tokens_per_s", "real (non-pad) tokens/s", True, 2.0), *_memory(a, None)],
        needs=(f"init:{a.sft_model}", "sft"),
    )
    lora = {**base, "name": "SmolLM2-135M", "init": "SmolLM2-135M", "data": "sft_long", "chunked_ce": a.chunked_ce}
    out["lora"] = Workload(
        "lora",
        f"LoRA r=8 (query, value), SmolLM2-135M, {plabel}, micro-batch {mb} x {T}; ours --train.chunked_ce "
        f"{a.chunked_ce}",
        (Side("LitGPT", "litgpt", "finetune_lora", lora), Side("litgpt_lite", "ours", "finetune_lora", lora)),
        [tok, *_memory(a, 0.85)],
        needs=("init:SmolLM2-135M", "sft_long"),
    )
    out["qlora"] = Workload(
        "qlora",
        f"QLoRA (--quantize bnb.nf4) vs LoRA, ours only (LitGPT's bitsandbytes plugin refuses CPU), "
        f"SmolLM2-135M, micro-batch {mb} x {T}",
        (
            Side("ours LoRA", "ours", "finetune_lora", lora),
            Side("ours QLoRA nf4", "ours", "finetune_lora", {**lora, "quantize": "bnb.nf4"}),
        ),
        [Metric("tokens_per_s", "tokens/s", True), *_memory(a, None)],
        needs=("init:SmolLM2-135M", "sft_long"),
    )
    return out


def _preference(a: argparse.Namespace) -> dict[str, Workload]:
    """DPO against TRL's DPOTrainer (both sides in our environment)."""
    plabel = "bf16-mixed" if a.device == "cuda" else "fp32"
    p = {**_base(a), "data": "real", "micro_batch": a.dpo_pairs, "seq_len": a.dpo_seq_len}
    dpo = Workload(
        "dpo",
        f"DPO (sigmoid, beta 0.1) with LoRA r=8 (query, value), SmolLM2-135M-Instruct, {plabel}, {a.dpo_pairs} pairs "
        f"per step (chosen and rejected in one batch), max_seq_length {a.dpo_seq_len}, bundled pairs, one epoch",
        (Side("TRL DPOTrainer", "ours", "dpo_trl", p), Side("litgpt_lite", "ours", "dpo", p)),
        [Metric("tokens_per_s", "real tokens/s (prompt + chosen, prompt + rejected)", True), *_memory(a, None)],
        needs=("real",),
        note="TRL 1.x with a PEFT LoRA (reference = adapters disabled), both sides in our environment",
    )
    return {"dpo": dpo}


def _decode_weights(a: argparse.Namespace) -> tuple[str, dict[str, Any], tuple[str, ...]]:
    """(what the table calls the weights, the decode parameters naming them, the inputs they need)."""
    if a.decode_weights == "real":
        return "SmolLM2-135M-Instruct", {"data": "real"}, ("real",)
    return "SmolLM2-135M (random init)", {"init": "SmolLM2-135M"}, ("init:SmolLM2-135M",)


def _decoding(a: argparse.Namespace) -> dict[str, Workload]:
    weights, dec, needs = _decode_weights(a)
    dec = {**dec, "device": a.device, "prompt": PROMPT, "max_new_tokens": a.new_tokens, "reps": 2}
    out: dict[str, Workload] = {}
    for prec, label, compiled in (
        ("32-true", "fp32", False),
        ("bf16-true", "bf16", False),
        ("32-true", "fp32", True),
        ("bf16-true", "bf16", True),
    ):
        p = {**dec, "precision": prec, "compile": compiled}
        name = f"decode_{label}" + ("_compiled" if compiled else "")
        how = ", each side's decode step compiled (LitGPT: its `generate --compile`)" if compiled else ""
        out[name] = Workload(
            name,
            f"greedy decode, batch 1, {weights}, {label}, {a.new_tokens} new tokens{how}",
            (Side("LitGPT", "litgpt", "decode", p), Side("litgpt_lite", "ours", "decode", p)),
            [Metric("tokens_per_s", "tokens/s (prefill + decode)", True, 1.3)],
            needs=needs,
            note="both sides generate exactly the new tokens (no stop at eos)",
        )
    gpu = a.device == "cuda"
    p = {**dec, "precision": "bf16-true" if gpu else "32-true", "prompts": BATCH_PROMPTS, "reps": 1}
    out["batched_decode"] = Workload(
        "batched_decode",
        f"batched greedy decode, {len(BATCH_PROMPTS)} prompts of different lengths vs batch 1 "
        f"(ours only: LitGPT cannot batch prompts of different lengths), {'bf16' if gpu else 'fp32'}",
        (Side("ours batch 1", "ours", "batched_decode", p), Side("ours batch 8", "ours", "batched_decode", p)),
        [
            Metric("tokens_per_s", "total tokens/s, every row to max_new_tokens (ignore_eos)", True, 3.0),
            Metric("eos_tokens_per_s", "total tokens/s, rows stopping at eos", True),
        ],
        needs=needs,
        note="one process per run measures both, alternating batch 1 and batch 8; finished rows leave the batch",
    )
    return out


def _processes(a: argparse.Namespace) -> dict[str, Workload]:
    """The workloads timed as whole CLI processes, imports included."""
    weights, dec, needs = _decode_weights(a)
    gpu = a.device == "cuda"
    p = {"data": "hf", "litgpt_model_name": "SmolLM2-135M-Instruct"}
    convert = Workload(
        "convert",
        "`convert_to_litgpt` CLI, SmolLM2-135M-Instruct (HF safetensors, fp32), whole process",
        (Side("LitGPT", "litgpt", "convert_cli", p), Side("litgpt_lite", "ours", "convert_cli", p)),
        [Metric("seconds", "wall time s", False, 1.0), Metric("peak_rss_mb", "peak RSS MiB (process)", False, 0.8)],
        needs=("real",),
        note="each side's `convert_to_litgpt` CLI as a whole process, as a user runs it (imports included)",
    )
    p = {**dec, "precision": "bf16-true" if gpu else "32-true"}
    ttft = Workload(
        "ttft",
        "time to first token of the `generate` CLI as a whole process (imports included), "
        f"{weights}, {'bf16' if gpu else 'fp32'}, --max_new_tokens 1",
        (Side("LitGPT", "litgpt", "ttft", p), Side("litgpt_lite", "ours", "ttft", p)),
        [Metric("ttft_s", "time to first token s", False, 0.8), Metric("process_s", "whole process s", False)],
        needs=needs,
    )
    return {"convert": convert, "ttft": ttft}


def flops_per_token(name: str, seq_len: int, overrides: dict[str, Any] | None = None, passes: int = 6) -> float:
    """Training FLOPs per token of a config: `passes` x the matmul weights (the head included) plus causal attention.

    `passes` is 6 for full training (forward 2, backward 4), 4 where the base weights are frozen (LoRA: no weight
    gradients) and 2 for a forward alone (decode); attention scales alike (2 per pass of QK^T and AV, causal half).
    """
    from litgpt_lite.config import Config

    c = Config.from_name(name, **(overrides or {}))
    qkv = c.n_embd * (c.n_head + 2 * c.n_query_groups) * c.head_size
    proj = c.n_head * c.head_size * c.n_embd
    mlp = (3 if c.mlp_class in ("LLaMAMLP", "GemmaMLP") else 2) * c.n_embd * c.intermediate_size
    matmul = c.n_layer * (qkv + proj + mlp) + c.n_embd * c.padded_vocab_size
    attention = passes * c.n_layer * c.n_head * c.head_size * seq_len  # QK^T and AV, causal half
    return passes * matmul + attention
