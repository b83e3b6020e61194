"""Pretraining data: .txt folders tokenized once into memory-mapped shards, prepare_code shard dirs, litdata."""

from __future__ import annotations

import json

import numpy as np
import pytest

from litgpt_lite.data import BundledCorpus, DataContext, LitData, TextFiles, TokenShardData
from litgpt_lite.data.shards import write_token_shards
from litgpt_lite.data.text import BUNDLED_CORPUS, BUNDLED_TOKENIZER, shard_dir_if_any
from litgpt_lite.errors import UserError
from litgpt_lite.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer(BUNDLED_TOKENIZER)


def test_text_files_tokenize_once_into_shards(tokenizer, tmp_path):
    (tmp_path / "txt" / "sub").mkdir(parents=True)
    (tmp_path / "txt" / "a.txt").write_text("The moon circles the earth. " * 40)
    (tmp_path / "txt" / "sub" / "b.txt").write_text("Bees make honey from nectar. " * 40)
    cache = tmp_path / "cache"
    data = TextFiles(tmp_path / "txt", val_split_fraction=0.2, cache_dir=cache)
    splits = data.build(DataContext(tokenizer, 32))
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["num_docs"] == 2 and manifest["eos_id"] == tokenizer.eos_id
    n_blocks = (manifest["num_tokens"] - 1) // 32
    assert len(splits.train) + len(splits.val) == n_blocks and len(splits.val) == int(n_blocks * 0.2)
    item = splits.train[1]
    assert item["input_ids"].shape == (32,) and item["input_ids"][1:].tolist() == item["labels"][:-1].tolist()
    text = tokenizer.decode(splits.train[0]["input_ids"].tolist())
    assert text.startswith("The moon circles")
    stamp = (cache / "manifest.json").stat().st_mtime_ns
    data.build(DataContext(tokenizer, 32))  # second run reuses the shards
    assert (cache / "manifest.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("setup, message", [("missing", "does not exist"), ("none", "no .txt"), ("empty", "empty")])
def test_text_files_errors(tokenizer, tmp_path, setup, message):
    folder = tmp_path / "txt"
    if setup != "missing":
        folder.mkdir()
    if setup == "empty":
        (folder / "a.txt").write_text("")
    with pytest.raises(UserError, match=message):
        TextFiles(folder).check()


def test_too_little_text_for_one_block(tokenizer, tmp_path):
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text("tiny")
    with pytest.raises(UserError, match="fewer than one block"):
        TextFiles(tmp_path / "txt", cache_dir=tmp_path / "c").build(DataContext(tokenizer, 64))


def test_bundled_corpus_is_small_and_ours():
    size = sum(p.stat().st_size for p in BUNDLED_CORPUS.glob("*.txt"))
    assert 50_000 < size < 400_000
    assert BundledCorpus().to_config()["class_path"].endswith("BundledCorpus")


def test_token_shard_dir_from_prepare_code(tokenizer, tmp_path):
    docs = [list(range(1, 100)), list(range(100, 300))]
    write_token_shards(docs, tmp_path / "run" / "tokens", eos_id=0, vocab_size=1024, shard_tokens=64)
    assert shard_dir_if_any(tmp_path / "run") == tmp_path / "run"  # a prepare_code out dir holding tokens/
    splits = TokenShardData(tmp_path / "run", val_split_fraction=0.1).build(DataContext(tokenizer, 16))
    stream = np.concatenate([np.array(d + [0]) for d in docs])
    item = splits.train[3]
    assert item["input_ids"].tolist() == stream[48:64].tolist()  # read across shard files
    assert item["labels"].tolist() == stream[49:65].tolist()
    big = tmp_path / "big"
    write_token_shards([[5, 6000]], big, eos_id=0, vocab_size=8000)
    with pytest.raises(UserError, match="vocabulary of 8000"):
        TokenShardData(big).build(DataContext(tokenizer, 1))


def _litdata_tokens(i):
    import torch

    yield torch.arange(i * 100, i * 100 + 100, dtype=torch.int32)


def test_litdata_streaming_dir(tmp_path):
    try:
        from litdata import TokensLoader, optimize
    except Exception as e:  # noqa: BLE001 - litdata needs a torchvision matching torch
        pytest.skip(f"litdata does not import here: {type(e).__name__}")
    out = tmp_path / "optimized"
    optimize(
        fn=_litdata_tokens,
        inputs=list(range(4)),
        output_dir=str(out),
        chunk_size=50,
        item_loader=TokensLoader(),
        num_workers=1,
    )
    splits = LitData(out).build(DataContext(None, 15))
    assert 20 <= len(splits.train) <= 400 // 16  # blocks of 16 tokens (litdata keeps them within a chunk)
    item = splits.train[0]
    assert item["input_ids"].tolist() == list(range(15)) and item["labels"].tolist() == list(range(1, 16))


def test_pretrain_data_path_picks_the_module(tmp_path):
    from litgpt_lite.train.pretrain import _data_from_path

    write_token_shards([[1, 2, 3]], tmp_path / "shards", eos_id=0, vocab_size=1024)
    assert isinstance(_data_from_path(str(tmp_path / "shards")), TokenShardData)
    assert isinstance(_data_from_path(str(BUNDLED_CORPUS)), TextFiles)
    with pytest.raises(UserError, match="not a data module name"):
        _data_from_path(str(tmp_path / "nothing"))


def test_text_files_not_utf8_are_read_with_a_note_naming_them(tokenizer, tmp_path, capsys):
    """A corpus file with a stray Latin-1 byte still trains (the byte reads as U+FFFD), and the run says which file
    and where, instead of replacing it silently."""
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text("The moon circles the earth. " * 40)
    latin = ("Caf\xe9 au lait. " * 40).encode("latin-1")
    (tmp_path / "txt" / "b.txt").write_bytes(latin)
    splits = TextFiles(tmp_path / "txt", val_split_fraction=0.2, cache_dir=tmp_path / "c").build(
        DataContext(tokenizer, 32)
    )
    assert len(splits.train) > 0
    printed = capsys.readouterr().out
    offset = latin.index(b"\xe9")
    assert f"{tmp_path / 'txt' / 'b.txt'}: byte {offset} (line 1" in printed
    assert "1 file(s) are not valid UTF-8" in printed
