"""`litgpt_lite pretrain`: train a model from scratch (or continue from a checkpoint) on plain text."""

from __future__ import annotations

from pathlib import Path

import torch

from litgpt_lite.config import Config
from litgpt_lite.data.base import DataModule
from litgpt_lite.errors import UserError
from litgpt_lite.train.args import EvalArgs, TrainArgs
from litgpt_lite.train.hparams import hyperparameters
from litgpt_lite.train.runtime import Run, Strategy, launch


def pretrain(
    model_name: str | None = None,
    model_config: Config | None = None,
    out_dir: Path = Path("out/pretrain"),
    initial_checkpoint_dir: Path | None = None,
    tokenizer_dir: Path | None = None,
    data: DataModule | str | None = None,
    train: TrainArgs = TrainArgs(
        global_batch_size=16,
        micro_batch_size=4,
        max_tokens=None,
        max_steps=None,
        epochs=1,
        max_seq_length=None,
        lr_warmup_steps=20,
        min_lr=4e-5,
        save_interval=100,
        log_interval=1,
    ),
    eval: EvalArgs = EvalArgs(interval=50, max_iters=20, max_new_tokens=20),
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
    """Pretrain a GPT on text.

    Args:
        model_name: a registered model name (e.g. pythia-14m); its config is built from scratch.
        model_config: a full model config instead of a name (see config_hub/pretrain/debug.yaml).
        out_dir: where checkpoints, logs, hyperparameters.yaml and the final checkpoint (out_dir/final) go.
        initial_checkpoint_dir: continue pretraining from these weights instead of a random init.
        tokenizer_dir: the tokenizer to use; defaults to initial_checkpoint_dir's, else the bundled one.
        data: a data module (TextFiles, TokenShardData, LitData, BundledCorpus) or a token shard dir written by
            prepare_code; defaults to the bundled corpus.
        train: training length, batch sizes, schedule and levers.
        eval: validation interval and size.
        optimizer: a torch.optim / bitsandbytes.optim name, or {class_path, init_args}; --optimizer.lr 3e-4 works.
        precision: 32-true, bf16-true, bf16-mixed, ...; defaults to bf16 where the hardware has it, else 32-true.
        devices: devices (processes) per node.
        num_nodes: number of nodes.
        strategy: auto (DDP when more than one device), ddp, or fsdp (FSDP2 sharding).
        fsdp_cpu_offload: with fsdp on CUDA, keep parameter shards in CPU memory.
        logger_name: csv, tensorboard or wandb (a CSV file is always written for `litgpt_lite plot`).
        resume: "auto" continues from the newest checkpoint in out_dir (if any); a path resumes that checkpoint.
        seed: random seed (initialisation, data order).
    """
    from litgpt_lite.data.text import BUNDLED_TOKENIZER, BundledCorpus

    if data is None:
        data = BundledCorpus()
    hparams = hyperparameters(pretrain, locals())
    from litgpt_lite.train.recipes import FullRecipe

    config = _model_config(model_name, model_config, initial_checkpoint_dir)
    if tokenizer_dir is None:
        tokenizer_dir = initial_checkpoint_dir if initial_checkpoint_dir is not None else BUNDLED_TOKENIZER
    if isinstance(data, str):
        data = _data_from_path(data)
    run = Run(
        recipe=FullRecipe("pretrain"),
        out_dir=Path(out_dir),
        data=data,
        train=train,
        eval=eval,
        optimizer=optimizer,
        optimizer_defaults={"lr": 4e-4, "weight_decay": 0.1, "betas": (0.9, 0.95)},
        hparams=hparams,
        checkpoint_dir=initial_checkpoint_dir,
        model_config=config,
        tokenizer_dir=tokenizer_dir,
        precision=precision,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        fsdp_cpu_offload=fsdp_cpu_offload,
        logger_name=logger_name,
        resume=resume,
        seed=seed,
        init_weights=None if initial_checkpoint_dir is not None else init_weights,
    )
    return launch(run)


def _data_from_path(path: str) -> DataModule:
    """`--data <dir>`: a token shard dir (prepare_code output) or a folder of .txt files."""
    from litgpt_lite.data.text import TextFiles, TokenShardData, shard_dir_if_any

    if shard_dir_if_any(path) is not None:
        return TokenShardData(Path(path))
    if Path(path).is_dir() and any(Path(path).rglob("*.txt")):
        return TextFiles(Path(path))
    raise UserError(
        f"--data {path} is not a data module name, a token shard dir (with manifest.json) or a folder of .txt files"
    )


def _model_config(model_name: str | None, model_config: Config | None, initial_checkpoint_dir: Path | None) -> Config:
    given = [x is not None for x in (model_name, model_config, initial_checkpoint_dir)]
    if sum(given[:2]) > 1:
        raise UserError("Pass either a model name or --model_config, not both")
    if initial_checkpoint_dir is not None and not any(given[:2]):
        from litgpt_lite.checkpoint import load_config, validate_checkpoint_dir

        return load_config(validate_checkpoint_dir(initial_checkpoint_dir))
    if model_config is not None:
        return model_config
    if model_name is not None:
        return Config.from_name(model_name)
    raise UserError("Pass a model: a name (litgpt_lite pretrain pythia-14m) or --config config_hub/pretrain/debug.yaml")


def init_weights(model: torch.nn.Module, std: float = 0.02) -> None:
    """GPT-2 style init: normal(0, 0.02) weights, zero biases; residual projections scaled by 1/sqrt(2 n_layer)."""
    n_layer = model.config.n_layer
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            scale = (2 * n_layer) ** -0.5 if name.endswith(("attn.proj", "mlp.proj")) else 1.0
            torch.nn.init.normal_(module.weight, mean=0.0, std=std * scale)
            if getattr(module, "bias", None) is not None:
                torch.nn.init.zeros_(module.bias)
