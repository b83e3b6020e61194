"""The checkpoint directory, the unit every command reads and writes.

    lit_model.safetensors   weights (LitGPT's lit_model.pth also loads, with torch.load(weights_only=True))
    model_config.yaml       the Config
    tokenizer.json / tokenizer.model, tokenizer_config.json, generation_config.json
    prompt_style.yaml       a registry name, never a class path
    hyperparameters.yaml    what produced it (training runs)

Loading never unpickles arbitrary objects; writing goes to a temporary directory that is renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch

from litgpt_lite.config import Config
from litgpt_lite.errors import UserError

WEIGHTS = "lit_model.safetensors"
LEGACY_WEIGHTS = "lit_model.pth"
CONFIG = "model_config.yaml"
LORA_WEIGHTS = "lit_model.lora.safetensors"  # adapters only (finetune_lora output)
QUANTIZED_WEIGHTS = "lit_model.quantized.safetensors"  # written by `litgpt_lite quantize`
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
)


def validate_checkpoint_dir(path: str | Path, need_weights: bool = True) -> Path:
    """The directory as a Path, or a UserError naming the first missing piece and the fix."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"Checkpoint dir {path} does not exist")
    if not path.is_dir():
        raise UserError(f"{path} is not a directory: pass a checkpoint directory")
    if not (path / CONFIG).is_file():
        hint = " It looks like a Hugging Face folder:" if (path / "config.json").is_file() else ""
        raise UserError(
            f"Checkpoint dir {path} has no {CONFIG}.{hint} run `litgpt_lite convert_to_litgpt {path}` first"
        )
    if need_weights and not (path / WEIGHTS).is_file() and not (path / LEGACY_WEIGHTS).is_file():
        if (path / LORA_WEIGHTS).is_file():
            raise UserError(f"{path} holds LoRA adapters only: run `litgpt_lite merge_lora {path}` first")
        if (path / QUANTIZED_WEIGHTS).is_file():
            raise UserError(f"{path} is pre-quantized: load it with generate/chat/serve/evaluate or LLM.load")
        raise UserError(f"Checkpoint dir {path} has no {WEIGHTS}")
    return path


def load_config(checkpoint_dir: str | Path) -> Config:
    return Config.from_file(Path(checkpoint_dir) / CONFIG)


def load_state_dict(checkpoint_dir: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Weights of a checkpoint directory (safetensors, or LitGPT's .pth without unpickling code)."""
    checkpoint_dir = Path(checkpoint_dir)
    path = checkpoint_dir / WEIGHTS
    if path.is_file():
        return read_safetensors(path, device)
    return read_legacy_weights(checkpoint_dir / LEGACY_WEIGHTS, device)


def read_legacy_weights(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """LitGPT's lit_model.pth as a state dict in our names, read with torch.load(weights_only=True).

    Only zip-format files (torch.save since 1.6) can be memory-mapped; an older legacy-pickle file is read whole.
    """
    try:
        state = torch.load(path, map_location=device, weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt or unsafe file
        raise UserError(
            f"Cannot read {path}: {type(e).__name__}: {str(e).splitlines()[0]} (only plain tensors load; convert the "
            "original model with `litgpt_lite convert_to_litgpt` instead)"
        ) from None
    if not isinstance(state, dict):
        raise UserError(f"Cannot read {path}: it holds a {type(state).__name__}, not a state dict of tensors")
    state = state.get("model", state)
    return {k.replace(".attn.attn.", ".attn.qkv."): v for k, v in state.items()}


def open_weights(checkpoint_dir: str | Path, mmap: bool = False) -> SafetensorsReader | StateDictReader:
    """A reader over a checkpoint's weights: streaming for lit_model.safetensors (memory-mapped where tensors are
    used as stored, see SafetensorsReader), in memory for LitGPT's .pth."""
    checkpoint_dir = Path(checkpoint_dir)
    if (checkpoint_dir / WEIGHTS).is_file():
        return SafetensorsReader(checkpoint_dir / WEIGHTS, mmap=mmap)
    return StateDictReader(read_legacy_weights(checkpoint_dir / LEGACY_WEIGHTS))


def iter_checkpoint_tensors(checkpoint_dir: str | Path) -> Iterator[tuple[str, Callable[[], torch.Tensor]]]:
    """(name, loader) pairs that read one tensor at a time, so a whole model never sits in memory twice."""
    reader = open_weights(checkpoint_dir)
    for name in reader.keys():
        yield name, (lambda n=name: reader.get_tensor(n))


def read_safetensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of a .safetensors file, on `device` (on the CPU, views of a private memory map)."""
    reader = SafetensorsReader(path, mmap=True)
    return {name: reader.get_tensor(name).to(device) for name in reader.keys()}


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """UserError for a missing tensor, an unexpected one or a shape that does not match the config."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        expected.pop("lm_head.weight", None)
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    missing = sorted(set(expected) - set(state))
    if missing:
        raise UserError(f"{source} lacks {len(missing)} weight(s), first {missing[0]}: is it the right model?")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise UserError(f"{source} has weight(s) the config does not know, first {unexpected[0]}")
    for name, shape in expected.items():
        if tuple(state[name].shape) != tuple(shape):
            raise UserError(
                f"{source}: {name} has shape {tuple(state[name].shape)} but the config needs {tuple(shape)}"
            )


def copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied


@contextmanager
def atomic_dir(out_dir: str | Path, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `out_dir` in one rename."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a checkpoint directory is an ordinary one
    try:
        yield tmp
        if out_dir.exists():
            if not replace:
                raise UserError(f"{out_dir} already exists")
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_file(path: Path, write) -> None:
    """Call `write(tmp_path)` then rename over `path`, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# ---------------------------------------------------------------- streaming safetensors
# the file format's dtype codes (not user-facing names: those are precision.DTYPE_NAMES)
_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
_READ_CHUNK_BYTES = 16 * 2**20


class SafetensorsReader:
    """Reads a .safetensors file one tensor at a time, the one reader for every weight file.

    By default with plain reads: a memory map's pages count towards the process's resident memory until the kernel
    drops them, so peak RSS would grow to the whole file, while a read into a fresh tensor costs exactly that tensor;
    converting, casting or quantizing a model never holds more than one tensor of the source. With `mmap=True`, a
    tensor read as stored is a copy-on-write view of a private memory map instead: no copy, and its pages come in on
    first use (what a model loaded as stored wants: SmolLM2-135M loads in 0.4 s instead of 1.4 s).
    """

    def __init__(self, path: str | Path, mmap: bool = False) -> None:
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(8)
                n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
                if n < 2 or 8 + n > size:
                    raise UserError(f"{self.path} is corrupt or truncated (bad header): re-create it")
                header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{self.path} is corrupt (unreadable header): re-create it") from None
        except OSError as e:
            raise UserError(f"Cannot read {self.path}: {e.strerror or e}") from None
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self.entries: dict[str, dict] = header
        self._data_start = 8 + n
        end = max((e["data_offsets"][1] for e in header.values()), default=0)
        if self._data_start + end > size:
            raise UserError(f"{self.path} is corrupt or truncated ({size} bytes, header needs more): re-create it")
        self._mapped = torch.UntypedStorage.from_file(str(self.path), shared=False, nbytes=size) if mmap else None

    def keys(self) -> list[str]:
        return list(self.entries)

    def meta(self) -> dict[str, torch.Tensor]:
        """Shape-only stand-ins (on the meta device) for validating names and shapes before reading anything."""
        return {
            k: torch.empty(e["shape"], dtype=_DTYPE_NAMES[e["dtype"]], device="meta") for k, e in self.entries.items()
        }

    def get_tensor(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The tensor, cast to `dtype` if given and it is floating; a cast streams through a small buffer, so reading
        a float32 tensor as bfloat16 never holds the float32 copy."""
        entry = self.entries[name]
        stored, shape = _DTYPE_NAMES[entry["dtype"]], entry["shape"]
        start, end = entry["data_offsets"]
        if dtype is None or dtype == stored or not stored.is_floating_point:
            offset = self._data_start + start
            if self._mapped is not None and offset % stored.itemsize == 0:  # views need aligned elements
                mapped = torch.empty(0, dtype=torch.uint8).set_(self._mapped, offset, (end - start,))
                return mapped.view(stored).reshape(shape)
            raw = torch.empty(end - start, dtype=torch.uint8)  # not zero-filled: the read overwrites every byte
            self._read_into(raw, start, name)
            return raw.view(stored).reshape(shape)
        out = torch.empty(shape, dtype=dtype)
        flat, size = out.view(-1), stored.itemsize
        step = max(1, _READ_CHUNK_BYTES // size)
        buffer = torch.empty(min(step, flat.numel()) * size, dtype=torch.uint8)
        for first in range(0, flat.numel(), step):
            count = min(step, flat.numel() - first)
            chunk = buffer[: count * size]
            self._read_into(chunk, start + first * size, name)
            flat[first : first + count] = chunk.view(stored)
        return out

    def _read_into(self, out: torch.Tensor, offset: int, name: str) -> None:
        if not out.numel():
            return
        with open(self.path, "rb") as f:
            f.seek(self._data_start + offset)
            if f.readinto(memoryview(out.numpy())) != out.numel():
                raise UserError(f"{self.path} is truncated: {name} is cut short; re-create the file")


class StateDictReader:
    """The reader interface over a state dict already in memory (LitGPT's lit_model.pth); each read hands its
    tensor over, so the dict does not keep a second reference while the model is built."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self.state = state

    def keys(self) -> list[str]:
        return list(self.state)

    def meta(self) -> dict[str, torch.Tensor]:
        return self.state

    def get_tensor(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        t = self.state.pop(name)
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t


class SafetensorsWriter:
    """Writes a .safetensors file one tensor at a time, so converting never holds the whole model in memory.

    Tensor bytes go straight into the file behind a reserved header region; `close()` writes the header into it
    (padded with spaces, as the format allows). Only a header larger than the reserve costs a second pass.
    """

    def __init__(self, path: str | Path, metadata: dict[str, str] | None = None, expected_tensors: int = 256) -> None:
        self.path = Path(path)
        self.metadata = metadata or {"format": "pt"}
        self._reserve = 8 * ((256 * expected_tensors + 4096) // 8)  # ~256 header bytes per tensor is plenty
        self._file = open(self.path, "wb")
        self._file.write(b"\0" * (8 + self._reserve))
        self._header: dict[str, dict] = {}
        self.nbytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._header:
            raise ValueError(f"duplicate tensor {name}")
        t = tensor.detach().contiguous().cpu()
        raw = t.reshape(-1).view(torch.uint8).numpy()  # a view: no copy of the tensor's bytes
        self._header[name] = {
            "dtype": _DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [self.nbytes, self.nbytes + raw.nbytes],
        }
        self._file.write(raw.data)
        self.nbytes += raw.nbytes

    def close(self) -> None:
        blob = json.dumps({**self._header, "__metadata__": self.metadata}, separators=(",", ":")).encode()
        if len(blob) <= self._reserve:
            self._file.seek(0)
            self._file.write(struct.pack("<Q", self._reserve) + blob + b" " * (self._reserve - len(blob)))
            self._file.close()
            return
        self._file.close()  # the header outgrew its reserve: write it in front of the data in a second file
        blob += b" " * (-len(blob) % 8)
        moved = self.path.with_name(self.path.name + ".data")
        os.replace(self.path, moved)
        with open(self.path, "wb") as out, open(moved, "rb") as data:
            out.write(struct.pack("<Q", len(blob)) + blob)
            data.seek(8 + self._reserve)
            shutil.copyfileobj(data, out, 1 << 24)
        moved.unlink()

    def abort(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


def save_state_dict(
    tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    path: Path,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write tensors (a state dict, or (name, tensor) pairs streamed one at a time) as one .safetensors file; a
    failure part way removes the partial file."""
    pairs = tensors.items() if isinstance(tensors, Mapping) else tensors
    expected = len(tensors) if isinstance(tensors, Mapping) else 256
    writer = SafetensorsWriter(path, metadata=metadata, expected_tensors=expected)
    try:
        for name, tensor in pairs:
            writer.add(name, tensor)
    except BaseException:
        writer.abort()
        raise
    writer.close()


def save_checkpoint(
    model_or_state,
    config: Config,
    out_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    prompt_style: str | None = None,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write a full checkpoint directory atomically."""
    state = model_or_state.state_dict() if hasattr(model_or_state, "state_dict") else model_or_state
    if config.tie_embeddings:
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    with atomic_dir(out_dir) as tmp:
        save_state_dict(state, tmp / WEIGHTS)
        config.save(tmp / CONFIG)
        if tokenizer_dir is not None:
            copy_tokenizer_files(Path(tokenizer_dir), tmp)
            if prompt_style is None and (Path(tokenizer_dir) / "prompt_style.yaml").is_file():
                shutil.copy2(Path(tokenizer_dir) / "prompt_style.yaml", tmp / "prompt_style.yaml")
        if prompt_style is not None:
            (tmp / "prompt_style.yaml").write_text(f"name: {prompt_style}\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return Path(out_dir)
