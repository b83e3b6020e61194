"""litgpt_lite's side of each workload, through the user-facing entrypoints (the functions the CLI commands call)
and their ordinary flags. Each function takes the workload's parameters and returns its measurements."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import (
    StepClock,
    TimedTurn,
    decode_weight_bytes,
    measured_copy_rate,
    measured_matmul_flops,
    peak_rss_mb,
    reset_peak_rss,
)
from bench_dpo import dpo, dpo_trl


def _train_args(p: dict[str, Any], **overrides):
    from litgpt_lite.train.args import TrainArgs

    args = dict(
        global_batch_size=p["micro_batch"],
        micro_batch_size=p["micro_batch"],
        max_steps=p.get("steps"),
        epochs=None,
        max_seq_length=p["seq_len"],
        lr_warmup_steps=0,
        save_interval=None,
        log_interval=1,
        compile=False,  # eager unless a workload asks (the default, auto, compiles on CUDA; LitGPT's side is eager)
    )
    args.update(overrides)
    return TrainArgs(**args)


def _eval_args():
    from litgpt_lite.train.args import EvalArgs

    return EvalArgs(interval=10**9, max_iters=1, max_new_tokens=0, initial_validation=False, final_validation=False)


def _train_result(clock: StepClock, tokens_per_step: float, peak_flops: float | None = None) -> dict[str, Any]:
    seconds, steps = clock.steady()
    out = {"tokens_per_s": tokens_per_step * steps / seconds, **clock.memory(), "steps_timed": steps}
    if peak_flops:
        out["matmul_peak_flops"] = peak_flops
    return out


def pretrain(p: dict[str, Any]) -> dict[str, Any]:
    """`litgpt_lite pretrain --initial_checkpoint_dir ... --data <token shard dir> [--train.compile true]`."""
    from litgpt_lite.data.text import TokenShardData
    from litgpt_lite.train.pretrain import pretrain as run_pretrain

    clock = StepClock()
    with tempfile.TemporaryDirectory() as out:
        run_pretrain(
            initial_checkpoint_dir=Path(p["checkpoint_dir"]),
            out_dir=Path(out),
            data=TokenShardData(Path(p["data_dir"]) / "tokens", val_split_fraction=0.01),
            train=_train_args(p, compile=p.get("compile", False)),
            eval=_eval_args(),
            precision=p.get("precision", "32-true"),
            seed=p["seed"],
        )
    peak = measured_matmul_flops(device=p.get("device", "cpu"))  # still this worker's turn under lockstep
    clock.close()
    return _train_result(clock, p["micro_batch"] * p["seq_len"], peak)


def _sft_data(p: dict[str, Any]):
    from litgpt_lite.data.sft import JSON

    return JSON(Path(p["data_dir"]), mask_prompt=True, prompt_style="alpaca", packing=p.get("packing", True))


def _sft_real_tokens(p: dict[str, Any]) -> tuple[int, int]:
    """(tokens without padding, packed rows) of one epoch of the SFT set, tokenized exactly as the run did."""
    from litgpt_lite.data.base import DataContext
    from litgpt_lite.tokenizer import Tokenizer

    tokenizer = Tokenizer(p["checkpoint_dir"])
    ctx = DataContext(tokenizer, p["seq_len"], p["seed"], None, Path(p["checkpoint_dir"]))
    real = _sft_data({**p, "packing": False}).build(ctx).train.num_tokens()
    rows = len(_sft_data(p).build(ctx).train)
    return real, rows


def _epoch_result(clock: StepClock, real_tokens: int, rows: int, micro_batch: int) -> dict[str, Any]:
    """Real (non-padding) tokens per second. Our loop fills its last step with the next epoch's first rows, so the
    run trains on steps x micro_batch packed rows, each holding real_tokens / rows real tokens on average; the
    warm-up step is timed at the steady-state rate."""
    seconds, steps = clock.steady()
    total = len(clock.ends)
    trained = real_tokens * total * micro_batch / rows
    return {
        "tokens_per_s": trained / (seconds * total / steps),
        **clock.memory(),
        "steps": total,
        "real_tokens": real_tokens,
        "packed_rows": rows,
    }


def finetune_full(p: dict[str, Any]) -> dict[str, Any]:
    """`litgpt_lite finetune_full --data JSON --data.packing true`, one epoch, fp32."""
    from litgpt_lite.train.finetune import finetune_full as run

    clock = StepClock()
    with tempfile.TemporaryDirectory() as out:
        run(
            checkpoint_dir=Path(p["checkpoint_dir"]),
            out_dir=Path(out),
            data=_sft_data(p),
            train=_train_args(p, max_steps=None, epochs=1, max_norm=None),
            eval=_eval_args(),
            precision=p.get("precision", "32-true"),
            seed=p["seed"],
        )
    clock.close()
    return _epoch_result(clock, *_sft_real_tokens(p), p["micro_batch"])


def finetune_lora(p: dict[str, Any]) -> dict[str, Any]:
    """`litgpt_lite finetune_lora --train.chunked_ce N [--quantize bnb.nf4]`, fp32, on records longer than
    max_seq_length: both sides truncate them to exactly seq_len tokens, so every micro batch has the same shape."""
    from litgpt_lite.train.finetune import finetune_lora as run

    clock = StepClock()
    with tempfile.TemporaryDirectory() as out:
        run(
            checkpoint_dir=Path(p["checkpoint_dir"]),
            out_dir=Path(out),
            lora_r=8,
            lora_alpha=16,
            lora_dropout=0.05,
            quantize=p.get("quantize"),
            data=_sft_data({**p, "packing": False}),
            train=_train_args(p, chunked_ce=p.get("chunked_ce", 0), max_norm=None),
            eval=_eval_args(),
            precision=p.get("precision", "32-true"),
            seed=p["seed"],
        )
    clock.close()
    return _train_result(clock, p["micro_batch"] * p["seq_len"])


# ---------------------------------------------------------------- inference
def _prompt_ids(llm, text: str) -> list[int]:
    return llm.tokenizer.encode(text)


def _timed_generate(llm, prompts: list[list[int]], max_new_tokens: int, ignore_eos: bool = False):
    """(seconds, generated tokens) of one greedy run of the generation core that `LLM.generate` uses."""
    from litgpt_lite.generate import generate_completions

    params = llm._params(max_new_tokens, 0.0, None, 1.0, None, None, ignore_eos)
    t = time.perf_counter()
    out = generate_completions(llm.model, llm.tokenizer, prompts, params)
    return time.perf_counter() - t, sum(len(c.token_ids) for c in out)


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _load(p: dict[str, Any]):
    from litgpt_lite.api import LLM

    device = p.get("device", "cpu")
    return LLM.load(
        p["checkpoint_dir"],
        device=device,
        precision=p["precision"],
        quantize=p.get("quantize"),
        compile=p.get("compile", False),
    )


def decode(p: dict[str, Any]) -> dict[str, Any]:
    """Greedy decode, batch 1: `LLM.load(..., precision=..., quantize=..., compile=...)`, then the generation core,
    generating exactly `max_new_tokens` (no stop at eos, like LitGPT's side); tokens/s over the whole call (prefill
    + decode), median of `reps` after one full-length warm-up (which also compiles, when asked). Also the bytes of
    the weights a step reads and, on a GPU, the peak memory."""
    import torch

    llm = _load(p)
    ids = [_prompt_ids(llm, p["prompt"])]
    _timed_generate(llm, ids, p["max_new_tokens"], True)
    TimedTurn().begin()  # under the runner's lockstep: time while the peer waits
    rates = []
    for _ in range(p["reps"]):
        seconds, n = _timed_generate(llm, ids, p["max_new_tokens"], True)
        rates.append(n / seconds)
    out = {"tokens_per_s": _median(rates), "new_tokens": n, "weight_bytes": decode_weight_bytes(llm.model)}
    out["peak_rss_mb"] = peak_rss_mb()
    if torch.cuda.is_available() and p.get("device") == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def device_peaks(p: dict[str, Any]) -> dict[str, Any]:
    """What this device does at best right now, the denominators of the GPU suite's fractions: the bf16 matmul
    FLOP/s on a GPU (fp32 on a CPU) and the device-to-device copy rate in bytes moved per second."""
    device = p.get("device", "cpu")
    return {"matmul_peak_flops": measured_matmul_flops(device=device), "copy_bytes_per_s": measured_copy_rate(device)}


def batched_decode(p: dict[str, Any]) -> dict[str, Any]:
    """Batch-1 rate on the first prompt vs one left-padded batch of all prompts, alternated in one process.

    Rows run to `max_new_tokens` (`ignore_eos=True`, as throughput benchmarks such as vLLM's do), so both sides
    generate exactly the tokens they compute; the rates with rows stopping at eos are reported beside them."""
    llm = _load(p)
    ids = [_prompt_ids(llm, text) for text in p["prompts"]]
    _timed_generate(llm, ids[:1], 4, True)
    _timed_generate(llm, ids, 4, True)
    rates: dict[str, list[float]] = {}
    for _ in range(p["reps"]):
        for key, prompts, ignore_eos in (
            ("batch1_tokens_per_s", ids[:1], True),
            ("batched_tokens_per_s", ids, True),
            ("batch1_eos_tokens_per_s", ids[:1], False),
            ("batched_eos_tokens_per_s", ids, False),
        ):
            s, n = _timed_generate(llm, prompts, p["max_new_tokens"], ignore_eos)
            rates.setdefault(key, []).append(n / s)
            if key == "batched_eos_tokens_per_s":
                rates.setdefault("batched_eos_tokens", []).append(n)
    out = {key: _median(v) for key, v in rates.items()}
    return {**out, "batch_size": len(ids), "prompt_lengths": [len(i) for i in ids]}


def convert(p: dict[str, Any]) -> dict[str, Any]:
    """`litgpt_lite convert_to_litgpt <HF folder> --out_dir ...`: wall time and the process's peak RSS."""
    from litgpt_lite.convert import convert_to_litgpt

    with tempfile.TemporaryDirectory() as out:
        reset_peak_rss()
        t = time.perf_counter()
        convert_to_litgpt(Path(p["hf_dir"]), out_dir=Path(out) / "ckpt")
        seconds = time.perf_counter() - t
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb()}


WORKLOADS = {
    "pretrain": pretrain,
    "finetune_full": finetune_full,
    "finetune_lora": finetune_lora,
    "decode": decode,
    "batched_decode": batched_decode,
    "convert": convert,
    "device_peaks": device_peaks,
    "dpo": dpo,
    "dpo_trl": dpo_trl,  # TRL runs in our environment
}
