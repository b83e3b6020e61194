"""What every data module hands the fit loop: index-able sample sets of (input_ids, labels[, segment_ids]).

Samples are already shifted: `labels[t]` is the token that should follow `input_ids[t]`, and -100 marks a position
that carries no loss (prompt tokens under masking, padding). Packed rows add `segment_ids` so attention and
positions restart at every sample inside a row.
"""

from __future__ import annotations

import bisect
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from litgpt_lite.errors import UserError

if TYPE_CHECKING:
    from litgpt_lite.prompts import PromptStyle
    from litgpt_lite.tokenizer import Tokenizer

IGNORE_INDEX = -100


def read_utf8(path: Path) -> str:
    """The text of a UTF-8 file; any other encoding is a UserError naming the file, byte offset and line."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path} is not UTF-8 text: {_where(data, e)}; convert it to UTF-8 (e.g. iconv -t utf-8)"
        ) from None


def read_utf8_lenient(path: Path) -> tuple[str, str | None]:
    """The text of a file decoded as UTF-8 with undecodable bytes replaced by U+FFFD, and where the first such
    byte is ("byte 120 (line 3)") or None if the file is clean UTF-8."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return data.decode("utf-8", errors="replace"), _where(data, e)


def _where(data: bytes, error: UnicodeDecodeError) -> str:
    line = data.count(b"\n", 0, error.start) + 1
    return f"byte {error.start} (line {line}, {data[error.start : error.start + 1]!r}) is not valid UTF-8"


@dataclass
class DataContext:
    """What a data module needs from the run to build its samples."""

    tokenizer: Tokenizer | None
    max_seq_length: int
    seed: int = 42
    prompt_style: PromptStyle | None = None
    checkpoint_dir: Path | None = None


@dataclass
class Splits:
    """Built samples plus what happened while building them (reported once, before training)."""

    train: Any
    val: Any | None
    notes: list[str] = field(default_factory=list)


class DataModule:
    """Base class of the `--data` choices. A subclass stores its init arguments under the same names."""

    def build(self, ctx: DataContext) -> Splits:
        """Tokenize (or open) the data and return the train and validation sample sets."""
        raise NotImplementedError

    def check(self) -> None:
        """Cheap checks (files exist) run before any process starts; errors are UserErrors."""

    def to_config(self) -> dict[str, Any]:
        """{class_path, init_args}: what `--data` in a hyperparameters.yaml rebuilds this module from."""
        params = inspect.signature(type(self).__init__).parameters
        init_args = {}
        for name in params:
            if name == "self":
                continue
            value = getattr(self, name)
            init_args[name] = str(value) if isinstance(value, Path) else value
        return {"class_path": f"{type(self).__module__}.{type(self).__qualname__}", "init_args": init_args}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_config()["init_args"].items())
        return f"{type(self).__name__}({args})"


class SampleList(torch.utils.data.Dataset):
    """Variable-length SFT samples held as token lists."""

    def __init__(self, samples: list[tuple[list[int], list[int]]]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids, labels = self.samples[i]
        return {"input_ids": torch.tensor(ids, dtype=torch.long), "labels": torch.tensor(labels, dtype=torch.long)}

    def num_tokens(self) -> int:
        return sum(len(ids) for ids, _ in self.samples)


class PackedRows(torch.utils.data.Dataset):
    """SFT samples concatenated into rows of exactly `row_length` tokens.

    Samples are placed best-fit decreasing: longest first, each into the row whose free room is the smallest that
    still holds it, else into a new row. This leaves less padding than filling rows in sample order (on 96
    Alpaca-length samples at 512 tokens: 21 rows, the fewest possible, against 22 for first fit), and rows are
    shuffled per epoch by the training loop anyway. Equal lengths keep the given order. A row's tail is padding with
    its own segment id and no loss; `segment_ids` let the model restart positions and block attention across samples.
    """

    def __init__(self, samples: list[tuple[list[int], list[int]]], row_length: int, pad_id: int = 0) -> None:
        self.row_length, self.pad_id = row_length, pad_id
        self.rows: list[list[int]] = []  # sample indices per row
        by_room: dict[int, list[int]] = {}  # free room -> rows with exactly that room
        rooms: list[int] = []  # the keys of by_room, sorted
        for i in sorted(range(len(samples)), key=lambda i: -len(samples[i][0])):
            n = len(samples[i][0])
            k = bisect.bisect_left(rooms, n)
            if k < len(rooms):  # the tightest room that fits
                room = rooms[k]
                r = by_room[room].pop()
                if not by_room[room]:
                    del by_room[room], rooms[k]
                self.rows[r].append(i)
            else:
                r, room = len(self.rows), row_length
                self.rows.append([i])
            left = room - n
            if left not in by_room:
                by_room[left] = []
                bisect.insort(rooms, left)
            by_room[left].append(r)
        self.samples = samples

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids: list[int] = []
        labels: list[int] = []
        segments: list[int] = []
        for seg, s in enumerate(self.rows[i]):
            sample_ids, sample_labels = self.samples[s]
            ids += sample_ids
            labels += sample_labels
            segments += [seg] * len(sample_ids)
        pad = self.row_length - len(ids)
        pad_segment = len(self.rows[i])
        return {
            "input_ids": torch.tensor(ids + [self.pad_id] * pad, dtype=torch.long),
            "labels": torch.tensor(labels + [IGNORE_INDEX] * pad, dtype=torch.long),
            "segment_ids": torch.tensor(segments + [pad_segment] * pad, dtype=torch.long),
        }

    def num_tokens(self) -> int:
        return len(self.rows) * self.row_length


def collate(items: list[dict[str, torch.Tensor]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad a micro batch to its longest sample (causal attention never sees the padding)."""
    T = max(item["input_ids"].shape[0] for item in items)
    batch: dict[str, torch.Tensor] = {}
    fill = {"input_ids": pad_id, "labels": IGNORE_INDEX}
    for key in items[0]:
        rows = []
        for item in items:
            x = item[key]
            if x.shape[0] < T:
                pad_value = fill.get(key, int(x.max()) + 1 if key == "segment_ids" else 0)
                x = torch.cat((x, torch.full((T - x.shape[0],), pad_value, dtype=x.dtype)))
            rows.append(x)
        batch[key] = torch.stack(rows)
    return batch


def flatten_packed(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A collated batch of packed rows as one row: the segments that carry a loss, in order, renumbered 0, 1, ....

    Attention never crosses a segment and positions restart in each, so a segment's outputs do not depend on which
    row holds it: the loss and its gradients are those of the padded rows. Dropped are the segments without a
    target, the rows' padding tails, whose tokens would otherwise run through every layer for nothing (on Alpaca-
    length samples at 512 tokens, ~3% of a micro batch of 4 rows).
    """
    segments, labels = batch["segment_ids"], batch["labels"]
    per_row = segments.amax(dim=1) + 1
    flat_ids = (segments + (per_row.cumsum(0) - per_row)[:, None]).flatten()  # unique across rows
    has_target = torch.zeros(int(per_row.sum()), dtype=torch.bool)
    has_target[flat_ids[labels.flatten() != IGNORE_INDEX]] = True
    keep = has_target[flat_ids]
    if not keep.any():  # nothing to learn from: keep the rows as they are rather than run an empty one
        return batch
    out = {k: v.flatten()[keep][None] for k, v in batch.items() if k != "segment_ids"}
    out["segment_ids"] = (torch.cumsum(has_target, 0) - 1)[flat_ids[keep]][None]
    return out
