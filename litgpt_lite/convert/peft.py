"""PEFT (Hugging Face) LoRA/DoRA adapter folders <-> litgpt_lite LoRA output dirs, exact in both directions.

Export: `convert_from_litgpt <lora dir> <out>` writes `adapter_config.json` and `adapter_model.safetensors`, which
`peft.PeftModel.from_pretrained` loads over the base's HF export. Import: `convert_to_litgpt <peft dir> --base
<checkpoint>` writes one of our LoRA output dirs (the layout `finetune_lora` writes), so every command that takes
a LoRA dir takes it.

The two sides split weights differently: our attention `qkv` is one Linear where Llama has q/k/v_proj, and Phi-3's
`qkv_proj`/`gate_up_proj` are one Linear where we have qkv and fc_1/fc_2. Which rows of which module on one side
make up a module on the other comes from the weight map itself: (module, row) index tensors run through the engine
like weights, so every fuse, split and permutation there applies to the adapters too. A LoRA on rows R of a weight
is B[R] A, so a module made of several adapted row blocks gets the blocks' rank spaces side by side (A stacked, B
block-diagonal); its rank grows, and PEFT's rank_pattern/alpha_pattern (ours: a factor folded into B) keep every
block's alpha / r. DoRA's magnitude is one number per output row on both sides, so it moves row by row; rows PEFT
leaves alone inside a fused module of ours get the base row norm, which makes their DoRA scale exactly 1.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn

from litgpt_lite.checkpoint import (
    CONFIG,
    LEGACY_WEIGHTS,
    LORA_WEIGHTS,
    TOKENIZER_FILES,
    WEIGHTS,
    atomic_dir,
    atomic_write_file,
    copy_tokenizer_files,
    iter_checkpoint_tensors,
    load_config,
    read_safetensors,
    save_state_dict,
    validate_checkpoint_dir,
)
from litgpt_lite.convert.engine import convert_tensors
from litgpt_lite.convert.weight_maps import HF_PREFIX_ALIASES
from litgpt_lite.errors import UserError
from litgpt_lite.lora import (
    LORA_YAML,
    PATTERNS,
    LoRAConfig,
    LoRALinear,
    inject_lora,
    load_lora_state,
    lora_modules,
    lora_targets,
    qkv_blocks,
    read_adapter,
)
from litgpt_lite.model import GPT

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
# adapter_config.json settings whose adapters are more than a LoRA on Linear weights of the unchanged base
UNSUPPORTED_PEFT = {
    "modules_to_save": "full trained copies of modules (modules_to_save)",
    "layers_to_transform": "adapters on some layers only (layers_to_transform)",
    "layer_replication": "replicated layers (layer_replication)",
    "target_parameters": "adapters on raw parameters (target_parameters)",
    "trainable_token_indices": "trained token embeddings (trainable_token_indices)",
    "lora_bias": "trained LoRA biases (lora_bias)",
    "fan_in_fan_out": "transposed Conv1D weights (fan_in_fan_out)",
    "use_qalora": "QALoRA (use_qalora)",
    "use_bdlora": "block-diagonal LoRA (use_bdlora)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
}
# initialisations that rewrite the base weights, so the adapter only works on that rewritten base
BASE_CHANGING_INITS = ("pissa", "olora", "loftq", "corda", "lora_ga")


# ---------------------------------------------------------------- row correspondence, from the weight map
def linear_shapes(config) -> dict[str, tuple[int, int]]:
    """{our Linear module name: (out_features, in_features)} of a model built from config."""
    with torch.device("meta"):
        model = GPT(config)
    return {name: (m.out_features, m.in_features) for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def hf_linear_shapes(config) -> dict[str, tuple[int, int]]:
    """{HF Linear module name: (out_features, in_features)}, by running ours through the weight map."""
    ours = linear_shapes(config)
    names = list(ours)
    sources = row_sources(config, {n: shape[0] for n, shape in ours.items()}, to="hf")
    return {h: (len(index), ours[names[int(index[0, 0])]][1]) for h, index in sources.items()}


def row_sources(config, sizes: dict[str, int], to: str) -> dict[str, torch.Tensor]:
    """{module on the `to` side: (rows, 2) tensor of (index into `sizes`, row) each of its output rows comes from}.

    The index tensors stand in for the modules' weights, so the weight map's transforms move them as they move rows.
    """
    names = list(sizes)

    def index_tensors():
        for k, name in enumerate(names):
            rows = torch.arange(sizes[name], dtype=torch.float64)  # exact for any realistic row count
            yield f"{name}.weight", torch.stack((torch.full_like(rows, k), rows), dim=1)

    out = {}
    for name, index in convert_tensors(config.architecture, config, index_tensors(), to=to):
        out[name.removesuffix(".weight")] = index.long()
    return out


def checked_lora_modules(config, cfg: LoRAConfig, state: dict[str, torch.Tensor], source: str):
    """{name: LoRALinear} of a meta model with cfg's adapters, after checking `state` fits them exactly."""
    with torch.device("meta"):
        model = GPT(config)
    inject_lora(model, cfg)
    load_lora_state(model, state, source=source)  # names and shapes; copying into meta tensors stores nothing
    return lora_modules(model)


# ---------------------------------------------------------------- ours -> PEFT
def export_kind(checkpoint_dir: Path, merge: bool | None) -> str:
    """What convert_from_litgpt writes for this dir: "peft" (adapters), "merge" (adapters merged) or "full"."""
    checkpoint_dir = Path(checkpoint_dir)
    adapters = (checkpoint_dir / LORA_WEIGHTS).is_file()
    validate_checkpoint_dir(checkpoint_dir, need_weights=False)
    full = (checkpoint_dir / WEIGHTS).is_file() or (checkpoint_dir / LEGACY_WEIGHTS).is_file()
    if merge is False and not adapters:
        raise UserError(f"{checkpoint_dir} has no {LORA_WEIGHTS}: --merge false exports LoRA adapters in PEFT format")
    if merge is False or (merge is None and adapters and not full):
        return "peft"
    return "merge" if adapters and not full else "full"


def export_peft(checkpoint_dir: Path, output_dir: Path, dtype: torch.dtype | None = None) -> Path:
    """Write a LoRA output dir's adapters as a PEFT adapter folder for the base's Hugging Face export.

    Args:
        checkpoint_dir: the LoRA output dir (lit_model.lora.safetensors and lora.yaml).
        output_dir: the folder to write (adapter_config.json, adapter_model.safetensors, tokenizer files).
        dtype: store the adapters in this dtype; default keeps theirs.
    """
    checkpoint_dir = Path(checkpoint_dir)
    found = read_adapter(checkpoint_dir)
    cfg, base, info, adapters = found.config, found.base_checkpoint_dir, found.info, found.tensors
    if info.get("quantize"):
        print(f"The adapters were trained on a {info['quantize']} base; PEFT applies them to the base it is given.")
    config = load_config(checkpoint_dir if (checkpoint_dir / CONFIG).is_file() else base)
    targets = checked_lora_modules(config, cfg, adapters, source=str(checkpoint_dir / LORA_WEIGHTS))
    experts = next((n for n in targets if ".experts." in n), None)
    if experts is not None:
        raise UserError(f"{experts} is an MoE expert: PEFT has no LoRA module for fused experts; merge instead")
    sizes = {name: shape[0] for name, shape in linear_shapes(config).items()}
    names, sources = list(sizes), row_sources(config, sizes, to="hf")
    tensors, ranks = {}, {}
    for hf_module, index in sources.items():
        pair = peft_pair(index, names, targets, adapters, cfg.r)
        if pair is None:
            continue
        ranks[hf_module] = pair["lora_A.weight"].shape[0]
        for kind, tensor in pair.items():
            if dtype is not None:
                tensor = tensor.to(dtype)
            tensors[f"{PEFT_PREFIX}{hf_module}.{kind}"] = tensor.contiguous()
    adapter_config = peft_config(cfg, ranks, set(sources), config)
    with atomic_dir(Path(output_dir)) as tmp:
        save_state_dict(tensors, tmp / ADAPTER_WEIGHTS)
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(adapter_config, indent=2) + "\n")
        copy_tokenizer_files(checkpoint_dir, tmp)
    print(f"Wrote a PEFT adapter ({len(ranks)} modules) to {output_dir}")
    return Path(output_dir)


def peft_pair(
    index: torch.Tensor, names: list[str], targets: dict[str, LoRALinear], adapters: dict[str, torch.Tensor], r: int
) -> dict[str, torch.Tensor] | None:
    """lora_A / lora_B (and DoRA's lora_magnitude_vector) of one HF module, from the rows of ours it is made of."""
    src, row = index[:, 0], index[:, 1]
    blocks = []  # (HF rows it fills, its B rows, its A): one rank-r pair of ours each
    magnitude, dora = None, False
    for k in src.unique().tolist():
        module = targets.get(names[k])
        if module is None:
            continue
        name, offset = names[k], 0
        for b, (start, end) in enumerate(module.blocks):
            hit = (src == k) & (row >= start) & (row < end)
            if hit.any():
                b_rows = adapters[f"{name}.lora_B"][offset + row[hit] - start]
                blocks.append((hit, b_rows, adapters[f"{name}.lora_A"][b * r : (b + 1) * r]))
            offset += end - start
        if module.lora_magnitude is not None:
            dora = True
            magnitude = magnitude if magnitude is not None else torch.full((len(index),), math.nan)
            magnitude = magnitude.to(adapters[f"{name}.lora_magnitude"].dtype)
            magnitude[src == k] = adapters[f"{name}.lora_magnitude"][row[src == k]]
    if not blocks and not dora:
        return None
    if dora and magnitude.isnan().any():  # our flags adapt all of a fused module or none of it: cannot happen
        raise UserError("A DoRA module of PEFT would mix adapted and unadapted rows of ours")
    template = adapters[next(n for n in adapters if n.endswith(".lora_A"))]
    A = torch.cat([a for _, _, a in blocks]) if blocks else template.new_zeros(r, template.shape[1])
    B = A.new_zeros(len(index), A.shape[0])  # DoRA on rows no block of ours adapts: a zero pair, scale m / ||W||
    for i, (hit, b_rows, _) in enumerate(blocks):
        B[hit, i * r : (i + 1) * r] = b_rows
    out = {"lora_A.weight": A, "lora_B.weight": B}
    if dora:
        out["lora_magnitude_vector"] = magnitude
    return out


def peft_config(cfg: LoRAConfig, ranks: dict[str, int], hf_modules: set[str], config) -> dict:
    """adapter_config.json: rank and alpha per module such that each one's alpha / r is ours."""
    groups: dict[str, list[str]] = {}
    for module in ranks:
        groups.setdefault(module.rsplit(".", 1)[-1], []).append(module)
    targets, rank_pattern, alpha_pattern = [], {}, {}
    for suffix, modules in groups.items():
        others = [m for m in hf_modules if m.rsplit(".", 1)[-1] == suffix and m not in ranks]
        uniform = len({ranks[m] for m in modules}) == 1 and not others
        keys = [suffix] if uniform else modules  # a suffix names them all unless it also names modules without one
        targets += keys
        for key in keys:
            rank = ranks[modules[0] if uniform else key]
            if rank != cfg.r:
                rank_pattern[key] = rank
                alpha_pattern[key] = cfg.alpha * rank / cfg.r
    hub = config.hf_config
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": f"{hub['org']}/{hub['name']}" if hub.get("org") and hub.get("name") else None,
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": sorted(targets),
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "use_dora": cfg.dora,
        "use_rslora": False,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
    }


# ---------------------------------------------------------------- PEFT -> ours
def convert_peft_adapter(
    peft_dir: Path,
    base: Path | None,
    dtype: torch.dtype | None = None,
    out_dir: Path | None = None,
) -> Path:
    """Turn a PEFT LoRA/DoRA adapter folder into one of our LoRA output dirs over the base checkpoint `base`."""
    peft_dir = Path(peft_dir)
    if not (peft_dir / ADAPTER_CONFIG).is_file():
        raise UserError(f"--base is for a PEFT adapter folder, and {peft_dir} has no {ADAPTER_CONFIG}")
    if base is None:
        raise UserError(f"{peft_dir} is a PEFT adapter: pass --base with the litgpt_lite checkpoint it was trained on")
    base = validate_checkpoint_dir(base)
    config = load_config(base)
    settings = read_peft_config(peft_dir)
    modules = read_peft_weights(peft_dir, config.architecture)
    hf_shapes = hf_linear_shapes(config)
    check_peft_modules(peft_dir, modules, hf_shapes, config)
    check_base_copies(peft_dir, modules, config, base)
    hf_names = list(hf_shapes)
    sources = row_sources(config, {h: shape[0] for h, shape in hf_shapes.items()}, to="lit")
    cfg = lora_config_for(config, sources, hf_names, modules, settings)
    state = our_adapters(config, cfg, sources, hf_names, modules, settings, base)
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    checked_lora_modules(config, cfg, state, source=f"the adapters converted from {peft_dir}")
    out_dir = Path(out_dir) if out_dir is not None else peft_dir
    write_lora_dir(out_dir, cfg, state, base, peft_dir)
    print(f"Wrote a litgpt_lite LoRA dir ({len(modules)} PEFT modules, r={cfg.r}) over {base} to {out_dir}")
    return out_dir


def read_peft_config(peft_dir: Path) -> dict:
    """adapter_config.json, or one line on why its adapter is not one we can run."""
    path = peft_dir / ADAPTER_CONFIG
    try:
        settings = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    if settings.get("peft_type") != "LORA":
        raise UserError(f"{path} holds a {settings.get('peft_type')} adapter: only LoRA/DoRA (peft_type LORA) converts")
    if settings.get("bias", "none") != "none":
        raise UserError(f"{path} trains biases (bias={settings['bias']!r}): only bias 'none' converts")
    for key, what in UNSUPPORTED_PEFT.items():
        if settings.get(key):
            raise UserError(f"{path} uses {what}, which litgpt_lite LoRA cannot represent")
    init = settings.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(BASE_CHANGING_INITS):
        raise UserError(
            f"{path}: init_lora_weights={init!r} rewrites the base weights; convert the adapter to plain "
            "LoRA with PEFT first (path_initial_model_for_weight_conversion)"
        )
    return settings


def read_peft_weights(peft_dir: Path, architecture: str) -> dict[str, dict[str, torch.Tensor]]:
    """{HF module name: {"lora_A.weight", "lora_B.weight"[, "lora_magnitude_vector"]}} of adapter_model.*."""
    path = peft_dir / ADAPTER_WEIGHTS
    if path.is_file():
        state = read_safetensors(path)
    elif (peft_dir / "adapter_model.bin").is_file():
        path = peft_dir / "adapter_model.bin"
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a corrupt or unsafe pickle
            raise UserError(f"Cannot read {path}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    else:
        raise UserError(f"{peft_dir} has no {ADAPTER_WEIGHTS} (or adapter_model.bin)")
    modules: dict[str, dict[str, torch.Tensor]] = {}
    # PEFT saves the frozen weight of a targeted lm_head beside its adapter: base_layer.weight
    part = re.compile(r"^(.+)\.(lora_A\.weight|lora_B\.weight|lora_magnitude_vector|base_layer\.weight)(?:\.weight)?$")
    other = re.compile(r"^(.+?)\.(lora_\w+|base_layer)")  # an embedding's lora_embedding_A, a saved base copy
    for key in sorted(state, key=lambda k: ".lora_" not in k):  # name an adapter before a saved base weight
        name = key.removeprefix(PEFT_PREFIX)
        for old, new in HF_PREFIX_ALIASES.get(architecture, ()):
            name = new + name[len(old) :] if name.startswith(old) else name
        match = part.match(name)
        if match is None:
            found = other.match(name)
            what = f"{found[1]} ({found[2]})" if found else name
            raise UserError(
                f"{path} adapts {what}, which litgpt_lite LoRA cannot take: it converts LoRA/DoRA on the attention "
                "and MLP Linear layers and lm_head"
            )
        modules.setdefault(match[1], {})[match[2]] = state[key]
    for module, parts in modules.items():
        if set(parts) == {"base_layer.weight"}:
            raise UserError(f"{path} saves a full copy of {module} (a resized vocabulary?), which LoRA cannot take")
        if "lora_A.weight" not in parts or "lora_B.weight" not in parts:
            raise UserError(f"{path} has {module}'s {sorted(parts)[0]} without its lora_A/lora_B partner")
    return modules


def check_base_copies(peft_dir: Path, modules: dict, config, base: Path) -> None:
    """PEFT's saved copies of frozen weights (base_layer.weight) must be the base's own; then they are dropped."""
    copies = {h: parts.pop("base_layer.weight") for h, parts in modules.items() if "base_layer.weight" in parts}
    if not copies:
        return
    ours = linear_shapes(config)
    names = list(ours)
    sources = row_sources(config, {n: shape[0] for n, shape in ours.items()}, to="hf")
    weights = base_weights(base, {names[k] for h in copies for k in sources[h][:, 0].unique().tolist()}, config)
    for h, copy in copies.items():
        index = sources[h]
        weight = torch.stack([weights[names[k]][row] for k, row in index.tolist()])
        if weight.shape != copy.shape or not torch.equal(weight.to(copy.dtype), copy):
            raise UserError(
                f"{peft_dir} carries changed weights for {h} (base_layer.weight), not the base's: "
                "was it trained on another base, or with a resized vocabulary?"
            )


def base_weights(base: Path, names: set[str], config) -> dict[str, torch.Tensor]:
    """{module: weight} of some Linear modules of the base checkpoint (a tied lm_head reads the embedding)."""
    wanted = {f"{n}.weight": n for n in names}
    if "lm_head" in names and config.tie_embeddings:
        wanted["transformer.wte.weight"] = "lm_head"
    return {wanted[name]: load() for name, load in iter_checkpoint_tensors(base) if name in wanted}


def check_peft_modules(peft_dir: Path, modules: dict, hf_shapes: dict[str, tuple[int, int]], config) -> None:
    """A clear line for a module we have no Linear for, or an adapter whose shape does not fit the base."""
    for module, parts in modules.items():
        if module not in hf_shapes:
            raise UserError(
                f"{peft_dir} adapts {module}, which litgpt_lite LoRA cannot take: it adapts the attention and MLP "
                f"Linear layers and lm_head of {config.architecture}"
            )
        A, B = parts["lora_A.weight"], parts["lora_B.weight"]
        out_features, in_features = hf_shapes[module]
        if A.ndim != 2 or A.shape[1] != in_features or B.shape != (out_features, A.shape[0]):
            raise UserError(
                f"{peft_dir}: {module} has lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)}, the base "
                f"{config.name} needs ({A.shape[0]}, {in_features}) and ({out_features}, {A.shape[0]})"
            )
        magnitude = parts.get("lora_magnitude_vector")
        if magnitude is not None and magnitude.shape != (out_features,):
            raise UserError(f"{peft_dir}: {module}'s lora_magnitude_vector {tuple(magnitude.shape)} does not fit")


def peft_scaling(settings: dict, module: str, rank: int) -> float:
    """PEFT's scaling of one module: alpha / r, or alpha / sqrt(r) for rsLoRA, with alpha_pattern applied."""
    alpha = settings.get("lora_alpha", 8)
    for key, value in (settings.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):  # PEFT's own pattern rule
            alpha = value
            break
    return alpha / math.sqrt(rank) if settings.get("use_rslora") else alpha / rank


def lora_config_for(config, sources: dict, hf_names: list[str], modules: dict, settings: dict) -> LoRAConfig:
    """Our flags from the rows PEFT adapts: a flag is on where any layer has an adapted row under it."""
    adapted = torch.tensor([h in modules for h in hf_names])
    flags = dict.fromkeys(("query", "key", "value", "projection", "mlp", "head"), False)
    for name, index in sources.items():
        hit = adapted[index[:, 0]]
        if not hit.any():
            continue
        kind = next((k for k, pattern in PATTERNS.items() if pattern.fullmatch(name)), None)
        if kind is None or ".experts." in name:
            source = hf_names[int(index[hit.nonzero()[0, 0], 0])]
            raise UserError(f"The adapter on {source} lands on {name}, which litgpt_lite LoRA cannot adapt")
        if kind == "qkv":
            for flag in ("query", "key", "value"):
                ((start, end),) = qkv_blocks(config, flag == "query", flag == "key", flag == "value")
                flags[flag] |= bool(hit[start:end].any())
        else:
            flags[kind] = True
    if settings.get("use_dora") and any("lora_magnitude_vector" not in parts for parts in modules.values()):
        raise UserError("adapter_config.json sets use_dora, but the weights lack a lora_magnitude_vector")
    dropout = float(settings.get("lora_dropout") or 0.0)
    return LoRAConfig(r=1, alpha=1.0, dropout=dropout, dora=bool(settings.get("use_dora")), **flags)


def our_adapters(config, cfg: LoRAConfig, sources, hf_names, modules, settings, base: Path) -> dict[str, torch.Tensor]:
    """Our lora_A / lora_B (/ lora_magnitude) tensors; sets cfg.r (the widest block's rank) and cfg.alpha.

    Each adapted row block of ours takes the rank spaces of the PEFT modules its rows come from side by side; narrower
    blocks are padded with zero rank, and each module's scaling over ours is folded into its B rows.
    """
    with torch.device("meta"):
        meta = GPT(config)
    targets = lora_targets(meta, cfg)
    ranks = {h: parts["lora_A.weight"].shape[0] for h, parts in modules.items()}
    feeds = {}  # (module, block) -> [(PEFT module, mask of the block's rows it fills)]
    for name, rows in targets.items():
        for b, (start, end) in enumerate(rows):
            src = sources[name][start:end, 0]
            feeds[(name, b)] = [(hf_names[k], src == k) for k in src.unique().tolist() if hf_names[k] in modules]
    cfg.r = max([1] + [sum(ranks[h] for h, _ in feed) for feed in feeds.values()])
    scalings = {h: peft_scaling(settings, h, rank) for h, rank in ranks.items()}
    alpha = settings.get("lora_alpha", 8)
    # any alpha is exact once the factors are folded in; PEFT's own one makes every factor 1 in the common case
    cfg.alpha = alpha if all(s == alpha / cfg.r for s in scalings.values()) else max(scalings.values()) * cfg.r
    factors = {h: s / (cfg.alpha / cfg.r) for h, s in scalings.items()}
    dtype = next(iter(modules.values()))["lora_A.weight"].dtype
    state: dict[str, torch.Tensor] = {}
    for name, rows in targets.items():
        pairs = []
        for b, (start, end) in enumerate(rows):
            index = sources[name][start:end]
            pairs.append(block_pair(index, feeds[(name, b)], modules, factors, cfg.r, meta.get_submodule(name), dtype))
        state[f"{name}.lora_A"] = torch.cat([A for A, _ in pairs])
        state[f"{name}.lora_B"] = torch.cat([B for _, B in pairs])
    if cfg.dora:
        state.update(magnitudes(config, targets, sources, hf_names, modules, base, dtype))
    return state


def block_pair(index, feed, modules, factors, r: int, module: nn.Module, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(A (r, in), B (rows, r)) of one row block of ours: its PEFT modules' ranks side by side, zero-padded to r."""
    A = torch.zeros(r, module.in_features, dtype=dtype)
    B = torch.zeros(len(index), r, dtype=dtype)
    col = 0
    for h, hit in feed:
        A_h, B_h = modules[h]["lora_A.weight"], modules[h]["lora_B.weight"]
        rank = A_h.shape[0]
        A[col : col + rank] = A_h
        rows = B_h[index[hit, 1]]
        B[hit, col : col + rank] = (rows if factors[h] == 1.0 else rows * factors[h]).to(dtype)
        col += rank
    return A, B


def magnitudes(config, targets, sources, hf_names, modules, base: Path, dtype) -> dict[str, torch.Tensor]:
    """DoRA magnitudes of ours, row by row from PEFT's; rows PEFT does not adapt get the base row norm (scale 1)."""
    out, need_base = {}, set()
    for name in targets:
        index = sources[name]
        magnitude = torch.full((len(index),), math.nan, dtype=dtype)
        for k in index[:, 0].unique().tolist():
            if hf_names[k] in modules:
                hit = index[:, 0] == k
                magnitude[hit] = modules[hf_names[k]]["lora_magnitude_vector"][index[hit, 1]].to(dtype)
        if magnitude.isnan().any():
            need_base.add(name)
        out[f"{name}.lora_magnitude"] = magnitude
    for name, weight in base_weights(base, need_base, config).items() if need_base else ():
        magnitude = out[f"{name}.lora_magnitude"]
        norm = weight.float().norm(dim=1).to(dtype)  # as LoRALinear computes it at injection
        magnitude[magnitude.isnan()] = norm[magnitude.isnan()]
    return out


def write_lora_dir(out_dir: Path, cfg: LoRAConfig, state: dict[str, torch.Tensor], base: Path, peft_dir: Path) -> None:
    """The files finetune_lora's LoRA output has (save_lora's layout), each written atomically."""
    import yaml

    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in state.items()}
    atomic_write_file(out_dir / LORA_WEIGHTS, lambda tmp: save_state_dict(state, tmp))
    info = {**asdict(cfg), "quantize": None, "base_checkpoint_dir": str(Path(base).resolve())}
    info["peft_adapter"] = str(Path(peft_dir).resolve())
    atomic_write_file(out_dir / LORA_YAML, lambda tmp: tmp.write_text(yaml.safe_dump(info, sort_keys=False)))
    # the tokenizer files the adapter folder brought along (a chat template it was trained with), else the base's
    for name in TOKENIZER_FILES:
        source = peft_dir / name if (peft_dir / name).is_file() else base / name
        if source.is_file() and source.resolve() != (out_dir / name).resolve():
            shutil.copy2(source, out_dir / name)
    for name in (CONFIG, "prompt_style.yaml"):  # the adapters belong to the base's architecture
        if (base / name).is_file():
            shutil.copy2(base / name, out_dir / name)
