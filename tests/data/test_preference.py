"""Preference pairs: TRL's three record formats, the prompt style, response-only targets, one row per pair,
prompt-side truncation with counts, one-line errors for malformed records, and the bundled set."""

from __future__ import annotations

import json

import pytest

from litgpt_lite.data import DataContext, Preference
from litgpt_lite.data.base import IGNORE_INDEX, collate
from litgpt_lite.data.preference import BUNDLED_PREFERENCES
from litgpt_lite.data.text import BUNDLED_TOKENIZER
from litgpt_lite.errors import UserError
from litgpt_lite.prompts import PromptStyle
from litgpt_lite.tokenizer import Tokenizer
from litgpt_lite.train.dpo import split_pairs


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer(BUNDLED_TOKENIZER)


def ctx(tokenizer, style="chatml", max_seq_length=256):
    return DataContext(tokenizer, max_seq_length, seed=1, prompt_style=PromptStyle.from_name(style))


def build(tmp_path, tokenizer, records, **kw):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return Preference(path, val_split_fraction=0).build(ctx(tokenizer, **kw))


def decode(tokenizer, ids) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False)


USER = {"role": "user", "content": "Name a fruit."}
SYSTEM = {"role": "system", "content": "Be brief."}


@pytest.mark.parametrize(
    "record",
    [
        {"prompt": "Name a fruit.", "chosen": "Apple.", "rejected": "No."},
        {"prompt": [USER], "chosen": [{"role": "assistant", "content": "Apple."}], "rejected": "No."},
        {
            "chosen": [USER, {"role": "assistant", "content": "Apple."}],
            "rejected": [USER, {"role": "assistant", "content": "No."}],
        },
    ],
    ids=["standard", "conversational", "implicit"],
)
def test_every_format_renders_the_prompt_with_the_style(record, tokenizer, tmp_path):
    pair = build(tmp_path, tokenizer, [record]).train.pairs[0]
    style = PromptStyle.from_name("chatml")
    prompt_text = style.apply_messages([USER])  # what generate would prompt with
    assert decode(tokenizer, pair.prompt) == prompt_text
    # the bundled tokenizer has no <|im_end|> token, so EOS follows; the newline after the turn carries no loss
    assert decode(tokenizer, trained(pair.chosen, pair.chosen_labels)) == "Apple.<|im_end|><|endoftext|>"
    assert decode(tokenizer, trained(pair.rejected, pair.rejected_labels)) == "No.<|im_end|><|endoftext|>"
    assert decode(tokenizer, pair.chosen) == "Apple.<|im_end|><|endoftext|>\n"


def trained(ids, labels) -> list[int]:
    return [i for i, label in zip(ids, labels) if label != IGNORE_INDEX]


def test_implicit_prompt_is_every_shared_leading_message(tokenizer, tmp_path):
    turn = [SYSTEM, USER, {"role": "assistant", "content": "Apple."}, {"role": "user", "content": "Another?"}]
    record = {
        "chosen": [*turn, {"role": "assistant", "content": "Pear."}],
        "rejected": [*turn, {"role": "assistant", "content": "No more."}],
    }
    pair = build(tmp_path, tokenizer, [record]).train.pairs[0]
    prompt = decode(tokenizer, pair.prompt)
    style = PromptStyle.from_name("chatml")
    assert prompt.startswith(style.apply_messages([SYSTEM, USER])) and "Apple." in prompt
    assert prompt.endswith(style.apply_messages(turn[-1:]))
    assert decode(tokenizer, trained(pair.chosen, pair.chosen_labels)) == "Pear.<|im_end|><|endoftext|>"
    assert all(label == IGNORE_INDEX for label in pair.chosen_labels[-1:])


def test_one_row_per_pair_and_split_back_into_chosen_then_rejected(tokenizer, tmp_path):
    records = [
        {"prompt": "Name a fruit.", "chosen": "Apple.", "rejected": "I will not name anything at all."},
        {"prompt": "Count to three, please, slowly.", "chosen": "1, 2, 3.", "rejected": "No."},
    ]
    data = build(tmp_path, tokenizer, records).train
    item = data[0]
    p = data.pairs[0]
    n_chosen = len(p.prompt) + len(p.chosen) - 1
    assert item["input_ids"].tolist() == (p.prompt + p.chosen)[:-1] + (p.prompt + p.rejected)[:-1]
    assert item["part"].tolist() == [1] * n_chosen + [2] * (len(item["part"]) - n_chosen)
    # targets: exactly the response tokens, shifted (labels[t] is the token after input t)
    chosen_labels = item["labels"][:n_chosen]
    assert chosen_labels[chosen_labels != IGNORE_INDEX].tolist() == trained(p.chosen, p.chosen_labels)
    batch = collate([data[0], data[1]], pad_id=0)
    ids, labels = split_pairs(batch)
    assert ids.shape[0] == 4  # [chosen 0, chosen 1, rejected 0, rejected 1]
    for row, (pair, side) in enumerate([(0, "chosen"), (1, "chosen"), (0, "rejected"), (1, "rejected")]):
        q = data.pairs[pair]
        seq = q.prompt + getattr(q, side)
        assert ids[row, : len(seq) - 1].tolist() == seq[:-1]
        assert (ids[row, len(seq) - 1 :] == 0).all()
        targets = labels[row][labels[row] != IGNORE_INDEX].tolist()
        assert targets == trained(getattr(q, side), getattr(q, f"{side}_labels"))


def test_long_pairs_lose_prompt_tokens_first_and_are_counted(tokenizer, tmp_path):
    long_prompt = "Please read this carefully. " * 20
    records = [
        {"prompt": long_prompt, "chosen": "Yes.", "rejected": "No, I did not read it."},
        {"prompt": "Short?", "chosen": "Yes.", "rejected": "No."},
    ]
    full, short = build(tmp_path, tokenizer, records, max_seq_length=512).train.pairs
    limit = len(short.prompt) + max(len(short.chosen), len(short.rejected)) + 4
    assert len(full.prompt) + len(full.rejected) - 1 > limit
    splits = build(tmp_path, tokenizer, records, max_seq_length=limit)
    cut = splits.train.pairs[0]
    assert cut.chosen == full.chosen and cut.rejected == full.rejected  # responses whole
    assert cut.prompt == full.prompt[-len(cut.prompt) :]  # the prompt's end is kept
    assert len(cut.prompt) + len(cut.rejected) - 1 == limit
    assert splits.train.pairs[1] == short
    assert any(f"1 of 2 pairs were longer than max_seq_length {limit}" in note for note in splits.notes)
    # when even one prompt token leaves no room, the responses lose their ends too, and that is said
    tiny = build(tmp_path, tokenizer, records, max_seq_length=6)
    pair = tiny.train.pairs[0]
    assert len(pair.prompt) == 1 and len(pair.prompt) + max(len(pair.chosen), len(pair.rejected)) - 1 <= 6
    assert any("lost the end of a response" in note for note in tiny.notes), tiny.notes


@pytest.mark.parametrize(
    "record, message",
    [
        ({"prompt": "Hi", "chosen": "Hello"}, r"record 1 has no 'rejected' field"),
        ({"prompt": "Hi", "rejected": "Go"}, r"record 1 has no 'chosen' field"),
        ({"chosen": "Hello", "rejected": "Go"}, r"record 1 has no 'prompt' field"),
        ({"chosen": [USER], "rejected": [SYSTEM]}, r"record 1: 'chosen' and 'rejected' share no leading messages"),
        ({"prompt": "Hi", "chosen": [USER], "rejected": "Go"}, r"record 1: the 'chosen' response must be assistant"),
        ({"prompt": 3, "chosen": "a", "rejected": "b"}, r"record 1: 'prompt' must be a string or a non-empty list"),
    ],
)
def test_a_malformed_record_is_one_line_naming_index_and_field(record, message, tokenizer, tmp_path):
    good = {"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"}
    with pytest.raises(UserError, match=message) as e:
        build(tmp_path, tokenizer, [good, record])
    assert "\n" not in str(e.value)


def test_the_bundled_set_has_every_format_and_builds(tokenizer):
    records = [json.loads(line) for line in BUNDLED_PREFERENCES.read_text().splitlines()]
    assert 200 <= len(records) <= 400
    assert any(isinstance(r.get("prompt"), str) for r in records)
    assert any(isinstance(r.get("prompt"), list) for r in records)
    assert any("prompt" not in r for r in records)
    assert all(r["chosen"] != r["rejected"] for r in records)
    splits = Preference().build(ctx(tokenizer))
    assert len(splits.train) + len(splits.val) == len(records)
    assert len(splits.val) == round(0.1 * len(records))
    assert splits.val[0]["pair_index"].item() == len(splits.train)  # unique across the splits


def test_missing_file_and_split_directory(tokenizer, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        Preference(tmp_path / "nope.jsonl").check()
    (tmp_path / "train.jsonl").write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n")
    (tmp_path / "val.json").write_text(json.dumps([{"prompt": "d", "chosen": "e", "rejected": "f"}]))
    splits = Preference(tmp_path).build(ctx(tokenizer))
    assert len(splits.train) == 1 and len(splits.val) == 1
