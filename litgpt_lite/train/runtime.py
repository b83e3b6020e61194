"""Shared setup for every training entrypoint: check the inputs, start Fabric, build the pieces, call `fit`.

Entrypoints (pretrain.py, finetune.py) only say which recipe, which model and which defaults; everything else is
here once: data, model, optimizer, schedule, resume, logging and export. Devices and processes live in
distributed.py, the loss in loss.py, MFU in flops.py, host-memory tuning in litgpt_lite/host_memory.py.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from litgpt_lite.errors import UserError
from litgpt_lite.modules import unwrap_model
from litgpt_lite.train.args import EvalArgs, TrainArgs
from litgpt_lite.train.distributed import (
    STRATEGIES,
    Strategy,
    compile_settings,
    is_sharded,
    make_fabric,
    world_size,
)
from litgpt_lite.train.hparams import write_hyperparameters
from litgpt_lite.train.recipes import Recipe

if TYPE_CHECKING:
    from lightning.fabric import Fabric

    from litgpt_lite.config import Config
    from litgpt_lite.data.base import DataModule, Splits
    from litgpt_lite.tokenizer import Tokenizer
    from litgpt_lite.train.checkpoints import TrainState
    from litgpt_lite.train.loop import Dataset, FitArgs


@dataclass
class Run:
    """Everything an entrypoint decided; `launch` turns it into a training run."""

    recipe: Recipe
    out_dir: Path
    data: DataModule
    train: TrainArgs
    eval: EvalArgs
    optimizer: str | dict
    optimizer_defaults: dict[str, Any]
    hparams: dict[str, Any]
    checkpoint_dir: Path | None = None  # weights to start from (fine-tuning, or pretrain's initial checkpoint)
    model_config: Config | None = None  # a Config to build from scratch (pretraining)
    tokenizer_dir: Path | None = None
    precision: str | None = None
    devices: int | str = 1
    num_nodes: int = 1
    strategy: Strategy = "auto"
    fsdp_cpu_offload: bool = False
    logger_name: str = "csv"
    resume: bool | str | Path = False
    seed: int = 42
    init_weights: Callable[[torch.nn.Module], None] | None = None  # for from-scratch models
    result: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- checks before any compute
def check_inputs(run: Run) -> None:
    """A UserError for any input that cannot run, before a process starts or a weight is read."""
    from litgpt_lite.train.loggers import check_logger_name
    from litgpt_lite.train.optim import check_init_args, resolve_optimizer_class, split_spec

    run.train.validate(world_size(run.devices, run.num_nodes))
    run.eval.validate()
    check_logger_name(run.logger_name)
    run.precision = choose_precision(run.precision)
    if run.strategy not in STRATEGIES:
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


def choose_precision(precision: str | None) -> str:
    """The given precision (aliases like "bf16" resolved), or the hardware's fast training default; a UserError for
    one this machine cannot train in."""
    from litgpt_lite.precision import normalize_precision

    chosen = normalize_precision(precision, "cuda" if torch.cuda.is_available() else "cpu", training=True)
    if chosen == "16-mixed" and not torch.cuda.is_available():  # Fabric would silently switch to bf16-mixed
        raise UserError("--precision 16-mixed (float16 autocast) needs a CUDA GPU: on a CPU use bf16-mixed or 32-true")
    return chosen


def launch(run: Run) -> dict[str, Any]:
    """Check inputs, start the processes, train; returns a summary (rank 0's): the final TrainState and the
    number of steps (the per-step metrics are in out_dir/logs/metrics.csv)."""
    check_inputs(run)
    fabric = make_fabric(
        run.devices,
        run.num_nodes,
        run.strategy,
        choose_precision(run.precision),
        run.train.activation_checkpointing,
        run.fsdp_cpu_offload,
    )
    fabric.launch(_main, run)
    return run.result


# ---------------------------------------------------------------- the run on each process
@dataclass
class _Pieces:
    """What `fit` trains: the plain model, the model as Fabric set it up, optimizer and scheduler."""

    raw: torch.nn.Module
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


def _main(fabric: Fabric, run: Run) -> None:
    from litgpt_lite.train.checkpoints import resolve_resume
    from litgpt_lite.train.loop import fit

    fabric.seed_everything(run.seed, verbose=False)
    if run.train.reuse_freed_memory and fabric.device.type == "cpu":
        from litgpt_lite.host_memory import reuse_freed_memory

        reuse_freed_memory()
    sharded = is_sharded(fabric)
    if sharded and run.train.chunked_ce:
        raise UserError("--train.chunked_ce runs the head outside the sharded forward: drop it with --strategy fsdp")
    resume_from = resolve_resume(run.resume, run.out_dir, warn=fabric.print)
    tokenizer = _tokenizer(run)
    config = run.model_config if run.model_config is not None else _load_config(run.checkpoint_dir)
    max_seq_length = _max_seq_length(run.train, config)
    _check_vocab(tokenizer, config)
    splits = _build_data(fabric, run, tokenizer, max_seq_length)
    total_steps = _total_steps(run.train, splits.train)
    pieces = _setup_training(fabric, run, config, total_steps, sharded)
    state = _resume(fabric, run, resume_from, pieces)
    if fabric.global_rank == 0:
        write_hyperparameters(run.out_dir, run.hparams)
    resume_step = state.step if resume_from is not None else None
    args = _fit_args(fabric, run, pieces.raw, tokenizer, splits, total_steps, max_seq_length, resume_step)
    _announce(fabric, run, total_steps)
    with compile_settings(args.compiled):
        state = fit(fabric, pieces.model, pieces.optimizer, pieces.scheduler, splits.train, splits.val, args, state)
    if args.metrics is not None:
        args.metrics.close()
    _export(fabric, run, pieces, sharded)
    run.result.update(state=state, total_steps=total_steps)


def _check_vocab(tokenizer: Tokenizer | None, config: Config) -> None:
    if tokenizer is not None and tokenizer.vocab_size > config.padded_vocab_size:
        raise UserError(
            f"The tokenizer has {tokenizer.vocab_size} tokens but the model only {config.padded_vocab_size}: "
            "pass a matching --tokenizer_dir or raise the model's vocab_size"
        )


def _setup_training(fabric: Fabric, run: Run, config: Config, total_steps: int, sharded: bool) -> _Pieces:
    """The recipe-prepared model (levers applied) and its optimizer and schedule, set up by Fabric."""
    from litgpt_lite.kernels import install_kernels
    from litgpt_lite.train.distributed import checkpoint_blocks
    from litgpt_lite.train.optim import build_optimizer, build_scheduler

    raw = run.recipe.prepare(_build_model(run, config))
    if run.train.activation_checkpointing and not sharded:  # FSDP checkpoints each block as it shards it
        checkpoint_blocks(raw)
    _report_params(fabric, raw)
    compiled = run.train.compiles(fabric.device.type)
    model = fabric.setup_module(torch.compile(raw) if compiled else raw)
    if not (sharded or compiled):  # frozen layers, validation and samples run without autograd: on a CPU, fast paths
        install_kernels(raw, "auto")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError(f"The {run.recipe.name} recipe left no trainable parameters: choose some layers to train")
    optimizer = build_optimizer(run.optimizer, params, run.optimizer_defaults, fabric.device.type)
    optimizer = fabric.setup_optimizers(optimizer)
    scheduler = build_scheduler(optimizer, run.train.lr_warmup_steps, total_steps, run.train.min_lr)
    return _Pieces(raw, model, optimizer, scheduler)


def _resume(fabric: Fabric, run: Run, resume_from: Path | None, pieces: _Pieces) -> TrainState:
    from litgpt_lite.train.checkpoints import TrainState, load_training_checkpoint

    if resume_from is None:
        return TrainState()
    state = load_training_checkpoint(fabric, resume_from, run.recipe, pieces.model, pieces.optimizer, pieces.scheduler)
    fabric.print(f"Resumed from {resume_from} at step {state.step}")
    return state


def _fit_args(
    fabric: Fabric,
    run: Run,
    raw: torch.nn.Module,
    tokenizer: Tokenizer | None,
    splits: Splits,
    total_steps: int,
    max_seq_length: int,
    resume_step: int | None,
) -> FitArgs:
    from litgpt_lite.train.flops import flops_per_token, peak_flops
    from litgpt_lite.train.loggers import Metrics
    from litgpt_lite.train.loop import FitArgs

    sharded = is_sharded(fabric)
    compiled = run.train.compiles(fabric.device.type)
    metrics = Metrics(run.out_dir, run.logger_name, resume_step, run.hparams, enabled=fabric.global_rank == 0)
    return FitArgs(
        train=run.train,
        eval=run.eval,
        out_dir=run.out_dir,
        total_steps=total_steps,
        recipe=run.recipe,
        seed=run.seed,
        pad_id=_pad_id(tokenizer),
        metrics=metrics,
        sample=None if sharded else make_sampler(tokenizer, splits.val, run.eval.max_new_tokens),
        flops_per_token=flops_per_token(raw, max_seq_length),
        peak_flops=peak_flops(fabric.device, str(fabric.strategy.precision.precision)),
        flatten_packed=not compiled and _attends_segmentwise(raw),
        compiled=compiled,
    )


def _announce(fabric: Fabric, run: Run, total_steps: int) -> None:
    fabric.print(
        f"Training {total_steps} steps of {run.train.global_batch_size} samples "
        f"({run.train.gradient_accumulation_iters(fabric.world_size)} micro batch(es) of "
        f"{run.train.micro_batch_size} per device, {fabric.world_size} device(s), precision "
        f"{fabric.strategy.precision.precision})"
    )


def _tokenizer(run: Run) -> Tokenizer | None:
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


def _load_config(checkpoint_dir: Path | None) -> Config:
    from litgpt_lite.checkpoint import load_config

    if checkpoint_dir is None:
        raise UserError("Pass a model: a model name, --model_config, or a checkpoint dir")
    return load_config(checkpoint_dir)


def _max_seq_length(train: TrainArgs, config: Config) -> int:
    if train.max_seq_length is None:
        return config.block_size
    if train.max_seq_length > config.block_size:
        print(
            f"note: --train.max_seq_length {train.max_seq_length} exceeds the model's context; using its "
            f"block_size {config.block_size}"
        )
        return config.block_size
    return train.max_seq_length


def _build_data(fabric: Fabric, run: Run, tokenizer: Tokenizer | None, max_seq_length: int) -> Splits:
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


def _total_steps(train: TrainArgs, dataset: Dataset) -> int:
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


def _build_model(run: Run, config: Config) -> torch.nn.Module:
    from litgpt_lite.loading import load_model
    from litgpt_lite.model import GPT

    if run.checkpoint_dir is not None:  # training runs torch's modules: the inference kernels gain nothing with grads
        # QLoRA: each Linear is quantized as it is read, so the full-precision model never exists in memory
        quantize = getattr(run.recipe, "quantize", None)
        return load_model(run.checkpoint_dir, device="cpu", quantize=quantize, kernels="none").train()
    model = GPT(config)
    if run.init_weights is not None:
        run.init_weights(model)
    return model.train()


def _report_params(fabric: Fabric, model: torch.nn.Module) -> None:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fabric.print(f"Parameters: {trainable:,} trainable of {total:,}")


def _pad_id(tokenizer: Tokenizer | None) -> int:
    if tokenizer is not None and tokenizer.pad_id is not None:
        return tokenizer.pad_id
    return 0


def _attends_segmentwise(model: torch.nn.Module) -> bool:
    """Whether every attention layer runs packed samples one segment at a time (eager, no sliding window, no
    softcap). Only then may a micro batch of packed rows run as one long row: a layer that builds the full
    boolean mask would attend over (rows x row length)^2 pairs instead of rows x row length^2. A compiled model
    keeps the fixed row shape too, so new lengths do not recompile it."""
    from litgpt_lite.model import CausalSelfAttention

    return all(m.segmentwise for m in model.modules() if isinstance(m, CausalSelfAttention))


def make_sampler(
    tokenizer: Tokenizer | None, val_data: Dataset | None, max_new_tokens: int
) -> Callable[[torch.nn.Module], str | None] | None:
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

    def sample(model: torch.nn.Module) -> str | None:
        raw = unwrap_model(model)
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


def _export(fabric: Fabric, run: Run, pieces: _Pieces, sharded: bool) -> None:
    """The recipe's final artifact in out_dir/final (a full disk: one line, what was saved before stays)."""
    from litgpt_lite.train.checkpoints import is_disk_full, no_space_error, tensor_bytes

    final = Path(run.out_dir) / "final"
    base = run.checkpoint_dir or run.tokenizer_dir
    exported = pieces.raw
    if sharded:
        from litgpt_lite.train.distributed import gather_full_state

        full = gather_full_state(pieces.model)
        exported = _plain_copy(run, full) if fabric.global_rank == 0 else None
    if fabric.global_rank == 0:
        try:
            run.recipe.export(exported, final, base)
        except (OSError, RuntimeError) as e:
            needed = tensor_bytes(run.recipe.trainable_state(exported)) + _file_bytes(base)
            if not is_disk_full(e, final, needed):
                raise
            raise no_space_error(final, needed) from None
    fabric.barrier()
    if fabric.global_rank == 0:
        write_hyperparameters(final, run.hparams)
        fabric.print(f"Saved the {run.recipe.name} result to {final}")


def _file_bytes(directory: Path | None) -> int:
    """The size of the files an export copies from the base checkpoint (everything but its weights)."""
    if directory is None or not Path(directory).is_dir():
        return 0
    weights = (".safetensors", ".bin", ".pth", ".pt", ".gguf")
    return sum(p.stat().st_size for p in Path(directory).iterdir() if p.is_file() and p.suffix not in weights)


def _plain_copy(run: Run, full_state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """An unsharded CPU model with the gathered weights, for export after FSDP."""
    from litgpt_lite.model import GPT

    config = run.model_config if run.model_config is not None else _load_config(run.checkpoint_dir)
    model = run.recipe.prepare(GPT(config))
    model.load_state_dict(full_state, strict=False)
    return model
