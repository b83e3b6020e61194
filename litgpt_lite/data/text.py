"""Pretraining data: fixed-length blocks cut from one token stream.

`TextFiles` tokenizes a folder of .txt files once into memory-mapped token shards (data/shards.py format, with a
manifest) and reuses them; `TokenShardData` opens shards written by `prepare_code`; `LitData` reads a
litdata-optimized streaming directory; `BundledCorpus` is the small corpus shipped for the default run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from litgpt_lite.data.base import DataContext, DataModule, Splits, read_utf8_lenient
from litgpt_lite.errors import UserError

BUNDLED_CORPUS = Path(__file__).parent / "bundled" / "corpus"
BUNDLED_TOKENIZER = Path(__file__).parent / "bundled" / "tokenizer"


def cache_root() -> Path:
    return Path(os.environ.get("LITGPT_LITE_CACHE", Path.home() / ".cache" / "litgpt_lite"))


class TokenBlocks(torch.utils.data.Dataset):
    """Blocks [start, start + T + 1) of a token stream, as (input_ids, labels) shifted by one."""

    def __init__(self, shards, block_length: int, block_ids: list[int] | range) -> None:
        self.shards, self.block_length, self.block_ids = shards, block_length, block_ids

    def __len__(self) -> int:
        return len(self.block_ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        start = self.block_ids[i] * self.block_length
        tokens = torch.from_numpy(self.shards.read(start, self.block_length + 1).astype("int64"))
        return {"input_ids": tokens[:-1], "labels": tokens[1:]}

    def num_tokens(self) -> int:
        return len(self.block_ids) * self.block_length


def split_blocks(shards, max_seq_length: int, val_split_fraction: float, where: str) -> Splits:
    """Cut a token stream into blocks; every k-th block (k = 1 / val_split_fraction) goes to validation, so the
    validation set samples the whole corpus rather than its last file."""
    n_blocks = (len(shards) - 1) // max_seq_length
    if n_blocks < 1:
        raise UserError(
            f"{where} holds {len(shards)} tokens, fewer than one block of max_seq_length {max_seq_length} + 1: "
            "add data or lower --train.max_seq_length"
        )
    if val_split_fraction <= 0 or n_blocks < 2:
        return Splits(TokenBlocks(shards, max_seq_length, range(n_blocks)), None, [f"{len(shards):,} tokens"])
    stride = max(2, round(1 / val_split_fraction))
    val_ids = list(range(stride - 1, n_blocks, stride)) or [n_blocks - 1]
    train_ids = sorted(set(range(n_blocks)) - set(val_ids))
    train = TokenBlocks(shards, max_seq_length, train_ids)
    val = TokenBlocks(shards, max_seq_length, val_ids)
    note = f"{len(shards):,} tokens: {len(train)} train and {len(val)} val blocks of {max_seq_length}"
    return Splits(train, val, [note])


class TokenShardData(DataModule):
    """A token shard directory (manifest.json + .bin files), e.g. written by `prepare_code --tokenizer_dir`.

    Args:
        path: the shard directory (or a prepare_code output dir holding one under tokens/).
        val_split_fraction: share of blocks, from the end of the stream, used for validation.
    """

    def __init__(self, path: Path, val_split_fraction: float = 0.01) -> None:
        self.path, self.val_split_fraction = Path(path), val_split_fraction

    def check(self) -> None:
        from litgpt_lite.data.shards import TokenShards

        TokenShards(self.path)

    def build(self, ctx: DataContext) -> Splits:
        from litgpt_lite.data.shards import TokenShards

        shards = TokenShards(self.path)
        check_vocab(shards.vocab_size, ctx, str(self.path))
        return split_blocks(shards, ctx.max_seq_length, self.val_split_fraction, str(self.path))


def check_vocab(shard_vocab: int, ctx: DataContext, where: str) -> None:
    if ctx.tokenizer is not None and shard_vocab > ctx.tokenizer.vocab_size:
        raise UserError(
            f"{where} was tokenized with a vocabulary of {shard_vocab}, larger than this tokenizer's "
            f"{ctx.tokenizer.vocab_size}: re-tokenize it with the model's tokenizer"
        )


class TextFiles(DataModule):
    """A folder of .txt files (searched recursively), tokenized once into cached memory-mapped token shards.

    Args:
        train_data_path: the folder of .txt files.
        val_split_fraction: share of blocks, from the end of the stream, used for validation.
        cache_dir: where the token shards go; defaults to ~/.cache/litgpt_lite/tokens/<hash of files + tokenizer>.
    """

    def __init__(self, train_data_path: Path, val_split_fraction: float = 0.05, cache_dir: Path | None = None) -> None:
        self.train_data_path, self.val_split_fraction = Path(train_data_path), val_split_fraction
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None

    def check(self) -> None:
        self._files()

    def build(self, ctx: DataContext) -> Splits:
        from litgpt_lite.data.shards import TokenShards

        files = self._files()
        if ctx.tokenizer is None:
            raise UserError("TextFiles needs a tokenizer: pass --tokenizer_dir")
        shard_dir = self.cache_dir or cache_root() / "tokens" / _fingerprint(files, ctx.tokenizer)
        if not (shard_dir / "manifest.json").is_file():
            self._tokenize(files, ctx.tokenizer, shard_dir)
        return split_blocks(TokenShards(shard_dir), ctx.max_seq_length, self.val_split_fraction, str(files[0].parent))

    def _files(self) -> list[Path]:
        if not self.train_data_path.is_dir():
            raise UserError(f"Data folder {self.train_data_path} does not exist: pass a folder of .txt files")
        files = sorted(p for p in self.train_data_path.rglob("*.txt") if p.is_file())
        if not files:
            raise UserError(f"{self.train_data_path} has no .txt files: the dataset is empty")
        if all(p.stat().st_size == 0 for p in files):
            raise UserError(f"Every .txt file in {self.train_data_path} is empty: the dataset is empty")
        return files

    @staticmethod
    def _tokenize(files: list[Path], tokenizer, shard_dir: Path) -> None:
        from litgpt_lite.data.shards import write_token_shards

        if tokenizer.eos_id is None:
            raise UserError(f"The tokenizer in {tokenizer.checkpoint_dir} has no EOS token to separate documents")
        not_utf8: list[str] = []

        def docs():
            for path in files:
                text, problem = read_utf8_lenient(path)
                if problem is not None:
                    not_utf8.append(f"{path}: {problem}")
                yield tokenizer.encode(text, bos=False)

        print(f"Tokenizing {len(files)} text file(s) into {shard_dir} (once)", flush=True)
        write_token_shards(docs(), shard_dir, eos_id=tokenizer.eos_id, vocab_size=tokenizer.vocab_size)
        if not_utf8:
            print(
                f"note: {len(not_utf8)} file(s) are not valid UTF-8, their undecodable bytes were read as U+FFFD "
                f"(first: {not_utf8[0]}); convert them to UTF-8 and delete {shard_dir} to re-tokenize",
                flush=True,
            )


def _fingerprint(files: list[Path], tokenizer) -> str:
    """A cache key over the files (path, size, mtime) and the tokenizer's files."""
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
        path = Path(tokenizer.checkpoint_dir) / name
        if path.is_file():
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


class BundledCorpus(TextFiles):
    """The small English corpus shipped with litgpt_lite, for the default pretraining run.

    Args:
        val_split_fraction: share of blocks, from the end of the stream, used for validation.
    """

    def __init__(self, val_split_fraction: float = 0.05) -> None:
        super().__init__(BUNDLED_CORPUS, val_split_fraction)


class LitData(DataModule):
    """A litdata-optimized directory of token arrays (written by `litdata.optimize` with a TokensLoader layout).

    Needs `pip install litgpt_lite[litdata]` (litdata imports torchvision, which must match your torch).

    Args:
        data_path: the optimized directory with index.json (local path).
        val_data_path: an optimized directory for validation (optional).
    """

    def __init__(self, data_path: Path, val_data_path: Path | None = None) -> None:
        self.data_path = Path(data_path)
        self.val_data_path = Path(val_data_path) if val_data_path is not None else None

    def build(self, ctx: DataContext) -> Splits:
        for path in (self.data_path, self.val_data_path):
            if path is not None and not (path / "index.json").is_file():
                raise UserError(f"{path} has no index.json: write it with litdata.optimize first")
        try:
            from litdata import StreamingDataset, TokensLoader
        except Exception as e:  # noqa: BLE001 - litdata or its torchvision import can fail many ways
            raise UserError(f"--data LitData needs a working litdata install ({type(e).__name__}: {e})") from None

        def open_set(path: Path) -> LitDataBlocks:
            loader = TokensLoader(block_size=ctx.max_seq_length + 1)
            return LitDataBlocks(StreamingDataset(str(path), item_loader=loader, shuffle=False, drop_last=True))

        train = open_set(self.data_path)
        if len(train) == 0:
            raise UserError(f"{self.data_path} holds fewer tokens than one block of {ctx.max_seq_length + 1}")
        val = open_set(self.val_data_path) if self.val_data_path is not None else None
        return Splits(train, val, [f"litdata: {len(train)} train blocks of {ctx.max_seq_length}"])


class LitDataBlocks(torch.utils.data.Dataset):
    """Index a litdata StreamingDataset as (input_ids, labels) blocks; the fit loop's sampler does the shuffling."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        tokens = torch.as_tensor(self.dataset[i], dtype=torch.long)
        return {"input_ids": tokens[:-1], "labels": tokens[1:]}


def shard_dir_if_any(path: str | Path) -> Path | None:
    """`path` when it is a token shard dir (or a prepare_code output dir holding one), else None."""
    path = Path(path)
    for candidate in (path, path / "tokens"):
        manifest = candidate / "manifest.json"
        if manifest.is_file():
            try:
                if json.loads(manifest.read_text()).get("format") == "litgpt_lite.token_shards":
                    return path
            except (json.JSONDecodeError, OSError):
                return None
    return None
