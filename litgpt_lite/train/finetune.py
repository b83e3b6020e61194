"""`litgpt_lite finetune_full` and `litgpt_lite finetune_lora` (alias `finetune`; QLoRA is `--quantize bnb.nf4`).

Both are the same run with a different recipe; the defaults fine-tune SmolLM2-135M-Instruct on the bundled
instruction set in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from litgpt_lite.data.base import DataModule
from litgpt_lite.errors import UserError
from litgpt_lite.train.args import EvalArgs, TrainArgs
from litgpt_lite.train.hparams import hyperparameters
from litgpt_lite.train.runtime import Run, Strategy, launch

Quantize = Literal["bnb.nf4", "bnb.nf4-dq", "bnb.fp4", "bnb.fp4-dq"]

# Sized for the main job: the bundled set (~170 samples) on a 135M model, 2 CPU cores, well under 3 minutes.
FINETUNE_TRAIN = TrainArgs(
    global_batch_size=8,
    micro_batch_size=4,
    max_steps=20,
    epochs=None,
    max_seq_length=256,
    lr_warmup_steps=2,
    min_lr=0.0,
    save_interval=None,
    log_interval=1,
)
# Validation on the same 8 held-out samples before and after training: a steadier signal than single-step losses.
FINETUNE_EVAL = EvalArgs(interval=1000, max_iters=2, max_new_tokens=30, initial_validation=True)


def finetune_full(
    checkpoint_dir: Path,
    out_dir: Path = Path("out/finetune/full"),
    data: DataModule | None = None,
    train: TrainArgs = FINETUNE_TRAIN,
    eval: EvalArgs = FINETUNE_EVAL,
    optimizer: str | dict = "AdamW",
    precision: str | None = None,
    devices: int | str = 1,
    num_nodes: int = 1,
    strategy: Strategy = "auto",
    fsdp_cpu_offload: bool = False,
    logger_name: str = "csv",
    resume: bool | str | Path = False,
    seed: int = 42,
) -> dict:
    """Fine-tune every weight of a checkpoint.

    Args:
        checkpoint_dir: the litgpt_lite checkpoint dir to start from.
        out_dir: where checkpoints, logs, hyperparameters.yaml and the fine-tuned checkpoint (out_dir/final) go.
        data: JSON, Chat or Instructions (the bundled set, the default); `--data.packing true` packs samples.
        train: training length, batch sizes, schedule and levers.
        eval: validation interval and size, and the sample generated at each validation.
        optimizer: a torch.optim / bitsandbytes.optim name, or {class_path, init_args}; --optimizer.lr 3e-4 works.
        precision: 32-true, bf16-true, bf16-mixed, ...; defaults to bf16 where the hardware has it, else 32-true.
        devices: devices (processes) per node.
        num_nodes: number of nodes.
        strategy: auto (DDP when more than one device), ddp, or fsdp (FSDP2 sharding).
        fsdp_cpu_offload: with fsdp on CUDA, keep parameter shards in CPU memory.
        logger_name: csv, tensorboard or wandb (a CSV file is always written for `litgpt_lite plot`).
        resume: "auto" continues from the newest checkpoint in out_dir (if any); a path resumes that checkpoint.
        seed: random seed (data order, validation split).
    """
    data = _default_data(data)
    hparams = hyperparameters(finetune_full, locals())
    from litgpt_lite.train.recipes import FullRecipe

    return _launch(FullRecipe("full"), hparams, locals(), {"lr": 2e-5, "weight_decay": 0.0})


def finetune_lora(
    checkpoint_dir: Path,
    out_dir: Path = Path("out/finetune/lora"),
    lora_r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.05,
    lora_query: bool = True,
    lora_key: bool = False,
    lora_value: bool = True,
    lora_projection: bool = False,
    lora_mlp: bool = False,
    lora_head: bool = False,
    lora_dora: bool = False,
    quantize: Quantize | None = None,
    data: DataModule | None = None,
    train: TrainArgs = FINETUNE_TRAIN,
    eval: EvalArgs = FINETUNE_EVAL,
    optimizer: str | dict = "AdamW",
    precision: str | None = None,
    devices: int | str = 1,
    num_nodes: int = 1,
    strategy: Strategy = "auto",
    fsdp_cpu_offload: bool = False,
    logger_name: str = "csv",
    resume: bool | str | Path = False,
    seed: int = 42,
) -> dict:
    """Fine-tune low-rank adapters (LoRA) on a frozen checkpoint; with --quantize the frozen base is 4-bit (QLoRA).

    Args:
        checkpoint_dir: the litgpt_lite checkpoint dir to adapt.
        out_dir: where checkpoints, logs and the adapters (out_dir/final/lit_model.lora.safetensors) go; turn them
            into a full checkpoint with `litgpt_lite merge_lora out_dir/final`.
        lora_r: adapter rank.
        lora_alpha: adapter scale numerator (the update is scaled by alpha / r).
        lora_dropout: dropout on the adapter's input.
        lora_query: adapt the query projection.
        lora_key: adapt the key projection.
        lora_value: adapt the value projection.
        lora_projection: adapt the attention output projection.
        lora_mlp: adapt the MLP layers.
        lora_head: adapt the output head.
        lora_dora: weight-decomposed adapters (DoRA).
        quantize: store the frozen base Linear weights in 4 bits with bitsandbytes (QLoRA): nf4 or fp4, "-dq" adds
            double quantization.
        data: JSON, Chat or Instructions (the bundled set, the default); `--data.packing true` packs samples.
        train: training length, batch sizes, schedule and levers.
        eval: validation interval and size, and the sample generated at each validation.
        optimizer: a torch.optim / bitsandbytes.optim name, or {class_path, init_args}; --optimizer.lr 3e-4 works.
        precision: 32-true, bf16-true, bf16-mixed, ...; defaults to bf16 where the hardware has it, else 32-true.
        devices: devices (processes) per node.
        num_nodes: number of nodes.
        strategy: auto (DDP when more than one device), ddp, or fsdp (FSDP2 sharding).
        fsdp_cpu_offload: with fsdp on CUDA, keep parameter shards in CPU memory.
        logger_name: csv, tensorboard or wandb (a CSV file is always written for `litgpt_lite plot`).
        resume: "auto" continues from the newest checkpoint in out_dir (if any); a path resumes that checkpoint.
        seed: random seed (adapter init, dropout, data order, validation split).
    """
    data = _default_data(data)
    hparams = hyperparameters(finetune_lora, locals())
    if quantize is not None and strategy == "fsdp":
        raise UserError("--quantize (QLoRA) cannot be sharded with --strategy fsdp: use ddp")
    if quantize is not None and precision == "64-true":  # bitsandbytes' 4-bit matmul gives non-finite float64 grads
        raise UserError("--quantize (QLoRA) cannot train in --precision 64-true: use 32-true, bf16-true or bf16-mixed")
    try:
        from litgpt_lite.lora import LoRARecipe
    except ImportError as e:
        raise UserError(f"LoRA is not available in this install ({e})") from None
    recipe = LoRARecipe(
        r=lora_r,
        alpha=lora_alpha,
        dropout=lora_dropout,
        query=lora_query,
        key=lora_key,
        value=lora_value,
        projection=lora_projection,
        mlp=lora_mlp,
        head=lora_head,
        dora=lora_dora,
        quantize=quantize,
    )
    return _launch(recipe, hparams, locals(), {"lr": 2e-3, "weight_decay": 0.0})


def _default_data(data: DataModule | None) -> DataModule:
    from litgpt_lite.data.sft import Instructions

    return data if data is not None else Instructions()


def _launch(recipe, hparams: dict, args: dict, optimizer_defaults: dict) -> dict:
    run = Run(
        recipe=recipe,
        out_dir=Path(args["out_dir"]),
        data=args["data"],
        train=args["train"],
        eval=args["eval"],
        optimizer=args["optimizer"],
        optimizer_defaults=optimizer_defaults,
        hparams=hparams,
        checkpoint_dir=Path(args["checkpoint_dir"]),
        precision=args["precision"],
        devices=args["devices"],
        num_nodes=args["num_nodes"],
        strategy=args["strategy"],
        fsdp_cpu_offload=args["fsdp_cpu_offload"],
        logger_name=args["logger_name"],
        resume=args["resume"],
        seed=args["seed"],
    )
    return launch(run)
