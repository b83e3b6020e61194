"""Token shards: the on-disk format `pretrain` reads, written by `prepare_code --tokenizer_dir` (and any other prep).

A shard directory holds flat little-endian binary files of token ids (uint16 when the vocabulary fits, else uint32),
each document followed by `eos_id`, and a `manifest.json`:

    {"format": "litgpt_lite.token_shards", "version": 1, "dtype": "uint16", "eos_id": 0, "vocab_size": 32000,
     "num_tokens": 123, "shards": [{"file": "shard-00000.bin", "num_tokens": 123, "sha256": "..."}]}

Documents run across shard boundaries, so every shard but the last holds exactly `shard_tokens` tokens and readers
see one flat token stream. Shards are memory-mapped, so opening a corpus costs nothing and many DataLoader workers
share the page cache.
"""

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from litgpt_lite.errors import UserError

FORMAT = "litgpt_lite.token_shards"
VERSION = 1
MANIFEST = "manifest.json"
_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


def token_dtype_name(vocab_size: int) -> str:
    """`uint16` when every id fits in 16 bits (vocab_size < 65536), else `uint32`."""
    if not 0 < vocab_size <= 2**32:
        raise ValueError(f"vocab_size must be in 1..2**32, got {vocab_size}")
    return "uint16" if vocab_size < 2**16 else "uint32"


class _ShardWriter:
    """Appends token arrays to fixed-size shard files, hashing as it writes."""

    def __init__(self, directory: Path, dtype: np.dtype, shard_tokens: int) -> None:
        self.directory, self.dtype, self.shard_tokens = directory, dtype, shard_tokens
        self.shards: list[dict] = []
        self._file = None
        self._count = 0
        self._sha = hashlib.sha256()

    def write(self, tokens: np.ndarray) -> None:
        while len(tokens):
            if self._file is None:
                self._open()
            take = tokens[: self.shard_tokens - self._count]
            data = take.astype(self.dtype, copy=False).tobytes()
            self._file.write(data)
            self._sha.update(data)
            self._count += len(take)
            tokens = tokens[len(take) :]
            if self._count == self.shard_tokens:
                self._close()

    def close(self) -> list[dict]:
        if self._file is not None:
            self._close()
        return self.shards

    def _open(self) -> None:
        name = f"shard-{len(self.shards):05d}.bin"
        self._file = open(self.directory / name, "wb")  # stays open across writes; _close closes it
        self.shards.append({"file": name, "num_tokens": 0, "sha256": ""})

    def _close(self) -> None:
        self._file.close()
        self.shards[-1].update(num_tokens=self._count, sha256=self._sha.hexdigest())
        self._file, self._count, self._sha = None, 0, hashlib.sha256()


def write_token_shards(
    docs: Iterable[list[int]], out_dir: Path | str, *, eos_id: int, vocab_size: int, shard_tokens: int = 2**24
) -> Path:
    """Write tokenized documents as a shard directory, each document followed by `eos_id`.

    The directory is built under a temporary name beside `out_dir` and renamed into place at the end, so readers
    never see a half-written corpus. An existing `out_dir` is replaced.

    Args:
        docs: token ids per document.
        out_dir: the shard directory to create.
        eos_id: the id appended after every document.
        vocab_size: the tokenizer's vocabulary size; picks uint16 or uint32 and bounds every id.
        shard_tokens: tokens per shard file (the last one holds the rest).

    Returns:
        `out_dir`.
    """
    dtype_name = token_dtype_name(vocab_size)
    if not 0 <= eos_id < vocab_size:
        raise ValueError(f"eos_id {eos_id} is outside the vocabulary (size {vocab_size})")
    if shard_tokens < 1:
        raise ValueError(f"shard_tokens must be positive, got {shard_tokens}")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the finished dir should read like any other
    try:
        writer = _ShardWriter(tmp, _DTYPES[dtype_name], shard_tokens)
        num_docs = 0
        for doc in docs:
            writer.write(_with_eos(doc, eos_id, vocab_size))
            num_docs += 1
        shards = writer.close()
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "dtype": dtype_name,
            "eos_id": eos_id,
            "vocab_size": vocab_size,
            "num_docs": num_docs,
            "num_tokens": sum(s["num_tokens"] for s in shards),
            "shards": shards,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _with_eos(doc: Iterable[int], eos_id: int, vocab_size: int) -> np.ndarray:
    tokens = np.asarray(doc, dtype=np.int64).reshape(-1)
    if len(tokens) and (tokens.min() < 0 or tokens.max() >= vocab_size):
        bad = int(tokens.min()) if tokens.min() < 0 else int(tokens.max())
        raise ValueError(f"token id {bad} is outside the vocabulary (size {vocab_size})")
    return np.append(tokens, eos_id)


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        # Swap rather than delete-then-rename: the old corpus stays whole until the new one has its name.
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        out_dir.rename(old / out_dir.name)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out_dir)


class TokenShards:
    """A shard directory opened for reading: one flat stream of token ids across all shards.

    Args:
        path: the shard directory, or a `prepare_code` output directory holding one under `tokens/`.
        verify_checksums: re-hash every shard against the manifest (reads the whole corpus once).
    """

    def __init__(self, path: Path | str, *, verify_checksums: bool = False) -> None:
        self.path = _resolve_dir(Path(path))
        manifest = _load_manifest(self.path)
        self.dtype = _DTYPES[manifest["dtype"]]
        self.eos_id: int = manifest["eos_id"]
        self.vocab_size: int = manifest["vocab_size"]
        self.shard_files = [self.path / s["file"] for s in manifest["shards"]]
        sizes = [s["num_tokens"] for s in manifest["shards"]]
        self._offsets = np.cumsum([0, *sizes])
        for shard, num_tokens in zip(manifest["shards"], sizes):
            _check_shard_file(self.path, shard, num_tokens * self.dtype.itemsize, verify_checksums)
        self._maps: list[np.memmap] | None = None

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def num_shards(self) -> int:
        return len(self.shard_files)

    def read(self, start: int, length: int) -> np.ndarray:
        """`length` token ids from global position `start`, across shard boundaries, as a new array."""
        if start < 0 or length < 0 or start + length > len(self):
            raise IndexError(f"read({start}, {length}) is outside the {len(self)} tokens of {self.path}")
        maps = self._open_maps()
        out = np.empty(length, dtype=self.dtype)
        shard = int(np.searchsorted(self._offsets, start, side="right")) - 1
        done = 0
        while done < length:
            local = start + done - int(self._offsets[shard])
            take = min(length - done, len(maps[shard]) - local)
            out[done : done + take] = maps[shard][local : local + take]
            done += take
            shard += 1
        return out

    def _open_maps(self) -> list[np.memmap]:
        # Mapped on first read, not in __init__, so a pickled copy (DataLoader worker) maps its own view.
        if self._maps is None:
            self._maps = [np.memmap(f, dtype=self.dtype, mode="r") for f in self.shard_files]
        return self._maps

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": None}  # never pickle the mapped arrays themselves


def _resolve_dir(path: Path) -> Path:
    if not path.is_dir():
        raise UserError(f"Token shard dir {path} does not exist: run `litgpt_lite prepare_code ... --tokenizer_dir`")
    if not (path / MANIFEST).is_file() and (path / "tokens" / MANIFEST).is_file():
        return path / "tokens"
    return path


def _load_manifest(path: Path) -> dict:
    file = path / MANIFEST
    if not file.is_file():
        raise UserError(f"{path} has no {MANIFEST}: it is not a token shard dir (write one with write_token_shards)")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{file} is not valid JSON ({e}): re-create the shard dir") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{file} is not a {FORMAT} manifest")
    if not isinstance(manifest.get("version"), int) or manifest["version"] > VERSION:
        raise UserError(f"{file} has format version {manifest.get('version')!r}; this reader knows {VERSION}")
    _check_fields(file, manifest)
    return manifest


def _check_fields(file: Path, manifest: dict) -> None:
    vocab_size, eos_id, shards = manifest.get("vocab_size"), manifest.get("eos_id"), manifest.get("shards")
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise UserError(f"{file}: vocab_size must be a positive integer")
    if manifest.get("dtype") != token_dtype_name(vocab_size):
        raise UserError(f"{file}: dtype {manifest.get('dtype')!r} does not fit vocab_size {vocab_size}")
    if not isinstance(eos_id, int) or not 0 <= eos_id < vocab_size:
        raise UserError(f"{file}: eos_id {eos_id!r} is outside the vocabulary (size {vocab_size})")
    if not isinstance(shards, list):
        raise UserError(f"{file}: 'shards' must be a list")
    for shard in shards:
        name = shard.get("file") if isinstance(shard, dict) else None
        # A bare file name only: a manifest must not point outside its own directory.
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise UserError(f"{file}: bad shard entry {shard!r}")
        if not isinstance(shard.get("num_tokens"), int) or shard["num_tokens"] < 1:
            raise UserError(f"{file}: shard {name} needs a positive num_tokens")


def _check_shard_file(directory: Path, shard: dict, expected_bytes: int, verify_checksum: bool) -> None:
    file = directory / shard["file"]
    if not file.is_file():
        raise UserError(f"Shard {file} is missing: the shard dir is incomplete, re-create it")
    size = file.stat().st_size
    if size != expected_bytes:
        raise UserError(f"Shard {file} has {size} bytes, the manifest says {expected_bytes}: re-create the shard dir")
    if verify_checksum:
        sha = hashlib.sha256()
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                sha.update(block)
        if sha.hexdigest() != shard.get("sha256"):
            raise UserError(f"Shard {file} does not match its sha256 in the manifest: re-create the shard dir")
