"""Shared setup for every training entrypoint: check the inputs, start Fabric, build the pieces, call `fit`.

Entrypoints (pretrain.py, finetune.py) only say which recipe, which model and which defaults; everything else is
here once: precision and strategy choice, data, model, levers, optimizer, schedule, resume, logging, export.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from litgpt_lite.errors import UserError
from litgpt_lite.train.args import EvalArgs, TrainArgs

Strategy = Literal["auto", "ddp", "fsdp"]
# Dense bf16 peak FLOP/s of known accelerators, for MFU (matched on the device name).
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "L4": 121e12,
    "4090": 165e12,
    "3090": 71e12,
    "V100": 125e12,
    "A6000": 155e12,
}


@dataclass
class Run:
    """Everything an entrypoint decided; `launch` turns it into a training run."""

    recipe: Any
    out_dir: Path
    data: Any
    train: TrainArgs
    eval: EvalArgs
    optimizer: str | dict
    optimizer_defaults: dict[str, Any]
    hparams: dict[str, Any]
    checkpoint_dir: Path | None = None  # weights to start from (fine-tuning, or pretrain's initial checkpoint)
    model_config: Any = None  # a Config to build from scratch (pretraining)
    tokenizer_dir: Path | None = None
    precision: str | None = None
    devices: int | str = 1
    num_nodes: int = 1
    strategy: Strategy = "auto"
    fsdp_cpu_offload: bool = False
    logger_name: str = "csv"
    resume: bool | str | Path = False
    seed: int = 42
    init_weights: Any = None  # callable(model) for from-scratch models
    result: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- checks before any compute
def check_inputs(run: Run) -> None:
    from litgpt_lite.train.loggers import check_logger_name
    from litgpt_lite.train.optim import check_init_args, resolve_optimizer_class, split_spec

    run.train.validate(world_size(run))
    run.eval.validate()
    check_logger_name(run.logger_name)
    run.precision = choose_precision(run.precision)
    if run.strategy not in ("auto", "ddp", "fsdp"):
        raise UserError(f"Unknown --strategy {run.strategy!r}: choose auto, ddp or fsdp")
    if run.fsdp_cpu_offload and not torch.cuda.is_available():
        raise UserError("--fsdp_cpu_offload moves GPU shards to CPU memory: it needs CUDA")
    if not hasattr(run.data, "build"):
        raise UserError(f"--data must be a data module (JSON, Chat, Instructions, TextFiles, ...), got {run.data!r}")
    run.data.check()
    name, init_args = split_spec(run.optimizer)
    check_init_args(resolve_optimizer_class(name), init_args)
    if run.checkpoint_dir is not None:
        from litgpt_lite.checkpoint import validate_checkpoint_dir

        validate_checkpoint_dir(run.checkpoint_dir)
    if run.tokenizer_dir is not None and not Path(run.tokenizer_dir).is_dir():
        raise UserError(f"--tokenizer_dir {run.tokenizer_dir} does not exist")


def world_size(run: Run) -> int:
    devices = run.devices
    if isinstance(devices, str):
        devices = (
            torch.cuda.device_count()
            if devices in ("auto", "-1") and torch.cuda.is_available()
            else (int(devices) if devices.isdigit() else 1)
        )
    return max(int(devices), 1) * run.num_nodes


def choose_precision(precision: str | None) -> str:
    """The given precision (aliases like "bf16" resolved), or the hardware's fast training default."""
    from litgpt_lite.precision import normalize_precision

    return normalize_precision(precision, "cuda" if torch.cuda.is_available() else "cpu", training=True)


# ---------------------------------------------------------------- Fabric
def make_fabric(run: Run):
    import lightning as L

    precision = choose_precision(run.precision)
    accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    strategy: Any = "auto"
    if run.strategy == "fsdp":
        from lightning.fabric.strategies import ModelParallelStrategy

        parallelize = functools.partial(_fully_shard, run.train.activation_checkpointing, run.fsdp_cpu_offload)
        strategy = ModelParallelStrategy(
            parallelize_fn=parallelize, data_parallel_size=world_size(run), tensor_parallel_size=1
        )
    elif run.strategy == "ddp" or world_size(run) > 1:
        strategy = "ddp"
    return L.Fabric(
        accelerator=accelerator, devices=run.devices, num_nodes=run.num_nodes, strategy=strategy, precision=precision
    )


def _fully_shard(activation_checkpointing: bool, cpu_offload: bool, model, device_mesh):
    """FSDP2: shard each block, then the root (embeddings, final norm, head)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    mesh = device_mesh["data_parallel"]
    kwargs: dict[str, Any] = {"mesh": mesh}
    if cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    if activation_checkpointing:
        checkpoint_blocks(model)
    for block in model.transformer.h:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


def checkpoint_blocks(model) -> None:
    """Activation checkpointing: each block recomputes its activations in backward (state dict keys unchanged)."""
    from torch.utils.checkpoint import checkpoint

    for block in model.transformer.h:
        inner = block.forward

        def forward(*args, _inner=inner, **kwargs):
            if not torch.is_grad_enabled():
                return _inner(*args, **kwargs)
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward


def launch(run: Run) -> dict[str, Any]:
    """Check inputs, start the processes, train; returns a summary (rank 0's)."""
    check_inputs(run)
    fabric = make_fabric(run)
    fabric.launch(_main, run)
    return run.result


# ---------------------------------------------------------------- the run on each process
def _main(fabric, run: Run) -> None:
    from litgpt_lite.kernels import install_kernels
    from litgpt_lite.train.checkpoints import TrainState, is_sharded, load_training_checkpoint, resolve_resume
    from litgpt_lite.train.loggers import Metrics
    from litgpt_lite.train.loop import FitArgs, fit
    from litgpt_lite.train.optim import build_optimizer, build_scheduler

    fabric.seed_everything(run.seed, verbose=False)
    if run.train.reuse_freed_memory and fabric.device.type == "cpu":
        reuse_freed_memory()
    sharded = is_sharded(fabric)
    if sharded and run.train.chunked_ce:
        raise UserError("--train.chunked_ce runs the head outside the sharded forward: drop it with --strategy fsdp")
    resume_from = resolve_resume(run.resume, run.out_dir)
    tokenizer = _tokenizer(run)
    config = run.model_config if run.model_config is not None else _load_config(run.checkpoint_dir)
    max_seq_length = _max_seq_length(run.train, config)
    if tokenizer is not None and tokenizer.vocab_size > config.padded_vocab_size:
        raise UserError(
            f"The tokenizer has {tokenizer.vocab_size} tokens but the model only {config.padded_vocab_size}: "
            "pass a matching --tokenizer_dir or raise the model's vocab_size"
        )
    splits = _build_data(fabric, run, tokenizer, max_seq_length)
    total_steps = _total_steps(run.train, splits.train)

    model = _build_model(fabric, run, config)
    model = run.recipe.prepare(model)
    if run.train.activation_checkpointing and not sharded:
        checkpoint_blocks(model)
    _report_params(fabric, model)
    raw = model
    if run.train.compile:
        model = torch.compile(model)
    model = fabric.setup_module(model)
    if not sharded:  # frozen layers, validation and samples run without autograd: on a CPU, through the fast paths
        install_kernels(raw, "auto")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError(f"The {run.recipe.name} recipe left no trainable parameters: choose some layers to train")
    optimizer = build_optimizer(run.optimizer, params, run.optimizer_defaults, fabric.device.type)
    optimizer = fabric.setup_optimizers(optimizer)
    scheduler = build_scheduler(optimizer, run.train.lr_warmup_steps, total_steps, run.train.min_lr)

    state = TrainState()
    if resume_from is not None:
        state = load_training_checkpoint(fabric, resume_from, run.recipe, model, optimizer, scheduler)
        fabric.print(f"Resumed from {resume_from} at step {state.step}")
    if fabric.global_rank == 0:
        write_hyperparameters(run.out_dir, run.hparams)
    metrics = Metrics(
        run.out_dir, run.logger_name, state.step if resume_from else None, run.hparams, enabled=fabric.global_rank == 0
    )
    args = FitArgs(
        train=run.train,
        eval=run.eval,
        out_dir=run.out_dir,
        total_steps=total_steps,
        recipe=run.recipe,
        seed=run.seed,
        pad_id=_pad_id(tokenizer),
        metrics=metrics,
        sample=None if sharded else make_sampler(tokenizer, splits.val, run.eval.max_new_tokens),
        flops_per_token=_flops_per_token(raw, max_seq_length),
        peak_flops=_peak_flops(fabric),
        flatten_packed=not run.train.compile and _attends_segmentwise(raw),
    )
    fabric.print(
        f"Training {total_steps} steps of {run.train.global_batch_size} samples "
        f"({run.train.gradient_accumulation_iters(fabric.world_size)} micro batch(es) of "
        f"{run.train.micro_batch_size} per device, {fabric.world_size} device(s), precision "
        f"{fabric.strategy.precision.precision})"
    )
    state = fit(fabric, model, optimizer, scheduler, splits.train, splits.val, args, state)
    metrics.close()
    _export(fabric, run, raw, model, sharded)
    run.result.update(state=state, history=args.history, total_steps=total_steps)


# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def _attends_segmentwise(model: torch.nn.Module) -> bool:
    """Whether every attention layer runs packed samples one segment at a time (eager, no sliding window, no
    softcap). Only then may a micro batch of packed rows run as one long row: a layer that builds the full
    boolean mask would attend over (rows x row length)^2 pairs instead of rows x row length^2. A compiled model
    keeps the fixed row shape too, so new lengths do not recompile it."""
    from litgpt_lite.model import CausalSelfAttention

    return all(m.segmentwise for m in model.modules() if isinstance(m, CausalSelfAttention))


def reuse_freed_memory() -> bool:
    """Make glibc malloc keep freed memory in this process for reuse (see `TrainArgs.reuse_freed_memory`): blocks of
    any size up to 1 GiB come from the heap instead of their own `mmap`, and the heap's free top is never returned
    to the kernel. PyTorch's CPU allocator has no cache of its own, so this is what spares a training step the
    kernel's page faults and zeroing of its largest tensors. Returns False where the C library is not glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc's own symbol: other C libraries' mallopt differ
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def _tokenizer(run: Run):
    from litgpt_lite.tokenizer import Tokenizer

    source = run.tokenizer_dir or run.checkpoint_dir
    if source is None:
        return None
    try:
        return Tokenizer(source)
    except UserError:
        if run.tokenizer_dir is not None:
            raise
        return None


def _load_config(checkpoint_dir: Path | None):
    from litgpt_lite.checkpoint import load_config

    if checkpoint_dir is None:
        raise UserError("Pass a model: a model name, --model_config, or a checkpoint dir")
    return load_config(checkpoint_dir)


def _max_seq_length(train: TrainArgs, config) -> int:
    if train.max_seq_length is None:
        return config.block_size
    if train.max_seq_length > config.block_size:
        print(
            f"note: --train.max_seq_length {train.max_seq_length} exceeds the model's context; using its "
            f"block_size {config.block_size}"
        )
        return config.block_size
    return train.max_seq_length


def _build_data(fabric, run: Run, tokenizer, max_seq_length: int):
    from litgpt_lite.data.base import DataContext

    style = None
    if tokenizer is not None and run.checkpoint_dir is not None:
        from litgpt_lite.prompts import prompt_style_for

        style = prompt_style_for(run.checkpoint_dir, tokenizer)
    elif tokenizer is not None:
        from litgpt_lite.prompts import PromptStyle

        style = PromptStyle.from_name("default")
    ctx = DataContext(tokenizer, max_seq_length, run.seed, style, run.checkpoint_dir)
    with fabric.rank_zero_first():  # tokenization caches are written once
        splits = run.data.build(ctx)
    if len(splits.train) == 0:
        raise UserError(f"{run.data!r} produced no training samples: the dataset is empty")
    for note in splits.notes:
        fabric.print(f"data: {note}")
    fabric.print(f"data: {len(splits.train)} train samples, {len(splits.val) if splits.val else 0} val samples")
    return splits


def _total_steps(train: TrainArgs, dataset) -> int:
    G = train.global_batch_size
    candidates = []
    if train.max_steps is not None:
        candidates.append(train.max_steps)
    if train.epochs is not None:
        candidates.append(math.ceil(train.epochs * len(dataset) / G))
    if train.max_tokens is not None:
        per_sample = dataset.num_tokens() / max(len(dataset), 1) if hasattr(dataset, "num_tokens") else 1
        candidates.append(math.ceil(train.max_tokens / (G * max(per_sample, 1))))
    return max(1, min(candidates))


def _build_model(fabric, run: Run, config):
    from litgpt_lite.checkpoint import load_model
    from litgpt_lite.model import GPT

    if run.checkpoint_dir is not None:
        return load_model(run.checkpoint_dir, device="cpu").train()
    model = GPT(config)
    if run.init_weights is not None:
        run.init_weights(model)
    return model.train()


def _report_params(fabric, model) -> None:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fabric.print(f"Parameters: {trainable:,} trainable of {total:,}")


def _pad_id(tokenizer) -> int:
    if tokenizer is not None and tokenizer.pad_id is not None:
        return tokenizer.pad_id
    return 0


def _flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token: 2N forward, 2N backward through activations, 2N' weight gradients (trainable)."""
    n = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    c = model.config
    attention = 6 * c.n_layer * c.n_head * c.head_size * seq_len  # causal QK^T and AV, forward + backward
    return 4 * n + 2 * n_train + attention


def _peak_flops(fabric) -> float | None:
    if fabric.device.type != "cuda" or "bf16" not in str(fabric.strategy.precision.precision):
        return None
    name = torch.cuda.get_device_name(fabric.device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


def make_sampler(tokenizer, val_data, max_new_tokens: int):
    """A function model -> one generated sample from the first validation prompt, or None if it cannot run."""
    if tokenizer is None or val_data is None or len(val_data) == 0 or max_new_tokens == 0:
        return None
    try:
        from litgpt_lite.generate import SamplingParams, generate_completions
    except ImportError:
        return None
    item = val_data[0]
    trained = (item["labels"] != -100).nonzero()
    first = int(trained[0]) if len(trained) else 0
    # SFT: the prompt is everything before the first answer token; pretraining (every token trained): a short prefix
    prompt = item["input_ids"][: first + 1 if first > 0 else 16].tolist()

    def sample(model) -> str | None:
        from litgpt_lite.train.checkpoints import _raw

        raw = _raw(model)
        was_training = raw.training
        raw.eval()
        try:
            params = SamplingParams(max_new_tokens=max_new_tokens)
            return generate_completions(raw, tokenizer, [prompt], params)[0].text
        except Exception as e:  # noqa: BLE001 - a failed sample must never stop training
            warnings.warn(f"sample generation failed: {type(e).__name__}: {e}", stacklevel=2)
            return None
        finally:
            raw.train(was_training)

    return sample


def _export(fabric, run: Run, raw, model, sharded: bool) -> None:
    final = Path(run.out_dir) / "final"
    base = run.checkpoint_dir or run.tokenizer_dir
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(
            model.module if hasattr(model, "module") else model,
            options=StateDictOptions(full_state_dict=True, cpu_offload=True),
        )
        if fabric.global_rank == 0:
            plain = _plain_copy(run, full)
            run.recipe.export(plain, final, base)
    elif fabric.global_rank == 0:
        run.recipe.export(raw, final, base)
    fabric.barrier()
    if fabric.global_rank == 0:
        write_hyperparameters(final, run.hparams)
        fabric.print(f"Saved the {run.recipe.name} result to {final}")


def _plain_copy(run: Run, full_state: dict[str, torch.Tensor]):
    """An unsharded CPU model with the gathered weights, for export after FSDP."""
    from litgpt_lite.model import GPT

    config = run.model_config if run.model_config is not None else _load_config(run.checkpoint_dir)
    model = run.recipe.prepare(GPT(config))
    model.load_state_dict(full_state, strict=False)
    return model


# ---------------------------------------------------------------- hyperparameters.yaml
def hyperparameters(func, values: dict[str, Any]) -> dict[str, Any]:
    """The entrypoint's arguments as plain YAML data; `--config` on it re-creates the run from scratch."""
    out: dict[str, Any] = {}
    for name in inspect.signature(func).parameters:
        out[name] = _plain(values[name])
    if "resume" in out:
        out["resume"] = False
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if hasattr(value, "to_config"):
        return _plain(value.to_config())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def write_hyperparameters(out_dir: Path, hparams: dict[str, Any]) -> None:
    import yaml

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "hyperparameters.yaml").write_text(yaml.safe_dump(hparams, sort_keys=False))
