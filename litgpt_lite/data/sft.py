"""Supervised fine-tuning data: Alpaca-style JSON, multi-turn chat, and the bundled instruction set.

Every record becomes a conversation (a list of messages); the prompt style renders it as (text, trained) segments,
so the training text is exactly what `generate` later prompts with, and only assistant turns carry loss.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from litgpt_lite.data.base import (
    IGNORE_INDEX,
    DataContext,
    DataModule,
    PackedRows,
    SampleList,
    Splits,
    read_utf8,
)
from litgpt_lite.errors import UserError

BUNDLED_DIR = Path(__file__).parent / "bundled"
BUNDLED_INSTRUCTIONS = BUNDLED_DIR / "instructions.jsonl"
Sample = tuple[list[int], list[int]]


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records of a .json file (a list of objects) or a .jsonl file (one object per line)."""
    if not path.is_file():
        raise UserError(f"Data file {path} does not exist: pass an existing .json or .jsonl file")
    text = read_utf8(path)
    if path.suffix == ".jsonl":
        records = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n} is not valid JSON ({e.msg}): one JSON object per line") from None
    else:
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno} is not valid JSON ({e.msg})") from None
        if not isinstance(records, list):
            raise UserError(f"{path} must hold a JSON list of records (or use .jsonl, one record per line)")
    if not records:
        raise UserError(f"{path} holds no records: the dataset is empty")
    for n, record in enumerate(records):
        if not isinstance(record, dict):
            raise UserError(f"{path}: record {n} is not a JSON object")
    return records


def encode_conversation(messages: list[dict], ctx: DataContext, mask_prompt: bool) -> tuple[list[int], list[int]]:
    """(token ids, labels) of one conversation; labels are -100 outside assistant turns when `mask_prompt`.

    Each trained segment ends with a stop token: the style's end-of-turn token, or EOS appended when it has none,
    so the model learns to stop.
    """
    tokenizer, style = ctx.tokenizer, ctx.prompt_style
    stop_ids = {seq[0] for seq in style.stop_sequences(tokenizer) if len(seq) == 1}
    ids: list[int] = []
    labels: list[int] = []
    for k, (text, trained) in enumerate(style.apply_for_training(messages)):
        piece = tokenizer.encode(text, bos=None if k == 0 else False)
        if trained and (not piece or piece[-1] not in stop_ids) and tokenizer.eos_id is not None:
            piece.append(tokenizer.eos_id)
        ids += piece
        labels += piece if (trained or not mask_prompt) else [IGNORE_INDEX] * len(piece)
    return ids, labels


class SFTDataModule(DataModule):
    """Shared building: tokenize conversations, truncate and count, split, optionally pack."""

    mask_prompt: bool
    packing: bool
    val_split_fraction: float
    prompt_style: str | None

    def conversations(self, ctx: DataContext) -> tuple[list[list[dict]], list[list[dict]] | None]:
        """(train conversations, val conversations or None to split them off the train set)."""
        raise NotImplementedError

    def build(self, ctx: DataContext) -> Splits:
        if not 0 <= self.val_split_fraction < 1:
            raise UserError(f"val_split_fraction must be in [0, 1), got {self.val_split_fraction}")
        if ctx.tokenizer is None:
            raise UserError("Fine-tuning data needs a tokenizer: the checkpoint dir has no tokenizer files")
        if self.prompt_style is not None:
            from litgpt_lite.prompts import PromptStyle

            ctx.prompt_style = PromptStyle.from_name(self.prompt_style, ctx.tokenizer)
        train_convs, val_convs = self.conversations(ctx)
        notes: list[str] = []
        train = self._encode_all(train_convs, ctx, notes)
        val = self._encode_all(val_convs, ctx, notes) if val_convs is not None else None
        if val is None and self.val_split_fraction > 0 and len(train) > 1:
            random.Random(ctx.seed).shuffle(train)
            n_val = max(1, round(len(train) * self.val_split_fraction))
            train, val = train[n_val:], train[:n_val]
        if not train:
            why = "; ".join(notes) if notes else "every record went to validation"
            raise UserError(f"The training set is empty ({why}): add records or raise --train.max_seq_length")
        if self.packing:
            order = list(range(len(train)))
            random.Random(ctx.seed + 1).shuffle(order)  # equal lengths pack in this order: rows mix sources
            pad_id = ctx.tokenizer.pad_id if ctx.tokenizer.pad_id is not None else 0
            packed = PackedRows([train[i] for i in order], ctx.max_seq_length, pad_id)
            notes.append(f"packed {len(train)} samples into {len(packed)} rows of {ctx.max_seq_length} tokens")
            return Splits(packed, SampleList(val) if val else None, notes)
        return Splits(SampleList(train), SampleList(val) if val else None, notes)

    def _encode_all(self, convs: list[list[dict]], ctx: DataContext, notes: list[str]) -> list[Sample]:
        samples: list[Sample] = []
        truncated = unlearnable = 0
        limit = ctx.max_seq_length + 1  # inputs are ids[:-1]: max_seq_length tokens
        for messages in convs:
            ids, labels = encode_conversation(messages, ctx, self.mask_prompt)
            if len(ids) > limit:
                truncated += 1
                ids, labels = ids[:limit], labels[:limit]
            if all(label == IGNORE_INDEX for label in labels[1:]):
                unlearnable += 1  # truncation cut every answer token: nothing to learn
                continue
            samples.append((ids[:-1], labels[1:]))
        if truncated:
            notes.append(
                f"{truncated} of {len(convs)} samples were longer than max_seq_length {ctx.max_seq_length} "
                "tokens and were truncated (raise --train.max_seq_length to keep them whole)"
            )
        if unlearnable:
            notes.append(f"{unlearnable} samples had no response tokens left after truncation and were dropped")
        return samples


def alpaca_messages(record: dict, where: str, style_name: str | None) -> list[dict]:
    """An instruction/input/output record as a user message and an assistant message."""
    missing = [k for k in ("instruction", "output") if not isinstance(record.get(k), str)]
    if missing:
        raise UserError(f"{where} lacks string field(s) {', '.join(missing)}: records need instruction and output")
    extra = record.get("input") or ""
    if style_name == "alpaca":
        user = {"role": "user", "content": record["instruction"], **({"input": extra} if extra else {})}
    else:
        user = {"role": "user", "content": record["instruction"] + (f"\n\n{extra}" if extra else "")}
    messages = [user, {"role": "assistant", "content": record["output"]}]
    if isinstance(record.get("system"), str):
        messages.insert(0, {"role": "system", "content": record["system"]})
    return messages


class JSON(SFTDataModule):
    """Alpaca-style instruction data: records with "instruction", optional "input", and "output".

    Args:
        json_path: a .json file (list of records) or .jsonl file (one per line), or a directory with
            train.json(l) and val.json(l).
        mask_prompt: train only on the response tokens.
        val_split_fraction: share of records held out for validation when there is no val file.
        prompt_style: a prompt style name; defaults to the checkpoint's style.
        packing: concatenate samples into full max_seq_length rows (attention stays within each sample).
    """

    def __init__(
        self,
        json_path: Path,
        mask_prompt: bool = True,
        val_split_fraction: float = 0.05,
        prompt_style: str | None = None,
        packing: bool = False,
    ) -> None:
        self.json_path = Path(json_path)
        self.mask_prompt, self.val_split_fraction = mask_prompt, val_split_fraction
        self.prompt_style, self.packing = prompt_style, packing

    def check(self) -> None:
        if not self.json_path.exists():
            raise UserError(f"Data file {self.json_path} does not exist: pass an existing .json or .jsonl file")
        if not 0 <= self.val_split_fraction < 1:
            raise UserError(f"val_split_fraction must be in [0, 1), got {self.val_split_fraction}")

    def _files(self) -> tuple[Path, Path | None]:
        if not self.json_path.is_dir():
            return self.json_path, None
        found = {}
        for split in ("train", "val"):
            for ext in (".jsonl", ".json"):
                if (self.json_path / f"{split}{ext}").is_file():
                    found[split] = self.json_path / f"{split}{ext}"
                    break
        if "train" not in found:
            raise UserError(f"{self.json_path} has no train.json or train.jsonl")
        return found["train"], found.get("val")

    def to_messages(self, record: dict, where: str, ctx: DataContext) -> list[dict]:
        return alpaca_messages(record, where, ctx.prompt_style.name if ctx.prompt_style else None)

    def conversations(self, ctx: DataContext):
        train_file, val_file = self._files()

        def load(path: Path) -> list[list[dict]]:
            records = read_records(path)
            return [self.to_messages(r, f"{path}: record {n}", ctx) for n, r in enumerate(records)]

        return load(train_file), (load(val_file) if val_file else None)


class Chat(JSON):
    """Multi-turn conversations: records with a "messages" list of {"role", "content"}; loss only on assistant turns.

    Args:
        json_path: a .json or .jsonl file of records, or a directory with train.json(l) and val.json(l).
        mask_prompt: train only on assistant turns.
        val_split_fraction: share of records held out for validation when there is no val file.
        prompt_style: a prompt style name; defaults to the checkpoint's style.
        packing: concatenate samples into full max_seq_length rows (attention stays within each sample).
    """

    def to_messages(self, record: dict, where: str, ctx: DataContext) -> list[dict]:
        messages = record.get("messages", record.get("conversations"))
        if not isinstance(messages, list) or not messages:
            raise UserError(f"{where} has no non-empty 'messages' list")
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                raise UserError(f"{where}: every message needs a role of system, user or assistant, got {m!r}")
            if not isinstance(m.get("content"), str):
                raise UserError(f"{where}: message content must be a string, got {m!r}")
        if not any(m["role"] == "assistant" for m in messages):
            raise UserError(f"{where} has no assistant message: there is nothing to train on")
        return messages


class Instructions(JSON):
    """The small instruction set bundled with litgpt_lite (written for it; the default fine-tuning data).

    Args:
        mask_prompt: train only on the response tokens.
        val_split_fraction: share of records held out for validation.
        prompt_style: a prompt style name; defaults to the checkpoint's style.
        packing: concatenate samples into full max_seq_length rows (attention stays within each sample).
    """

    def __init__(
        self,
        mask_prompt: bool = True,
        val_split_fraction: float = 0.05,
        prompt_style: str | None = None,
        packing: bool = False,
    ) -> None:
        super().__init__(BUNDLED_INSTRUCTIONS, mask_prompt, val_split_fraction, prompt_style, packing)
