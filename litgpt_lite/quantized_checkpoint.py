"""The pre-quantized checkpoint directory written by `litgpt_lite quantize`, which reloads without re-quantizing.

    lit_model.quantized.safetensors   the packed 4-bit / int8 weights with their quant state, the rest as stored
    quantize.yaml                     mode, blocksize, bitsandbytes version, skipped layers, int8 threshold
    model_config.yaml, tokenizer files, prompt_style.yaml, hyperparameters.yaml   as in any checkpoint dir

Writing and reading the tensors goes through checkpoint.py's one safetensors writer and reader; building the model
from them is the loader's (`loading.load_model`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from litgpt_lite.checkpoint import CONFIG, QUANTIZED_WEIGHTS, atomic_dir, copy_tokenizer_files, save_state_dict
from litgpt_lite.errors import UserError
from litgpt_lite.quantize import BLOCKSIZE, MODES, default_compute_dtype, import_bitsandbytes, is_quantized_linear

QUANTIZE_YAML = "quantize.yaml"


def is_prequantized(checkpoint_dir: str | Path) -> bool:
    return (Path(checkpoint_dir) / QUANTIZE_YAML).is_file()


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
        save_state_dict(state, tmp / QUANTIZED_WEIGHTS, metadata={"format": "pt", "quantize": mode})
        model.config.save(tmp / CONFIG)
        (tmp / QUANTIZE_YAML).write_text(yaml.safe_dump(info, sort_keys=False))
        if source_dir is not None:
            copy_tokenizer_files(Path(source_dir), tmp)
            for extra in ("prompt_style.yaml", "hyperparameters.yaml"):
                if (Path(source_dir) / extra).is_file():
                    shutil.copy2(Path(source_dir) / extra, tmp / extra)
    return Path(out_dir)


def read_quantize_yaml(checkpoint_dir: Path) -> dict[str, Any]:
    """quantize.yaml's settings, or a UserError for an unknown mode or missing weights."""
    import yaml

    info = yaml.safe_load((checkpoint_dir / QUANTIZE_YAML).read_text()) or {}
    if info.get("mode") not in MODES:
        raise UserError(f"{checkpoint_dir / QUANTIZE_YAML} names no valid mode (got {info.get('mode')!r})")
    if not (checkpoint_dir / QUANTIZED_WEIGHTS).is_file():
        raise UserError(f"{checkpoint_dir} has {QUANTIZE_YAML} but no {QUANTIZED_WEIGHTS}: re-run litgpt_lite quantize")
    return info


def prequantized_linear(
    meta_linear: nn.Module,
    tensors: dict[str, torch.Tensor],
    info: dict,
    device: torch.device,
    dtype: torch.dtype | None,
) -> nn.Module:
    """A bitsandbytes Linear from its saved tensors (`weight`, `bias`, quant state), with no re-quantization."""
    bnb = import_bitsandbytes()
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
        module.compute_dtype = default_compute_dtype(dtype or module.weight.quant_state.dtype, device)
        module.compute_type_is_set = True
    if has_bias:
        module.bias = nn.Parameter(tensors["bias"].to(device), requires_grad=False)
    return module
