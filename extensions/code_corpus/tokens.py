"""Tokenizing the kept files into the token shards `pretrain` reads (litgpt_lite.data.shards)."""

import json
from collections.abc import Iterator
from pathlib import Path

from litgpt_lite.errors import UserError

# Tried in order when only a bare tokenizer.json is there to say which token ends a document.
_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|im_end|>")


class _HFTokenizerFile:
    """The `tokenizers` fallback with the same surface as litgpt_lite.tokenizer.Tokenizer: encode, eos_id, vocab_size.

    Used only when litgpt_lite.tokenizer is not importable (it is written in parallel with this extension).
    """

    def __init__(self, checkpoint_dir: Path) -> None:
        from tokenizers import Tokenizer

        file = checkpoint_dir / "tokenizer.json"
        if not file.is_file():
            raise UserError(f"--tokenizer_dir {checkpoint_dir} has no tokenizer.json")
        self._tokenizer = Tokenizer.from_file(str(file))
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        self.eos_id = self._find_eos_id(checkpoint_dir)

    def _find_eos_id(self, checkpoint_dir: Path) -> int:
        config = checkpoint_dir / "tokenizer_config.json"
        names = list(_EOS_CANDIDATES)
        if config.is_file():
            eos = json.loads(config.read_text(encoding="utf-8")).get("eos_token")
            names.insert(0, eos.get("content") if isinstance(eos, dict) else eos)
        for name in names:
            if name and self._tokenizer.token_to_id(name) is not None:
                return self._tokenizer.token_to_id(name)
        raise UserError(
            f"--tokenizer_dir {checkpoint_dir}: no end-of-text token; set eos_token in tokenizer_config.json"
        )

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        return ids + [self.eos_id] if eos else ids


def load_tokenizer(checkpoint_dir: Path):
    """litgpt_lite's Tokenizer for the checkpoint dir, or the bare `tokenizers` file when that module is absent."""
    if not checkpoint_dir.is_dir():
        raise UserError(f"--tokenizer_dir {checkpoint_dir} does not exist")
    try:
        from litgpt_lite.tokenizer import Tokenizer
    except ModuleNotFoundError as e:
        if e.name != "litgpt_lite.tokenizer":
            raise
        return _HFTokenizerFile(checkpoint_dir)
    return Tokenizer(checkpoint_dir)


_worker_tokenizer = None


def init_worker(checkpoint_dir: Path) -> None:
    """Pool initializer: each worker loads the tokenizer once."""
    global _worker_tokenizer
    _worker_tokenizer = load_tokenizer(checkpoint_dir)


def encode_document(content: str) -> list[int]:
    """Token ids of one file for the current worker's tokenizer (no BOS; the shard writer appends EOS)."""
    return _worker_tokenizer.encode(content, bos=False, eos=False)


def iter_shard_contents(data_dir: Path) -> Iterator[str]:
    """The `content` of every kept file, in shard order."""
    for shard in sorted(data_dir.glob("shard-*.jsonl")):
        with shard.open(encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)["content"]
