"""Tokenizer parity with transformers.AutoTokenizer on three tokenizers: a byte-level BPE and a SentencePiece BPE
trained here, and the real SmolLM2 tokenizer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizer_fixtures import build_bpe_dir, build_sentencepiece_dir

from litgpt_lite.errors import UserError
from litgpt_lite.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = [
    "Hello, world!",
    "  leading and trailing spaces  ",
    "runs     of spaces\tand\ttabs\n\n\nnewlines\r\nand CRLF",
    "emoji 😀🎉👍🏽 flags 🇫🇷 and a rare one 🦩",
    "中文测试 日本語のテキスト 한국어 mixed with English",
    "café naïve Ünïcödé ß e\u0301 zero\u200bwidth",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n\nclass A:\n\tpass\n",
    "numbers 1234567890 and 3.14159",
    "",
    " ",
    "\n",
]


def special_texts(bos: str, eos: str, extra: str) -> list[str]:
    """Texts with the tokenizer's own special tokens inside, at the start, the end and back to back."""
    return [f"a{eos}b {bos} c", f"{extra}user\nHi there{eos}\n{extra}assistant\n", f"x {eos}{eos} y{extra}", f"{eos}z"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory, smollm2_hf: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizers")
    return {
        "bpe": build_bpe_dir(root / "bpe"),
        "bpe_post_processor": build_bpe_dir(root / "bpe_pp", bos="post_processor"),
        "bpe_both": build_bpe_dir(root / "bpe_both", bos="both"),
        "bpe_config_off": build_bpe_dir(root / "bpe_off", bos="config_off"),
        "sentencepiece": build_sentencepiece_dir(root / "sp"),
        "sentencepiece_legacy": build_sentencepiece_dir(root / "sp_legacy", legacy=True),
        "smollm2": smollm2_hf,
    }


@pytest.fixture(scope="module")
def pairs(dirs: dict[str, Path]) -> dict[str, tuple[Tokenizer, object]]:
    """name -> (our Tokenizer, transformers' AutoTokenizer) on the same directory."""
    return {name: (Tokenizer(d), transformers.AutoTokenizer.from_pretrained(d)) for name, d in dirs.items()}


def texts_for(ours: Tokenizer, name: str) -> list[str]:
    extra = "<|im_start|>" if ours.token_to_id("<|im_start|>") is not None else "<unk>"
    bos = ours.decode([ours.bos_id])
    return TEXTS + special_texts(bos, ours.decode([ours.eos_id]), extra)


NAMES = ["bpe", "bpe_post_processor", "bpe_both", "bpe_config_off", "sentencepiece", "sentencepiece_legacy", "smollm2"]


@pytest.mark.parametrize("name", NAMES)
def test_encode_decode_match_transformers(pairs, name: str) -> None:
    ours, ref = pairs[name]
    for text in texts_for(ours, name):
        ids = ref.encode(text)
        assert ours.encode(text) == ids, repr(text)
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), repr(text)


def test_backends_and_attributes(pairs) -> None:
    bpe, _ = pairs["bpe"]
    assert bpe.backend == "huggingface" and pairs["sentencepiece"][0].backend == "sentencepiece"
    assert (bpe.bos_id, bpe.eos_id, bpe.pad_id) == (1, 2, None)
    assert bpe.stop_ids == {2, bpe.token_to_id("<|im_end|>")}  # generation_config.json's eos list
    assert bpe.vocab_size == len(pairs["bpe"][1])
    assert bpe.token_to_id("<|im_end|>") == 4 and bpe.token_to_id("no such token") is None
    smol, ref = pairs["smollm2"]
    assert (smol.bos_id, smol.eos_id, smol.pad_id, smol.stop_ids) == (1, 2, 2, {2})
    assert smol.vocab_size == len(ref) == 49152 and smol.chat_template is not None
    sp, ref = pairs["sentencepiece"]
    assert (sp.bos_id, sp.eos_id, sp.pad_id, sp.vocab_size) == (1, 2, None, len(ref))
    assert sp.token_to_id("<s>") == 1 and sp.token_to_id("never seen piece") is None


@pytest.mark.parametrize(
    ("name", "adds_bos"),
    [("bpe", False), ("bpe_post_processor", True), ("bpe_both", True), ("bpe_config_off", True), ("smollm2", False)],
)
def test_bos_follows_transformers_and_is_never_doubled(pairs, name: str, adds_bos: bool) -> None:
    ours, ref = pairs[name]
    assert ours.add_bos is adds_bos
    assert (ref.encode("hi")[0] == ours.bos_id) is adds_bos
    bos = ours.decode([ours.bos_id])
    assert ours.encode(bos + "hi", bos=True).count(ours.bos_id) == 1
    assert ours.encode("hi", bos=True)[0] == ours.bos_id and ours.encode("hi", bos=False)[0] != ours.bos_id
    assert ours.encode("hi", eos=True)[-1] == ours.eos_id
    assert len(ours.encode("a long text " * 10, max_length=5)) == 5


def test_sentencepiece_bos_from_config(pairs) -> None:
    assert pairs["sentencepiece"][0].add_bos  # add_bos_token: true in tokenizer_config.json
    assert pairs["sentencepiece"][0].encode("hi")[0] == 1


def test_decode_accepts_tensors_and_ints(pairs) -> None:
    torch = pytest.importorskip("torch")
    ours, _ = pairs["smollm2"]
    ids = ours.encode("Hello there")
    assert ours.decode(torch.tensor(ids)) == ours.decode(ids) == "Hello there"
    assert ours.decode(ids[0]) == ours.decode(ids[:1])


@pytest.mark.parametrize("name", ["bpe", "sentencepiece", "sentencepiece_legacy", "smollm2"])
def test_decode_stream_joins_to_decode_without_broken_characters(pairs, name: str) -> None:
    ours, _ = pairs[name]
    for text in texts_for(ours, name):
        ids = ours.encode(text)
        for skip in (False, True):
            stream = ours.decode_stream(skip_special_tokens=skip)
            deltas = [stream.step(i) for i in ids]
            deltas.append(stream.flush())
            assert "".join(deltas) == ours.decode(ids, skip_special_tokens=skip), repr(text)
            assert not any("\ufffd" in d for d in deltas), (text, deltas)


def test_decode_stream_holds_back_partial_utf8(pairs) -> None:
    ours, _ = pairs["sentencepiece"]
    ids = ours.encode("a🦩", bos=False)  # byte fallback: the emoji is its 4 UTF-8 bytes, one id each
    assert len(ids) >= 5
    stream = ours.decode_stream()
    deltas = [stream.step(i) for i in ids]
    assert deltas[-4:-1] == ["", "", ""] and deltas[-1] == "🦩" and "".join(deltas) == "a🦩"
    stream = ours.decode_stream()
    assert [stream.step(i) for i in ids[:-1]][-3:] == ["", "", ""]  # never a broken character
    assert stream.flush() == "\ufffd" * 3  # the stream ended mid-character: flush shows it, as decode() does


def test_chat_template_matches_transformers(pairs) -> None:
    conversations = [
        [{"role": "user", "content": "Hi 😀, what's 東京?"}],
        [
            {"role": "system", "content": "Be brief. Ünïcödé."},
            {"role": "user", "content": "  padded  ", "meta": {"città": "東京", "n": [1, 2]}},
            {"role": "assistant", "content": "Sure!"},
            {"role": "user", "content": "More", "tool_calls": None},
        ],
    ]
    for name in ("bpe", "smollm2"):
        ours, ref = pairs[name]
        for messages in conversations:
            for add in (True, False):
                expected = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=add)
                assert ours.apply_chat_template(messages, add_generation_prompt=add) == expected
    ours, ref = pairs["bpe"]
    tools = [{"name": "lookup", "description": "città"}]
    expected = ref.apply_chat_template(conversations[1], tools=tools, tokenize=False, add_generation_prompt=True)
    assert ours.apply_chat_template(conversations[1], tools=tools) == expected
    assert '"città"' in expected  # tojson keeps non-ascii


def test_chat_template_errors_and_jinja_file(pairs, tmp_path: Path) -> None:
    ours, _ = pairs["bpe"]
    with pytest.raises(UserError, match="Unknown role: robot"):
        ours.apply_chat_template([{"role": "robot", "content": "beep"}])
    with pytest.raises(UserError, match="no chat template"):
        Tokenizer(build_bpe_dir(tmp_path / "plain", chat_template=None)).apply_chat_template([])
    with_file = build_bpe_dir(tmp_path / "file", chat_template=None)
    (with_file / "chat_template.jinja").write_text(
        "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
    )
    assert Tokenizer(with_file).apply_chat_template([{"role": "user", "content": "hi"}]) == "[user] hi\n"


def test_missing_and_corrupt_files_raise_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"has no tokenizer: expected tokenizer\.json or tokenizer\.model") as info:
        Tokenizer(tmp_path)
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UserError, match="is not a directory"):
        Tokenizer(tmp_path / "missing")
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(UserError, match="not a valid tokenizer.json"):
        Tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(UserError, match="not a valid SentencePiece model"):
        Tokenizer(tmp_path)
    good = build_bpe_dir(tmp_path / "bad_config")
    (good / "tokenizer_config.json").write_text("{oops")
    with pytest.raises(UserError, match="tokenizer_config.json is not valid JSON"):
        Tokenizer(good)


def test_config_special_tokens_missing_from_tokenizer_json_are_added(tmp_path: Path) -> None:
    path = build_bpe_dir(tmp_path / "extra")
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["additional_special_tokens"] = ["<|tool|>"]
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    ours, ref = Tokenizer(path), transformers.AutoTokenizer.from_pretrained(path)
    text = "call <|tool|> now"
    assert ours.token_to_id("<|tool|>") is not None
    assert ours.encode(text) == ref.encode(text)
    assert ours.decode(ours.encode(text), skip_special_tokens=True) == ref.decode(ref.encode(text), True)


def test_import_is_light() -> None:
    code = (
        "import sys, litgpt_lite.tokenizer, litgpt_lite.prompts; "
        "heavy = {'torch', 'tokenizers', 'sentencepiece', 'jinja2', 'transformers'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sentencepiece_added_tokens_beyond_the_model(tmp_path: Path) -> None:
    path = build_sentencepiece_dir(tmp_path / "sp_added")
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {
        "500": {"content": "<pad>", "special": True},
        "501": {"content": "<|tool|>", "special": False},
    }
    config["pad_token"] = "<pad>"
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    ours, ref = Tokenizer(path), transformers.AutoTokenizer.from_pretrained(path)
    assert (ours.pad_id, ours.vocab_size) == (500, len(ref))
    for text in ("a <pad> b<|tool|>c", "<|tool|>x"):
        ids = ref.encode(text)
        assert ours.encode(text) == ids
        for skip in (False, True):  # <pad> is special and skipped, <|tool|> is not
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)
