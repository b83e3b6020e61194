"""The pretraining recipes in config_hub/pretrain/ that users start from: each parses with its GPU defaults, and
runs a few steps through the real `litgpt_lite pretrain` command at a tiny size (model, steps, sequence length and
data overridden on the command line, as a user would), on a folder of text files and on token shards."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser

from litgpt_lite.__main__ import main
from litgpt_lite.config import Config
from litgpt_lite.data.shards import write_token_shards
from litgpt_lite.data.text import BUNDLED_CORPUS, BUNDLED_TOKENIZER, TextFiles
from litgpt_lite.train.pretrain import pretrain

HUB = Path(__file__).resolve().parents[2] / "config_hub" / "pretrain"
RECIPES = {"smollm2-135m.yaml": "SmolLM2-135M", "llama-3.2-1b.yaml": "Llama-3.2-1B"}
SHAPE = ("n_layer", "n_embd", "n_head", "head_size", "n_query_groups", "intermediate_size", "padded_vocab_size")
SHAPE += ("vocab_size", "rope_base", "norm_class", "mlp_class", "tie_embeddings")
TINY = {
    "n_layer": 1,
    "n_embd": 32,
    "n_head": 2,
    "head_size": 16,
    "n_query_groups": 1,
    "intermediate_size": 64,
    "vocab_size": 1024,
    "padded_vocab_size": 1024,
    "block_size": 64,
}


def _parse(path: Path) -> dict:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_function_arguments(pretrain, as_positional=True)
    return parser.instantiate(parser.parse_args(["--config", str(path)]))


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_has_the_gpu_defaults_and_the_named_shape(recipe):
    init = _parse(HUB / recipe)
    train, config = init["train"], init["model_config"]
    assert init["precision"] == "bf16-mixed" and train.compile is True
    assert train.max_seq_length == 2048 == config.block_size
    assert train.max_norm == 1.0 and 0 < train.lr_warmup_steps < 2500 and train.min_lr > 0
    assert train.global_batch_size >= 256 and train.global_batch_size % train.micro_batch_size == 0
    assert train.max_tokens >= 20 * 100_000_000  # a run of billions of tokens, ended by tokens, not steps
    train.validate(world_size=1)
    assert isinstance(init["data"], TextFiles)
    named = Config.from_name(RECIPES[recipe])
    for field in SHAPE:
        assert getattr(config, field) == getattr(named, field), field
    assert init["optimizer"]["class_path"] == "torch.optim.AdamW"
    lr = init["optimizer"]["init_args"]["lr"]
    assert 1e-4 <= lr <= 3e-3
    assert train.min_lr < lr


def _tiny_overrides(out_dir: Path) -> list[str]:
    """What a user changes to try a recipe on a CPU: the model's size, the tokenizer, the steps and the precision;
    everything else (schedule shape, eval, logging, resume, optimizer) stays the recipe's."""
    args = [f"--model_config.{k}={v}" for k, v in TINY.items()]
    return [
        *args,
        f"--tokenizer_dir={BUNDLED_TOKENIZER}",
        "--train.max_tokens=null",
        "--train.max_steps=3",
        "--train.global_batch_size=4",
        "--train.micro_batch_size=2",
        "--train.max_seq_length=64",
        "--train.lr_warmup_steps=1",
        "--train.log_interval=1",
        "--train.compile=false",  # compiling on CPU works but takes minutes on a shared 2-core machine
        "--precision=32-true",
        "--eval.interval=2",
        "--eval.max_iters=1",
        "--eval.max_new_tokens=2",
        f"--out_dir={out_dir}",
    ]


def _final_config(out_dir: Path) -> dict:
    return yaml.safe_load((out_dir / "final" / "model_config.yaml").read_text())


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_trains_on_text_files(recipe, tmp_path, capsys):
    texts = tmp_path / "texts"
    shutil.copytree(BUNDLED_CORPUS, texts)
    out = tmp_path / "out"
    data = [f"--data.train_data_path={texts}", f"--data.cache_dir={tmp_path / 'tokens'}"]
    assert main(["pretrain", "--config", str(HUB / recipe), *data, *_tiny_overrides(out)]) == 0
    printed = capsys.readouterr().out
    assert "step 3/3" in printed and "val loss" in printed
    assert (tmp_path / "tokens" / "manifest.json").is_file()  # TextFiles tokenized the folder into shards
    saved = _final_config(out)
    assert saved["n_layer"] == 1 and saved["rope_base"] == Config.from_name(RECIPES[recipe]).rope_base
    hparams = yaml.safe_load((out / "hyperparameters.yaml").read_text())
    assert hparams["train"]["min_lr"] == _parse(HUB / recipe)["train"].min_lr  # the recipe's schedule ran


def test_recipe_trains_on_token_shards(tmp_path, capsys):
    """`--data <dir>` swaps the recipe's TextFiles for a token shard folder, as `prepare_code` writes."""
    rng = random.Random(0)
    docs = [[rng.randrange(1, 1024) for _ in range(400)] for _ in range(8)]
    write_token_shards(docs, tmp_path / "shards", eos_id=0, vocab_size=1024)
    out = tmp_path / "out"
    recipe = HUB / "llama-3.2-1b.yaml"
    assert main(["pretrain", "--config", str(recipe), "--data", str(tmp_path / "shards"), *_tiny_overrides(out)]) == 0
    assert "3,208 tokens" in capsys.readouterr().out  # 8 documents of 400 tokens and their separators
    assert (out / "final" / "lit_model.safetensors").is_file()


def test_recipe_without_data_names_the_folder(tmp_path, capsys, monkeypatch):
    """Run as-is from a folder without data/pretrain: one line saying which folder to fill."""
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "--config", str(HUB / "smollm2-135m.yaml"), *_tiny_overrides(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "data/pretrain does not exist" in err and "\n" not in err
