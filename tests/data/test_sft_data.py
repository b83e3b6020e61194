"""SFT data: Alpaca-style JSON, multi-turn Chat, the bundled set, masking, truncation counts, packing rows."""

from __future__ import annotations

import json

import pytest

from litgpt_lite.data import JSON, Chat, DataContext, Instructions, PackedRows
from litgpt_lite.data.base import IGNORE_INDEX, collate
from litgpt_lite.data.text import BUNDLED_TOKENIZER
from litgpt_lite.errors import UserError
from litgpt_lite.prompts import PromptStyle
from litgpt_lite.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer(BUNDLED_TOKENIZER)


def ctx(tokenizer, style="chatml", max_seq_length=256):
    return DataContext(tokenizer, max_seq_length, seed=1, prompt_style=PromptStyle.from_name(style))


def test_bundled_instructions_are_varied_and_complete():
    lines = (BUNDLED_TOKENIZER.parent / "instructions.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert 100 <= len(records) <= 200
    assert all(r["instruction"].strip() and r["output"].strip() for r in records)
    assert len({r["instruction"] + r.get("input", "") for r in records}) == len(records)  # no duplicates


def test_instructions_mask_the_prompt(tokenizer):
    splits = Instructions(val_split_fraction=0.1).build(ctx(tokenizer, "alpaca"))
    assert len(splits.val) == 15 and len(splits.train) == 147 - 15
    item = splits.train[0]
    labels = item["labels"].tolist()
    first = next(i for i, t in enumerate(labels) if t != IGNORE_INDEX)
    assert first > 10  # the whole Alpaca prompt carries no loss
    assert all(t != IGNORE_INDEX for t in labels[first:])  # the response, then EOS
    assert labels[-1] == tokenizer.eos_id
    # labels are the inputs shifted by one
    assert item["input_ids"][first + 1 :].tolist() == labels[first:-1]


def test_unmasked_prompt_trains_on_every_token(tokenizer):
    splits = Instructions(mask_prompt=False, val_split_fraction=0).build(ctx(tokenizer, "alpaca"))
    assert splits.val is None
    assert all((splits.train[i]["labels"] != IGNORE_INDEX).all() for i in range(5))


def test_json_and_jsonl_with_input_field(tokenizer, tmp_path):
    records = [{"instruction": f"Add {i} and 1.", "input": "", "output": str(i + 1)} for i in range(9)]
    records.append({"instruction": "Summarize.", "input": "A long text.", "output": "Short."})
    (tmp_path / "d.json").write_text(json.dumps(records))
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    a = JSON(tmp_path / "d.json", val_split_fraction=0.2).build(ctx(tokenizer))
    b = JSON(tmp_path / "d.jsonl", val_split_fraction=0.2).build(ctx(tokenizer))
    assert len(a.train) == len(b.train) == 8 and len(a.val) == 2
    assert [a.train[i]["input_ids"].tolist() for i in range(8)] == [b.train[i]["input_ids"].tolist() for i in range(8)]


def test_json_directory_with_val_file(tokenizer, tmp_path):
    rec = {"instruction": "Say hi.", "output": "Hi."}
    (tmp_path / "train.jsonl").write_text("\n".join([json.dumps(rec)] * 4))
    (tmp_path / "val.json").write_text(json.dumps([rec] * 2))
    splits = JSON(tmp_path).build(ctx(tokenizer))
    assert len(splits.train) == 4 and len(splits.val) == 2


def test_chat_trains_only_on_assistant_turns(tokenizer, tmp_path):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a fruit."},
        {"role": "assistant", "content": "Apple."},
        {"role": "user", "content": "Another one?"},
        {"role": "assistant", "content": "Pear."},
    ]
    (tmp_path / "chat.jsonl").write_text(json.dumps({"messages": messages}) + "\n")
    splits = Chat(tmp_path / "chat.jsonl", val_split_fraction=0).build(ctx(tokenizer))
    item = splits.train[0]
    trained = [t for t in item["labels"].tolist() if t != IGNORE_INDEX]
    text = tokenizer.decode(trained)
    assert "Apple." in text and "Pear." in text
    assert "fruit" not in text and "Another" not in text and "brief" not in text
    assert text.count("<|im_end|>") == 2  # each assistant turn learns its end-of-turn token


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "does not exist"),
        ("[]", "empty"),
        ('{"instruction": "x"}', "must hold a JSON list"),
        ('[{"instruction": "x"}]', "output"),
        ("[1, 2", "not valid JSON"),
    ],
)
def test_bad_json_files_fail_with_one_clear_line(tokenizer, tmp_path, content, message):
    path = tmp_path / "data.json"
    if content:
        path.write_text(content)
    with pytest.raises(UserError, match=message) as e:
        JSON(path).build(ctx(tokenizer))
    assert "\n" not in str(e.value)


def test_chat_without_assistant_turn_is_an_error(tokenizer, tmp_path):
    (tmp_path / "c.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}))
    with pytest.raises(UserError, match="no assistant message"):
        Chat(tmp_path / "c.jsonl").build(ctx(tokenizer))


def test_overlong_samples_are_truncated_and_counted(tokenizer):
    splits = Instructions(val_split_fraction=0).build(ctx(tokenizer, "default", max_seq_length=40))
    assert any("were longer than max_seq_length 40" in note for note in splits.notes)
    assert max(len(splits.train[i]["input_ids"]) for i in range(len(splits.train))) == 40
    with pytest.raises(UserError, match="training set is empty.*truncated"):
        Instructions(val_split_fraction=0).build(ctx(tokenizer, "alpaca", max_seq_length=30))


def test_packing_fills_rows_and_keeps_every_sample(tokenizer):
    unpacked = Instructions(val_split_fraction=0).build(ctx(tokenizer, "default", 128)).train
    packed = Instructions(val_split_fraction=0, packing=True).build(ctx(tokenizer, "default", 128)).train
    assert isinstance(packed, PackedRows)
    assert len(packed) < len(unpacked) / 2
    total_targets = sum(int((unpacked[i]["labels"] != IGNORE_INDEX).sum()) for i in range(len(unpacked)))
    assert sum(int((packed[i]["labels"] != IGNORE_INDEX).sum()) for i in range(len(packed))) == total_targets
    row = packed[0]
    assert row["input_ids"].shape == (128,) and row["segment_ids"].shape == (128,)
    assert row["segment_ids"].tolist() == sorted(row["segment_ids"].tolist())  # segments are contiguous


def _sample(n: int, tag: int) -> tuple[list[int], list[int]]:
    return [tag] * n, [tag] * n


def test_packing_is_best_fit_decreasing():
    """In sample order, first fit needs 3 rows of 100 for lengths 40, 30, 70, 60 (70 and 60 each open a row); longest
    first, each into the tightest room that holds it, they fill 2 rows exactly."""
    packed = PackedRows([_sample(n, i) for i, n in enumerate([40, 30, 70, 60])], row_length=100)
    assert packed.rows == [[2, 1], [3, 0]]
    assert all(int((packed[r]["labels"] == IGNORE_INDEX).sum()) == 0 for r in range(2))  # no padding left
    # the tightest room wins over the first: after 85, 70 and 20 the rooms are 15 (row 0) and 10 (row 1); the first
    # 10 (sample 0, kept ahead of sample 3 of equal length) fills row 1, where first fit would put it into row 0
    packed = PackedRows([_sample(n, i) for i, n in enumerate([10, 20, 70, 10, 85])], row_length=100)
    assert packed.rows == [[4, 3], [2, 1, 0]]


def test_packing_keeps_every_sample_once_within_its_row_on_many_lengths():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(1, 300) for _ in range(2000)]
    packed = PackedRows([_sample(n, i) for i, n in enumerate(lengths)], row_length=512)
    assert sorted(i for row in packed.rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 512 for row in packed.rows)
    lower_bound = -(-sum(lengths) // 512)
    assert len(packed.rows) <= lower_bound + 1, (len(packed.rows), lower_bound)
    row = packed[len(packed) - 1]  # contents follow the placement, in placement order
    assert row["input_ids"].tolist()[: sum(lengths[i] for i in packed.rows[-1])] == [
        t for i in packed.rows[-1] for t in _sample(lengths[i], i)[0]
    ]


def test_collate_pads_right_with_no_loss():
    import torch

    items = [
        {"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([6, 7, 8])},
        {"input_ids": torch.tensor([9]), "labels": torch.tensor([3])},
    ]
    batch = collate(items, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [9, 0, 0]]
    assert batch["labels"].tolist() == [[6, 7, 8], [3, IGNORE_INDEX, IGNORE_INDEX]]


@pytest.mark.parametrize("cls, name", [(JSON, "data.json"), (JSON, "data.jsonl"), (Chat, "chat.jsonl")])
def test_non_utf8_data_file_is_one_line_naming_it(tokenizer, tmp_path, cls, name):
    """A Latin-1 file (an 'é' as the single byte 0xE9) names the file, the byte offset and the line."""
    record = {"instruction": "Say café", "output": "café", "messages": [{"role": "user", "content": "hi"}]}
    text = json.dumps(record, ensure_ascii=False)
    body = f"[{text}]" if name.endswith(".json") else f"{text}\n{text}\n"
    path = tmp_path / name
    path.write_bytes(body.encode("latin-1"))
    offset = body.encode("latin-1").index(b"\xe9")
    with pytest.raises(UserError) as info:
        cls(path).build(ctx(tokenizer))
    message = str(info.value)
    assert str(path) in message and f"byte {offset} (line 1" in message and "UTF-8" in message
    assert "\n" not in message
