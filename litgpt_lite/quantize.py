"""bitsandbytes quantization as our own module swap: NF4/FP4 (optionally double-quantized) and LLM.int8().

Lightning's `BitsandbytesPrecision` refuses CPU; swapping the Linear layers ourselves works wherever bitsandbytes has
kernels (CPU since 0.50, and CUDA). Three ways in:

- `quantize_model(model, mode)`: swap the Linear layers of a model already in memory (QLoRA's `prepare`).
- `load_quantized_model(checkpoint_dir, mode)`: build the model on the meta device and read, quantize and place one
  Linear at a time, so loading never holds the full-precision model.
- `quantize_cli` (`litgpt_lite quantize`): write a pre-quantized checkpoint (`lit_model.quantized.safetensors` with
  the packed 4-bit / int8 weights and their quant state, plus `quantize.yaml`) that reloads without re-quantizing.

`load_model_for_inference` picks the right one for generate/chat/serve/evaluate/LLM.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import shutil
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from litgpt_lite.checkpoint import (
    CONFIG,
    LEGACY_WEIGHTS,
    QUANTIZED_WEIGHTS,
    WEIGHTS,
    SafetensorsWriter,
    atomic_dir,
    check_state_dict,
    copy_tokenizer_files,
    load_config,
    load_model,
    validate_checkpoint_dir,
)
from litgpt_lite.errors import UserError
from litgpt_lite.kernels import install_kernels, is_plain_linear
from litgpt_lite.model import GPT, RoPE

# mode -> (4-bit data type, double quantization of the absmax statistics); None marks LLM.int8()
MODES: dict[str, tuple[str, bool] | None] = {
    "bnb.nf4": ("nf4", False),
    "bnb.nf4-dq": ("nf4", True),
    "bnb.fp4": ("fp4", False),
    "bnb.fp4-dq": ("fp4", True),
    "bnb.int8": None,
}
# lm_head stays in full precision (quantizing it costs the most quality per byte); the MoE router is tiny and its
# top-k choice flips under quantization noise
DEFAULT_SKIP: tuple[str, ...] = ("lm_head", "mlp.gate")
BLOCKSIZE = 64  # 4-bit block size: one absmax per 64 weights, as QLoRA
QUANTIZE_YAML = "quantize.yaml"


# ---------------------------------------------------------------- modes and modules
def check_mode(mode: str) -> str:
    """The mode itself, or a UserError naming the valid ones."""
    if mode not in MODES:
        import difflib

        close = difflib.get_close_matches(str(mode), MODES, n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise UserError(f"Unknown quantization mode {mode!r}.{hint} Valid modes: {', '.join(MODES)}")
    return mode


def import_bitsandbytes():
    try:
        import bitsandbytes
    except ImportError:
        raise UserError("Quantization needs bitsandbytes >= 0.50: pip install 'litgpt_lite[all]'") from None
    _quiet_int8_cast_notice()
    return bitsandbytes


class _DropInt8CastNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


def _quiet_int8_cast_notice() -> None:
    """LLM.int8() logs that it casts inputs to float16 on every forward of every layer; the cast is by design."""
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _DropInt8CastNotice) for f in logger.filters):
        logger.addFilter(_DropInt8CastNotice())


def is_quantized_linear(module: nn.Module) -> bool:
    bnb = import_bitsandbytes()
    return isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))


def _skipped(name: str, skip: Iterable[str]) -> bool:
    """`skip` holds module names, dotted suffixes (`mlp.gate`) or globs (`transformer.h.0.*`)."""
    return any(name == s or name.endswith("." + s) or fnmatch.fnmatchcase(name, s) for s in skip)


def quantizable_linears(model: nn.Module, skip: Iterable[str] = DEFAULT_SKIP) -> list[str]:
    """Names of the full-precision Linear modules that `quantize_model` swaps (LoRA adapters are never Linears)."""
    skip = tuple(skip)
    return [name for name, m in model.named_modules() if is_plain_linear(m) and not _skipped(name, skip)]


def _default_compute_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    # compute in the weights' own precision; CPU has no fast float16 matmul, so float16 weights compute in float32
    if device.type == "cpu" and dtype == torch.float16:
        return torch.float32
    return dtype


def quantize_linear(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mode: str,
    device: torch.device | str | None = None,
    int8_threshold: float = 6.0,
    compute_dtype: torch.dtype | None = None,
) -> nn.Module:
    """A bitsandbytes Linear holding `weight` (out, in) quantized on `device` (default: the weight's device)."""
    bnb = import_bitsandbytes()
    device = torch.device(device) if device is not None else weight.device
    out_features, in_features = weight.shape
    kind = MODES[check_mode(mode)]
    w = weight.detach().to(device)
    if kind is None:  # LLM.int8(): per-row absmax int8 weights, outlier input columns computed in 16 bit
        module = bnb.nn.Linear8bitLt(
            in_features, out_features, bias is not None, has_fp16_weights=False, threshold=int8_threshold, device="meta"
        )
        cb, scb, _ = bnb.functional.int8_vectorwise_quant(w.to(torch.float16))
        module.weight = bnb.nn.Int8Params(cb, requires_grad=False, has_fp16_weights=False, CB=cb, SCB=scb)
    else:
        quant_type, double_quant = kind
        compute_dtype = compute_dtype or _default_compute_dtype(w.dtype, device)
        module = bnb.nn.Linear4bit(
            in_features,
            out_features,
            bias is not None,
            compute_dtype=compute_dtype,
            compress_statistics=double_quant,
            quant_type=quant_type,
            quant_storage=torch.uint8,
            device="meta",
        )
        packed, state = bnb.functional.quantize_4bit(
            w, blocksize=BLOCKSIZE, compress_statistics=double_quant, quant_type=quant_type
        )
        module.weight = bnb.nn.Params4bit(
            packed,
            requires_grad=False,
            quant_state=state,
            blocksize=BLOCKSIZE,
            compress_statistics=double_quant,
            quant_type=quant_type,
            quant_storage=torch.uint8,
            module=module,
            bnb_quantized=True,
        )
        module.quant_state = state
    if bias is not None:
        module.bias = nn.Parameter(bias.detach().to(device), requires_grad=False)
    return module


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def quantize_model(
    model: nn.Module,
    mode: str,
    skip: Iterable[str] = DEFAULT_SKIP,
    int8_threshold: float = 6.0,
    compute_dtype: torch.dtype | None = None,
) -> nn.Module:
    """Swap the model's nn.Linear layers for bitsandbytes ones, in place, one layer at a time.

    Args:
        model: a GPT (or any module) with its weights loaded.
        mode: bnb.nf4, bnb.nf4-dq, bnb.fp4, bnb.fp4-dq or bnb.int8.
        skip: module names (or dotted suffixes, or globs) left in full precision. Embeddings and norms are never
            quantized; the lm_head and the MoE router stay unquantized by default.
        int8_threshold: LLM.int8() outlier threshold: input columns with a value above it run in 16 bit.
        compute_dtype: dtype of the 4-bit matmul; default the layer's weight dtype (float32 for float16 on CPU).

    Returns:
        The same model.
    """
    check_mode(mode)
    tied_head = getattr(getattr(model, "config", None), "tie_embeddings", False)
    for name in quantizable_linears(model, skip):
        linear = model.get_submodule(name)
        weight = linear.weight.detach()
        if tied_head and name == "lm_head":
            weight = weight.clone()  # the embedding keeps its own full-precision copy
        quantized = quantize_linear(weight, linear.bias, mode, None, int8_threshold, compute_dtype)
        set_submodule(model, name, quantized)
    return model


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The (out, in) weight of a plain, 4-bit or int8 Linear as a floating tensor (dequantized when needed)."""
    if is_plain_linear(module):
        return module.weight
    bnb = import_bitsandbytes()
    if isinstance(module, bnb.nn.Linear4bit):
        data, state = module.weight.data, module.weight.quant_state
        if getattr(state, "packing_format_for_cpu", False):
            # on AVX512-BF16 CPUs bitsandbytes repacks the weight for its own kernel at the first inference forward;
            # undo that on copies (the inverse edits the state it is given) to get the standard layout back
            import copy

            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            data, state = _convert_weight_packed_for_cpu_inverse(data.clone(), copy.deepcopy(state))
        return bnb.functional.dequantize_4bit(data, state)
    if isinstance(module, bnb.nn.Linear8bitLt):
        cb = module.weight.data
        scb = module.weight.SCB if module.weight.SCB is not None else module.state.SCB
        return cb.float() * (scb.float().unsqueeze(1) / 127.0)
    return module.weight


# ---------------------------------------------------------------- memory accounting
def _module_tensors(module: nn.Module) -> Iterable[torch.Tensor]:
    """Every tensor a module holds for its weights: parameters, buffers and bitsandbytes quant state."""
    bnb = import_bitsandbytes()
    yield from module.parameters(recurse=False)
    yield from module.buffers(recurse=False)
    if isinstance(module, bnb.nn.Linear4bit) and module.weight.quant_state is not None:
        state = module.weight.quant_state
        yield from (state.absmax, state.code)
        if state.nested:
            yield from (state.state2.absmax, state.state2.code, state.offset)
    if isinstance(module, bnb.nn.Linear8bitLt):
        scb = module.weight.SCB if module.weight.SCB is not None else module.state.SCB
        if scb is not None:
            yield scb


def weight_bytes(model: nn.Module, only_quantized: bool = False) -> int:
    """Bytes of the model's weights, quant state included, counting shared (tied) storage once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for module in model.modules():
        if only_quantized and not is_quantized_linear(module):
            continue
        for t in _module_tensors(module):
            key = (t.untyped_storage().data_ptr(), t.storage_offset())
            if t.device.type == "meta" or key in seen:
                continue
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def quantized_layers_bf16_bytes(model: nn.Module) -> int:
    """What the quantized Linear layers (weights and biases) would take in bfloat16."""
    total = 0
    for module in model.modules():
        if is_quantized_linear(module):
            total += 2 * module.in_features * module.out_features
            total += 2 * module.out_features if module.bias is not None else 0
    return total


# ---------------------------------------------------------------- streaming reads
_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


_READ_CHUNK_BYTES = 16 * 2**20


class TensorReader:
    """Reads one tensor at a time from a .safetensors file with plain file reads.

    A memory map would do the same work, but its pages count towards the process's resident memory until the kernel
    drops them, so peak RSS would grow to the whole file; a read into a fresh tensor costs exactly that tensor.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
        except (OSError, struct.error, ValueError) as e:
            raise UserError(f"{self.path} is corrupt or truncated ({e}): re-create it") from None
        header.pop("__metadata__", None)
        self.start = 8 + n
        self.header: dict[str, dict] = header

    def names(self) -> list[str]:
        return list(self.header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def meta(self) -> dict[str, torch.Tensor]:
        """Shape-only stand-ins (on the meta device) for validating names and shapes before reading anything."""
        header = self.header.items()
        return {k: torch.empty(v["shape"], dtype=_ST_DTYPES[v["dtype"]], device="meta") for k, v in header}

    def read(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The tensor, cast to floating `dtype` if given; a cast streams through a small buffer, so reading a
        float32 tensor as bfloat16 never holds the float32 copy."""
        info = self.header[name]
        stored, shape = _ST_DTYPES[info["dtype"]], info["shape"]
        begin, end = info["data_offsets"]
        if dtype is None or dtype == stored or not stored.is_floating_point:
            out = torch.empty(end - begin, dtype=torch.uint8)
            self._read_into(out, self.start + begin, name)
            return out.view(stored).reshape(shape)
        out = torch.empty(shape, dtype=dtype)
        flat, size = out.view(-1), stored.itemsize
        step = max(1, _READ_CHUNK_BYTES // size)
        buffer = torch.empty(min(step, flat.numel()) * size, dtype=torch.uint8)
        for first in range(0, flat.numel(), step):
            count = min(step, flat.numel() - first)
            chunk = buffer[: count * size]
            self._read_into(chunk, self.start + begin + first * size, name)
            flat[first : first + count] = chunk.view(stored)
        return out

    def _read_into(self, out: torch.Tensor, offset: int, name: str) -> None:
        with open(self.path, "rb") as f:
            f.seek(offset)
            if f.readinto(out.numpy()) != out.numel():
                raise UserError(f"{self.path} is truncated at tensor {name}: re-create it")


class _StateReader:
    """The same interface over a state dict already in memory (LitGPT's legacy lit_model.pth)."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self.state = state

    def names(self) -> list[str]:
        return list(self.state)

    def meta(self) -> dict[str, torch.Tensor]:
        return self.state

    def read(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        return _cast(self.state.pop(name), dtype)


def _weights_reader(checkpoint_dir: Path):
    if (checkpoint_dir / WEIGHTS).is_file():
        return TensorReader(checkpoint_dir / WEIGHTS)
    from litgpt_lite.checkpoint import load_state_dict

    return _StateReader(load_state_dict(checkpoint_dir))


# ---------------------------------------------------------------- load-time quantization
def _meta_model(config):
    with torch.device("meta"):
        return GPT(config)


def _place(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Put a loaded tensor in the meta model as a parameter."""
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    module._parameters[attr] = nn.Parameter(tensor, requires_grad=tensor.is_floating_point())


def _finish(model: nn.Module, device: torch.device) -> nn.Module:
    """Rebuild the meta-device buffers (RoPE) on `device` and check nothing was left unloaded."""
    with torch.device(device):
        model.rope = RoPE(model.config)
    left = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if left:
        raise UserError(f"The checkpoint lacks {len(left)} weight(s), first {left[0]}: is it the right model?")
    return model.eval()


_LIBC: Any = None


def release_freed_memory() -> None:
    """Hand memory freed by the last layer back to the OS (glibc only).

    glibc serves mid-sized allocations from per-thread heaps and raises its mmap threshold after each large free, so
    the full-precision copy of one layer and the quantization temporaries can stay resident after they are freed;
    measured on SmolLM2, the loading peak then varied between 1x and 4x the quantized model from run to run.
    """
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        try:
            _LIBC = ctypes.CDLL(name) if name else False
            _LIBC = _LIBC if _LIBC and hasattr(_LIBC, "malloc_trim") else False
        except OSError:
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def _cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return t.to(dtype) if dtype is not None and t.is_floating_point() else t


def load_quantized_model(
    checkpoint_dir: str | Path,
    mode: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    skip: Iterable[str] = DEFAULT_SKIP,
    int8_threshold: float = 6.0,
) -> nn.Module:
    """Build the GPT of a checkpoint dir with its Linear layers quantized, streaming one layer at a time.

    Peak memory is about the quantized model plus one full-precision layer: each Linear weight is read from disk,
    cast to `dtype`, quantized on `device` and dropped before the next one is read.

    Args:
        checkpoint_dir: a litgpt_lite checkpoint directory.
        mode: bnb.nf4, bnb.nf4-dq, bnb.fp4, bnb.fp4-dq or bnb.int8.
        device: where the model lives (and where quantization runs).
        dtype: dtype of the unquantized weights and of the 4-bit dequantization (default: as stored).
        skip: Linear modules left unquantized (see `quantize_model`).
        int8_threshold: LLM.int8() outlier threshold.
    """
    check_mode(mode)
    import_bitsandbytes()
    checkpoint_dir = validate_checkpoint_dir(checkpoint_dir)
    device = torch.device(device)
    config = load_config(checkpoint_dir)
    model = _meta_model(config)
    reader = _weights_reader(checkpoint_dir)
    check_state_dict(model, reader.meta(), source=str(checkpoint_dir))
    targets = set(quantizable_linears(model, skip))
    names = reader.names()
    present = set(names)
    for name in names:
        module_name, _, attr = name.rpartition(".")
        if module_name in targets:
            if attr == "weight":  # the bias (if any) is read here too, so each layer is built in one go
                bias_name = f"{module_name}.bias"
                bias = reader.read(bias_name, dtype) if bias_name in present else None
                weight = reader.read(name, dtype)
                set_submodule(model, module_name, quantize_linear(weight, bias, mode, device, int8_threshold))
                del weight, bias
                release_freed_memory()
            continue
        if name == "lm_head.weight" and config.tie_embeddings:
            continue
        _place(model, name, reader.read(name, dtype).to(device))
    _tie_head(model, targets, mode, device, int8_threshold)
    return _finish(model, device)


def _tie_head(model: nn.Module, targets: set[str], mode: str, device: torch.device, int8_threshold: float) -> None:
    if not model.config.tie_embeddings:
        return
    wte = model.transformer.wte.weight
    if "lm_head" in targets:
        set_submodule(model, "lm_head", quantize_linear(wte.detach().clone(), None, mode, device, int8_threshold))
    else:
        model.lm_head.weight = wte


# ---------------------------------------------------------------- pre-quantized checkpoints
def save_quantized_checkpoint(
    model: nn.Module, mode: str, out_dir: str | Path, source_dir: str | Path | None, settings: dict[str, Any]
) -> Path:
    """Write a quantized model as a checkpoint dir (atomically): packed weights + quant state, config, tokenizer."""
    import yaml

    bnb = import_bitsandbytes()
    state = model.state_dict()  # bitsandbytes layers add their quant state (absmax, quant_map, packed metadata)
    if model.config.tie_embeddings and not is_quantized_linear(model.lm_head):
        state.pop("lm_head.weight", None)
    info = {"mode": mode, "blocksize": BLOCKSIZE, "bitsandbytes": bnb.__version__, **settings}
    with atomic_dir(out_dir) as tmp:
        writer = SafetensorsWriter(tmp / QUANTIZED_WEIGHTS, metadata={"format": "pt", "quantize": mode})
        try:
            for name, tensor in state.items():
                writer.add(name, tensor)
        except BaseException:
            writer.abort()
            raise
        writer.close()
        model.config.save(tmp / CONFIG)
        (tmp / QUANTIZE_YAML).write_text(yaml.safe_dump(info, sort_keys=False))
        if source_dir is not None:
            copy_tokenizer_files(Path(source_dir), tmp)
            for extra in ("prompt_style.yaml", "hyperparameters.yaml"):
                if (Path(source_dir) / extra).is_file():
                    shutil.copy2(Path(source_dir) / extra, tmp / extra)
    return Path(out_dir)


def read_quantize_yaml(checkpoint_dir: Path) -> dict[str, Any]:
    import yaml

    info = yaml.safe_load((checkpoint_dir / QUANTIZE_YAML).read_text()) or {}
    if info.get("mode") not in MODES:
        raise UserError(f"{checkpoint_dir / QUANTIZE_YAML} names no valid mode (got {info.get('mode')!r})")
    if not (checkpoint_dir / QUANTIZED_WEIGHTS).is_file():
        raise UserError(f"{checkpoint_dir} has {QUANTIZE_YAML} but no {QUANTIZED_WEIGHTS}: re-run litgpt_lite quantize")
    return info


def load_prequantized_model(
    checkpoint_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> nn.Module:
    """Load a checkpoint written by `litgpt_lite quantize`: the stored 4-bit/int8 weights are used as they are."""
    bnb = import_bitsandbytes()
    checkpoint_dir = validate_checkpoint_dir(checkpoint_dir, need_weights=False)
    info = read_quantize_yaml(checkpoint_dir)
    device = torch.device(device)
    model = _meta_model(load_config(checkpoint_dir))
    reader = TensorReader(checkpoint_dir / QUANTIZED_WEIGHTS)
    targets = quantizable_linears(model, info.get("skip", DEFAULT_SKIP))
    names = set(reader.names())
    for target in targets:
        prefix = f"{target}."  # a Linear has no submodules: every key under its prefix is its own
        own = {k[len(prefix) :]: k for k in names if k.startswith(prefix)}
        if "weight" not in own:
            raise UserError(f"{reader.path} lacks {prefix}weight: re-run litgpt_lite quantize")
        tensors = {k: reader.read(full) for k, full in own.items()}
        names -= set(own.values())
        module = _prequantized_linear(bnb, model.get_submodule(target), tensors, info, device, dtype)
        set_submodule(model, target, module)
    for name in sorted(names):
        _place(model, name, reader.read(name, dtype).to(device))
    if model.config.tie_embeddings and "lm_head" not in targets:
        model.lm_head.weight = model.transformer.wte.weight
    return _finish(model, device)


def _prequantized_linear(
    bnb, meta_linear: nn.Module, tensors: dict[str, torch.Tensor], info: dict, device, dtype: torch.dtype | None
):
    """A bitsandbytes Linear from its saved tensors (`weight`, `bias`, quant state), with no re-quantization."""
    has_bias = "bias" in tensors
    out_f, in_f = meta_linear.out_features, meta_linear.in_features
    if MODES[info["mode"]] is None:
        module = bnb.nn.Linear8bitLt(
            in_f, out_f, has_bias, has_fp16_weights=False, threshold=info.get("int8_threshold", 6.0), device="meta"
        )
        cb, scb = tensors["weight"].to(device), tensors["SCB"].to(device)
        module.weight = bnb.nn.Int8Params(cb, requires_grad=False, has_fp16_weights=False, CB=cb, SCB=scb)
    else:
        stats = {k[len("weight.") :]: v for k, v in tensors.items() if k.startswith("weight.")}
        module = bnb.nn.Linear4bit(in_f, out_f, has_bias, quant_type=MODES[info["mode"]][0], device="meta")
        module.weight = bnb.nn.Params4bit.from_prequantized(
            tensors["weight"], stats, requires_grad=False, device=device, module=module
        )
        # the matmul runs in the requested dtype (fp32 on CPUs without fast bf16), whatever the stored one
        module.compute_dtype = _default_compute_dtype(dtype or module.weight.quant_state.dtype, device)
        module.compute_type_is_set = True
    if has_bias:
        module.bias = nn.Parameter(tensors["bias"].to(device), requires_grad=False)
    return module


def quantize_cli(
    checkpoint_dir: Path,
    quantize: str = "bnb.nf4",
    out_dir: Path | None = None,
    dtype: str | None = None,
    int8_threshold: float = 6.0,
    skip: list[str] | None = None,
    device: str | None = None,
) -> None:
    """Write a pre-quantized copy of a checkpoint that loads without re-quantizing.

    Args:
        checkpoint_dir: the full-precision litgpt_lite checkpoint directory.
        quantize: bnb.nf4, bnb.nf4-dq, bnb.fp4, bnb.fp4-dq or bnb.int8.
        out_dir: where to write the quantized checkpoint, replaced atomically if it exists (default: beside the
            checkpoint, named `<checkpoint_dir>-<mode>`, e.g. `SmolLM2-135M-bnb.nf4`).
        dtype: dtype of the unquantized weights (embeddings, norms, lm_head) and of 4-bit dequantization:
            bfloat16, float16 or float32 (default: as stored in the checkpoint).
        int8_threshold: LLM.int8() outlier threshold (bnb.int8 only).
        skip: Linear modules to keep in full precision (default: lm_head and the MoE router).
        device: where to quantize (default: cuda when a GPU is present, else cpu). bitsandbytes' CPU and CUDA
            kernels may round the double-quantized scales differently, so quantize where the model will run.
    """
    check_mode(quantize)
    from litgpt_lite.precision import resolve_device

    device = resolve_device(device)  # one-line errors for an unknown device or a missing GPU
    torch_dtype = _parse_dtype(dtype)
    checkpoint_dir = validate_checkpoint_dir(checkpoint_dir)
    out_dir = Path(out_dir) if out_dir is not None else checkpoint_dir.with_name(f"{checkpoint_dir.name}-{quantize}")
    if out_dir.resolve() == checkpoint_dir.resolve():
        raise UserError("--out_dir must differ from the checkpoint dir: the original weights are the source")
    skip_names = tuple(skip) if skip is not None else DEFAULT_SKIP
    print(f"Quantizing {checkpoint_dir} to {quantize} ...")
    model = load_quantized_model(checkpoint_dir, quantize, device, torch_dtype, skip_names, int8_threshold)
    settings = {"skip": list(skip_names), "int8_threshold": int8_threshold}
    save_quantized_checkpoint(model, quantize, out_dir, checkpoint_dir, settings)
    size = (Path(out_dir) / QUANTIZED_WEIGHTS).stat().st_size
    print(f"Wrote {out_dir} ({size / 2**20:.1f} MiB of weights)")


def _parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
        "float32": torch.float32,
        "fp32": torch.float32,
    }
    if dtype not in names:
        raise UserError(f"Unknown dtype {dtype!r}: choose bfloat16, float16 or float32")
    return names[dtype]


# ---------------------------------------------------------------- the one entry point for inference
def load_model_for_inference(
    checkpoint_dir: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    quantize: str | None = None,
) -> nn.Module:
    """The GPT of a checkpoint dir, ready for inference, however the dir stores it.

    - a pre-quantized dir (`litgpt_lite quantize`): loaded as stored (`quantize`, if given, must match its mode);
    - a LoRA output dir (adapters only): the base model plus the adapters (merged when the base is not quantized);
    - otherwise the full-precision weights, quantized layer by layer while loading when `quantize` is set.

    Args:
        checkpoint_dir: the checkpoint directory.
        device: where to put the model.
        dtype: dtype of the (unquantized) weights; default as stored.
        quantize: None, bnb.nf4, bnb.nf4-dq, bnb.fp4, bnb.fp4-dq or bnb.int8.
    """
    if quantize is not None:
        check_mode(quantize)
    checkpoint_dir = Path(checkpoint_dir)
    if (checkpoint_dir / QUANTIZE_YAML).is_file():
        stored = read_quantize_yaml(checkpoint_dir)["mode"]
        if quantize is not None and quantize != stored:
            raise UserError(
                f"{checkpoint_dir} is pre-quantized with {stored}: drop --quantize (or pass {stored}), "
                "or quantize the original checkpoint instead"
            )
        return install_kernels(load_prequantized_model(checkpoint_dir, device, dtype), "auto")
    from litgpt_lite.lora import LORA_WEIGHTS, load_lora_model

    has_full = (checkpoint_dir / WEIGHTS).is_file() or (checkpoint_dir / LEGACY_WEIGHTS).is_file()
    if (checkpoint_dir / LORA_WEIGHTS).is_file() and not has_full:
        return install_kernels(load_lora_model(checkpoint_dir, device=device, dtype=dtype, quantize=quantize), "auto")
    if quantize is None:
        return install_kernels(load_model(checkpoint_dir, device=device, dtype=dtype), "auto")
    return install_kernels(load_quantized_model(checkpoint_dir, quantize, device, dtype), "auto")
