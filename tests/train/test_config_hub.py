"""Every config_hub YAML parses against its entrypoint and builds valid arguments (no training)."""

from __future__ import annotations

from pathlib import Path

import pytest
from jsonargparse import ActionConfigFile, ArgumentParser

from litgpt_lite.data.base import DataModule
from litgpt_lite.train.args import EvalArgs, TrainArgs
from litgpt_lite.train.dpo import finetune_dpo
from litgpt_lite.train.finetune import finetune_full, finetune_lora
from litgpt_lite.train.optim import check_init_args, resolve_optimizer_class, split_spec
from litgpt_lite.train.pretrain import pretrain

HUB = Path(__file__).resolve().parents[2] / "config_hub"
YAMLS = sorted(HUB.rglob("*.yaml"))
MODELS = [
    "SmolLM2-135M",
    "SmolLM2-1.7B",
    "Llama-3.2-1B",
    "Llama-3.1-8B",
    "Qwen2.5-0.5B",
    "Qwen2.5-7B",
    "Phi-3-mini",
    "Gemma-2-2b",
    "Mistral-7B",
]


def _entrypoint(path: Path):
    if path.parent.name == "pretrain":
        return pretrain
    if path.stem == "dpo":
        return finetune_dpo
    return finetune_full if path.stem == "full" else finetune_lora


def test_every_model_has_full_lora_and_qlora():
    for model in MODELS:
        for method in ("full", "lora", "qlora"):
            assert (HUB / "finetune" / model / f"{method}.yaml").is_file(), (model, method)
    assert (HUB / "pretrain" / "debug.yaml").is_file()


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(HUB)))
def test_yaml_builds_its_arguments(path):
    func = _entrypoint(path)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_function_arguments(func, as_positional=True)
    init = parser.instantiate_classes(parser.parse_args(["--config", str(path)]))
    train, evals = init["train"], init["eval"]
    assert isinstance(train, TrainArgs) and isinstance(evals, EvalArgs)
    world = 2 if init.get("strategy") == "fsdp" else 1
    if init.get("strategy") == "fsdp":
        assert train.chunked_ce == 0  # the head must run inside the sharded forward
    train.validate(world)
    evals.validate()
    assert isinstance(init["data"], DataModule)
    if not (func is pretrain and path.stem != "debug"):  # the pretraining recipes read the user's data/pretrain
        init["data"].check()  # the bundled data these configs use is really there
    name, args = split_spec(init["optimizer"])
    if not name.startswith("bitsandbytes"):
        check_init_args(resolve_optimizer_class(name), args)
    if func is finetune_lora:
        assert init["lora_r"] > 0
        assert (init["quantize"] is not None) == (path.stem == "qlora")
    if func is pretrain:
        config = init["model_config"]
        assert config.padded_vocab_size >= 1024
        assert config.n_layer == 2 or path.stem != "debug"  # recipes: tests/train/test_pretrain_recipes.py
