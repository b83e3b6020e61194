"""Tiny models and checkpoints on the bundled tokenizer, shared by the training and data tests."""

from __future__ import annotations

from pathlib import Path

import torch

from litgpt_lite.config import Config
from litgpt_lite.data.text import BUNDLED_TOKENIZER

TINY = dict(
    name="tiny",
    block_size=128,
    vocab_size=1024,
    padding_multiple=64,
    n_layer=2,
    n_embd=32,
    n_head=4,
    n_query_groups=2,
    intermediate_size=64,
    norm_class="RMSNorm",
    mlp_class="LLaMAMLP",
)


def train_args(steps: int, **overrides):
    """Short TrainArgs for the tiny models: `steps` optimizer steps of 8 x 128 tokens, logged every step, no
    checkpoints; `overrides` change any field."""
    from litgpt_lite.train.args import TrainArgs

    args = dict(
        global_batch_size=8,
        micro_batch_size=4,
        max_steps=steps,
        max_seq_length=128,
        lr_warmup_steps=2,
        save_interval=None,
        log_interval=1,
    )
    return TrainArgs(**{**args, **overrides})


def tiny_config(**overrides) -> Config:
    return Config(**{**TINY, **overrides})


def tiny_checkpoint(out_dir: Path, seed: int = 0, prompt_style: str = "alpaca", **overrides) -> Path:
    """A random tiny GPT saved as a checkpoint dir with the bundled tokenizer."""
    from litgpt_lite.checkpoint import save_checkpoint
    from litgpt_lite.model import GPT
    from litgpt_lite.train.pretrain import init_weights

    torch.manual_seed(seed)
    config = tiny_config(**overrides)
    model = GPT(config)
    init_weights(model)
    return save_checkpoint(model, config, out_dir, tokenizer_dir=BUNDLED_TOKENIZER, prompt_style=prompt_style)


def losses(out_dir: Path) -> list[float]:
    """The training losses a run logged to out_dir/logs/metrics.csv (one per logged step; a resumed run's file
    keeps the rows up to the step it resumed from)."""
    from litgpt_lite.train.loggers import read_metrics

    return [float(row["loss"]) for row in read_metrics(Path(out_dir) / "logs" / "metrics.csv") if row["loss"]]
