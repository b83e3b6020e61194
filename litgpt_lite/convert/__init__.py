"""Hugging Face <-> litgpt_lite checkpoints: `convert_to_litgpt` and `convert_from_litgpt`.

Both stream tensor by tensor through one declarative weight map per architecture (weight_maps.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from litgpt_lite.errors import UserError

HF_SHARD_BYTES = 5 * 1024**3


def convert_to_litgpt(
    checkpoint_dir: Path,
    model_name: str | None = None,
    dtype: str | None = None,
    out_dir: Path | None = None,
    base: Path | None = None,
) -> Path:
    """Convert a Hugging Face model folder (or a .gguf file, or a PEFT adapter) into a litgpt_lite checkpoint directory.

    Args:
        checkpoint_dir: HF folder with config.json and *.safetensors (single or sharded) or *.bin, or a .gguf file,
            or a PEFT LoRA/DoRA adapter folder (adapter_config.json), which becomes a LoRA dir over `base`.
        model_name: a registered config name to use instead of reading config.json.
        dtype: store the weights in this dtype (float32, bf16, fp16); default keeps the source dtype.
        out_dir: where to write; default converts in place, next to the HF files.
        base: for a PEFT adapter: the litgpt_lite checkpoint dir of the model it was trained on.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if base is not None or (checkpoint_dir / "adapter_config.json").is_file():
        return _peft_import(checkpoint_dir, base, model_name, dtype, out_dir)
    from litgpt_lite.convert.gguf import is_gguf_file

    if checkpoint_dir.suffix == ".gguf" or is_gguf_file(checkpoint_dir):  # Ollama's blobs have no suffix
        if model_name:
            raise UserError("--model_name does not apply to a GGUF file: its config comes from the file's metadata")
        from litgpt_lite.convert.gguf import convert_gguf

        return convert_gguf(checkpoint_dir, out_dir=out_dir, dtype=dtype)
    import torch

    from litgpt_lite.checkpoint import CONFIG, WEIGHTS, SafetensorsWriter, atomic_write_file, check_state_dict
    from litgpt_lite.convert.engine import convert_tensors
    from litgpt_lite.model import GPT

    config = _hf_folder_config(checkpoint_dir, model_name)
    architecture = config.architecture
    torch_dtype = _torch_dtype(dtype)  # a UserError for an unknown name (the table lookup used to come first)

    out_dir = Path(out_dir) if out_dir else checkpoint_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        expected = GPT(config)
    shapes = {}
    from tqdm import tqdm

    files, total = _hf_weight_files(checkpoint_dir)
    progress = tqdm(total=total, desc=f"convert {checkpoint_dir.name}", unit="tensor", disable=None)

    def stream():
        for name, tensor in convert_tensors(architecture, config, _read_hf_tensors(files, progress), to="lit"):
            if torch_dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(torch_dtype)
            shapes[name] = torch.empty(tensor.shape, device="meta")
            yield name, tensor

    def write(tmp: Path) -> None:
        writer = SafetensorsWriter(tmp, expected_tensors=len(expected.state_dict()))
        try:
            for name, tensor in stream():
                if config.tie_embeddings and name == "lm_head.weight":
                    continue
                writer.add(name, tensor)
            check_state_dict(expected, shapes, source=str(checkpoint_dir))
        except BaseException:
            writer.abort()
            raise
        writer.close()

    atomic_write_file(out_dir / WEIGHTS, write)
    progress.close()
    config.save(out_dir / CONFIG)
    if out_dir != checkpoint_dir:
        from litgpt_lite.checkpoint import copy_tokenizer_files

        copy_tokenizer_files(checkpoint_dir, out_dir)
    print(f"Wrote {out_dir / WEIGHTS} ({config.name}, {architecture})")
    return out_dir


def convert_from_litgpt(
    checkpoint_dir: Path, output_dir: Path, dtype: str | None = None, merge: bool | None = None, format: str = "hf"
) -> Path:
    """Write a complete Hugging Face folder that `AutoModelForCausalLM.from_pretrained` loads directly.

    Args:
        checkpoint_dir: a litgpt_lite checkpoint directory, or a LoRA fine-tuning output dir.
        output_dir: the HF folder to write (config.json, model.safetensors sharded past 5 GB, tokenizer files).
        dtype: store the weights in this dtype (float32, bf16, fp16; gguf: f32, f16, bf16, q8_0); default: as stored.
        merge: for a LoRA dir: false writes a PEFT adapter folder (adapter_config.json, adapter_model.safetensors)
            for the base's HF export; true merges the adapters into the base and writes the full model. Default:
            the PEFT adapter for a dir holding adapters only, the full model for a dir with full weights.
        format: hf, or gguf: `output_dir` is then the .gguf file to write, for llama.cpp, Ollama, LM Studio.
    """
    if format != "hf":
        return _export_other_format(checkpoint_dir, output_dir, dtype, format)
    if (lora_export := _lora_export(Path(checkpoint_dir), Path(output_dir), dtype, merge)) is not None:
        return lora_export
    from tqdm import tqdm

    from litgpt_lite.checkpoint import (
        SafetensorsWriter,
        atomic_dir,
        copy_tokenizer_files,
        iter_checkpoint_tensors,
        load_config,
        validate_checkpoint_dir,
    )
    from litgpt_lite.convert.engine import convert_tensors
    from litgpt_lite.convert.hf_config import config_to_hf

    checkpoint_dir = validate_checkpoint_dir(checkpoint_dir)
    config = load_config(checkpoint_dir)
    torch_dtype = _torch_dtype(dtype)
    state = dict(iter_checkpoint_tensors(checkpoint_dir))  # lazy handles: each is read as it is written out
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)
    output_dir = Path(output_dir)
    with atomic_dir(output_dir) as tmp:
        shards: list[tuple[Path, list[str]]] = []
        writer, names, total, first_dtype_seen = None, [], 0, []
        loads = ((k, load()) for k, load in state.items())
        progress = tqdm(loads, total=len(state), desc="convert_from_litgpt", unit="tensor", disable=None)
        for name, tensor in convert_tensors(config.architecture, config, progress, to="hf"):
            if torch_dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(torch_dtype)
            if writer is None or writer.nbytes + tensor.nbytes > HF_SHARD_BYTES and writer.nbytes:
                if writer is not None:
                    writer.close()
                    shards.append((writer.path, names))
                shard_path = tmp / f"shard-{len(shards)}.safetensors"
                writer, names = SafetensorsWriter(shard_path, expected_tensors=len(state)), []
            writer.add(name, tensor)
            names.append(name)
            total += tensor.nbytes
            first_dtype_seen = first_dtype_seen or [tensor.dtype]
        writer.close()
        shards.append((writer.path, names))
        _name_shards(tmp, shards, total)
        first_dtype = first_dtype_seen[0] if torch_dtype is None else torch_dtype
        hf = config_to_hf(config, extra=_token_ids(checkpoint_dir))
        hf["torch_dtype"] = hf["dtype"] = str(first_dtype).removeprefix("torch.")
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        copy_tokenizer_files(checkpoint_dir, tmp)
        if not (tmp / "generation_config.json").is_file():
            gen = {k: v for k, v in _token_ids(checkpoint_dir).items() if v is not None}
            (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    print(f"Wrote Hugging Face model to {output_dir}")
    return output_dir


# ---------------------------------------------------------------- helpers
def _export_other_format(checkpoint_dir: Path, out: Path, dtype: str | None, fmt: str) -> Path:
    if fmt != "gguf":
        raise UserError(f"Unknown --format {fmt!r}: choose hf or gguf")
    from litgpt_lite.convert.gguf_export import export_gguf

    return export_gguf(checkpoint_dir, out, dtype)


def _hf_folder_config(checkpoint_dir: Path, model_name: str | None):
    """Our Config for an HF model folder (from its config.json, or the registered `model_name`)."""
    from litgpt_lite.config import Config
    from litgpt_lite.convert.hf_config import architecture_of, config_from_hf

    if not checkpoint_dir.is_dir():
        raise UserError(f"{checkpoint_dir} is not a directory with a Hugging Face model")
    if not (checkpoint_dir / "config.json").is_file():
        raise UserError(f"{checkpoint_dir} has no config.json: is it a Hugging Face model folder?")
    hf_config = _read_json(checkpoint_dir / "config.json")
    architecture = architecture_of(hf_config)
    if model_name:
        config = Config.from_name(model_name)
    else:
        config = config_from_hf(hf_config, name=checkpoint_dir.name)
    config.architecture = architecture
    return config


def _torch_dtype(dtype: str | None):
    """The torch dtype a --dtype name stands for (None keeps the source's), or a UserError listing the names."""
    if dtype is None:
        return None
    from litgpt_lite.precision import parse_dtype

    return parse_dtype(dtype)


def _peft_import(peft_dir: Path, base: Path | None, model_name: str | None, dtype: str | None, out_dir) -> Path:
    """A PEFT adapter folder as one of our LoRA dirs over `base` (convert/peft.py)."""
    from litgpt_lite.convert.peft import convert_peft_adapter

    if model_name:
        raise UserError("--model_name does not apply to a PEFT adapter: the model comes from --base")
    return convert_peft_adapter(peft_dir, base, dtype=_torch_dtype(dtype), out_dir=out_dir)


def _lora_export(lora_dir: Path, output_dir: Path, dtype: str | None, merge: bool | None) -> Path | None:
    """A LoRA dir's adapters as a PEFT folder, or merged into its base as a full HF model; None for full weights."""
    from litgpt_lite.convert.peft import export_kind, export_peft

    kind = export_kind(lora_dir, merge)
    if kind == "peft":
        return export_peft(lora_dir, output_dir, dtype=_torch_dtype(dtype))
    if kind == "full":
        return None
    import tempfile

    from litgpt_lite.merge_lora import merge_lora_cli

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{output_dir.name}.merge-", dir=output_dir.parent) as tmp:
        merge_lora_cli(lora_dir, out_dir=Path(tmp) / "merged")  # a temporary full checkpoint
        return convert_from_litgpt(Path(tmp) / "merged", output_dir, dtype=dtype)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None


def _hf_weight_files(checkpoint_dir: Path) -> tuple[list[Path], int]:
    """The weight files to read (safetensors preferred over .bin) and the number of tensors in them."""
    from litgpt_lite.checkpoint import SafetensorsReader

    files = sorted(checkpoint_dir.glob("*.safetensors"))
    files = [f for f in files if f.name != "lit_model.safetensors" and not f.name.endswith(".lora.safetensors")]
    if files:
        return files, sum(len(SafetensorsReader(f).keys()) for f in files)
    files = sorted(p for p in checkpoint_dir.glob("*.bin") if p.name != "training_args.bin")
    if not files:
        raise UserError(f"{checkpoint_dir} has no *.safetensors or *.bin weight files")
    return files, 0


def _read_hf_tensors(files: list[Path], progress) -> Iterator:
    import torch

    from litgpt_lite.checkpoint import SafetensorsReader

    for f in files:
        if f.suffix == ".safetensors":
            reader = SafetensorsReader(f)
            for key in reader.keys():
                progress.update(1)
                yield key, reader.get_tensor(key)
            continue
        try:
            state = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # noqa: BLE001 - a corrupt or unsafe pickle
            raise UserError(f"Cannot read {f} as weights: {type(e).__name__}: {str(e).splitlines()[0]}") from None
        for key in list(state):
            progress.update(1)
            yield key, state.pop(key).clone()


def _name_shards(tmp: Path, shards: list[tuple[Path, list[str]]], total: int) -> None:
    if len(shards) == 1:
        shards[0][0].rename(tmp / "model.safetensors")
        return
    n = len(shards)
    weight_map = {}
    for k, (path, names) in enumerate(shards, start=1):
        final = f"model-{k:05d}-of-{n:05d}.safetensors"
        path.rename(tmp / final)
        weight_map.update(dict.fromkeys(names, final))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _token_ids(checkpoint_dir: Path) -> dict:
    """bos/eos/pad ids for config.json, from generation_config.json or tokenizer_config.json."""
    out: dict = {}
    gen = checkpoint_dir / "generation_config.json"
    if gen.is_file():
        data = _read_json(gen)
        out.update({k: data[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in data})
    return out
