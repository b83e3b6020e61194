"""The token shard format: writing, reading across shard boundaries, and the checks on a damaged directory."""

import json
import pickle

import numpy as np
import pytest

from litgpt_lite.data.shards import TokenShards, token_dtype_name, write_token_shards
from litgpt_lite.errors import UserError


def _docs(seed: int = 0, count: int = 20, vocab_size: int = 1000) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab_size, size=int(rng.integers(0, 40))).tolist() for _ in range(count)]


def _stream(docs: list[list[int]], eos_id: int) -> list[int]:
    return [token for doc in docs for token in [*doc, eos_id]]


def test_round_trip_across_shard_boundaries(tmp_path):
    docs = _docs()
    out = write_token_shards(iter(docs), tmp_path / "tok", eos_id=0, vocab_size=1000, shard_tokens=17)
    shards = TokenShards(out, verify_checksums=True)
    expected = _stream(docs, eos_id=0)
    assert len(shards) == len(expected)
    assert shards.num_shards == -(-len(expected) // 17)
    assert shards.read(0, len(shards)).tolist() == expected
    for start, length in [(0, 0), (5, 30), (16, 2), (17, 17), (len(expected) - 3, 3)]:
        assert shards.read(start, length).tolist() == expected[start : start + length]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "litgpt_lite.token_shards" and manifest["num_docs"] == len(docs)
    assert all(s["num_tokens"] == 17 for s in manifest["shards"][:-1])


def test_dtype_follows_vocab_size(tmp_path):
    assert token_dtype_name(65535) == "uint16" and token_dtype_name(65536) == "uint32"
    out = write_token_shards([[70000, 1]], tmp_path / "big", eos_id=2, vocab_size=100_000)
    shards = TokenShards(out)
    assert shards.dtype == np.uint32 and shards.read(0, 3).tolist() == [70000, 1, 2]
    assert (out / "shard-00000.bin").stat().st_size == 3 * 4


def test_reads_outside_the_stream_fail(tmp_path):
    shards = TokenShards(write_token_shards([[1, 2]], tmp_path / "t", eos_id=0, vocab_size=10))
    with pytest.raises(IndexError):
        shards.read(2, 2)
    with pytest.raises(IndexError):
        shards.read(-1, 1)


def test_empty_corpus(tmp_path):
    shards = TokenShards(write_token_shards([], tmp_path / "t", eos_id=0, vocab_size=10))
    assert len(shards) == 0 and shards.num_shards == 0 and shards.read(0, 0).tolist() == []


def test_bad_ids_and_arguments(tmp_path):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        write_token_shards([[1, 10]], tmp_path / "t", eos_id=0, vocab_size=10)
    with pytest.raises(ValueError, match="eos_id"):
        write_token_shards([[1]], tmp_path / "t", eos_id=10, vocab_size=10)
    assert not list(tmp_path.iterdir())  # a failed write leaves nothing behind


def test_write_is_atomic_and_replaces(tmp_path):
    out = write_token_shards([[1, 2, 3]], tmp_path / "t", eos_id=0, vocab_size=10)

    def failing():
        yield [4, 5]
        raise RuntimeError("tokenizer crashed")

    with pytest.raises(RuntimeError):
        write_token_shards(failing(), out, eos_id=0, vocab_size=10)
    assert TokenShards(out).read(0, 4).tolist() == [1, 2, 3, 0]  # the old corpus is intact
    write_token_shards([[7]], out, eos_id=0, vocab_size=10)
    assert TokenShards(out).read(0, 2).tolist() == [7, 0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_pickled_reader_does_not_carry_the_mapped_arrays(tmp_path):
    shards = TokenShards(write_token_shards(_docs(), tmp_path / "t", eos_id=0, vocab_size=1000))
    first = shards.read(0, 10)
    copy = pickle.loads(pickle.dumps(shards))
    assert len(pickle.dumps(shards)) < 2000
    assert copy.read(0, 10).tolist() == first.tolist()


def test_opens_a_prepare_output_dir_with_tokens_inside(tmp_path):
    write_token_shards([[1, 2]], tmp_path / "corpus" / "tokens", eos_id=0, vocab_size=10)
    assert len(TokenShards(tmp_path / "corpus")) == 3


def _damage(out, edit):
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(format="other"), "not a litgpt_lite.token_shards manifest"),
        (lambda m: m.update(version=99), "format version 99"),
        (lambda m: m.update(dtype="uint32"), "does not fit vocab_size"),
        (lambda m: m.update(eos_id=10), "eos_id"),
        (lambda m: m["shards"][0].update(file="../escape.bin"), "bad shard entry"),
        (lambda m: m["shards"][0].update(num_tokens=2), "the manifest says 4"),
        (lambda m: m["shards"][0].update(file="gone.bin"), "is missing"),
    ],
)
def test_damaged_manifest_gives_one_clear_error(tmp_path, edit, message):
    out = write_token_shards([[1, 2, 3]], tmp_path / "t", eos_id=0, vocab_size=10)
    _damage(out, edit)
    with pytest.raises(UserError, match=message):
        TokenShards(out)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        TokenShards(tmp_path / "nowhere")
    with pytest.raises(UserError, match="no manifest.json"):
        TokenShards(tmp_path)
    out = write_token_shards([[1, 2, 3]], tmp_path / "t", eos_id=0, vocab_size=10)
    (out / "shard-00000.bin").write_bytes(np.array([1, 2, 4, 0], dtype="<u2").tobytes())
    TokenShards(out)  # same size: only the checksum tells
    with pytest.raises(UserError, match="sha256"):
        TokenShards(out, verify_checksums=True)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        TokenShards(out)
