"""Export a litgpt_lite checkpoint directory as one GGUF file that llama.cpp (and Ollama, LM Studio ...) runs:
Llama / Mistral (`llama`), Qwen 2/2.5 (`qwen2`) and Gemma 3 (`gemma3`), in f32, f16, bf16 or q8_0.

The tensors go through the same GGUF name table the importer reads (`weight_maps.GGUF_MAPS`), run backwards by the
engine (q/k rows permuted for llama.cpp's RoPE, Gemma's 1 put back into its norms). They are streamed: a first pass
over the safetensors header lays out every tensor's name, shape and type, a second pass converts and writes one
tensor at a time. Before anything is written, the metadata is read back through our own importer's
`config_from_gguf`: a Config field the GGUF cannot say is refused by name, not dropped.
The vocabulary comes from the checkpoint's tokenizer files, as llama.cpp's own converter writes it: `gpt2` (byte-level
BPE: tokens, merges, the pre-tokenizer's name) or `llama` (SentencePiece: tokens, scores, token types).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from litgpt_lite.convert.gguf_tokenizer import (
    _LLAMA3_REGEX,
    _QWEN2_REGEX,
    BYTE,
    CONTROL,
    NORMAL,
    UNKNOWN,
    UNUSED,
    USER_DEFINED,
)
from litgpt_lite.errors import UserError

# our Config.architecture -> the GGUF general.architecture llama.cpp runs it as
EXPORT_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",  # llama.cpp's converter writes Mistral as llama too
    "Qwen2ForCausalLM": "qwen2",
    "Gemma3ForCausalLM": "gemma3",
    "Gemma3ForConditionalGeneration": "gemma3",  # the text model of the multimodal checkpoint
}
# --dtype -> GGML type name
GGUF_DTYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}
_FROM_TORCH = {"torch.float32": "f32", "torch.float16": "f16", "torch.bfloat16": "bf16"}
_FILE_TYPES = {"F32": "ALL_F32", "F16": "MOSTLY_F16", "BF16": "MOSTLY_BF16", "Q8_0": "MOSTLY_Q8_0"}
# Config fields that are not model math, or that a GGUF holds in another way (checked separately)
_NOT_COMPARED = {"name", "hf_config", "architecture", "vocab_size", "padding_multiple"}
_CHUNK_ROWS = 4096


def export_gguf(checkpoint_dir: str | Path, out_path: str | Path, dtype: str | None = None) -> Path:
    """Write the model in `checkpoint_dir` as the GGUF file `out_path`.

    Args:
        checkpoint_dir: a litgpt_lite checkpoint directory (lit_model.safetensors, model_config.yaml, tokenizer).
        out_path: the .gguf file to write (replaced atomically when it exists).
        dtype: f32, f16, bf16 or q8_0 for the matrices (norms, biases and RoPE factors stay f32, as in llama.cpp;
            under q8_0 a matrix whose rows are not a multiple of 32 values is stored f16). Default: the
            checkpoint's own dtype.
    """
    from litgpt_lite.checkpoint import load_config, validate_checkpoint_dir

    checkpoint_dir = validate_checkpoint_dir(checkpoint_dir)
    out_path = Path(out_path)
    if out_path.is_dir():
        raise UserError(f"{out_path} is a directory: pass the .gguf file to write, e.g. {out_path / 'model.gguf'}")
    config = load_config(checkpoint_dir)
    arch = gguf_architecture(config)
    sources = _source_tensors(checkpoint_dir, config)
    qtype = _ggml_type(dtype, sources)
    meta = model_metadata(arch, config, qtype, sources)
    meta.update(vocab_metadata(checkpoint_dir, config.padded_vocab_size))
    plan = _layout(arch, config, sources, qtype)
    check_metadata(meta, plan, config)  # before any tensor is converted
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    try:
        _write(tmp, arch, meta, plan, _stream(arch, config, sources, plan))
        os.replace(tmp, out_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    size = out_path.stat().st_size / 2**20
    print(f"Wrote {out_path} ({arch}, {qtype.lower()}, {len(plan)} tensors, {size:.1f} MiB)")
    return out_path


def gguf_architecture(config) -> str:
    """The GGUF architecture for `config`, or a UserError naming the ones that export."""
    arch = EXPORT_ARCHITECTURES.get(config.architecture)
    if arch is None:
        supported = ", ".join(sorted(set(EXPORT_ARCHITECTURES)))
        raise UserError(f"GGUF export does not support {config.architecture} (supported: {supported})")
    return arch


# ---------------------------------------------------------------- tensors: layout pass and data pass
@dataclass
class _Source:
    shape: tuple[int, ...]
    dtype: Any  # torch dtype
    load: Callable[[], Any]


@dataclass
class _Planned:
    name: str  # the GGUF tensor name
    shape: tuple[int, ...]  # PyTorch order
    ggml: str  # GGML type name
    extra: Any = None  # a tensor we make rather than read (rope_freqs)


def _source_tensors(checkpoint_dir: Path, config) -> dict[str, _Source]:
    """Our tensors by name, with shapes and dtypes from the safetensors header (nothing is read yet)."""
    import torch

    from litgpt_lite.checkpoint import WEIGHTS, SafetensorsReader, iter_checkpoint_tensors

    if (checkpoint_dir / WEIGHTS).is_file():
        reader = SafetensorsReader(checkpoint_dir / WEIGHTS)
        dtypes = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
        out = {}
        for name, entry in reader.entries.items():
            dtype = getattr(torch, dtypes.get(entry["dtype"], "float32"))
            out[name] = _Source(tuple(entry["shape"]), dtype, lambda n=name: reader.get_tensor(n))
    else:  # LitGPT's .pth, memory-mapped
        out = {}
        for name, load in iter_checkpoint_tensors(checkpoint_dir):
            t = load()
            out[name] = _Source(tuple(t.shape), t.dtype, load)
    if config.tie_embeddings:
        out.pop("lm_head.weight", None)
    return out


def _ggml_type(dtype: str | None, sources: dict[str, _Source]) -> str:
    if dtype is None:
        first = next((s.dtype for s in sources.values() if s.dtype.is_floating_point), None)
        dtype = _FROM_TORCH.get(str(first), "f32")
    if dtype not in GGUF_DTYPES:
        raise UserError(f"Unknown GGUF dtype {dtype!r}. Choose one of: {', '.join(GGUF_DTYPES)}")
    return GGUF_DTYPES[dtype]


def _tensor_type(shape: tuple[int, ...], qtype: str) -> str:
    """llama.cpp's rule: vectors (norms, biases) stay F32; q8_0 needs rows of whole 32-value blocks, else F16."""
    if len(shape) < 2:
        return "F32"
    if qtype == "Q8_0" and shape[-1] % 32:
        return "F16"
    return qtype


def _layout(arch: str, config, sources: dict[str, _Source], qtype: str) -> list[_Planned]:
    """Every GGUF tensor in write order, from the engine run on meta tensors of our shapes."""
    import torch

    from litgpt_lite.checkpoint import check_state_dict
    from litgpt_lite.convert.engine import convert_tensors
    from litgpt_lite.model import GPT

    with torch.device("meta"):
        ours = {name: torch.empty(s.shape) for name, s in sources.items()}
        check_state_dict(GPT(config), ours, source="the checkpoint")
        theirs = list(convert_tensors(arch, config, ours.items(), to="gguf"))
    plan = [_Planned(name, tuple(t.shape), _tensor_type(tuple(t.shape), qtype)) for name, t in theirs]
    freqs = _rope_freqs(arch, config)
    if freqs is not None:
        plan.append(_Planned("rope_freqs.weight", tuple(freqs.shape), "F32", freqs))
    return plan


def _rope_freqs(arch: str, config) -> Any:
    """llama.cpp's Llama 3 RoPE scaling: one divisor per rotary frequency, as the tensor rope_freqs.weight."""
    scaling = config.rope_scaling or {}
    if scaling.get("type") != "llama3":
        return None
    if arch != "llama":
        raise UserError(f"Llama 3 RoPE scaling cannot be written for the GGUF architecture {arch}")
    from litgpt_lite.model import rope_inv_freq

    base, _ = rope_inv_freq(config.rope_n_elem, config.rope_base, None, config.block_size)
    scaled, _ = rope_inv_freq(config.rope_n_elem, config.rope_base, scaling, config.block_size)
    return (base / scaled).float()


def _stream(arch: str, config, sources: dict[str, _Source], plan: list[_Planned]) -> Iterator[tuple[str, Any]]:
    """(GGUF name, tensor) in the layout's order, one read from disk at a time. Vectors come in float32 so that
    Gemma's `1 + w` is added at full precision."""
    import torch

    from litgpt_lite.convert.engine import convert_tensors

    def load(source: _Source) -> Callable[[Any], Any]:
        return lambda _dtype: source.load() if len(source.shape) > 1 else source.load().to(torch.float32)

    yield from convert_tensors(arch, config, ((n, load(s)) for n, s in sources.items()), to="gguf")
    for p in plan:
        if p.extra is not None:
            yield p.name, p.extra


def encode_tensor(tensor: Any, ggml: str) -> Any:
    """One tensor as the numpy array GGUFWriter writes for GGML type `ggml`, converted `_CHUNK_ROWS` rows at a time
    (a float32 copy of a whole large embedding never sits next to the source)."""
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType
    from gguf.quants import quant_shape_to_byte_shape, quantize

    kind = GGMLQuantizationType[ggml]
    if ggml in ("F32", "F16", "BF16"):
        torch_dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[ggml]
        out = tensor.to(torch_dtype).contiguous()
        return out.view(torch.int16).numpy() if ggml == "BF16" else out.numpy()
    rows = tensor.reshape(-1, tensor.shape[-1])
    out = np.empty(quant_shape_to_byte_shape(tuple(rows.shape), kind), dtype=np.uint8)
    for start in range(0, rows.shape[0], _CHUNK_ROWS):
        block = rows[start : start + _CHUNK_ROWS].to(torch.float32).numpy()
        out[start : start + _CHUNK_ROWS] = quantize(block, kind)
    return out.reshape(quant_shape_to_byte_shape(tuple(tensor.shape), kind))


def _write(path: Path, arch: str, meta: dict[str, Any], plan: list[_Planned], tensors: Iterator) -> None:
    """Header, metadata and tensor table first (from the layout), then the tensors' data as the stream yields them."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import quant_shape_to_byte_shape
    from tqdm import tqdm

    writer = GGUFWriter(str(path), arch)
    try:
        for key, value in meta.items():
            _add_value(writer, key, value)
        for p in plan:
            kind = GGMLQuantizationType[p.ggml]
            byte_shape = quant_shape_to_byte_shape(p.shape, kind)
            nbytes = int(np.prod(byte_shape, dtype=np.int64))
            writer.add_tensor_info(p.name, byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        progress = tqdm(plan, desc=f"export {path.name.split('.tmp-')[0].lstrip('.')}", unit="tensor", disable=None)
        for p, (name, tensor) in zip(progress, tensors, strict=True):
            if name != p.name or tuple(tensor.shape) != p.shape:  # the two passes must agree, or the file is wrong
                raise RuntimeError(f"GGUF export: {name} {tuple(tensor.shape)} arrived where {p.name} was laid out")
            writer.write_tensor_data(encode_tensor(tensor, p.ggml))
    finally:
        writer.close()


def _add_value(writer, key: str, value: Any) -> None:
    """One metadata value with the GGUF type llama.cpp reads it as (counts uint32, floats float32)."""
    from gguf import GGUFValueType

    if key == "general.architecture":
        return  # GGUFWriter writes it from its `arch`
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif key == "tokenizer.ggml.token_type":
        writer.add_key_value(key, value, GGUFValueType.ARRAY, sub_type=GGUFValueType.INT32)
    else:
        writer.add_array(key, value)


# ---------------------------------------------------------------- Config -> metadata
def model_metadata(arch: str, config, qtype: str, sources: dict[str, _Source]) -> dict[str, Any]:
    """The `general.*` and `{arch}.*` keys for `config` (what llama.cpp's converter writes for the same model)."""
    import gguf

    meta: dict[str, Any] = {
        "general.architecture": arch,
        "general.name": config.name or "model",
        "general.file_type": int(gguf.LlamaFileType[_FILE_TYPES[qtype]]),
    }
    if qtype == "Q8_0":
        meta["general.quantization_version"] = gguf.GGML_QUANT_VERSION
    a = f"{arch}."
    meta.update(
        {
            a + "context_length": config.block_size,
            a + "embedding_length": config.n_embd,
            a + "block_count": config.n_layer,
            a + "feed_forward_length": config.intermediate_size,
            a + "attention.head_count": config.n_head,
            a + "attention.head_count_kv": config.n_query_groups,
            a + "attention.key_length": config.head_size,
            a + "attention.value_length": config.head_size,
            a + "attention.layer_norm_rms_epsilon": float(config.norm_eps),
            a + "rope.dimension_count": config.rope_n_elem,
            a + "rope.freq_base": float(config.rope_base),
            a + "vocab_size": config.padded_vocab_size,
        }
    )
    meta.update(_rope_scaling_metadata(arch, config))
    if arch == "gemma3":
        meta.update(_gemma3_metadata(config))
    return meta


def _rope_scaling_metadata(arch: str, config) -> dict[str, Any]:
    scaling = dict(config.rope_scaling or {})
    kind = scaling.get("type")
    if kind in (None, "llama3"):  # llama3: the rope_freqs.weight tensor
        return {}
    if kind not in ("linear", "yarn"):
        raise UserError(f"RoPE scaling {kind!r} cannot be written to a GGUF here (linear, yarn and llama3 can)")
    out: dict[str, Any] = {f"{arch}.rope.scaling.type": kind, f"{arch}.rope.scaling.factor": float(scaling["factor"])}
    if kind == "yarn":
        from litgpt_lite.convert.gguf import YARN_KEYS

        for key, ours in YARN_KEYS.items():
            if scaling.get(ours) is not None:
                value = scaling[ours]
                out[f"{arch}.rope.scaling.{key}"] = int(value) if key == "original_context_length" else float(value)
    return out


def _gemma3_metadata(config) -> dict[str, Any]:
    """Gemma 3's switches; what llama.cpp derives itself (the 1:5 local/global pattern, the query scale) is written
    only when the model differs from it."""
    out: dict[str, Any] = {}
    if config.sliding_window_size:
        out["gemma3.attention.sliding_window"] = int(config.sliding_window_size)
        layers = range(config.n_layer)
        default = [i for i in layers if i % 6 < 5]
        sliding = config.sliding_window_layers if config.sliding_window_layers is not None else list(layers)
        if sliding != default:
            out["gemma3.attention.sliding_window_pattern"] = [i in sliding for i in layers]
    if config.rope_local_base is not None:
        out["gemma3.rope.freq_base_swa"] = float(config.rope_local_base)
    default_scalar = config.n_embd // config.n_head if config.n_layer == 62 else config.head_size
    if config.attention_scores_scalar not in (None, default_scalar):
        out["gemma3.attention.scale"] = float(config.attention_scores_scalar) ** -0.5
    if config.final_logit_softcapping is not None:
        out["gemma3.final_logit_softcapping"] = float(config.final_logit_softcapping)
    if config.attention_logit_softcapping is not None:
        out["gemma3.attn_logit_softcapping"] = float(config.attention_logit_softcapping)
    return out


def check_metadata(meta: dict[str, Any], plan: list[_Planned], config) -> None:
    """Read the metadata back with our importer's `config_from_gguf` and refuse a Config field it cannot carry."""
    import dataclasses

    import numpy as np
    from gguf import GGMLQuantizationType

    from litgpt_lite.convert.gguf import GGUFTensor, config_from_gguf

    tensors = {}
    for p in plan:
        data = None if p.extra is None else p.extra.numpy().view(np.uint8).reshape(1, -1)
        tensors[p.name] = GGUFTensor(p.name, tuple(reversed(p.shape)), GGMLQuantizationType.F32, data)
    back = config_from_gguf(meta, tensors, name=config.name)
    for f in dataclasses.fields(config):
        ours, theirs = getattr(config, f.name), getattr(back, f.name)
        if f.name not in _NOT_COMPARED and ours != theirs:
            arch = meta["general.architecture"]
            raise UserError(
                f"GGUF export: {f.name}={ours!r} cannot be expressed in a GGUF {arch!r} file (llama.cpp would run "
                f"the model as {f.name}={theirs!r})"
            )


# ---------------------------------------------------------------- tokenizer files -> tokenizer.ggml.*
@dataclass
class _Vocab:
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def vocab_metadata(checkpoint_dir: Path, n_rows: int) -> dict[str, Any]:
    """The `tokenizer.*` keys for the tokenizer files in `checkpoint_dir`, padded to `n_rows` tokens (the embedding's
    rows) with unused `[PAD{i}]` tokens, as llama.cpp's converter pads."""
    from litgpt_lite.tokenizer import Tokenizer

    tokenizer = Tokenizer(checkpoint_dir)  # the same reading of the files that generate/chat/serve use
    data = _tokenizer_json(checkpoint_dir)
    if data is not None and _is_byte_level(data):
        vocab = _byte_level_vocab(data)
    elif (checkpoint_dir / "tokenizer.model").is_file():
        vocab = _sentencepiece_model_vocab(checkpoint_dir, data)
    elif data is not None:
        vocab = _sentencepiece_json_vocab(data)
    else:
        raise UserError(f"{checkpoint_dir} has no tokenizer.json or tokenizer.model to write into the GGUF")
    if len(vocab.tokens) > n_rows:
        raise UserError(f"The tokenizer has {len(vocab.tokens)} tokens but the embedding only {n_rows} rows")
    for i in range(len(vocab.tokens), n_rows):
        vocab.tokens.append(f"[PAD{i}]")
        vocab.types.append(UNUSED)
        if vocab.scores is not None:
            vocab.scores.append(-1000.0)
    meta = dict(vocab.extra)
    meta["tokenizer.ggml.tokens"] = vocab.tokens
    if vocab.scores is not None:
        meta["tokenizer.ggml.scores"] = vocab.scores
    meta["tokenizer.ggml.token_type"] = vocab.types
    if vocab.merges is not None:
        meta["tokenizer.ggml.merges"] = vocab.merges
    meta.update(_special_metadata(tokenizer, data, vocab.tokens))
    return meta


def _tokenizer_json(checkpoint_dir: Path) -> dict[str, Any] | None:
    path = checkpoint_dir / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None


def _components(node: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A pre-tokenizer / normalizer / decoder as its list of steps (a Sequence flattened)."""
    if not node:
        return []
    steps = node.get("pretokenizers") or node.get("normalizers") or node.get("decoders")
    return [s for step in steps for s in _components(step)] if steps is not None else [node]


def _is_byte_level(data: dict[str, Any]) -> bool:
    steps = _components(data.get("pre_tokenizer")) + _components(data.get("decoder"))
    return data.get("model", {}).get("type") == "BPE" and any(s.get("type") == "ByteLevel" for s in steps)


def _by_id(data: dict[str, Any]) -> tuple[list[str], dict[int, dict[str, Any]]]:
    """Every token by id (the model's vocabulary and the added tokens), and the added tokens by id."""
    vocab = {i: t for t, i in data["model"]["vocab"].items()}
    added = {int(t["id"]): t for t in data.get("added_tokens", [])}
    vocab.update({i: t["content"] for i, t in added.items()})
    n = max(vocab) + 1 if vocab else 0
    return [vocab.get(i, f"[PAD{i}]") for i in range(n)], added


def _added_type(token: dict[str, Any]) -> int:
    return CONTROL if token.get("special") else USER_DEFINED


def _byte_level_vocab(data: dict[str, Any]) -> _Vocab:
    tokens, added = _by_id(data)
    known = set(data["model"]["vocab"].values())
    types = [_added_type(added[i]) if i in added else NORMAL if i in known else UNUSED for i in range(len(tokens))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"].get("merges", [])]
    extra = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": _pre_tokenizer_name(data)}
    return _Vocab(tokens, types, merges=merges, extra=extra)


def _pre_tokenizer_name(data: dict[str, Any]) -> str:
    """llama.cpp's name for the way the text is split before BPE (it knows pre-tokenizers by name, not by regex)."""
    steps = _components(data.get("pre_tokenizer"))
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"  # llama.cpp's name; its "default" splits text with another regex
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = steps[0].get("pattern", {}).get("Regex")
        names = {_LLAMA3_REGEX: "llama-bpe", _QWEN2_REGEX: "qwen2"}
        if regex in names:
            return names[regex]
    raise UserError(
        f"tokenizer.json's pre-tokenizer ({' + '.join(map(str, kinds)) or 'none'}) is not one llama.cpp knows by name "
        "(GPT-2, SmolLM, Llama 3 and Qwen 2 are)"
    )


def _sentencepiece_json_vocab(data: dict[str, Any]) -> _Vocab:
    """A SentencePiece-style BPE tokenizer.json (byte fallback, "▁" for spaces). Its merge ranks become the scores:
    llama.cpp merges the pair whose joined piece scores highest, which is the pair BPE merges first."""
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise UserError(
            f"tokenizer.json's model {model.get('type')!r} cannot be written to a GGUF here "
            "(byte-level BPE and SentencePiece BPE can)"
        )
    tokens, added = _by_id(data)
    ids = {t: i for i, t in enumerate(tokens)}
    merges = model.get("merges", [])
    scores = [-float(len(merges))] * len(tokens)  # below every merge: a piece no merge makes is never preferred
    seen = set()
    for rank, merge in enumerate(merges):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        i = ids.get(left + right)
        if i is not None and i not in seen:
            seen.add(i)
            scores[i] = -float(rank)
    unk = model.get("unk_token")
    types = []
    for i, t in enumerate(tokens):
        if i in added:
            types.append(UNKNOWN if t == unk else _added_type(added[i]))
        elif t == unk:
            types.append(UNKNOWN)
        elif model.get("byte_fallback") and len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            types.append(BYTE)
        else:
            types.append(NORMAL if t in model["vocab"] else UNUSED)
    prefix = _adds_space_prefix(data)
    extra = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.add_space_prefix": prefix,
    }
    return _Vocab(tokens, types, scores=scores, extra=extra)


def _adds_space_prefix(data: dict[str, Any]) -> bool:
    for step in _components(data.get("normalizer")) + _components(data.get("pre_tokenizer")):
        if step.get("type") == "Prepend" and step.get("prepend") == "\u2581":
            return True
        if step.get("type") == "Metaspace" and step.get("prepend_scheme", "always") != "never":
            return bool(step.get("add_prefix_space", True))
    return False


def _sentencepiece_model_vocab(checkpoint_dir: Path, data: dict[str, Any] | None) -> _Vocab:
    """tokenizer.model's pieces, scores and types, with the added tokens of tokenizer.json on top."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(checkpoint_dir / "tokenizer.model"))
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        checks = ((sp.is_unknown, UNKNOWN), (sp.is_control, CONTROL), (sp.is_unused, UNUSED), (sp.is_byte, BYTE))
        types.append(next((kind for check, kind in checks if check(i)), NORMAL))
    for token in _added_tokens(checkpoint_dir, data):
        i = int(token["id"])
        while i >= len(tokens):
            tokens.append(f"[PAD{len(tokens)}]")
            scores.append(-1000.0)
            types.append(UNUSED)
        if types[i] not in (UNKNOWN, CONTROL) or i >= sp.get_piece_size():
            tokens[i], scores[i], types[i] = token["content"], -1000.0, _added_type(token)
    prefix = sp.encode("a", out_type=str)[0].startswith("\u2581")
    extra = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.add_space_prefix": prefix,
    }
    return _Vocab(tokens, types, scores=scores, extra=extra)


def _added_tokens(checkpoint_dir: Path, data: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Added tokens with ids: tokenizer.json's, else tokenizer_config.json's `added_tokens_decoder` (as HF reads)."""
    if data is not None:
        return data.get("added_tokens", [])
    path = checkpoint_dir / "tokenizer_config.json"  # valid JSON: our Tokenizer has read it already
    decoder = json.loads(path.read_text(encoding="utf-8")).get("added_tokens_decoder", {}) if path.is_file() else {}
    return [{**entry, "id": int(i)} for i, entry in decoder.items() if str(i).isdigit() and "content" in entry]


def _special_metadata(tokenizer, data: dict[str, Any] | None, tokens: list[str]) -> dict[str, Any]:
    """bos/eos/unk/pad/eot ids, whether BOS/EOS are added, and the chat template, as our Tokenizer reads them."""
    out: dict[str, Any] = {}
    for kind, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id")):
        if getattr(tokenizer, f"{kind}_id") is not None:
            out[f"tokenizer.ggml.{key}"] = int(getattr(tokenizer, f"{kind}_id"))
    unk = (data or {}).get("model", {}).get("unk_token") or _config_token(tokenizer.checkpoint_dir, "unk_token")
    if unk is not None and unk in tokens:
        out["tokenizer.ggml.unknown_token_id"] = tokens.index(unk)
    other_stops = sorted(tokenizer.stop_ids - {tokenizer.eos_id})
    if len(other_stops) == 1:  # Gemma's <end_of_turn>: llama.cpp stops on the end-of-turn token too
        out["tokenizer.ggml.eot_token_id"] = other_stops[0]
    out["tokenizer.ggml.add_bos_token"] = bool(tokenizer.add_bos)
    out["tokenizer.ggml.add_eos_token"] = bool(tokenizer.add_eos)
    if tokenizer.chat_template:
        out["tokenizer.chat_template"] = tokenizer.chat_template
    return out


def _config_token(checkpoint_dir: Path, key: str) -> str | None:
    """A special token's text from tokenizer_config.json (a string, or an AddedToken dict)."""
    path = checkpoint_dir / "tokenizer_config.json"  # valid JSON: our Tokenizer has read it already
    value = json.loads(path.read_text(encoding="utf-8")).get(key) if path.is_file() else None
    return value.get("content") if isinstance(value, dict) else value
