"""Import a GGUF file (llama.cpp, Ollama) as a litgpt_lite checkpoint directory: Llama, Gemma 2/3, Qwen 2/2.5, Qwen 3.

The metadata becomes our `Config`; the tensors are dequantized one at a time (with `gguf.quants`) and go through the
same engine as Hugging Face weights, with a GGUF name table (`weight_maps.GGUF_MAPS`) whose transforms undo what
llama.cpp's converter did: the rotary permutation of Llama's q/k rows and the +1 folded into Gemma's norm weights.
The vocabulary becomes tokenizer.json (see gguf_tokenizer.py). The files written have fixed names; nothing in the
GGUF names a path.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from litgpt_lite.errors import UserError

# general.architecture -> the HF architecture whose weight map and config.json our checkpoint then uses
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
_GGUF_ARCH = {hf: gguf for gguf, hf in ARCHITECTURES.items()}
QUANT_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")

_VISION_PREFIXES = ("v.", "mm.")  # Ollama's Gemma 3 files bundle the vision tower; we import the text model


# GGUF's optional YaRN keys (`{arch}.rope.scaling.<key>`) -> our rope_scaling fields; the export runs it backwards
YARN_KEYS = {
    "original_context_length": "original_max_position_embeddings",
    "yarn_beta_fast": "beta_fast",
    "yarn_beta_slow": "beta_slow",
}


def convert_gguf(path: str | Path, out_dir: str | Path | None = None, dtype: str | None = None) -> Path:
    """Import the Llama, Gemma 2/3 or Qwen 2/3 model in a GGUF file as a litgpt_lite checkpoint directory.

    Args:
        path: the .gguf file (or a GGUF without the suffix, like Ollama's blobs).
        out_dir: the checkpoint directory to write; default: a directory next to the file named after its stem.
            An existing directory is replaced only when it is a checkpoint directory (has model_config.yaml).
        dtype: store the weights in this dtype (float32, bf16, fp16); default float32, which holds every
            dequantized value exactly.
    """
    import torch

    from litgpt_lite.checkpoint import CONFIG, WEIGHTS, atomic_dir
    from litgpt_lite.convert.gguf_tokenizer import tokenizer_files
    from litgpt_lite.precision import DTYPE_NAMES as DTYPES

    path = Path(path)
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"Unknown dtype {dtype!r}. Choose one of: {', '.join(DTYPES)}")
    torch_dtype = getattr(torch, DTYPES[dtype or "float32"])
    gguf_file = open_gguf(path)
    meta = gguf_file.metadata
    tensors = {t.name: t for t in gguf_file.tensors if not t.name.startswith(_VISION_PREFIXES)}
    _check_tensor_types(tensors, path)
    config = config_from_gguf(meta, tensors, name=path.stem)
    check_tensors(tensors, config, source=str(path))
    files = tokenizer_files(meta)  # before any dequantizing: an unsupported vocabulary fails fast
    out_dir = _out_dir(path, out_dir)
    with atomic_dir(out_dir) as tmp:
        _write_weights(tmp / WEIGHTS, config, tensors, torch_dtype, source=str(path))
        config.save(tmp / CONFIG)
        for name, text in files.items():
            (tmp / name).write_text(text)
    print(f"Wrote {out_dir} ({config.name}: {meta['general.architecture']}, {len(tensors)} GGUF tensors)")
    return out_dir


# ---------------------------------------------------------------- reading
# gguf.GGUFReader builds a numpy view per array element: a Gemma 3 vocabulary (262k tokens, scores and types) takes
# it about a minute. This reader does the same parsing with struct/np.frombuffer in well under a second, and hands the
# tensor bytes to gguf.quants for dequantizing.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass
class GGUFTensor:
    """One tensor of a GGUF file: its raw bytes, as `(rows, bytes per row)` uint8, and how to read them."""

    name: str
    shape: tuple[int, ...]  # GGUF order: innermost dimension first
    tensor_type: Any  # gguf.GGMLQuantizationType
    data: Any  # np.ndarray view of the memory-mapped file


@dataclass
class GGUFFile:
    metadata: dict[str, Any]
    tensors: list[GGUFTensor]


class _Cursor:
    """Little-endian reads from a buffer, with a clean UserError when the file ends early."""

    def __init__(self, buf: Any, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def read(self, fmt: str) -> Any:
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.buf):
            raise UserError(f"{self.path} is a truncated GGUF file (it ends inside the header)")
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.read("Q")
        if self.pos + n > len(self.buf):
            raise UserError(f"{self.path} is a truncated GGUF file (it ends inside the header)")
        text = bytes(self.buf[self.pos : self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return text

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.read(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.read("I"), self.read("Q")
            if item in _SCALARS:  # one bulk read, not `count` small ones
                import numpy as np

                dtype = np.dtype("<" + _SCALARS[item].replace("?", "b1"))
                if self.pos + dtype.itemsize * count > len(self.buf):
                    raise UserError(f"{self.path} is a truncated GGUF file (it ends inside the header)")
                values = np.frombuffer(self.buf, dtype, count, self.pos)
                self.pos += dtype.itemsize * count
                return values.tolist()
            return [self.value(item) for _ in range(count)]
        raise UserError(f"{self.path} has a metadata value of unknown type {kind}: is it a damaged GGUF file?")


def open_gguf(path: str | Path) -> GGUFFile:
    """The metadata and tensor table of a GGUF file (tensor bytes stay memory-mapped), or a UserError."""
    import mmap

    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist or is not a file")
    if not is_gguf_file(path):
        raise UserError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")
    with open(path, "rb") as f:
        buf = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), dtype=np.uint8)
    cur = _Cursor(buf, path)
    cur.pos = 4
    version = cur.read("I")
    if version not in (2, 3):
        hint = " (a big-endian file?)" if version > 0xFFFF else ""
        raise UserError(f"{path} is GGUF version {version}{hint}: only little-endian versions 2 and 3 are supported")
    n_tensors, n_kv = cur.read("Q"), cur.read("Q")
    metadata = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.read("I"))
    infos = [_tensor_info(cur) for _ in range(n_tensors)]
    alignment = int(metadata.get("general.alignment", 32))
    data_start = -(-cur.pos // alignment) * alignment  # the tensor data begins at the next aligned offset
    return GGUFFile(metadata, [_tensor_view(buf, data_start, *info, path=path) for info in infos])


def _tensor_info(cur: _Cursor) -> tuple[str, tuple[int, ...], Any, int]:
    """(name, dimensions, GGML type, offset in the data section) of the next tensor in the table."""
    from gguf.constants import GGMLQuantizationType

    name = cur.string()
    dims = tuple(cur.read("Q") for _ in range(cur.read("I")))
    raw_type, offset = cur.read("I"), cur.read("Q")
    try:
        return name, dims, GGMLQuantizationType(raw_type), offset
    except ValueError:
        raise UserError(f"{cur.path}: tensor {name} has unknown GGML type {raw_type}") from None


def _tensor_view(buf, data_start: int, name: str, dims: tuple[int, ...], kind, offset: int, path: Path) -> GGUFTensor:
    import numpy as np
    from gguf.constants import GGML_QUANT_SIZES

    block, block_bytes = GGML_QUANT_SIZES[kind]
    rows = int(np.prod(dims[1:], dtype=np.int64)) if len(dims) > 1 else 1
    row_bytes = dims[0] // block * block_bytes if dims else 0
    begin = data_start + offset
    if begin + rows * row_bytes > len(buf):
        raise UserError(f"{path} is a truncated GGUF file: tensor {name} runs past its end")
    return GGUFTensor(name, dims, kind, buf[begin : begin + rows * row_bytes].reshape(rows, row_bytes))


def is_gguf_file(path: str | Path) -> bool:
    """Whether `path` is a file that starts with the GGUF magic bytes (Ollama's blobs have no .gguf suffix)."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def read_tensor(tensor: GGUFTensor, dtype: Any = None) -> Any:
    """One GGUF tensor dequantized to a torch tensor (float32 unless `dtype`) in PyTorch's (out, in) layout.

    Dequantizes 4096 rows at a time, so a 262k-row embedding never sits in memory as float32 next to its copy.
    """
    import numpy as np
    import torch
    from gguf.quants import dequantize

    shape = tuple(reversed(tensor.shape))  # GGUF lists dimensions innermost first
    rows, columns = tensor.data.shape[0], tensor.shape[0] if tensor.shape else 1
    out = torch.empty(rows, columns, dtype=dtype or torch.float32)
    for start in range(0, rows, 4096):
        block = np.asarray(dequantize(tensor.data[start : start + 4096], tensor.tensor_type), dtype=np.float32)
        if not block.flags.writeable:  # F32 comes back as a view of the read-only memory map
            block = block.copy()
        out[start : start + 4096] = torch.from_numpy(block.reshape(-1, columns))
    return out.reshape(shape)


def _check_tensor_types(tensors: dict[str, Any], path: Path) -> None:
    for name, t in tensors.items():
        if t.tensor_type.name not in QUANT_TYPES:
            raise UserError(
                f"{path}: tensor {name} is stored as {t.tensor_type.name}, which cannot be dequantized here "
                f"(supported: {', '.join(QUANT_TYPES)})"
            )


def _out_dir(path: Path, out_dir: str | Path | None) -> Path:
    from litgpt_lite.checkpoint import CONFIG

    if out_dir is not None:
        out = Path(out_dir)
    else:  # beside the file, named after it (a suffix-less Ollama blob gets a suffix so the names differ)
        out = path.parent / (path.stem if path.suffix else f"{path.name}-litgpt")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / CONFIG).is_file())):
        raise UserError(f"{out} exists and is not a checkpoint directory: pass an empty or new --out_dir")
    return out


# ---------------------------------------------------------------- metadata -> Config
def config_from_gguf(meta: dict[str, Any], tensors: dict[str, Any], name: str):
    """Our `Config` for the model a GGUF file describes."""
    from litgpt_lite.config import Config

    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise UserError(f"GGUF architecture {arch!r} is not supported (supported: {', '.join(ARCHITECTURES)})")
    conf = _common_config(meta, arch, tensors)
    if arch in ("gemma2", "gemma3"):
        conf.update(_gemma_config(meta, conf, arch))
    elif arch == "llama":
        conf.update(_llama_config(meta, conf, tensors), attn_bias="blk.0.attn_q.bias" in tensors)
    elif arch == "qwen2":  # biases on q/k/v, none on the output projection
        conf.update(attn_bias=True)
    else:
        conf.update(norm_qk=True)
    return Config(name=name, architecture=ARCHITECTURES[arch], **conf)


def _need(meta: dict[str, Any], key: str) -> Any:
    if key not in meta:
        raise UserError(f"The GGUF metadata lacks {key}: the file is incomplete")
    value = meta[key]
    if isinstance(value, list):  # a per-layer array; our Config holds one value for all layers
        if len(set(value)) != 1:
            raise UserError(f"The GGUF gives {key} per layer ({sorted(set(value))}): only uniform layers are supported")
        value = value[0]
    return value


def _f32(value: float) -> float:
    """The shortest decimal that reads back as the same float32 (GGUF stores 1e-5 as 9.99999974e-06)."""
    import numpy as np

    return float(str(np.float32(value)))


def _common_config(meta: dict[str, Any], arch: str, tensors: dict[str, Any]) -> dict[str, Any]:
    n_embd = int(_need(meta, f"{arch}.embedding_length"))
    n_head = int(_need(meta, f"{arch}.attention.head_count"))
    head_size = int(meta.get(f"{arch}.attention.key_length", n_embd // n_head))
    if "token_embd.weight" not in tensors:
        raise UserError("The GGUF file has no token_embd.weight tensor: the file is incomplete")
    n_vocab_tokens = len(meta.get("tokenizer.ggml.tokens") or [])
    embd_rows = int(tensors["token_embd.weight"].shape[1])
    rope_dims = int(meta.get(f"{arch}.rope.dimension_count", head_size))
    kv_key = f"{arch}.attention.head_count_kv"
    conf: dict[str, Any] = dict(
        block_size=int(_need(meta, f"{arch}.context_length")),
        vocab_size=n_vocab_tokens or embd_rows,
        padded_vocab_size=embd_rows,
        n_layer=int(_need(meta, f"{arch}.block_count")),
        n_embd=n_embd,
        n_head=n_head,
        head_size=head_size,
        n_query_groups=int(meta[kv_key] if kv_key in meta else n_head),
        intermediate_size=int(_need(meta, f"{arch}.feed_forward_length")),
        rope_base=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        norm_class="RMSNorm",
        norm_eps=_f32(_need(meta, f"{arch}.attention.layer_norm_rms_epsilon")),
        mlp_class="LLaMAMLP",
        tie_embeddings="output.weight" not in tensors,
    )
    if rope_dims != head_size:
        conf["rotary_percentage"] = rope_dims / head_size
    conf.update(_rope_scaling(meta, arch))
    return conf


def _rope_scaling(meta: dict[str, Any], arch: str) -> dict[str, Any]:
    """`{arch}.rope.scaling.*` as our rope_scaling (linear, or YaRN as Qwen 2.5's long-context files carry it)."""
    kind = meta.get(f"{arch}.rope.scaling.type")
    if kind in (None, "none"):
        return {}
    if kind not in ("linear", "yarn"):
        raise UserError(f"GGUF RoPE scaling {kind!r} is not supported (linear, yarn and Llama 3's rope_freqs are)")
    scaling: dict[str, Any] = {"type": kind, "factor": float(_need(meta, f"{arch}.rope.scaling.factor"))}
    if kind == "yarn":
        for key, ours in YARN_KEYS.items():
            if f"{arch}.rope.scaling.{key}" in meta:
                scaling[ours] = meta[f"{arch}.rope.scaling.{key}"]
    return {"rope_scaling": scaling}


def _llama_config(meta: dict[str, Any], conf: dict[str, Any], tensors: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "rope_freqs.weight" in tensors:
        out["rope_scaling"] = _llama3_scaling(read_tensor(tensors["rope_freqs.weight"]), conf)
    return out


def _llama3_scaling(rope_freqs, conf: dict[str, Any]) -> dict[str, Any]:
    """Llama 3.1+ RoPE scaling from the per-frequency divisors llama.cpp stores in `rope_freqs.weight`.

    The GGUF keeps only the divisors, not Meta's parameters; the parameter sets Meta published (factor = the largest
    divisor, low/high frequency factors 1 and 4, 8192 original positions) are checked against them.
    """
    import torch

    from litgpt_lite.model import rope_inv_freq

    dim = int(conf.get("rotary_percentage", 1.0) * conf["head_size"])
    base, _ = rope_inv_freq(dim, conf["rope_base"], None, conf["block_size"])
    factor = float(rope_freqs.max())
    scaling = {
        "type": "llama3",
        "factor": factor,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    scaled, _ = rope_inv_freq(dim, conf["rope_base"], scaling, conf["block_size"])
    if rope_freqs.shape != base.shape or not torch.allclose(base / scaled, rope_freqs.float(), rtol=1e-3):
        raise UserError("The GGUF's rope_freqs.weight is not a Llama 3 RoPE scaling this importer recognizes")
    return scaling


# llama.cpp's built-in values for what a Gemma GGUF does not carry: (global-layer period, layers of the 27B model,
# softcaps); Gemma 2 interleaves local and global layers, Gemma 3 has five local layers per global one
_GEMMA_DEFAULTS = {"gemma2": (2, 46, 50.0, 30.0), "gemma3": (6, 62, None, None)}


def _gemma_config(meta: dict[str, Any], conf: dict[str, Any], arch: str) -> dict[str, Any]:
    """Gemma 2/3's switches: what the GGUF carries, llama.cpp's built-in values for what it does not."""
    period, layers_27b, attn_cap, final_cap = _GEMMA_DEFAULTS[arch]
    n_layer = conf["n_layer"]
    out: dict[str, Any] = dict(
        mlp_class="GemmaMLP",
        gelu_approximate="tanh",
        norm_unit_offset=True,
        scale_embeddings=True,
        post_attention_norm=True,
        post_mlp_norm=True,
        attention_logit_softcapping=meta.get(f"{arch}.attn_logit_softcapping", attn_cap),
        final_logit_softcapping=meta.get(f"{arch}.final_logit_softcapping", final_cap),
    )
    if arch == "gemma3":
        out.update(norm_qk=True, rope_local_base=float(meta.get("gemma3.rope.freq_base_swa", 10000.0)))
    if f"{arch}.attention.scale" in meta:  # scale = 1/sqrt(query_pre_attn_scalar)
        out["attention_scores_scalar"] = 1.0 / float(meta[f"{arch}.attention.scale"]) ** 2
    elif n_layer == layers_27b:  # the 27B models scale by n_embd / n_head, not by the head size (as llama.cpp does)
        out["attention_scores_scalar"] = conf["n_embd"] // conf["n_head"]
    else:
        out["attention_scores_scalar"] = conf["head_size"]
    window = meta.get(f"{arch}.attention.sliding_window")
    if window:
        pattern = meta.get(f"{arch}.attention.sliding_window_pattern", period)
        out["sliding_window_size"] = int(window)
        out["sliding_window_layers"] = _sliding_layers(pattern, n_layer)
    return out


def _sliding_layers(pattern: Any, n_layer: int) -> list[int]:
    """Indices of the sliding-window layers from a per-layer flag array or a period (the last layer of each period
    attends globally)."""
    if isinstance(pattern, list):
        if len(pattern) != n_layer:
            raise UserError(f"The GGUF's sliding_window_pattern has {len(pattern)} entries for {n_layer} layers")
        return [i for i, sliding in enumerate(pattern) if sliding]
    period = int(pattern)
    return [i for i in range(n_layer) if period == 0 or i % period < period - 1]


# ---------------------------------------------------------------- tensors -> our state dict (weight_maps.GGUF_MAPS)
def _write_weights(target: Path, config, tensors: dict[str, Any], dtype, source: str) -> None:
    from tqdm import tqdm

    from litgpt_lite.checkpoint import SafetensorsWriter
    from litgpt_lite.convert.engine import convert_tensors

    writer = SafetensorsWriter(target)
    try:
        progress = tqdm(list(tensors.values()), desc=f"convert {Path(source).name}", unit="tensor", disable=None)
        loads = ((t.name, partial(read_tensor, t)) for t in progress)  # each is dequantized when its rule fires
        for name, tensor in convert_tensors(_GGUF_ARCH[config.architecture], config, loads, "lit", "gguf", dtype):
            writer.add(name, tensor)
    except BaseException:
        writer.abort()
        raise
    writer.close()


def check_tensors(tensors: dict[str, Any], config, source: str) -> None:
    """UserError for a GGUF tensor we cannot place, a missing one, or a shape the config does not expect.

    Runs the weight map on meta tensors of the GGUF's shapes, so a wrong file fails before anything is dequantized.
    """
    import torch

    from litgpt_lite.checkpoint import check_state_dict
    from litgpt_lite.convert.engine import convert_tensors
    from litgpt_lite.model import GPT

    with torch.device("meta"):
        shapes = ((t.name, torch.empty(tuple(reversed(t.shape)))) for t in tensors.values())
        ours = dict(convert_tensors(_GGUF_ARCH[config.architecture], config, shapes, to="lit", source="gguf"))
        check_state_dict(GPT(config), ours, source=source)
