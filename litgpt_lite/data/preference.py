"""Preference pairs for DPO, IPO and SimPO: a prompt with a chosen and a rejected response.

Three record formats are read (TRL's preference formats):

    {"prompt": "text", "chosen": "text", "rejected": "text"}                          standard
    {"prompt": [messages], "chosen": [messages], "rejected": [messages]}              conversational
    {"chosen": [messages], "rejected": [messages]}                                    implicit prompt

In the implicit format the leading messages the two share are the prompt. The prompt is rendered by the
checkpoint's prompt style (or chat template) exactly as SFT renders it, and only the response tokens carry a
log-probability. One dataset item holds both sides of a pair in one row, chosen then rejected, with `part` marking
which tokens belong to which side (1 chosen, 2 rejected, 0 padding), so the loop's `collate` pads a micro batch of
pairs like any other; the DPO recipe splits each row into its two sequences again and runs them as one batch.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from litgpt_lite.data.base import IGNORE_INDEX, DataContext, DataModule, Splits
from litgpt_lite.data.sft import BUNDLED_DIR, encode_conversation, read_records
from litgpt_lite.errors import UserError

BUNDLED_PREFERENCES = BUNDLED_DIR / "preferences.jsonl"
CHOSEN, REJECTED = 1, 2  # values of `part`; 0 is padding (what `collate` fills in)
Messages = list[dict]


@dataclass
class Pair:
    """One tokenized pair: the shared prompt and the two responses (response tokens only, untruncated ends kept)."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    chosen_labels: list[int]  # -100 where a response token carries no loss (e.g. a newline after end-of-turn)
    rejected_labels: list[int]


class PairDataset(torch.utils.data.Dataset):
    """Tokenized pairs as loop samples; `offset` makes `pair_index` unique across the train and val splits."""

    def __init__(self, pairs: list[Pair], offset: int = 0) -> None:
        self.pairs, self.offset = pairs, offset

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        p = self.pairs[i]
        ids: list[int] = []
        labels: list[int] = []
        part: list[int] = []
        for side, response, response_labels in (
            (CHOSEN, p.chosen, p.chosen_labels),
            (REJECTED, p.rejected, p.rejected_labels),
        ):
            seq = p.prompt + response
            # shifted as every loop sample: labels[t] is the token after input t; the prompt carries no loss
            seq_labels = [IGNORE_INDEX] * len(p.prompt) + response_labels
            ids += seq[:-1]
            labels += seq_labels[1:]
            part += [side] * (len(seq) - 1)
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "part": torch.tensor(part, dtype=torch.long),
            "pair_index": torch.tensor([self.offset + i], dtype=torch.long),
        }

    def num_tokens(self) -> int:
        return sum(2 * len(p.prompt) + len(p.chosen) + len(p.rejected) - 2 for p in self.pairs)

    def fingerprint(self) -> str:
        """A hash of every pair's tokens (what cached reference log-probs were computed on)."""
        h = hashlib.sha256()
        for p in self.pairs:
            for seq in (p.prompt, p.chosen, p.rejected, p.chosen_labels, p.rejected_labels):
                h.update(torch.tensor(seq, dtype=torch.int64).numpy().tobytes() + b"|")
        return h.hexdigest()


# ---------------------------------------------------------------- records -> conversations
def record_messages(record: dict, where: str) -> tuple[Messages, Messages, Messages]:
    """(prompt messages, chosen response messages, rejected response messages) of one record in any format."""
    for key in ("chosen", "rejected"):
        if key not in record:
            raise UserError(f"{where} has no {key!r} field: preference records need 'chosen' and 'rejected'")
    chosen, rejected = record["chosen"], record["rejected"]
    if "prompt" not in record:
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise UserError(
                f"{where} has no 'prompt' field: text records need 'prompt' (only message lists may leave it implicit)"
            )
        n = _shared_prefix(chosen, rejected)
        if n == 0:
            raise UserError(f"{where}: 'chosen' and 'rejected' share no leading messages, so there is no prompt")
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    else:
        prompt = record["prompt"]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    prompt = _check_messages(prompt, where, "prompt")
    responses = []
    for key, value in (("chosen", chosen), ("rejected", rejected)):
        if isinstance(value, str):
            value = [{"role": "assistant", "content": value}]
        value = _check_messages(value, where, key)
        if any(m["role"] != "assistant" for m in value):
            raise UserError(f"{where}: the {key!r} response must be assistant messages, got roles {_roles(value)}")
        responses.append(value)
    if prompt[-1]["role"] == "assistant":
        raise UserError(f"{where}: the prompt ends with an assistant message; the response must follow a user turn")
    return prompt, responses[0], responses[1]


def _shared_prefix(a: list, b: list) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _roles(messages: Messages) -> str:
    return ", ".join(str(m.get("role")) for m in messages)


def _check_messages(value, where: str, key: str) -> Messages:
    if not isinstance(value, list) or not value:
        raise UserError(f"{where}: {key!r} must be a string or a non-empty list of messages, got {value!r:.80}")
    for m in value:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise UserError(f"{where}: every {key!r} message needs a role of system, user or assistant, got {m!r:.80}")
        if not isinstance(m.get("content"), str):
            raise UserError(f"{where}: {key!r} message content must be a string, got {m!r:.80}")
    return value


# ---------------------------------------------------------------- conversations -> tokens
def encode_pair(prompt: Messages, chosen: Messages, rejected: Messages, ctx: DataContext, where: str) -> Pair:
    """Tokenize both conversations with the prompt style and split off the shared prompt tokens."""
    sides = [_encode_response(prompt, response, ctx) for response in (chosen, rejected)]
    (c_ids, c_labels, c_start), (r_ids, r_labels, r_start) = sides
    if c_start is None or r_start is None:
        raise UserError(f"{where}: a response renders to no trained tokens under the prompt style")
    n = min(c_start, r_start, _shared_prefix(c_ids, r_ids))  # the prompt: tokens before either response
    if n == 0:
        raise UserError(f"{where}: the prompt renders to no tokens, so the first response token has no context")
    return Pair(c_ids[:n], c_ids[n:], r_ids[n:], c_labels[n:], r_labels[n:])


def _encode_response(prompt: Messages, response: Messages, ctx: DataContext):
    """(ids, labels, index of the response's first trained token) of prompt + response. Assistant turns inside the
    prompt render as trained runs too: skip as many runs as the prompt alone has."""
    ids, labels = encode_conversation(prompt + response, ctx, mask_prompt=True)
    in_prompt = 0
    if any(m["role"] == "assistant" for m in prompt):
        in_prompt = len(_run_starts(encode_conversation(prompt, ctx, mask_prompt=True)[1]))
    starts = _run_starts(labels)
    if len(starts) <= in_prompt:
        return ids, labels, None
    start = starts[in_prompt]
    return ids, [IGNORE_INDEX] * start + labels[start:], start


def _run_starts(labels: list[int]) -> list[int]:
    """Where each run of trained labels begins."""
    return [i for i, label in enumerate(labels) if label != IGNORE_INDEX and (i == 0 or labels[i - 1] == IGNORE_INDEX)]


def truncate_pair(pair: Pair, max_seq_length: int) -> tuple[Pair, bool, bool]:
    """Fit both sequences (prompt + response, minus the last token as the input) into `max_seq_length` tokens.

    The prompt loses tokens from its start first, down to one token; only if that is not enough do the responses
    lose their ends. Returns (pair, was truncated, a response was cut too).
    """
    limit = max_seq_length + 1  # a sequence of limit tokens is max_seq_length inputs
    over = len(pair.prompt) + max(len(pair.chosen), len(pair.rejected)) - limit
    if over <= 0:
        return pair, False, False
    cut = min(over, len(pair.prompt) - 1)
    prompt = pair.prompt[cut:]
    room = limit - len(prompt)
    cut_response = over > cut
    pair = Pair(
        prompt, pair.chosen[:room], pair.rejected[:room], pair.chosen_labels[:room], pair.rejected_labels[:room]
    )
    return pair, True, cut_response


# ---------------------------------------------------------------- the data module
class Preference(DataModule):
    """Preference pairs from a JSON/JSONL file (standard, conversational or implicit-prompt records), or the small
    bundled preference set when no file is given.

    Args:
        json_path: a .json file (list of records) or .jsonl file (one per line), or a directory with train.json(l)
            and val.json(l); None: the bundled set of preference pairs.
        val_split_fraction: share of pairs held out for validation when there is no val file.
        prompt_style: a prompt style name; defaults to the checkpoint's style.
    """

    def __init__(
        self, json_path: Path | None = None, val_split_fraction: float = 0.1, prompt_style: str | None = None
    ) -> None:
        self.json_path = Path(json_path) if json_path is not None else None
        self.val_split_fraction, self.prompt_style = val_split_fraction, prompt_style

    def check(self) -> None:
        if self.json_path is not None and not self.json_path.exists():
            raise UserError(f"Data file {self.json_path} does not exist: pass an existing .json or .jsonl file")
        if not 0 <= self.val_split_fraction < 1:
            raise UserError(f"val_split_fraction must be in [0, 1), got {self.val_split_fraction}")

    def _files(self) -> tuple[Path, Path | None]:
        path = self.json_path if self.json_path is not None else BUNDLED_PREFERENCES
        if not path.is_dir():
            return path, None
        found = {}
        for split in ("train", "val"):
            for ext in (".jsonl", ".json"):
                if split not in found and (path / f"{split}{ext}").is_file():
                    found[split] = path / f"{split}{ext}"
        if "train" not in found:
            raise UserError(f"{path} has no train.json or train.jsonl")
        return found["train"], found.get("val")

    def build(self, ctx: DataContext) -> Splits:
        self.check()
        if ctx.tokenizer is None:
            raise UserError("Preference data needs a tokenizer: the checkpoint dir has no tokenizer files")
        if self.prompt_style is not None:
            from litgpt_lite.prompts import PromptStyle

            ctx.prompt_style = PromptStyle.from_name(self.prompt_style, ctx.tokenizer)
        if ctx.prompt_style is None:
            from litgpt_lite.prompts import PromptStyle

            ctx.prompt_style = PromptStyle.from_name("default")
        train_file, val_file = self._files()
        notes: list[str] = []
        train = self._encode_file(train_file, ctx, notes)
        val = self._encode_file(val_file, ctx, notes) if val_file is not None else None
        if val is None and self.val_split_fraction > 0 and len(train) > 1:
            random.Random(ctx.seed).shuffle(train)
            n_val = max(1, round(len(train) * self.val_split_fraction))
            train, val = train[n_val:], train[:n_val]
        if not train:
            raise UserError(f"{train_file}: every pair went to validation: lower --data.val_split_fraction")
        return Splits(PairDataset(train), PairDataset(val, offset=len(train)) if val else None, notes)

    def _encode_file(self, path: Path, ctx: DataContext, notes: list[str]) -> list[Pair]:
        pairs: list[Pair] = []
        truncated = cut_responses = 0
        for n, record in enumerate(read_records(path)):
            where = f"{path}: record {n}"
            pair = encode_pair(*record_messages(record, where), ctx, where)
            pair, was_truncated, cut_response = truncate_pair(pair, ctx.max_seq_length)
            truncated += was_truncated
            cut_responses += cut_response
            pairs.append(pair)
        if truncated:
            note = (
                f"{path.name}: {truncated} of {len(pairs)} pairs were longer than max_seq_length {ctx.max_seq_length} "
                "tokens: their prompts were shortened from the start"
            )
            if cut_responses:
                note += f" ({cut_responses} of them also lost the end of a response)"
            notes.append(note + "; raise --train.max_seq_length to keep them whole")
        return pairs
