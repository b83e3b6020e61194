"""The training loss: summed token cross-entropy of a batch, optionally with the head run on loss positions only
and `chunk` tokens at a time (chunked cross-entropy, as torchtune's `ce_chunked_output_loss`), so the
full-vocabulary logits of a batch are never all alive at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from litgpt_lite.data.base import IGNORE_INDEX
from litgpt_lite.train.distributed import unwrap

if TYPE_CHECKING:
    from lightning.fabric import Fabric

# Rows of logits per cross-entropy call (see `cross_entropy_sum`).
CE_ROWS = 128


def loss_sum(
    fabric: Fabric | None,
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    chunk: int = 0,
    split_head: bool = True,
) -> torch.Tensor:
    """Sum of token cross-entropies over the batch's target tokens (float32).

    Args:
        fabric: runs the head in the run's precision, as it runs the model's forward (None: as it is).
        model: the GPT, possibly under Fabric's and torch.compile's wrappers.
        batch: input_ids, labels (IGNORE_INDEX where no loss) and optionally segment_ids (packed rows).
        chunk: with `split_head`, run the head and its loss this many target tokens at a time (0: all at once).
        split_head: the model returns hidden states and the head runs only on positions that carry a loss (a
            masked prompt costs no vocabulary projection).
    """
    x, y = batch["input_ids"], batch["labels"]
    segments = batch.get("segment_ids")
    if not split_head:
        logits = model(x, segment_ids=segments)
        return cross_entropy_sum(logits.flatten(0, 1), y.flatten())
    hidden = model(x, segment_ids=segments, return_hidden=True)  # (B, T, C)
    keep = y != IGNORE_INDEX
    hidden, targets = hidden[keep], y[keep]  # (N, C), (N,)
    plain = unwrap(model)
    head = plain.logits
    if not chunk:
        return _chunk_loss(head, fabric, hidden, targets)
    params = [p for p in plain.lm_head.parameters() if p.requires_grad]
    if not torch.is_grad_enabled() or not (hidden.requires_grad or params):  # validation: no gradients to make
        return sum((_chunk_loss(head, fabric, h, t) for h, t in zip(hidden.split(chunk), targets.split(chunk))))
    return _ChunkedHeadLoss.apply(hidden, targets, head, fabric, chunk, *params)


class _ChunkedHeadLoss(torch.autograd.Function):
    """Summed cross-entropy of `head(hidden)`, `chunk` rows at a time, with each chunk's gradients taken right after
    its loss: the logits of one chunk are alive at a time and are never recomputed (checkpointing each chunk would
    run the vocabulary projection a second time in backward). Backward scales the stored gradients of the hidden
    states and of the head's trainable parameters (a tied embedding's included) by the incoming gradient."""

    @staticmethod
    def forward(ctx, hidden, targets, head, fabric, chunk, *params):
        wants_hidden = hidden.requires_grad
        grad_hidden = torch.empty_like(hidden) if wants_hidden else None  # every chunk writes its rows
        grad_params: list[torch.Tensor | None] = [None] * len(params)
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk):
            with torch.enable_grad():
                h = hidden[start : start + chunk].detach().requires_grad_(wants_hidden)
                loss = _chunk_loss(head, fabric, h, targets[start : start + chunk])
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


def _chunk_loss(head: Callable, fabric: Fabric | None, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The head over `hidden` as Fabric runs the model's forward, then the float32 loss."""
    if fabric is None:
        return cross_entropy_sum(head(hidden), targets)
    # Fabric hands the forward's output (our hidden states) back in float32; under bf16-true, 16-true or 64-true the
    # head's weights are not, so the head gets its input converted exactly as the model's forward got its own.
    precision = fabric.strategy.precision
    with precision.forward_context():
        logits = head(precision.convert_input(hidden))
    return cross_entropy_sum(logits, targets)


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
