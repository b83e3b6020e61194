"""`litgpt_lite quantize`: write a pre-quantized copy of a checkpoint (see quantized_checkpoint.py for the format).

It sits above the loader (it loads with `loading.build_model`), which is why it is not in quantized_checkpoint.py:
the loader reads that format, so that module cannot import the loader back.
"""

from __future__ import annotations

from pathlib import Path

from litgpt_lite.checkpoint import QUANTIZED_WEIGHTS, validate_checkpoint_dir
from litgpt_lite.errors import UserError
from litgpt_lite.loading import build_model
from litgpt_lite.precision import parse_dtype, resolve_device
from litgpt_lite.quantize import DEFAULT_SKIP, check_mode
from litgpt_lite.quantized_checkpoint import save_quantized_checkpoint


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
    torch_device = resolve_device(device)  # one-line errors for an unknown device or a missing GPU
    torch_dtype = parse_dtype(dtype)
    checkpoint_dir = validate_checkpoint_dir(checkpoint_dir)
    out_dir = Path(out_dir) if out_dir is not None else checkpoint_dir.with_name(f"{checkpoint_dir.name}-{quantize}")
    if out_dir.resolve() == checkpoint_dir.resolve():
        raise UserError("--out_dir must differ from the checkpoint dir: the original weights are the source")
    skip_names = tuple(skip) if skip is not None else DEFAULT_SKIP
    print(f"Quantizing {checkpoint_dir} to {quantize} ...")
    model = build_model(checkpoint_dir, torch_device, torch_dtype, quantize, skip_names, int8_threshold)
    settings = {"skip": list(skip_names), "int8_threshold": int8_threshold}
    save_quantized_checkpoint(model, quantize, out_dir, checkpoint_dir, settings)
    size = (Path(out_dir) / QUANTIZED_WEIGHTS).stat().st_size
    print(f"Wrote {out_dir} ({size / 2**20:.1f} MiB of weights)")
