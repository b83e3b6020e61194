"""LoRA and DoRA adapters, injected by module-name pattern, and their exact merge into the base weights.

A `LoRALinear` wraps a base Linear (a plain nn.Linear, or a bitsandbytes Linear4bit/Linear8bitLt for QLoRA):

    y = base(x) + scaling * B(A(dropout(x)))                       LoRA, scaling = alpha / r
    y = m / ||W + scaling * B A||_row * (W x + scaling * B A x) + b    DoRA (weight-decomposed, arXiv:2402.09353)

The fused attention projection `attn.qkv` holds [Q; K; V] row blocks; the query/key/value flags pick the blocks that
get an adapter. Each enabled block has its own rank-r pair: `lora_A` stacks the blocks' A (n_blocks * r, in) and
`lora_B` stacks their B rows (rows of the enabled blocks, r), so a disabled block's weights never change.

`LoRARecipe` plugs into the training loop (prepare / trainable_state / load_trainable_state / export);
`read_adapter` / `apply_adapter` put a saved adapter dir on a loaded model (the loader's `adapter=`), and
`merge_lora.merge_lora_cli` (`litgpt_lite merge_lora`) writes the merged full checkpoint.
"""

from __future__ import annotations

import math
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from litgpt_lite.checkpoint import (
    CONFIG,
    LEGACY_WEIGHTS,
    LORA_WEIGHTS,
    QUANTIZED_WEIGHTS,
    WEIGHTS,
    atomic_write_file,
    copy_tokenizer_files,
    read_safetensors,
    save_state_dict,
)
from litgpt_lite.errors import UserError
from litgpt_lite.kernels import is_plain_linear
from litgpt_lite.modules import set_submodule, unwrap_model
from litgpt_lite.quantize import check_mode, dense_weight, import_bitsandbytes, quantize_model, store_frozen_base

LORA_YAML = "lora.yaml"

# which modules each flag adapts, by full module name
PATTERNS = {
    "qkv": re.compile(r"transformer\.h\.\d+\.attn\.qkv"),
    "projection": re.compile(r"transformer\.h\.\d+\.attn\.proj"),
    "mlp": re.compile(r"transformer\.h\.\d+\.mlp\.(experts\.\d+\.)?(fc_1|fc_2|fc|proj)"),
    "head": re.compile(r"lm_head"),
}


@dataclass
class LoRAConfig:
    """The adapter hyperparameters (saved as lora.yaml beside the adapter weights)."""

    r: int = 8
    alpha: float = 16
    dropout: float = 0.05
    query: bool = True
    key: bool = False
    value: bool = True
    projection: bool = False
    mlp: bool = False
    head: bool = False
    dora: bool = False

    def validate(self) -> None:
        if self.r < 1:
            raise UserError(f"--lora_r must be at least 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"--lora_dropout must be in [0, 1), got {self.dropout}")
        if not any((self.query, self.key, self.value, self.projection, self.mlp, self.head)):
            raise UserError("LoRA adapts no layer: enable one of --lora_query/key/value/projection/mlp/head")


class LoRALinear(nn.Module):
    """A frozen base Linear plus a trainable low-rank update on some of its output row blocks."""

    def __init__(
        self, base: nn.Module, blocks: list[tuple[int, int]], r: int, alpha: float, dropout: float, dora: bool
    ) -> None:
        super().__init__()
        self.base = base
        self.blocks = blocks  # (start, end) output rows with an adapter, in row order
        self.r, self.scaling = r, alpha / r
        self.in_features, self.out_features = base.in_features, base.out_features
        weight = base.weight
        # quantized (or QLoRA's 16-bit-stored) frozen bases train float32 adapters, cast by the run's precision
        dtype = weight.dtype if is_plain_linear(base) else torch.float32
        rows = sum(end - start for start, end in blocks)
        self.lora_A = nn.Parameter(torch.empty(len(blocks) * r, self.in_features, device=weight.device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(rows, r, device=weight.device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear; B = 0 keeps the start exact
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_magnitude: nn.Parameter | None = None
        if dora:
            with torch.no_grad():
                norm = self.base_weight().float().norm(dim=1)
            self.lora_magnitude = nn.Parameter(norm.to(dtype))

    # GPT reads lm_head.weight (KV-cache dtype, tying); the wrapper answers for its base
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def base_weight(self) -> torch.Tensor:
        return dense_weight(self.base)

    def delta_weight(self) -> torch.Tensor:
        """scaling * B A as a dense (out, in) matrix, zero in the rows without an adapter."""
        return lora_delta(self.lora_A, self.lora_B, self.blocks, self.r, self.out_features) * self.scaling

    def lora_output(self, x: torch.Tensor) -> torch.Tensor:
        """scaling * B A x over the full output width (zeros in rows without an adapter)."""
        h = self.lora_dropout(x).to(self.lora_A.dtype) @ self.lora_A.T  # (..., n_blocks * r)
        pieces, row, offset = [], 0, 0
        for i, (start, end) in enumerate(self.blocks):
            if start > row:
                pieces.append(h.new_zeros(*h.shape[:-1], start - row))
            pieces.append(h[..., i * self.r : (i + 1) * self.r] @ self.lora_B[offset : offset + end - start].T)
            offset += end - start
            row = end
        if row < self.out_features:
            pieces.append(h.new_zeros(*h.shape[:-1], self.out_features - row))
        out = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)
        return out * self.scaling

    def dora_scale(self) -> torch.Tensor:
        """m / ||W + scaling * B A|| per output row."""
        merged = self.base_weight().to(self.lora_A.dtype) + self.delta_weight()
        # the DoRA paper (sec. 4.3) treats the norm as a constant in the backward pass: same values, far less memory
        norm = merged.norm(dim=1).detach()
        return self.lora_magnitude / norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base_out = self.base(x)
        lora_out = self.lora_output(x)
        if self.lora_magnitude is None:
            return base_out + lora_out.to(base_out.dtype)
        bias = self.base.bias
        wx = base_out - bias if bias is not None else base_out
        out = self.dora_scale() * (wx.to(lora_out.dtype) + lora_out)
        return (out + bias if bias is not None else out).to(base_out.dtype)

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """The weight of one plain Linear computing exactly what this module computes (in eval mode), folded in
        float32 whatever the weights' dtype (the caller casts it back)."""
        A, B = self.lora_A.float(), self.lora_B.float()
        return fold_lora(self.base_weight(), A, B, self.lora_magnitude, self.blocks, self.scaling)


def lora_delta(A: torch.Tensor, B: torch.Tensor, blocks: list[tuple[int, int]], r: int, out_features: int):
    """B A (out, in) with each block's rank-r pair placed in its rows, zeros elsewhere."""
    delta = A.new_zeros(out_features, A.shape[1])
    offset = 0
    for i, (start, end) in enumerate(blocks):
        delta[start:end] = B[offset : offset + end - start] @ A[i * r : (i + 1) * r]
        offset += end - start
    return delta


def fold_lora(
    weight: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    magnitude: torch.Tensor | None,
    blocks: list[tuple[int, int]],
    scaling: float,
) -> torch.Tensor:
    """W + scaling * B A (LoRA), or m * V / ||V||_row with V = W + scaling * B A (DoRA), in A's dtype."""
    r = A.shape[0] // len(blocks)
    merged = weight.to(A.dtype) + lora_delta(A, B, blocks, r, weight.shape[0]) * scaling
    if magnitude is not None:
        merged = merged * (magnitude.to(A.dtype) / merged.norm(dim=1)).unsqueeze(1)
    return merged


# ---------------------------------------------------------------- injection
def qkv_blocks(config, query: bool, key: bool, value: bool) -> list[tuple[int, int]]:
    """Output row ranges of the enabled parts of the fused [Q; K; V] projection."""
    q = config.n_head * config.head_size
    kv = config.n_query_groups * config.head_size
    parts = ((query, (0, q)), (key, (q, q + kv)), (value, (q + kv, q + 2 * kv)))
    return [rows for enabled, rows in parts if enabled]


def lora_targets(model: nn.Module, cfg: LoRAConfig) -> dict[str, list[tuple[int, int]]]:
    """{module name: adapted output row blocks} for every Linear the flags select."""
    enabled = {"qkv": cfg.query or cfg.key or cfg.value, "projection": cfg.projection, "mlp": cfg.mlp, "head": cfg.head}
    targets = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):  # bitsandbytes Linears subclass it
            continue
        kind = next((k for k, pattern in PATTERNS.items() if enabled[k] and pattern.fullmatch(name)), None)
        if kind == "qkv":
            targets[name] = qkv_blocks(model.config, cfg.query, cfg.key, cfg.value)
        elif kind is not None:
            targets[name] = [(0, module.out_features)]
    return targets


def inject_lora(model: nn.Module, cfg: LoRAConfig) -> nn.Module:
    """Wrap every selected Linear in a LoRALinear, in place."""
    targets = lora_targets(model, cfg)
    if not targets:
        raise UserError("No layer of this model matches the LoRA flags")
    for name, blocks in targets.items():
        base = model.get_submodule(name)
        set_submodule(model, name, LoRALinear(base, blocks, cfg.r, cfg.alpha, cfg.dropout, cfg.dora))
    return model


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in unwrap_model(model).named_modules() if isinstance(m, LoRALinear)}


def is_lora_parameter(name: str) -> bool:
    return name.rsplit(".", 1)[-1].startswith("lora_")


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in unwrap_model(model).named_parameters() if is_lora_parameter(n)}


@torch.no_grad()
def merge_lora_modules(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by a plain Linear holding its merged weight (needs full-precision bases)."""
    model = unwrap_model(model)
    for name, module in lora_modules(model).items():
        if not is_plain_linear(module.base):
            raise UserError(f"{name} wraps a quantized Linear: merge into the full-precision base with merge_lora")
        base = module.base
        merged = nn.Linear(module.in_features, module.out_features, bias=base.bias is not None, device="meta")
        merged.weight = nn.Parameter(module.merged_weight().to(base.weight.dtype), requires_grad=False)
        if base.bias is not None:
            merged.bias = base.bias
        set_submodule(model, name, merged)
    if model.config.tie_embeddings and model.lm_head.weight is not model.transformer.wte.weight:
        model.config.tie_embeddings = False  # a merged head adapter unties lm_head from the embedding
    return model


# ---------------------------------------------------------------- the training recipe
class LoRARecipe:
    """LoRA / DoRA / QLoRA for the training loop: freeze the base, (quantize it,) inject adapters, save adapters.

    Args:
        r: adapter rank.
        alpha: scaling numerator (the update is scaled by alpha / r).
        dropout: dropout on the adapter input.
        query, key, value: adapt these row blocks of the fused attention projection.
        projection: adapt the attention output projection.
        mlp: adapt the MLP (every expert's, in MoE models).
        head: adapt the lm_head.
        dora: weight-decomposed LoRA (DoRA): a trainable magnitude per output row.
        quantize: QLoRA: quantize the frozen base Linear layers (bnb.nf4, bnb.nf4-dq, bnb.fp4, bnb.fp4-dq, bnb.int8).
    """

    name = "lora"

    def __init__(
        self,
        r: int = 8,
        alpha: float = 16,
        dropout: float = 0.05,
        query: bool = True,
        key: bool = False,
        value: bool = True,
        projection: bool = False,
        mlp: bool = False,
        head: bool = False,
        dora: bool = False,
        quantize: str | None = None,
    ) -> None:
        self.config = LoRAConfig(r, alpha, dropout, query, key, value, projection, mlp, head, dora)
        self.config.validate()
        if quantize is not None:
            check_mode(quantize)
            import_bitsandbytes()
        self.quantize = quantize
        self.name = "qlora" if quantize else ("dora" if dora else "lora")

    def prepare(self, model: nn.Module) -> nn.Module:
        """Freeze every weight, quantize the base Linear layers and store the rest in 16 bits (QLoRA), then add
        trainable adapters."""
        for p in model.parameters():
            p.requires_grad_(False)
        if self.quantize is not None:
            quantize_model(model, self.quantize)  # the Linears the loader already quantized are left as they are
            store_frozen_base(model)
        inject_lora(model, self.config)
        return model

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return lora_state(model)

    def load_trainable_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        load_lora_state(model, state, source="the training state")

    def export(self, model: nn.Module, out_dir: Path, base_checkpoint_dir: Path | None) -> None:
        """Write lit_model.lora.safetensors, lora.yaml and the base's config/tokenizer files into out_dir."""
        save_lora(model, self.config, out_dir, base_checkpoint_dir, self.quantize)


def load_lora_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy adapter tensors into the model's adapters; a UserError for a missing, unknown or misshapen one."""
    params = dict(unwrap_model(model).named_parameters())
    expected = {n for n in params if is_lora_parameter(n)}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        first = f"lacks {missing[0]}" if missing else f"has {unexpected[0]}, which this model has no adapter for"
        raise UserError(f"{source} {first}: were the adapters trained with the same LoRA flags and model?")
    with torch.no_grad():
        for name, tensor in state.items():
            if params[name].shape != tensor.shape:
                raise UserError(
                    f"{source}: {name} has shape {tuple(tensor.shape)}, the model needs {params[name].shape}"
                )
            params[name].copy_(tensor)


def save_lora(
    model: nn.Module, cfg: LoRAConfig, out_dir: Path, base_checkpoint_dir: Path | None, quantize: str | None = None
) -> None:
    """The adapter weights and lora.yaml, each written atomically, plus the base's config and tokenizer files."""
    import yaml

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in lora_state(model).items()}
    atomic_write_file(out_dir / LORA_WEIGHTS, lambda tmp: save_state_dict(state, tmp))
    info: dict[str, Any] = asdict(cfg)
    info["quantize"] = quantize
    info["base_checkpoint_dir"] = str(Path(base_checkpoint_dir).resolve()) if base_checkpoint_dir else None
    atomic_write_file(out_dir / LORA_YAML, lambda tmp: tmp.write_text(yaml.safe_dump(info, sort_keys=False)))
    if base_checkpoint_dir is not None:
        base = Path(base_checkpoint_dir)
        copy_tokenizer_files(base, out_dir)
        for name in (CONFIG, "prompt_style.yaml"):  # the adapters belong to the base's architecture
            if (base / name).is_file():
                shutil.copy2(base / name, out_dir / name)
    if not (out_dir / CONFIG).is_file():
        unwrap_model(model).config.save(out_dir / CONFIG)


# ---------------------------------------------------------------- reading an adapter dir
@dataclass
class Adapter:
    """What an adapter dir holds: its settings, the base it was trained on, and its tensors."""

    config: LoRAConfig
    base_checkpoint_dir: Path
    tensors: dict[str, torch.Tensor]
    source: str  # the weights file, for error messages
    info: dict[str, Any]  # lora.yaml as written (e.g. the QLoRA mode the adapters were trained with)


def is_lora_dir(checkpoint_dir: str | Path) -> bool:
    """A finetune_lora output dir: adapters, but no full weights of its own."""
    path = Path(checkpoint_dir)
    has_full = (path / WEIGHTS).is_file() or (path / LEGACY_WEIGHTS).is_file()
    return (path / LORA_WEIGHTS).is_file() and not has_full


def read_adapter(
    adapter_dir: str | Path, base_checkpoint_dir: str | Path | None = None, device: str | torch.device = "cpu"
) -> Adapter:
    """The one reader of an adapter dir (finetune_lora's output), with a clear error for each gap.

    Args:
        adapter_dir: the dir with lit_model.lora.safetensors and lora.yaml.
        base_checkpoint_dir: the model the adapters belong to (default: the one lora.yaml names).
        device: where the adapter tensors go.
    """
    import yaml

    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise UserError(f"{adapter_dir} is not a directory: pass a LoRA fine-tuning output dir")
    if not (adapter_dir / LORA_WEIGHTS).is_file():
        raise UserError(f"{adapter_dir} has no {LORA_WEIGHTS}: pass the output dir of finetune_lora")
    if not (adapter_dir / LORA_YAML).is_file():
        raise UserError(f"{adapter_dir} has no {LORA_YAML}: it holds the adapter settings finetune_lora wrote")
    info = yaml.safe_load((adapter_dir / LORA_YAML).read_text()) or {}
    known = {f for f in LoRAConfig.__dataclass_fields__}
    cfg = LoRAConfig(**{k: v for k, v in info.items() if k in known})
    base = base_checkpoint_dir or info.get("base_checkpoint_dir")
    if base is None:
        raise UserError(f"{adapter_dir / LORA_YAML} names no base checkpoint: pass --base_checkpoint_dir")
    base = Path(base)
    if not any((base / name).is_file() for name in (WEIGHTS, LEGACY_WEIGHTS, QUANTIZED_WEIGHTS)):
        raise UserError(
            f"The base checkpoint {base} of {adapter_dir} is missing or has no weights: "
            "pass --base_checkpoint_dir with the model the adapters were trained on"
        )
    tensors = read_safetensors(adapter_dir / LORA_WEIGHTS, device)
    return Adapter(cfg, base, tensors, str(adapter_dir / LORA_WEIGHTS), info)


def apply_adapter(model: nn.Module, adapter: Adapter) -> nn.Module:
    """Inject the adapter's layers into a loaded model (no dropout) and load its tensors; merged into plain Linears
    where every adapted base is full precision, kept beside quantized bases otherwise."""
    inject_lora(model, LoRAConfig(**{**asdict(adapter.config), "dropout": 0.0}))
    load_lora_state(model, adapter.tensors, source=adapter.source)
    if all(is_plain_linear(m.base) for m in lora_modules(model).values()):
        merge_lora_modules(model)
    return model.eval()


__all__ = [
    "LORA_WEIGHTS",
    "LoRAConfig",
    "LoRALinear",
    "LoRARecipe",
    "apply_adapter",
    "inject_lora",
    "read_adapter",
    "merge_lora_modules",
]
