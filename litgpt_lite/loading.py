"""The one way to get a ready model: `load_model(checkpoint_dir, device, precision, quantize, adapter, kernels)`.

generate, chat, serve, evaluate, `LLM.load`, the training entrypoints and `litgpt_lite quantize` all load through here,
whatever the directory holds:

- a full-precision checkpoint (lit_model.safetensors, or LitGPT's lit_model.pth): read one tensor at a time into a
  model built on the meta device; with `quantize`, each Linear is quantized as it is read, so loading never holds the
  full-precision model;
- a pre-quantized checkpoint (`litgpt_lite quantize`): the stored 4-bit/int8 weights, used as they are;
- a LoRA output dir (auto-detected), or any of the above plus `adapter=`: the base model plus the adapters, merged
  into plain Linears when the base is full precision.

Then the device fast paths go in (`kernels.install_kernels`), after weights and quantization are in place.
`load_for_inference` adds the tokenizer and prompt style, with the hardware's fast device and precision by default.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from litgpt_lite.checkpoint import (
    QUANTIZED_WEIGHTS,
    TOKENIZER_FILES,
    SafetensorsReader,
    check_state_dict,
    load_config,
    open_weights,
    validate_checkpoint_dir,
)
from litgpt_lite.errors import UserError
from litgpt_lite.kernels import KERNEL_CHOICES, install_kernels
from litgpt_lite.lora import apply_adapter, is_lora_dir, read_adapter
from litgpt_lite.model import GPT, RoPE
from litgpt_lite.modules import set_submodule
from litgpt_lite.precision import default_precision, precision_dtype, resolve_device
from litgpt_lite.quantize import (
    DEFAULT_SKIP,
    check_mode,
    import_bitsandbytes,
    quantizable_linears,
    quantize_linear,
    release_freed_memory,
)
from litgpt_lite.quantized_checkpoint import is_prequantized, prequantized_linear, read_quantize_yaml

if TYPE_CHECKING:  # imported when called: the tokenizer libraries are only needed for inference
    from litgpt_lite.prompts import PromptStyle
    from litgpt_lite.tokenizer import Tokenizer


def load_model(
    checkpoint_dir: str | Path,
    device: str | torch.device = "cpu",
    precision: str | torch.dtype | None = None,
    quantize: str | None = None,
    adapter: str | Path | None = None,
    kernels: str = "auto",
) -> GPT:
    """The GPT of a checkpoint directory with its weights, quantization, adapters and fast paths in place (eval mode).

    Args:
        checkpoint_dir: a checkpoint dir (full precision or pre-quantized), or a LoRA output dir (its base comes
            from its lora.yaml).
        device: where the model lives (and where quantization runs): cpu, cuda, cuda:N or auto.
        precision: dtype of the unquantized weights: a precision (32-true, bf16-true, 16-true, ...), a dtype name
            (bf16, float32, ...) or a torch.dtype. None keeps the dtype stored in the checkpoint.
        quantize: None, bnb.nf4, bnb.nf4-dq, bnb.fp4, bnb.fp4-dq or bnb.int8; for a pre-quantized dir it must be
            None or its own mode.
        adapter: a LoRA output dir whose adapters go on top of `checkpoint_dir` (the base).
        kernels: auto installs this hardware's fast paths; none keeps torch's modules.
    """
    check_load_options(quantize, kernels)
    device = resolve_device(str(device))
    dtype = precision if isinstance(precision, torch.dtype) or precision is None else precision_dtype(precision, device)
    checkpoint_dir = Path(checkpoint_dir)
    found = None
    if adapter is not None:
        found = read_adapter(adapter, base_checkpoint_dir=checkpoint_dir, device=device)
    elif is_lora_dir(checkpoint_dir):
        found = read_adapter(checkpoint_dir, device=device)
    base = found.base_checkpoint_dir if found is not None else checkpoint_dir
    model = _load_base(base, device, dtype, quantize)
    if found is not None:
        apply_adapter(model, found)
    return install_kernels(model, kernels)


def check_load_options(quantize: str | None, kernels: str) -> None:
    """A UserError for an unknown --quantize or --kernels value, so a command can fail before any slow work."""
    if quantize is not None:
        check_mode(quantize)
    if kernels not in KERNEL_CHOICES:
        raise UserError(f"--kernels must be one of {', '.join(KERNEL_CHOICES)}, got {kernels!r}")


def load_for_inference(
    checkpoint_dir: str | Path,
    device: str | torch.device | None = None,
    precision: str | None = None,
    quantize: str | None = None,
    adapter: str | Path | None = None,
    kernels: str = "auto",
) -> tuple[GPT, Tokenizer, PromptStyle]:
    """(model, tokenizer, prompt_style) of a checkpoint dir, in the hardware's fast device and precision by default.

    Args:
        checkpoint_dir: as `load_model`.
        device: cpu, cuda, cuda:N (default: cuda when available).
        precision: as `load_model`; default the hardware's fast one (fp32 on CPUs without native bf16).
        quantize: as `load_model`.
        adapter: as `load_model`; its dir's tokenizer and prompt style win when it has them.
        kernels: as `load_model`.
    """
    from litgpt_lite.prompts import prompt_style_for
    from litgpt_lite.tokenizer import Tokenizer

    checkpoint_dir = validate_checkpoint_dir(checkpoint_dir, need_weights=False)  # the loader checks weights
    device = resolve_device(None if device is None else str(device))
    precision = precision or default_precision(device)
    model = load_model(checkpoint_dir, device, precision, quantize, adapter, kernels)
    text_dir = checkpoint_dir
    if adapter is not None and any((Path(adapter) / name).is_file() for name in TOKENIZER_FILES):
        text_dir = Path(adapter)
    tokenizer = Tokenizer(text_dir)
    return model, tokenizer, prompt_style_for(text_dir, tokenizer, model.config.name)


def _load_base(checkpoint_dir: Path, device: torch.device, dtype: torch.dtype | None, quantize: str | None) -> GPT:
    """The model of a checkpoint dir without adapters: pre-quantized as stored, else streamed (and quantized)."""
    if is_prequantized(checkpoint_dir):
        validate_checkpoint_dir(checkpoint_dir, need_weights=False)
        stored = read_quantize_yaml(checkpoint_dir)["mode"]
        if quantize is not None and quantize != stored:
            raise UserError(
                f"{checkpoint_dir} is pre-quantized with {stored}: drop --quantize (or pass {stored}), "
                "or quantize the original checkpoint instead"
            )
        return _load_prequantized(checkpoint_dir, device, dtype)
    return build_model(checkpoint_dir, device, dtype, quantize)


# ---------------------------------------------------------------- full-precision checkpoints, streamed
def build_model(
    checkpoint_dir: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    quantize: str | None = None,
    skip: Iterable[str] = DEFAULT_SKIP,
    int8_threshold: float = 6.0,
) -> GPT:
    """Build the GPT of a full-precision checkpoint dir on the meta device and fill it one tensor at a time.

    `load_model` uses this for every full-precision dir; `litgpt_lite quantize` calls it for `skip` and
    `int8_threshold`. With `quantize`, peak memory is about the quantized model plus one full-precision layer: each
    Linear weight is read from disk, cast to `dtype`, quantized on `device` and dropped before the next one is read.

    Args:
        checkpoint_dir: a litgpt_lite checkpoint directory with full-precision weights.
        device: where the model lives (and where quantization runs).
        dtype: dtype of the unquantized weights and of the 4-bit dequantization (default: as stored).
        quantize: None, or the bitsandbytes mode for the Linear layers.
        skip: Linear modules left unquantized (see `quantize.quantize_model`).
        int8_threshold: LLM.int8() outlier threshold.
    """
    if quantize is not None:
        check_mode(quantize)
        import_bitsandbytes()
    checkpoint_dir = validate_checkpoint_dir(checkpoint_dir)
    device = torch.device(device)
    model = _meta_model(checkpoint_dir)
    # memory-mapped when nothing is quantized: the tensors are used as stored (or cast through a small buffer)
    reader = open_weights(checkpoint_dir, mmap=quantize is None)
    check_state_dict(model, reader.meta(), source=str(checkpoint_dir))
    targets = set(quantizable_linears(model, skip)) if quantize is not None else set()
    names = reader.keys()
    present = set(names)
    for name in names:
        module_name, _, attr = name.rpartition(".")
        if module_name in targets:
            if attr == "weight":  # the bias (if any) is read here too, so each layer is built in one go
                bias_name = f"{module_name}.bias"
                bias = reader.get_tensor(bias_name, dtype) if bias_name in present else None
                weight = reader.get_tensor(name, dtype)
                set_submodule(model, module_name, quantize_linear(weight, bias, quantize, device, int8_threshold))
                del weight, bias
                release_freed_memory()
            continue
        if name == "lm_head.weight" and model.config.tie_embeddings:
            continue
        _place(model, name, reader.get_tensor(name, dtype).to(device))
    _tie_head(model, targets, quantize, device, int8_threshold)
    return _finish(model, device)


def _meta_model(checkpoint_dir: Path) -> GPT:
    with torch.device("meta"):
        return GPT(load_config(checkpoint_dir))


def _place(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Put a loaded tensor in the meta model as a parameter."""
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    module._parameters[attr] = nn.Parameter(tensor, requires_grad=tensor.is_floating_point())


def _tie_head(model: GPT, targets: set[str], quantize: str | None, device: torch.device, int8_threshold: float) -> None:
    if not model.config.tie_embeddings:
        return
    wte = model.transformer.wte.weight
    if "lm_head" in targets:
        set_submodule(model, "lm_head", quantize_linear(wte.detach().clone(), None, quantize, device, int8_threshold))
    else:
        model.lm_head.weight = wte


def _finish(model: GPT, device: torch.device) -> GPT:
    """Rebuild the non-persistent buffers (RoPE) on `device` and check nothing was left unloaded."""
    with torch.device(device):
        model.rope = RoPE(model.config).to(device)
    left = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if left:
        raise UserError(f"The checkpoint lacks {len(left)} weight(s), first {left[0]}: is it the right model?")
    return model.eval()


# ---------------------------------------------------------------- pre-quantized checkpoints
def _load_prequantized(checkpoint_dir: Path, device: torch.device, dtype: torch.dtype | None) -> GPT:
    """A checkpoint written by `litgpt_lite quantize`: the stored 4-bit/int8 weights are used as they are."""
    import_bitsandbytes()
    info = read_quantize_yaml(checkpoint_dir)
    model = _meta_model(checkpoint_dir)
    reader = SafetensorsReader(checkpoint_dir / QUANTIZED_WEIGHTS)
    targets = quantizable_linears(model, info.get("skip", DEFAULT_SKIP))
    names = set(reader.keys())
    for target in targets:
        prefix = f"{target}."  # a Linear has no submodules: every key under its prefix is its own
        own = {k[len(prefix) :]: k for k in names if k.startswith(prefix)}
        if "weight" not in own:
            raise UserError(f"{reader.path} lacks {prefix}weight: re-run litgpt_lite quantize")
        tensors = {k: reader.get_tensor(full) for k, full in own.items()}
        names -= set(own.values())
        module = prequantized_linear(model.get_submodule(target), tensors, info, device, dtype)
        set_submodule(model, target, module)
    for name in sorted(names):
        _place(model, name, reader.get_tensor(name, dtype).to(device))
    if model.config.tie_embeddings and "lm_head" not in targets:
        model.lm_head.weight = model.transformer.wte.weight
    return _finish(model, device)
