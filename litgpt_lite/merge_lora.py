"""`litgpt_lite merge_lora`: fold LoRA adapters into their base model and write a full checkpoint.

The merge is the loader's (`load_model(base, adapter=...)` folds every adapter into its Linear in float32); this
command only picks the base and writes the result. It sits above the loader, which is why it is not in lora.py.
"""

from __future__ import annotations

from pathlib import Path

from litgpt_lite.checkpoint import (
    CONFIG,
    WEIGHTS,
    atomic_write_file,
    save_checkpoint,
    save_state_dict,
    validate_checkpoint_dir,
)
from litgpt_lite.loading import load_model
from litgpt_lite.lora import read_adapter


def merge_lora_cli(checkpoint_dir: Path, base_checkpoint_dir: Path | None = None, out_dir: Path | None = None) -> None:
    """Merge LoRA adapters into their base model and write a full checkpoint (loads in generate, converts to HF).

    Args:
        checkpoint_dir: the LoRA output dir (lit_model.lora.safetensors and lora.yaml).
        base_checkpoint_dir: the model the adapters were trained on (default: the one lora.yaml names).
        out_dir: where to write the merged checkpoint (default: checkpoint_dir itself, keeping the adapters).
    """
    adapter = read_adapter(checkpoint_dir, base_checkpoint_dir)
    base = validate_checkpoint_dir(adapter.base_checkpoint_dir)  # full precision: a pre-quantized base cannot merge
    out_dir = Path(out_dir) if out_dir is not None else Path(checkpoint_dir)
    print(f"Merging {adapter.source} into {base} ...")
    if adapter.info.get("quantize"):
        quantized = adapter.info["quantize"]
        print(f"The adapters were trained on a {quantized} base; they merge into its full-precision weights.")
    model = load_model(base, adapter=checkpoint_dir, kernels="none")  # the weights as stored, in plain modules
    state, config = model.state_dict(), model.config  # a merged head adapter has untied lm_head (config says so)
    if out_dir.resolve() == Path(checkpoint_dir).resolve():
        # into the LoRA dir itself, keeping the adapters: the config first, then the weights, each by rename
        weights = {k: v for k, v in state.items() if not (config.tie_embeddings and k == "lm_head.weight")}
        atomic_write_file(out_dir / CONFIG, lambda tmp: config.save(tmp))
        atomic_write_file(out_dir / WEIGHTS, lambda tmp: save_state_dict(weights, tmp))
    else:
        hyper = Path(checkpoint_dir) / "hyperparameters.yaml"
        extra = {"hyperparameters.yaml": hyper.read_text()} if hyper.is_file() else None
        save_checkpoint(state, config, out_dir, tokenizer_dir=Path(checkpoint_dir), extra_files=extra)
    print(f"Wrote the merged checkpoint to {out_dir}")
