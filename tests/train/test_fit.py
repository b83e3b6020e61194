"""The fit loop end to end on tiny models: losses fall, resume is exact, hyperparameters.yaml reproduces a run."""

from __future__ import annotations

import math

import pytest
import yaml
from train_helpers import TINY, losses, tiny_checkpoint, train_args

from litgpt_lite.train.args import EvalArgs, TrainArgs
from litgpt_lite.train.finetune import finetune_full, finetune_lora
from litgpt_lite.train.pretrain import pretrain

QUICK_EVAL = EvalArgs(interval=1000, max_iters=2, max_new_tokens=0, final_validation=False)


def _lora_available() -> bool:
    try:
        from litgpt_lite.lora import LoRARecipe  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt")


def _train(steps: int, save_interval: int | None = None, **kw) -> TrainArgs:
    return train_args(steps, save_interval=save_interval, **kw)


def test_finetune_full_lowers_loss_on_bundled_data(tiny_ckpt, tmp_path):
    finetune_full(
        tiny_ckpt,
        out_dir=tmp_path / "out",
        train=_train(20),
        eval=QUICK_EVAL,
        optimizer={"lr": 3e-3},
        precision="32-true",
    )
    curve = losses(tmp_path / "out")
    assert len(curve) == 20
    assert sum(curve[-3:]) / 3 < curve[0] - 0.5  # clearly learning, not noise
    final = tmp_path / "out" / "final"
    for name in (
        "lit_model.safetensors",
        "model_config.yaml",
        "tokenizer.json",
        "prompt_style.yaml",
        "hyperparameters.yaml",
    ):
        assert (final / name).is_file(), name
    from litgpt_lite.loading import load_model

    load_model(final)  # the exported checkpoint loads as a normal one


@pytest.mark.skipif(not _lora_available(), reason="litgpt_lite.lora is not importable yet")
def test_finetune_lora_lowers_loss(tiny_ckpt, tmp_path):
    finetune_lora(
        tiny_ckpt,
        out_dir=tmp_path / "out",
        train=_train(20),
        eval=QUICK_EVAL,
        optimizer={"lr": 3e-2},
        precision="32-true",
        lora_r=8,
        lora_mlp=True,
        lora_head=True,
        lora_projection=True,
        lora_dropout=0.0,
    )
    curve = losses(tmp_path / "out")
    assert sum(curve[-3:]) / 3 < curve[0] - 0.3


def test_pretrain_lowers_loss_on_bundled_corpus(tmp_path):
    from litgpt_lite.config import Config

    train = train_args(25, micro_batch_size=8, max_seq_length=64, lr_warmup_steps=3, log_interval=5)
    pretrain(
        model_config=Config(**TINY),
        out_dir=tmp_path / "out",
        train=train,
        eval=QUICK_EVAL,
        optimizer={"lr": 5e-3},
        precision="32-true",
    )
    curve = losses(tmp_path / "out")
    assert len(curve) == 6  # steps 1, 5, 10, 15, 20, 25: every log_interval, plus the first
    assert curve[0] > math.log(1024) - 0.5  # starts near uniform over the vocabulary
    assert sum(curve[-3:]) / 3 < curve[0] - 1.5
    assert (tmp_path / "out" / "final" / "lit_model.safetensors").is_file()
    assert (tmp_path / "out" / "logs" / "metrics.csv").is_file()


NEEDS_LORA = pytest.mark.skipif(not _lora_available(), reason="no lora")
RECIPES = ["full", "pretrain", pytest.param("lora", marks=NEEDS_LORA), pytest.param("qlora", marks=NEEDS_LORA)]


@pytest.mark.slow
@pytest.mark.parametrize("method", RECIPES)
def test_resume_equals_uninterrupted_run(method, tiny_ckpt, tmp_path):
    """Stop at step 3 (its checkpoint), resume in a fresh process state: steps 4-6 match to 1e-6."""

    def run(out_dir, resume=False):
        common = dict(
            out_dir=out_dir,
            train=_train(6, save_interval=3),
            eval=QUICK_EVAL,
            precision="32-true",
            optimizer={"lr": 3e-3},
            resume=resume,
        )
        if method == "pretrain":
            from litgpt_lite.config import Config

            common["train"] = train_args(6, global_batch_size=4, micro_batch_size=2, max_seq_length=32, save_interval=3)
            return pretrain(model_config=Config(**TINY), **common)
        if method == "lora":
            return finetune_lora(tiny_ckpt, lora_dropout=0.1, **common)  # dropout: the RNG must resume too
        if method == "qlora":
            pytest.importorskip("bitsandbytes")
            wide = tiny_checkpoint(tmp_path / "wide", n_embd=64, intermediate_size=128)  # 4-bit blocks of 64
            return finetune_lora(wide, lora_dropout=0.1, quantize="bnb.nf4", **common)
        return finetune_full(tiny_ckpt, **common)

    run(tmp_path / "a")
    step3 = tmp_path / "a" / "checkpoints" / "step-000003"
    assert (step3 / "state.json").is_file()
    run(tmp_path / "b", resume=step3)
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert len(a) == 6 and len(b) == 3
    for x, y in zip(a[3:], b):
        assert abs(x - y) < 1e-6, (a, b)


def test_resume_auto_continues_from_the_newest_checkpoint(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    finetune_full(tiny_ckpt, out_dir=out, train=_train(4, save_interval=2), eval=QUICK_EVAL, precision="32-true")
    capsys.readouterr()
    # The same run again in the same out_dir picks up at step 4 (its end) rather than starting over.
    result = finetune_full(
        tiny_ckpt, out_dir=out, train=_train(4, save_interval=2), eval=QUICK_EVAL, precision="32-true", resume="auto"
    )
    printed = capsys.readouterr().out
    assert result["state"].step == 4
    assert "step-000004 at step 4" in printed and "| loss" not in printed  # no step trained again
    assert len(losses(out)) == 4  # the first run's rows, kept


def test_hyperparameters_yaml_reproduces_the_run(tiny_ckpt, tmp_path):
    from jsonargparse import ArgumentParser

    finetune_full(
        tiny_ckpt,
        out_dir=tmp_path / "a",
        train=_train(3),
        eval=QUICK_EVAL,
        optimizer={"lr": 2e-3},
        precision="32-true",
        seed=7,
    )
    saved = yaml.safe_load((tmp_path / "a" / "hyperparameters.yaml").read_text())
    assert saved["train"]["max_steps"] == 3 and saved["seed"] == 7
    assert saved["data"]["class_path"] == "litgpt_lite.data.sft.Instructions"
    assert (tmp_path / "a" / "final" / "hyperparameters.yaml").is_file()

    from jsonargparse import ActionConfigFile

    parser = ArgumentParser()
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_function_arguments(finetune_full, as_positional=True)
    cfg = parser.parse_args(
        ["--config", str(tmp_path / "a" / "hyperparameters.yaml"), "--out_dir", str(tmp_path / "b")]
    )
    init = parser.instantiate_classes(cfg)
    finetune_full(**{k: v for k, v in init.items() if k != "config"})
    assert losses(tmp_path / "b") == pytest.approx(losses(tmp_path / "a"), abs=1e-6)


def test_packed_fine_tuning_runs_and_learns(tiny_ckpt, tmp_path):
    from litgpt_lite.data import Instructions

    data = Instructions(packing=True, prompt_style="default")
    train = train_args(12, global_batch_size=4, micro_batch_size=2, lr_warmup_steps=1)  # every step logged
    finetune_full(
        tiny_ckpt,
        out_dir=tmp_path / "out",
        data=data,
        train=train,
        eval=QUICK_EVAL,
        optimizer={"lr": 3e-3},
        precision="32-true",
    )
    curve = losses(tmp_path / "out")
    # each micro batch of packed rows runs as one row without the rows' padding tails: only real tokens count
    from litgpt_lite.data import DataContext
    from litgpt_lite.tokenizer import Tokenizer
    from litgpt_lite.train.loop import step_indices

    ctx = DataContext(Tokenizer(tiny_ckpt), 128, seed=42, prompt_style=None, checkpoint_dir=tiny_ckpt)
    rows = Instructions(packing=True, prompt_style="default").build(ctx).train
    real = [sum(len(rows.samples[s][0]) for s in row) for row in rows.rows]  # every sample has targets
    expected = sum(real[i] for step in range(12) for i in step_indices(step, len(rows), 4, 42)[0])
    from litgpt_lite.train.loggers import read_metrics

    assert int(read_metrics(tmp_path / "out" / "logs" / "metrics.csv")[-1]["tokens"]) == expected < 12 * 4 * 128
    assert sum(curve[-3:]) / 3 < curve[0] - 0.25
