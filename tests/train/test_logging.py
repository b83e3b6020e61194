"""Metrics: CSV always, TensorBoard on request, `litgpt_lite plot` draws a PNG; the compile lever trains too."""

from __future__ import annotations

import pytest
from train_helpers import losses, tiny_checkpoint, train_args

from litgpt_lite.errors import UserError
from litgpt_lite.train.args import EvalArgs, TrainArgs
from litgpt_lite.train.finetune import finetune_full
from litgpt_lite.train.loggers import read_metrics
from litgpt_lite.train.plot import plot


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt")


def _train(steps=4, **kw) -> TrainArgs:
    return train_args(steps, **{"global_batch_size": 4, "micro_batch_size": 2, "lr_warmup_steps": 1, **kw})


def test_tensorboard_csv_and_plot(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    finetune_full(
        tiny_ckpt,
        out_dir=out,
        train=_train(),
        eval=EvalArgs(interval=2, max_iters=1, max_new_tokens=5),
        logger_name="tensorboard",
        precision="32-true",
    )
    printed = capsys.readouterr().out
    assert "step 1/4 | loss" in printed and "tok/s" in printed and "ETA" in printed
    assert "sample |" in printed  # one generation at each validation
    rows = read_metrics(out / "logs" / "metrics.csv")
    assert [int(r["step"]) for r in rows if r["loss"]] == [1, 2, 3, 4]
    assert [int(r["step"]) for r in rows if r["val_loss"]] == [2, 4]
    assert list((out / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    png = plot(out)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_plot_without_logs_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no logs/metrics.csv"):
        plot(tmp_path)


@pytest.mark.slow
def test_compile_and_activation_checkpointing_levers_train(tiny_ckpt, tmp_path):
    quiet = EvalArgs(max_new_tokens=0, final_validation=False)
    finetune_full(tiny_ckpt, out_dir=tmp_path / "a", train=_train(3), eval=quiet, precision="32-true")
    finetune_full(
        tiny_ckpt,
        out_dir=tmp_path / "b",
        eval=quiet,
        precision="32-true",
        train=_train(3, compile=True, activation_checkpointing=True, chunked_ce=16),
    )
    assert losses(tmp_path / "b") == pytest.approx(losses(tmp_path / "a"), rel=1e-4)
