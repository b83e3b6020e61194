"""bitsandbytes quantization as our own module swap: NF4/FP4 (optionally double-quantized) and LLM.int8().

Lightning's `BitsandbytesPrecision` refuses CPU; swapping the Linear layers ourselves works wherever bitsandbytes has
kernels (CPU since 0.50, and CUDA). This module holds the swap itself and the memory accounting:

- `quantize_linear` / `quantize_model`: one Linear, or every Linear of a model already in memory (QLoRA's `prepare`).
- `store_frozen_base`: QLoRA's frozen base in the fewest bytes: the quantized Linears compute in their input's dtype,
  and every other floating weight (embedding, norms, the unquantized head) is stored in bf16 and upcast per use.
- `dense_weight`: the floating weight of a plain, 4-bit or int8 Linear (DoRA, merging).
- `weight_bytes` / `quantized_layers_bf16_bytes`: what the weights take.

Loading a checkpoint quantized layer by layer is the loader's job (`loading.load_model(..., quantize=...)`);
pre-quantized checkpoints are `quantized_checkpoint.py`, and `litgpt_lite quantize` is `quantize_cli.py`.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from litgpt_lite.errors import UserError
from litgpt_lite.kernels import is_plain_linear
from litgpt_lite.model import RMSNorm
from litgpt_lite.modules import set_submodule

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
STORAGE_DTYPE = torch.bfloat16  # QLoRA's unquantized frozen weights: 16 bits, whatever the compute dtype


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


def default_compute_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
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
        compute_dtype = compute_dtype or default_compute_dtype(w.dtype, device)
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


# ---------------------------------------------------------------- QLoRA: the frozen base in the fewest bytes
class _UpcastLinear(torch.autograd.Function):
    """x W^T + b in x's dtype for a 16-bit W. Autograd would keep the upcast copy of W alive from forward to backward
    (the input gradient needs it); this keeps only W itself and upcasts it again in backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(weight, x if ctx.needs_input_grad[1] else None)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, x = ctx.saved_tensors
        grad_x = grad @ weight.to(grad.dtype) if ctx.needs_input_grad[0] else None
        rows = grad.reshape(-1, grad.shape[-1])
        grad_w = (rows.T @ x.reshape(-1, x.shape[-1])).to(weight.dtype) if ctx.needs_input_grad[1] else None
        grad_b = rows.sum(0).to(ctx.bias_dtype) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


class StoredLinear(nn.Linear):
    """A Linear whose weight is stored in 16 bits and multiplies inputs of any floating dtype in the input's dtype
    (QLoRA's unquantized lm_head and MoE router). Same parameters and state dict as the Linear it replaces."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype or torch.is_autocast_enabled(x.device.type):  # autocast casts both
            return super().forward(x)
        return _UpcastLinear.apply(x, self.weight, self.bias)


class StoredLayerNorm(nn.LayerNorm):
    """A LayerNorm whose affine parameters are stored in 16 bits and applied in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.layer_norm(x, self.normalized_shape, w, b, self.eps)


class StoredEmbedding(nn.Embedding):
    """An embedding stored in 16 bits whose output is in the model's compute dtype: the dtype of `compute_dtype_of`,
    an empty buffer that `.to(dtype)` and Fabric's precision conversions cast as they would have cast the weight."""

    compute_dtype_of: torch.Tensor

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return super().forward(idx).to(self.compute_dtype_of.dtype)


_Seen = dict[int, tuple[nn.Parameter, nn.Parameter]]  # id(old) -> (old, kept alive so its id is not reused; new)


def _stored(weight: nn.Parameter | None, seen: _Seen) -> nn.Parameter | None:
    """`weight` as a frozen 16-bit parameter (floating weights wider than 16 bits become bf16); a weight shared by
    two modules (a tied head) maps to one shared result."""
    if weight is None:
        return None
    if id(weight) not in seen:
        data = weight.detach()
        if data.is_floating_point() and data.element_size() > 2:
            data = data.to(STORAGE_DTYPE)
        seen[id(weight)] = (weight, nn.Parameter(data, requires_grad=False))
    return seen[id(weight)][1]


def _stored_module(module: nn.Module, seen: _Seen) -> nn.Module | None:
    """The 16-bit-stored replacement of an Embedding, plain Linear or LayerNorm (None for other modules); RMSNorm,
    which already applies its weight in the input's dtype, gets its weight cast in place."""
    if isinstance(module, RMSNorm):
        module.weight = _stored(module.weight, seen)
        return None
    if type(module) is nn.Embedding:
        new = StoredEmbedding(module.num_embeddings, module.embedding_dim, module.padding_idx, device="meta")
        new.register_buffer("compute_dtype_of", module.weight.new_empty(0), persistent=False)
    elif is_plain_linear(module):
        new = StoredLinear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
    elif type(module) is nn.LayerNorm:
        affine, bias = module.elementwise_affine, module.bias is not None
        new = StoredLayerNorm(module.normalized_shape, module.eps, affine, bias=bias, device="meta")
    else:
        return None
    for name, param in module.named_parameters(recurse=False):
        setattr(new, name, _stored(param, seen))
    return new


def _autocast_input(module: nn.Module, args: tuple) -> tuple | None:
    """Under autocast (bf16-mixed, 16-mixed), hand a 4-bit layer its input in the autocast dtype, as autocast does
    for nn.Linear: bitsandbytes' matmul is not autocast-aware, and would compute and return float32, so every
    activation after it (the MLP's products, attention's inputs) would be kept for backward in float32."""
    x = args[0]
    device = x.device.type
    if torch.is_autocast_enabled(device) and x.is_floating_point():
        return (x.to(torch.get_autocast_dtype(device)), *args[1:])
    return None


def store_frozen_base(model: nn.Module) -> nn.Module:
    """QLoRA's frozen base in the fewest bytes, in place (after `quantize_model`, before the adapters go in).

    The quantized Linears compute in their input's dtype (under autocast: the autocast dtype), so the activations
    after them are not upcast, and keep bitsandbytes' standard, differentiable layout.
    The embedding, the norms and the unquantized Linears (lm_head, MoE router) are stored in bf16 (16-bit weights
    stay as they are) and computed in the input's dtype; the embedding's output is in the dtype the model computed
    in before (float32 for a float32 model), or the one `.to(dtype)` / Fabric's precision later casts the model to.
    A tied head stays tied to the embedding, so no weight exists twice. Every weight is frozen.
    """
    bnb = import_bitsandbytes()
    seen: _Seen = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, bnb.nn.Linear4bit):
            module.compute_dtype, module.compute_type_is_set = None, True  # matmul_4bit dequantizes to x's dtype
            # on AVX512-BF16 CPUs bitsandbytes repacks the weight for its inference kernel at the first eval forward
            # (the training loop's validation); that kernel has no backward, so training after it would silently
            # lose the gradients that flow through the frozen base to the adapters below
            module.support_avx512bf16_for_cpu = False
            module.register_forward_pre_hook(_autocast_input)
            continue
        new = _stored_module(module, seen)
        if new is not None:
            set_submodule(model, name, new)
    return model


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


# ---------------------------------------------------------------- host memory
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
