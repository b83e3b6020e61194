"""Packing, chunked cross-entropy, loss-positions-only head and activation checkpointing change memory or speed,
never the numbers."""

from __future__ import annotations

import random

import pytest
import torch
from train_helpers import tiny_config

from litgpt_lite.data.base import IGNORE_INDEX, PackedRows, SampleList, collate, flatten_packed
from litgpt_lite.model import GPT
from litgpt_lite.train.distributed import checkpoint_blocks
from litgpt_lite.train.loss import count_targets, loss_sum


def _samples(n: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(5, 30)
        ids = [rng.randrange(1, 1024) for _ in range(length)]
        prompt = rng.randint(1, length - 2)
        labels = [IGNORE_INDEX] * prompt + [rng.randrange(1, 1024) for _ in range(length - prompt)]
        out.append((ids, labels))
    return out


def _model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny_config()).double()


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_packed_loss_equals_unpacked_loss():
    samples = _samples(12)
    model = _model()
    unpacked = SampleList(samples)
    batch = collate([unpacked[i] for i in range(len(unpacked))])
    loss_u = loss_sum(None, model, batch) / count_targets([batch])
    loss_u.backward()
    grads_u = _grads(model)
    model.zero_grad()

    packed = PackedRows(samples, row_length=64)
    assert len(packed) < len(samples) / 2  # really packed
    rows = collate([packed[i] for i in range(len(packed))])
    loss_p = loss_sum(None, model, rows) / count_targets([rows])
    loss_p.backward()
    assert count_targets([rows]) == count_targets([batch])
    torch.testing.assert_close(loss_p, loss_u, rtol=1e-10, atol=1e-10)
    for name, g in _grads(model).items():
        torch.testing.assert_close(g, grads_u[name], rtol=1e-8, atol=1e-10)


def test_flattened_packed_rows_give_the_padded_rows_loss_and_gradients():
    """A micro batch of packed rows runs as one row without the padding tails: same loss, same gradients."""
    samples = _samples(12, seed=6)
    packed = PackedRows(samples, row_length=64)
    rows = collate([packed[i] for i in range(len(packed))])
    flat = flatten_packed(rows)
    real = sum(len(ids) for ids, _ in samples)
    assert rows["input_ids"].numel() > real and flat["input_ids"].shape == (1, real)  # padding gone, samples kept
    assert count_targets([flat]) == count_targets([rows])
    assert flat["segment_ids"][0].unique_consecutive().tolist() == list(range(len(samples)))
    model = _model()
    losses, grads = [], []
    for batch in (rows, flat):
        model.zero_grad()
        loss = loss_sum(None, model, batch) / count_targets([batch])
        loss.backward()
        losses.append(loss)
        grads.append(_grads(model))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-10, atol=1e-10)
    for name, g in grads[1].items():
        torch.testing.assert_close(g, grads[0][name], rtol=1e-8, atol=1e-10)


def test_flatten_drops_only_segments_without_targets():
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    labels = torch.tensor([[6, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX], [IGNORE_INDEX, 11, IGNORE_INDEX, 0]])
    segments = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]])  # row 0 segment 1 has no target: dropped like padding
    flat = flatten_packed({"input_ids": ids, "labels": labels, "segment_ids": segments})
    assert flat["input_ids"].tolist() == [[5, 6, 9, 10, 0, 0]]
    assert flat["labels"].tolist() == [[6, IGNORE_INDEX, IGNORE_INDEX, 11, IGNORE_INDEX, 0]]
    assert flat["segment_ids"].tolist() == [[0, 0, 1, 1, 2, 2]]
    nothing = {"input_ids": ids, "labels": torch.full_like(labels, IGNORE_INDEX), "segment_ids": segments}
    assert flatten_packed(nothing) is nothing


def test_only_segmentwise_attention_runs_packed_rows_flattened():
    """One long row is cheaper only where every layer attends segment by segment; a layer that builds the full
    mask (a sliding window, a softcap) would pay for (rows x length)^2 pairs."""
    from litgpt_lite.train.runtime import _attends_segmentwise

    assert _attends_segmentwise(GPT(tiny_config()))
    assert not _attends_segmentwise(GPT(tiny_config(sliding_window_size=8, sliding_window_layers=[0])))
    assert not _attends_segmentwise(GPT(tiny_config(attention_logit_softcapping=50.0)))


def test_attention_never_crosses_a_packed_sample():
    """Changing one sample's tokens leaves every other sample's logits in the row unchanged."""
    samples = _samples(6, seed=3)
    model = _model().eval()
    packed = PackedRows(samples, row_length=128)
    row = packed[0]
    seg = row["segment_ids"]
    assert int(seg.max()) >= 2
    x = row["input_ids"].clone()[None]
    altered = x.clone()
    altered[0, seg == 0] = 7  # rewrite the first sample
    a = model(x, segment_ids=seg[None])
    b = model(altered, segment_ids=seg[None])
    others = (seg != 0) & (seg < int(seg.max()))
    torch.testing.assert_close(a[0, others], b[0, others])
    # and a packed sample's logits equal the same sample run alone (positions restart per sample)
    second = seg == 1
    alone = model(x[0, second][None])
    torch.testing.assert_close(a[0, second], alone[0], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("chunk", [0, 7])
@pytest.mark.parametrize("case", ["plain", "tied", "frozen_head"])
def test_head_on_loss_positions_and_chunked_ce_match_the_full_logits(chunk, case):
    samples = _samples(4, seed=5)
    batch = collate([SampleList(samples)[i] for i in range(4)])
    torch.manual_seed(0)
    model = GPT(tiny_config(tie_embeddings=case == "tied")).double()
    if case == "frozen_head":  # LoRA: the head takes no gradient, only the hidden states do
        model.lm_head.weight.requires_grad_(False)
        model.transformer.wte.weight.requires_grad_(False)
    full = loss_sum(None, model, batch, split_head=False) * 0.5  # a scaled loss scales every gradient
    full.backward()
    reference = _grads(model)
    assert ("lm_head.weight" in reference) == (case == "plain")
    model.zero_grad()
    lever = loss_sum(None, model, batch, chunk=chunk, split_head=True) * 0.5
    lever.backward()
    assert set(_grads(model)) == set(reference)
    with torch.no_grad():  # validation takes the same path without gradients
        torch.testing.assert_close(loss_sum(None, model, batch, chunk=chunk) * 0.5, full, rtol=1e-6, atol=1e-6)
    # the cross-entropy runs in float32 (as in training), summed in a different order: float32 tolerance
    torch.testing.assert_close(lever, full, rtol=1e-6, atol=1e-6)
    for name, g in _grads(model).items():
        torch.testing.assert_close(g, reference[name], rtol=1e-5, atol=1e-7)


def test_activation_checkpointing_gives_the_same_gradients():
    batch = collate([SampleList(_samples(4, seed=9))[i] for i in range(4)])
    plain, checkpointed = _model(), _model()
    checkpoint_blocks(checkpointed)
    loss_sum(None, plain, batch).backward()
    loss_sum(None, checkpointed, batch).backward()
    reference = _grads(plain)
    assert set(checkpointed.state_dict()) == set(plain.state_dict())  # keys unchanged: checkpoints stay portable
    for name, g in _grads(checkpointed).items():
        torch.testing.assert_close(g, reference[name], rtol=1e-10, atol=1e-12)


def test_attention_per_segment_equals_the_masked_call():
    """Packed rows attend one segment at a time; the values and gradients are those of one SDPA call under the
    boolean segment mask (the path a compiled step and sliding-window layers take)."""
    from litgpt_lite.model import MaskSpec

    model = _model()
    attn = model.transformer.h[0].attn
    packed = PackedRows(_samples(10, seed=4), row_length=64)
    seg = torch.stack([packed[i]["segment_ids"] for i in range(2)])  # (2, 64), rows with different splits
    B, T = seg.shape
    mask = MaskSpec(torch.arange(T), None, seg, cached=False)
    runs = mask.segment_runs()
    assert runs is not None and runs[0] != runs[1] and all(sum(r) == T for r in runs)
    H, G, D = attn.config.n_head, attn.config.n_query_groups, attn.config.head_size
    torch.manual_seed(1)
    leaves = [torch.randn(B, n, T, D, dtype=torch.float64, requires_grad=True) for n in (H, G, G)]
    per_segment = attn._attend_segments(*leaves, runs)
    masked = attn.attend(*leaves, mask.build(torch.arange(T), None, None))
    torch.testing.assert_close(per_segment, masked, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(masked)
    grads_seg = torch.autograd.grad((per_segment * weights).sum(), leaves)
    grads_mask = torch.autograd.grad((masked * weights).sum(), leaves)
    for a, b in zip(grads_seg, grads_mask):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_a_segment_id_in_two_runs_takes_the_mask():
    """segment_ids [0 0 1 1 0 0]: the last run is segment 0 again and sees the first run, so the per-segment path
    (which would cut them apart) is not taken."""
    from litgpt_lite.model import MaskSpec

    seg = torch.tensor([[0, 0, 1, 1, 0, 0]])
    assert MaskSpec(torch.arange(6), None, seg, cached=False).segment_runs() is None
    model = _model().eval()
    x = torch.tensor([[5, 6, 7, 8, 9, 10]])
    altered = x.clone()
    altered[0, 0] = 11  # a token of the first run
    with torch.no_grad():
        a, b = model(x, segment_ids=seg), model(altered, segment_ids=seg)
    assert not torch.allclose(a[0, 4:], b[0, 4:])  # the last run saw it
    torch.testing.assert_close(a[0, 2:4], b[0, 2:4])  # segment 1 did not


def test_row_chunked_cross_entropy_equals_one_call():
    """The loss runs the cross-entropy `CE_ROWS` rows at a time: same sum and gradient as one call over all rows,
    and a micro batch with no loss rows still yields a 0 that backward goes through."""
    from litgpt_lite.train.loss import CE_ROWS, cross_entropy_sum

    torch.manual_seed(0)
    logits = torch.randn(2 * CE_ROWS + 17, 50, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (logits.shape[0],))
    targets[::7] = IGNORE_INDEX
    chunked = cross_entropy_sum(logits, targets)
    (grad_chunked,) = torch.autograd.grad(chunked, logits)
    whole = torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    (grad_whole,) = torch.autograd.grad(whole, logits)
    torch.testing.assert_close(chunked, whole.float(), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(grad_chunked, grad_whole, rtol=1e-6, atol=1e-7)
    empty = torch.randn(0, 50, requires_grad=True)
    zero = cross_entropy_sum(empty, torch.zeros(0, dtype=torch.long))
    zero.backward()
    assert zero.item() == 0 and empty.grad is not None
