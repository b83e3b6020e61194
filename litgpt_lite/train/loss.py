"""The training loss: summed token cross-entropy of a batch, optionally with the head run on loss positions only
and `chunk` tokens at a time (chunked cross-entropy, as torchtune's `ce_chunked_output_loss`), so the
full-vocabulary logits of a batch are never all alive at once. The head runs in the run's precision, as Fabric runs
the model's forward; under `--train.compile` the head and its loss are one compiled function."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from litgpt_lite.data.base import IGNORE_INDEX
from litgpt_lite.modules import unwrap_model

if TYPE_CHECKING:
    from lightning.fabric import Fabric

# Rows of logits per cross-entropy call (see `cross_entropy_sum`).
CE_ROWS = 128
# (hidden rows (N, C), targets (N,)) -> summed float32 cross-entropy of the head's logits
HeadLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def loss_sum(
    fabric: Fabric | None,
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    chunk: int = 0,
    split_head: bool = True,
    compiled: bool = False,
) -> torch.Tensor:
    """Sum of token cross-entropies over the batch's target tokens (float32).

    Args:
        fabric: runs the head in the run's precision, as it runs the model's forward (None: as it is).
        model: the GPT, possibly under Fabric's and torch.compile's wrappers.
        batch: input_ids, labels (IGNORE_INDEX where no loss) and optionally segment_ids (packed rows).
        chunk: with `split_head`, run the head and its loss this many target tokens at a time (0: all at once).
        split_head: the model returns hidden states and the head runs only on positions that carry a loss (a
            masked prompt costs no vocabulary projection).
        compiled: with `split_head`, the head and its loss run as one `torch.compile`d function per chunk.
    """
    x, y = batch["input_ids"], batch["labels"]
    segments = batch.get("segment_ids")
    if not split_head:
        logits = model(x, segment_ids=segments)
        return cross_entropy_sum(logits.flatten(0, 1), y.flatten())
    hidden = model(x, segment_ids=segments, return_hidden=True)  # (B, T, C)
    keep = y != IGNORE_INDEX
    hidden, targets = hidden[keep], y[keep]  # (N, C), (N,)
    plain = unwrap_model(model)
    head_loss = functools.partial(compiled_head_loss() if compiled else head_loss_sum, plain)
    if not chunk:
        return _chunk_loss(head_loss, fabric, hidden, targets)
    params = [p for p in plain.lm_head.parameters() if p.requires_grad]
    if not torch.is_grad_enabled() or not (hidden.requires_grad or params):  # validation: no gradients to make
        pieces = zip(hidden.split(chunk), targets.split(chunk))
        return sum((_chunk_loss(head_loss, fabric, h, t) for h, t in pieces))
    return _ChunkedHeadLoss.apply(hidden, targets, head_loss, fabric, chunk, *params)


def head_loss_sum(model: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The summed float32 cross-entropy of the GPT's head (`model.logits`) over (N, C) hidden states, in eager mode."""
    return cross_entropy_sum(model.logits(hidden), targets)


def fused_head_loss_sum(model: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """`head_loss_sum` written for torch.compile: one cross-entropy call over all rows, which inductor fuses with
    the float32 upcast into a pass over the logits (no float32 copy of them, no row blocks to unroll)."""
    logits = model.logits(hidden)
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")


@functools.cache
def compiled_head_loss() -> Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    """`fused_head_loss_sum` under torch.compile, made once per process (dynamo's graphs belong to the function's
    code either way). The row count differs between batches (only loss positions) and for a last, shorter chunk:
    the first new count recompiles once with the rows as a dynamic size, and no count after it recompiles."""
    return torch.compile(fused_head_loss_sum)


class _ChunkedHeadLoss(torch.autograd.Function):
    """Summed cross-entropy of `head(hidden)`, `chunk` rows at a time, with each chunk's gradients taken right after
    its loss: the logits of one chunk are alive at a time and are never recomputed (checkpointing each chunk would
    run the vocabulary projection a second time in backward). Backward scales the stored gradients of the hidden
    states and of the head's trainable parameters (a tied embedding's included) by the incoming gradient."""

    @staticmethod
    def forward(ctx, hidden, targets, head_loss, fabric, chunk, *params):
        wants_hidden = hidden.requires_grad
        grad_hidden = torch.empty_like(hidden) if wants_hidden else None  # every chunk writes its rows
        grad_params: list[torch.Tensor | None] = [None] * len(params)
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk):
            with torch.enable_grad():
                h = hidden[start : start + chunk].detach().requires_grad_(wants_hidden)
                loss = _chunk_loss(head_loss, fabric, h, targets[start : start + chunk])
                grads = torch.autograd.grad(loss, [h, *params] if wants_hidden else params, allow_unused=True)
            if wants_hidden:
                grad_hidden[start : start + chunk], grads = grads[0], grads[1:]
            grad_params = [_accumulate(acc, g) for acc, g in zip(grad_params, grads)]
            total += loss.detach()
        ctx.grads = (grad_hidden, *grad_params)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, *grad_params = (None if g is None else g * grad_total for g in ctx.grads)
        return grad_hidden, None, None, None, None, *grad_params


def _accumulate(acc: torch.Tensor | None, g: torch.Tensor | None) -> torch.Tensor | None:
    """acc + g (in place), either of them None where the loss did not reach a parameter."""
    if acc is None or g is None:
        return g if acc is None else acc
    return acc.add_(g)


def _chunk_loss(
    head_loss: HeadLoss, fabric: Fabric | None, hidden: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """`head_loss` over `hidden` as Fabric runs the model's forward; the loss itself is float32 either way."""
    return in_forward_precision(fabric, head_loss, hidden, targets)


def in_forward_precision(fabric: Fabric | None, fn: Callable, hidden: torch.Tensor, *args) -> torch.Tensor:
    """`fn(hidden, *args)` run as Fabric runs the model's forward. Fabric hands the forward's output (our hidden
    states) back in float32; under bf16-true, 16-true or 64-true the head's weights are not, so the head gets its
    input converted, and runs in the precision's context, exactly as the model's forward did."""
    if fabric is None:
        return fn(hidden, *args)
    precision = fabric.strategy.precision
    with precision.forward_context():
        return fn(precision.convert_input(hidden), *args)


def cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed float32 cross-entropy of (N, V) logits, `CE_ROWS` rows at a time. The log-softmax and its backward
    then work on ~25 MB blocks instead of one N x V buffer: on 2 CPU cores fwd+bwd over 2048 x 50304 logits took
    274-454 ms instead of 546-671 ms. Same value up to the order of the float32 sum."""
    pieces = zip(logits.split(CE_ROWS), targets.split(CE_ROWS))  # no rows: one empty piece, a 0 still in the graph
    losses = [F.cross_entropy(rows.float(), tgt, ignore_index=IGNORE_INDEX, reduction="sum") for rows, tgt in pieces]
    return torch.stack(losses).sum()


def count_targets(batches: list[dict[str, torch.Tensor]]) -> int:
    """The number of tokens that carry a loss in `batches` (the loss's denominator)."""
    return int(sum((b["labels"] != IGNORE_INDEX).sum() for b in batches))
