"""LitGPT's side of each workload, run from the LitGPT venv (python -m venv --system-site-packages plus
`pip install litgpt`). Fine-tuning goes through LitGPT's own `setup` functions (what `litgpt finetune_*` calls);
pretraining runs LitGPT's own `fit` on a model built as its `main` builds it, without the `torch.compile` that its
`main` applies unconditionally (ours runs eager too; compiling a 30-layer model on 2 CPU cores takes minutes)."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import (
    StepClock,
    TimedTurn,
    decode_weight_bytes,
    measured_matmul_flops,
    peak_rss_mb,
    reset_peak_rss,
)


def prepare(p: dict[str, Any]) -> dict[str, Any]:
    """Write LitGPT's model_config.yaml for `name` (with the workload's `config_overrides`) beside the shared
    weights; load them strictly as a check."""
    import torch
    from litgpt import GPT, Config
    from litgpt.utils import save_config

    ckpt = Path(p["checkpoint_dir"])
    config = Config.from_name(p["name"], **p.get("config_overrides", {}))
    save_config(config, ckpt)
    model = GPT(config)
    model.load_state_dict(torch.load(ckpt / "lit_model.pth", mmap=True, weights_only=True), strict=True)
    return {"params": sum(t.numel() for t in model.parameters())}


def _train_args(p: dict[str, Any], **overrides):
    from litgpt.args import TrainArgs

    args = dict(
        global_batch_size=p["micro_batch"],
        micro_batch_size=p["micro_batch"],
        max_steps=p.get("steps"),
        epochs=None,
        max_seq_length=p["seq_len"],
        lr_warmup_steps=1,
        save_interval=None,
        log_interval=1,
    )
    args.update(overrides)
    return TrainArgs(**args)


def _eval_args():
    from litgpt.args import EvalArgs

    return EvalArgs(interval=10**9, max_iters=1, max_new_tokens=0, initial_validation=False, final_validation=False)


def _blocks(path: Path, n: int, seq_len: int):
    import numpy as np
    import torch

    tokens = np.load(path, mmap_mode="r")
    return torch.from_numpy(np.array(tokens[: n * seq_len + 1])).unfold(0, seq_len + 1, seq_len)[:n].clone()


def pretrain(p: dict[str, Any]) -> dict[str, Any]:
    """LitGPT's pretrain `fit` (AdamW, clipping, chunked cross-entropy) from the shared initial weights; with
    `compile`, the model goes through `torch.compile` before `fabric.setup`, as LitGPT's pretrain `main` does."""
    import lightning as L
    from litgpt import GPT, Config
    from litgpt.pretrain import fit
    from litgpt.utils import instantiate_torch_optimizer
    from torch.utils.data import DataLoader

    mb, T, steps = p["micro_batch"], p["seq_len"], p["steps"]
    fabric = L.Fabric(accelerator=p.get("device", "cpu"), devices=1, precision=p.get("precision", "32-true"))
    fabric.seed_everything(p["seed"])
    config = Config.from_name(p["name"], **p.get("config_overrides", {}))
    with fabric.init_module(empty_init=True):
        model = GPT(config)
    model.max_seq_length = T
    if p.get("compile"):
        import torch

        model = torch.compile(model)
    model = fabric.setup(model)
    optimizer = instantiate_torch_optimizer(
        {"class_path": "torch.optim.AdamW", "init_args": {"lr": 4e-4, "weight_decay": 0.1, "betas": (0.9, 0.95)}},
        model.parameters(),
        fused=False,
    )
    optimizer = fabric.setup_optimizers(optimizer)
    blocks = _blocks(Path(p["data_dir"]) / "tokens.npy", mb * (steps + 1), T)
    train_dl = DataLoader(blocks[: mb * steps], batch_size=mb)
    val_dl = DataLoader(blocks[mb * steps :], batch_size=mb)
    train_dl, val_dl = fabric.setup_dataloaders(train_dl, val_dl)  # as LitGPT's main does: batches on the device
    fabric.load_raw(Path(p["checkpoint_dir"]) / "lit_model.pth", model)
    state = {"model": model, "optimizer": optimizer, "train_dataloader": train_dl, "iter_num": 0, "step_count": 0}
    clock = StepClock()
    with tempfile.TemporaryDirectory() as out:
        fit(
            fabric=fabric,
            devices=1,
            state=state,
            train_dataloader=train_dl,
            val_dataloader=val_dl,
            out_dir=Path(out),
            tokenizer_dir=None,
            train=_train_args(p, max_steps=None, max_tokens=mb * T * steps, max_norm=1.0),
            eval=_eval_args(),
        )
    peak = measured_matmul_flops(device=p.get("device", "cpu"))  # still this worker's turn under lockstep
    clock.close()
    seconds, timed = clock.steady()
    return {
        "tokens_per_s": mb * T * timed / seconds,
        **clock.memory(),
        "steps_timed": timed,
        "matmul_peak_flops": peak,
    }


def _json_data(p: dict[str, Any]):
    from litgpt.data import JSON

    return JSON(Path(p["data_dir"]), mask_prompt=True, prompt_style="alpaca")


def _as_cli(checkpoint_dir: str) -> None:
    """LitGPT's finetune scripts re-parse sys.argv at the end to save hyperparameters.yaml: show them the command
    line they would have been started with."""
    sys.argv = ["litgpt", checkpoint_dir]


def _real_tokens(data) -> int:
    return sum(len(data.train_dataset[i]["input_ids"]) for i in range(len(data.train_dataset)))


def finetune_full(p: dict[str, Any]) -> dict[str, Any]:
    """`litgpt finetune_full --data JSON` for one epoch: LitGPT pads each micro batch to its longest sample."""
    from litgpt.finetune.full import setup

    data = _json_data(p)
    _as_cli(p["checkpoint_dir"])
    clock = StepClock()
    with tempfile.TemporaryDirectory() as out:
        setup(
            Path(p["checkpoint_dir"]),
            out_dir=Path(out),
            precision=p.get("precision", "32-true"),
            data=data,
            train=_train_args(p, max_steps=None, epochs=1),
            eval=_eval_args(),
            optimizer="AdamW",
            seed=p["seed"],
        )
    clock.close()
    seconds, timed = clock.steady()
    total, real = len(clock.ends), _real_tokens(data)
    return {
        "tokens_per_s": real / (seconds * total / timed),
        **clock.memory(),
        "steps": total,
        "real_tokens": real,
    }


def finetune_lora(p: dict[str, Any]) -> dict[str, Any]:
    """`litgpt finetune_lora --lora_r 8 [--quantize bnb.nf4]` on records longer than max_seq_length (every batch is
    seq_len long)."""
    from litgpt.finetune.lora import setup

    _as_cli(p["checkpoint_dir"])
    clock = StepClock()
    with tempfile.TemporaryDirectory() as out:
        setup(
            Path(p["checkpoint_dir"]),
            out_dir=Path(out),
            precision=p.get("precision", "32-true"),
            lora_r=8,
            lora_alpha=16,
            lora_dropout=0.05,
            lora_query=True,
            lora_key=False,
            lora_value=True,
            quantize=p.get("quantize"),
            data=_json_data(p),
            train=_train_args(p, epochs=10**6),  # LitGPT's LoRA insists on epochs; max_steps ends the run
            eval=_eval_args(),
            optimizer="AdamW",
            seed=p["seed"],
        )
    clock.close()
    seconds, timed = clock.steady()
    return {
        "tokens_per_s": p["micro_batch"] * p["seq_len"] * timed / seconds,
        **clock.memory(),
        "steps_timed": timed,
    }


def _decode_fabric(p: dict[str, Any]):
    """The Fabric `litgpt generate` builds: `--quantize bnb.*` swaps the precision for bitsandbytes' plugin."""
    import lightning as L
    import torch

    precision, plugins = p["precision"], None
    if p.get("quantize"):
        from lightning.fabric.plugins import BitsandbytesPrecision

        dtype = {"16-true": torch.float16, "bf16-true": torch.bfloat16, "32-true": torch.float32}[precision]
        precision, plugins = None, BitsandbytesPrecision(p["quantize"][4:], dtype)
    return L.Fabric(accelerator=p.get("device", "cpu"), devices=1, precision=precision, plugins=plugins)


def _decode_model(p: dict[str, Any], fabric, prompt_length: int):
    """LitGPT's GPT with its KV cache for one prompt, loaded (and quantized) as `litgpt generate` loads it."""
    import torch
    from litgpt import GPT, Config
    from litgpt.utils import load_checkpoint

    ckpt = Path(p["checkpoint_dir"])
    config = Config.from_file(ckpt / "model_config.yaml")
    with fabric.init_module(empty_init=True):
        model = GPT(config)
    if not p.get("quantize"):
        model.load_state_dict(torch.load(ckpt / "lit_model.pth", mmap=True, weights_only=True))
    model.max_seq_length = prompt_length + p["max_new_tokens"]
    with fabric.init_tensor():
        model.set_kv_cache(batch_size=1)
    model.eval()
    model = fabric.setup_module(model)
    if p.get("quantize"):  # bitsandbytes quantizes the weights as they are loaded into the set-up model
        load_checkpoint(fabric, model, ckpt / "lit_model.pth")
    return model


def decode(p: dict[str, Any]) -> dict[str, Any]:
    """Greedy decode, batch 1, with LitGPT's `generate` (what `litgpt generate` runs), generating exactly
    `max_new_tokens` (eos_id=None). With `compile`, the decode step is compiled as `litgpt generate --compile` does;
    with `quantize`, the model is quantized as `litgpt generate --quantize` does."""
    import torch
    from litgpt import Tokenizer
    from litgpt.generate import base

    fabric = _decode_fabric(p)
    ids = Tokenizer(Path(p["checkpoint_dir"])).encode(p["prompt"], device=fabric.device)
    if p.get("compile"):  # as litgpt/generate/base.py main() does for --compile
        torch._dynamo.config.automatic_dynamic_shapes = True
        torch._inductor.config.triton.unique_kernel_names = True
        torch._inductor.config.coordinate_descent_tuning = True
        base.next_token = torch.compile(base.next_token, mode="reduce-overhead")
    model = _decode_model(p, fabric, len(ids))

    def run(max_new: int) -> tuple[float, int]:
        t = time.perf_counter()
        out = base.generate(
            model, ids, len(ids) + max_new, temperature=0.0, top_k=None, eos_id=None, include_prompt=False
        )
        n = len(out.tolist())  # the tokens on the host: the GPU is done
        return time.perf_counter() - t, n

    with torch.inference_mode():
        run(p["max_new_tokens"])
        TimedTurn().begin()  # under the runner's lockstep: time while the peer waits
        rates = []
        for _ in range(p["reps"]):
            seconds, n = run(p["max_new_tokens"])
            rates.append(n / seconds)
    rates.sort()
    out = {"tokens_per_s": rates[len(rates) // 2], "new_tokens": n, "weight_bytes": decode_weight_bytes(model)}
    out["peak_rss_mb"] = peak_rss_mb()
    if fabric.device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def convert(p: dict[str, Any]) -> dict[str, Any]:
    """`litgpt convert_to_litgpt` on a copy of the HF folder (it writes lit_model.pth next to the HF files)."""
    import shutil

    from litgpt.scripts.convert_hf_checkpoint import convert_hf_checkpoint

    with tempfile.TemporaryDirectory() as out:
        ckpt = Path(out) / "ckpt"
        ckpt.mkdir()
        for f in Path(p["hf_dir"]).iterdir():
            (ckpt / f.name).symlink_to(f) if f.stat().st_size > 1 << 20 else shutil.copy2(f, ckpt / f.name)
        reset_peak_rss()
        t = time.perf_counter()
        convert_hf_checkpoint(checkpoint_dir=ckpt, model_name=p["litgpt_model_name"])
        seconds = time.perf_counter() - t
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb()}


WORKLOADS = {
    "prepare": prepare,
    "pretrain": pretrain,
    "finetune_full": finetune_full,
    "finetune_lora": finetune_lora,
    "decode": decode,
    "convert": convert,
}
