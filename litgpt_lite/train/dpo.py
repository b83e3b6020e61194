"""`litgpt_lite finetune_dpo`: preference tuning (DPO, conservative DPO, IPO, SimPO) as a recipe on the one fit loop.

The recipe wraps a LoRA/QLoRA or full fine-tuning recipe (which prepares, checkpoints and exports the model exactly
as `finetune_lora` / `finetune_full` do) and supplies the loop with its own loss over preference pairs:

    chosen and rejected of each pair run as one batch [chosen rows; rejected rows]; a sequence's log-probability is
    the sum of its response tokens' log-probabilities (the prompt carries none)
    sigmoid (DPO)   -logsigmoid(beta d) (1 - eps) - logsigmoid(-beta d) eps,   d = (pi_c - ref_c) - (pi_r - ref_r)
    ipo             ((pi_c - ref_c) / n_c - (pi_r - ref_r) / n_r - 1 / (2 beta))^2       (per-token averages)
    simpo           -logsigmoid(beta * (pi_c / n_c - pi_r / n_r) - gamma) * (1 - eps) - ...  (no reference model)

These are TRL's definitions (DPOTrainer's sigmoid and ipo, CPOTrainer's simpo with cpo_alpha=0; eps > 0 with
sigmoid is conservative DPO). The reference model is never a second copy of the weights: with LoRA it is the same
model with its adapters switched off; with full fine-tuning its log-probs are computed once, before the first step,
in a pass over the data, and cached in out_dir (a resumed run reads them back).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from litgpt_lite.data.base import IGNORE_INDEX, DataModule, collate
from litgpt_lite.errors import UserError
from litgpt_lite.modules import unwrap_model
from litgpt_lite.train.args import EvalArgs, TrainArgs
from litgpt_lite.train.hparams import hyperparameters
from litgpt_lite.train.loss import in_forward_precision
from litgpt_lite.train.recipes import FullRecipe
from litgpt_lite.train.runtime import Run, launch

Quantize = Literal["bnb.nf4", "bnb.nf4-dq", "bnb.fp4", "bnb.fp4-dq"]
REFERENCE_FILE = "reference_logps.safetensors"
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin", "logps/chosen", "logps/rejected")

# Sized for the bundled pairs on a 135M model on a few CPU cores: 30 steps of 8 pairs.
DPO_TRAIN = TrainArgs(
    global_batch_size=8,
    micro_batch_size=4,
    max_steps=30,
    epochs=None,
    max_seq_length=256,
    lr_warmup_steps=3,
    min_lr=0.0,
    save_interval=None,
    log_interval=1,
)
DPO_EVAL = EvalArgs(interval=1000, max_iters=4, max_new_tokens=20, initial_validation=True)


@dataclass
class DPOArgs:
    """The preference loss.

    Args:
        loss: sigmoid (DPO; conservative DPO with label_smoothing > 0), ipo, or simpo (reference-free).
        beta: how far the policy may move from the reference (sigmoid, ipo: TRL's beta; simpo: the reward scale,
            the SimPO paper uses 2.0-2.5).
        label_smoothing: the assumed probability that a pair's preference is flipped (conservative DPO), for
            sigmoid and simpo; in [0, 0.5).
        gamma: SimPO's target reward margin (TRL's simpo_gamma).
    """

    loss: Literal["sigmoid", "ipo", "simpo"] = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0
    gamma: float = 0.5

    def validate(self) -> None:
        if self.loss not in ("sigmoid", "ipo", "simpo"):
            raise UserError(f"Unknown --dpo.loss {self.loss!r}: choose sigmoid, ipo or simpo")
        if self.beta <= 0:
            raise UserError(f"--dpo.beta must be positive, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise UserError(f"--dpo.label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and self.loss == "ipo":
            raise UserError("--dpo.label_smoothing applies to the sigmoid and simpo losses, not ipo: drop it")

    @property
    def needs_reference(self) -> bool:
        return self.loss != "simpo"


# ---------------------------------------------------------------- the math
@dataclass
class PairScores:
    """Per-pair results of a preference loss (B,) each; everything but `losses` is detached."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    chosen_logps: torch.Tensor  # as TRL logs them: sums, or per-token averages for simpo
    rejected_logps: torch.Tensor

    def metric_sums(self) -> torch.Tensor:
        """The sums over pairs of the values in `METRICS`, in that order (float64, CPU)."""
        c, r = self.chosen_rewards, self.rejected_rewards
        values = (c, r, (c > r).float(), c - r, self.chosen_logps.detach(), self.rejected_logps.detach())
        return torch.stack([v.double().sum() for v in values]).cpu()


def _conservative_sigmoid(z: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    return -F.logsigmoid(z) * (1 - label_smoothing) - F.logsigmoid(-z) * label_smoothing


def preference_loss(
    args: DPOArgs, logps: torch.Tensor, n_tokens: torch.Tensor, ref_logps: torch.Tensor | None = None
) -> PairScores:
    """Per-pair loss and rewards from sequence log-probs (2B,) = [chosen; rejected] (sums over response tokens),
    their response token counts (2B,), and the reference's log-probs (2B,) (unused by simpo)."""
    chosen, rejected = logps.float().chunk(2)
    n_chosen, n_rejected = n_tokens.clamp(min=1).float().chunk(2)
    beta, eps = args.beta, args.label_smoothing
    if args.loss == "simpo":
        chosen, rejected = chosen / n_chosen, rejected / n_rejected
        losses = _conservative_sigmoid(beta * (chosen - rejected - args.gamma / beta), eps)
        return PairScores(losses, beta * chosen.detach(), beta * rejected.detach(), chosen, rejected)
    if ref_logps is None:
        raise ValueError(f"the {args.loss} loss needs reference log-probs")
    ref_chosen, ref_rejected = ref_logps.float().chunk(2)
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    if args.loss == "ipo":
        losses = (chosen_ratio / n_chosen - rejected_ratio / n_rejected - 1 / (2 * beta)) ** 2
    else:
        losses = _conservative_sigmoid(beta * (chosen_ratio - rejected_ratio), eps)
    return PairScores(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach(), chosen, rejected)


def split_pairs(batch: dict[str, torch.Tensor], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A collated micro batch of pair rows (chosen then rejected in each row, see `data.preference`) as one batch of
    sequences: (input_ids, labels), each (2B, T), chosen rows first, right-padded."""
    ids, labels, part = batch["input_ids"], batch["labels"], batch["part"]
    n_chosen, n_rejected = (part == 1).sum(1), (part == 2).sum(1)  # (B,)
    lengths = torch.cat((n_chosen, n_rejected))  # (2B,)
    starts = torch.cat((torch.zeros_like(n_chosen), n_chosen))  # where each sequence begins in its row
    T = int(lengths.max())
    t = torch.arange(T, device=ids.device)
    src = (starts[:, None] + t).clamp(max=ids.shape[1] - 1)  # (2B, T)
    valid = t < lengths[:, None]
    rows = torch.cat((ids, ids)), torch.cat((labels, labels))
    out_ids = torch.where(valid, rows[0].gather(1, src), pad_id)
    out_labels = torch.where(valid, rows[1].gather(1, src), IGNORE_INDEX)
    return out_ids, out_labels


def sequence_logps(fabric, model, ids: torch.Tensor, labels: torch.Tensor, split_head: bool = True):
    """(summed log-prob of each row's target tokens (R,) float32, number of target tokens per row (R,)).

    With `split_head` the vocabulary projection runs only on the target positions (the prompt costs none)."""
    keep = labels != IGNORE_INDEX
    if split_head:
        hidden = model(ids, return_hidden=True)[keep]  # (N, C)
        logits = in_forward_precision(fabric, unwrap_model(model).logits, hidden)
    else:
        logits = model(ids)[keep]
    token_logps = -F.cross_entropy(logits.float(), labels[keep], reduction="none")  # (N,)
    sums = token_logps.new_zeros(ids.shape[0]).index_add(0, keep.nonzero()[:, 0], token_logps)
    return sums, keep.sum(1)


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[None]:
    """Run `model` as its base: every LoRA/DoRA layer computes only its frozen base layer inside the block (the
    reference model of LoRA-DPO, without a second copy of the weights)."""
    from litgpt_lite.lora import lora_modules

    layers = list(lora_modules(model).values())
    if not layers:
        raise UserError("The model has no LoRA layers to switch off for the reference")
    for layer in layers:
        layer.forward = layer.base.__call__  # an instance attribute shadows LoRALinear.forward
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


# ---------------------------------------------------------------- the recipe
class DPORecipe:
    """A preference loss on top of a LoRA/QLoRA or full fine-tuning recipe, for the fit loop.

    The base recipe prepares the model, names its checkpoint state and exports the result; this class adds the
    loop's optional hooks: `before_fit` (the reference pass of full fine-tuning), `loss_sum` / `count_targets` (the
    loss summed over a micro batch's pairs, and the number of pairs) and `pop_metrics` (rewards and log-probs).

    Args:
        base: the recipe that trains the weights (`LoRARecipe` or `FullRecipe`).
        args: the preference loss.
        out_dir: where the full fine-tuning reference log-probs are cached.
        checkpoint_dir: the base checkpoint (part of the cache's fingerprint).
    """

    def __init__(self, base, args: DPOArgs, out_dir: Path, checkpoint_dir: Path | None = None) -> None:
        args.validate()
        self.base, self.args = base, args
        self.out_dir, self.checkpoint_dir = Path(out_dir), checkpoint_dir
        self.name = f"dpo-{base.name}"
        self.full = isinstance(base, FullRecipe)
        self.reference: torch.Tensor | None = None  # (pairs, 2) cached log-probs of full fine-tuning
        self._sums = torch.zeros(len(METRICS) + 1, dtype=torch.float64)  # metric sums and the pair count

    # the base recipe decides what trains, what is saved and what is exported
    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.base.prepare(model)

    def trainable_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return self.base.trainable_state(model)

    def load_trainable_state(self, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        self.base.load_trainable_state(model, state)

    def export(self, model: torch.nn.Module, out_dir: Path, base_checkpoint_dir: Path | None) -> None:
        self.base.export(model, out_dir, base_checkpoint_dir)

    # the fit loop's hooks
    def before_fit(self, fabric, model, train_data, val_data, fit_args, state) -> None:
        """Full fine-tuning: the reference log-probs of every pair, read from out_dir or computed with the base
        weights before the first step (a resumed run has no base weights left, so it must find them cached)."""
        if not (self.full and self.args.needs_reference):
            return
        datasets = [d for d in (train_data, val_data) if d is not None]
        fingerprint = self._fingerprint(fabric, datasets)
        path = self.out_dir / REFERENCE_FILE
        self.reference = read_reference(path, fingerprint)
        if self.reference is not None:
            fabric.print(f"Reference log-probs: read {len(self.reference)} pairs from {path}")
            return
        if state.step > 0:
            raise UserError(
                f"Cannot resume full DPO without its reference log-probs: {path} is missing or was computed on other "
                "data or another base checkpoint; restart the run without --resume"
            )
        self.reference = reference_pass(fabric, model, datasets, fit_args, path)
        if fabric.global_rank == 0:
            write_reference(path, self.reference, fingerprint)
        fabric.barrier()

    def _fingerprint(self, fabric, datasets) -> str:
        h = hashlib.sha256(str(fabric.strategy.precision.precision).encode())
        if self.checkpoint_dir is not None:
            weights = sorted(Path(self.checkpoint_dir).glob("*.safetensors"))
            h.update(str([(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in weights]).encode())
        for d in datasets:
            h.update(d.fingerprint().encode())
        return h.hexdigest()

    def count_targets(self, batches: list[dict[str, torch.Tensor]]) -> int:
        """Pairs in these micro batches: the loss is a mean over pairs."""
        return sum(int(b["input_ids"].shape[0]) for b in batches)

    def loss_sum(
        self, fabric, model, batch: dict[str, torch.Tensor], chunk: int = 0, split_head: bool = True, compiled=False
    ):
        """The preference loss summed over the micro batch's pairs (float32); records the pairs' metrics. The
        sequence log-probs run the head eagerly whether or not the model is compiled (`compiled` is the loop's)."""
        ids, labels = split_pairs(batch)
        logps, n_tokens = sequence_logps(fabric, model, ids, labels, split_head)
        ref = None
        if self.args.needs_reference and self.reference is not None:
            pairs = batch["pair_index"][:, 0].cpu()
            ref = self.reference[pairs].T.reshape(-1).to(logps.device)  # [chosen; rejected]
        elif self.args.needs_reference:
            with torch.no_grad(), adapters_disabled(model):
                ref, _ = sequence_logps(fabric, model, ids, labels, split_head)
        scores = preference_loss(self.args, logps, n_tokens, ref)
        self._sums[:-1] += scores.metric_sums()
        self._sums[-1] += scores.losses.shape[0]
        return scores.losses.sum()

    def pop_metrics(self, fabric) -> dict[str, float]:
        """Mean rewards and log-probs over the pairs since the last call, over all processes."""
        sums = self._sums
        if fabric.world_size > 1:
            sums = fabric.all_reduce(sums.to(fabric.device), reduce_op="sum").cpu()
        self._sums = torch.zeros_like(self._sums)
        count = max(float(sums[-1]), 1.0)
        return {name: float(value) / count for name, value in zip(METRICS, sums[:-1])}


# ---------------------------------------------------------------- reference log-probs of full fine-tuning
@torch.no_grad()
def reference_pass(fabric, model, datasets, fit_args, path: Path) -> torch.Tensor:
    """(pairs, 2) log-probs of every pair's chosen and rejected response under the model as it is now.

    Each process takes every world_size-th micro batch; all run the same number of forwards (FSDP gathers inside
    each), so a process past the last batch repeats the first one and drops the result."""
    total = sum(len(d) for d in datasets)
    out = torch.zeros(total, 2, dtype=torch.float32)
    micro, rank, world = fit_args.train.micro_batch_size, fabric.global_rank, fabric.world_size
    was_training = model.training
    model.eval()
    fabric.print(f"Reference log-probs: one pass over {total} pairs with the base weights (cached in {path})")
    jobs = [(d, start) for d in datasets for start in range(0, len(d), micro)]
    for r in range(math.ceil(len(jobs) / world)):
        k = r * world + rank
        dataset, start = jobs[k] if k < len(jobs) else jobs[0]
        items = [dataset[i] for i in range(start, min(start + micro, len(dataset)))]
        batch = {key: fabric.to_device(v) for key, v in collate(items, fit_args.pad_id).items()}
        ids, labels = split_pairs(batch, fit_args.pad_id)
        logps, _ = sequence_logps(fabric, model, ids, labels, fit_args.split_head)
        if k < len(jobs):
            out[batch["pair_index"][:, 0].cpu()] = torch.stack(logps.float().cpu().chunk(2), dim=1)
    model.train(was_training)
    if world > 1:
        out = fabric.all_reduce(out.to(fabric.device), reduce_op="sum").cpu()
    return out


def read_reference(path: Path, fingerprint: str) -> torch.Tensor | None:
    """The cached reference log-probs if `path` holds them for this fingerprint, else None."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        if (f.metadata() or {}).get("fingerprint") != fingerprint:
            return None
        return f.get_tensor("logps")


def write_reference(path: Path, logps: torch.Tensor, fingerprint: str) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({"logps": logps.contiguous()}, str(tmp), metadata={"fingerprint": fingerprint})
    os.replace(tmp, path)


# ---------------------------------------------------------------- the command
def finetune_dpo(
    checkpoint_dir: Path,
    out_dir: Path = Path("out/finetune/dpo"),
    dpo: DPOArgs = DPOArgs(),
    full: bool = False,
    lora_r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    lora_query: bool = True,
    lora_key: bool = False,
    lora_value: bool = True,
    lora_projection: bool = False,
    lora_mlp: bool = False,
    lora_head: bool = False,
    lora_dora: bool = False,
    quantize: Quantize | None = None,
    data: DataModule | None = None,
    train: TrainArgs = DPO_TRAIN,
    eval: EvalArgs = DPO_EVAL,
    optimizer: str | dict = "AdamW",
    precision: str | None = None,
    devices: int | str = 1,
    num_nodes: int = 1,
    strategy: Literal["auto", "ddp", "fsdp"] = "auto",
    fsdp_cpu_offload: bool = False,
    logger_name: str = "csv",
    resume: bool | str | Path = False,
    seed: int = 42,
) -> dict:
    """Align a (fine-tuned) checkpoint on preference pairs: DPO, conservative DPO, IPO or SimPO; LoRA by default,
    QLoRA with --quantize, every weight with --full true.

    Args:
        checkpoint_dir: the litgpt_lite checkpoint dir to align (usually an SFT result).
        out_dir: where checkpoints, logs, hyperparameters.yaml and the result (out_dir/final) go; a LoRA result
            becomes a full checkpoint with `litgpt_lite merge_lora out_dir/final`.
        dpo: the preference loss (--dpo.loss sigmoid|ipo|simpo, --dpo.beta, --dpo.label_smoothing, --dpo.gamma).
        full: train every weight instead of LoRA adapters (the reference log-probs are then computed once, before
            the first step, and cached in out_dir).
        lora_r: adapter rank.
        lora_alpha: adapter scale numerator (the update is scaled by alpha / r).
        lora_dropout: dropout on the adapter's input (0 by default: as TRL, DPO compares policy and reference
            without dropout noise).
        lora_query: adapt the query projection.
        lora_key: adapt the key projection.
        lora_value: adapt the value projection.
        lora_projection: adapt the attention output projection.
        lora_mlp: adapt the MLP layers.
        lora_head: adapt the output head.
        lora_dora: weight-decomposed adapters (DoRA).
        quantize: store the frozen base Linear weights in 4 bits with bitsandbytes (QLoRA-DPO).
        data: Preference (the bundled pairs by default; --data.json_path for your own .json/.jsonl).
        train: training length, batch sizes (in pairs), schedule and levers.
        eval: validation interval and size (validation reports the loss and the rewards on held-out pairs).
        optimizer: a torch.optim / bitsandbytes.optim name, or {class_path, init_args}; --optimizer.lr 1e-4 works.
        precision: 32-true, bf16-true, bf16-mixed, ...; defaults to bf16 where the hardware has it, else 32-true.
        devices: devices (processes) per node.
        num_nodes: number of nodes.
        strategy: auto (DDP when more than one device), ddp, or fsdp (FSDP2 sharding).
        fsdp_cpu_offload: with fsdp on CUDA, keep parameter shards in CPU memory.
        logger_name: csv, tensorboard or wandb (a CSV file is always written for `litgpt_lite plot`).
        resume: "auto" continues from the newest checkpoint in out_dir (if any); a path resumes that checkpoint.
        seed: random seed (adapter init, data order, validation split).
    """
    from litgpt_lite.data.preference import Preference

    if data is None:
        data = Preference()
    if not isinstance(data, Preference):
        raise UserError(f"finetune_dpo trains on preference pairs: pass --data Preference, got {type(data).__name__}")
    hparams = hyperparameters(finetune_dpo, locals())
    if full and quantize is not None:
        raise UserError("--quantize freezes a 4-bit base for LoRA: it cannot be combined with --full true")
    if quantize is not None and precision == "64-true":  # as finetune_lora: non-finite float64 4-bit gradients
        raise UserError("--quantize (QLoRA) cannot train in --precision 64-true: use 32-true, bf16-true or bf16-mixed")
    lora = dict(r=lora_r, alpha=lora_alpha, dropout=lora_dropout, query=lora_query, key=lora_key, value=lora_value)
    lora |= dict(projection=lora_projection, mlp=lora_mlp, head=lora_head, dora=lora_dora, quantize=quantize)
    base = FullRecipe("full") if full else _lora_recipe(lora, strategy)
    run = Run(
        recipe=DPORecipe(base, dpo, out_dir, checkpoint_dir),
        out_dir=Path(out_dir),
        data=data,
        train=train,
        eval=eval,
        optimizer=optimizer,
        optimizer_defaults={"lr": 5e-6 if full else 5e-4, "weight_decay": 0.0},
        hparams=hparams,
        checkpoint_dir=Path(checkpoint_dir),
        precision=precision,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        fsdp_cpu_offload=fsdp_cpu_offload,
        logger_name=logger_name,
        resume=resume,
        seed=seed,
    )
    return launch(run)


def _lora_recipe(lora: dict[str, Any], strategy: str):
    if lora["quantize"] is not None and strategy == "fsdp":
        raise UserError("--quantize (QLoRA) cannot be sharded with --strategy fsdp: use ddp")
    try:
        from litgpt_lite.lora import LoRARecipe
    except ImportError as e:
        raise UserError(f"LoRA is not available in this install ({e})") from None
    return LoRARecipe(**lora)
