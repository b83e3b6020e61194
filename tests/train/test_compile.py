"""`--train.compile auto|true|false`: auto compiles on CUDA only; a compiled run trains like an eager one, its forward
(packed rows and activation checkpointing included) and its head+loss trace as whole graphs, without graph breaks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch._dynamo.utils import counters
from train_helpers import TINY, losses, tiny_config, train_args

from litgpt_lite.__main__ import main
from litgpt_lite.config import Config
from litgpt_lite.errors import UserError
from litgpt_lite.model import GPT
from litgpt_lite.train.args import EvalArgs, TrainArgs
from litgpt_lite.train.distributed import checkpoint_blocks, compile_settings
from litgpt_lite.train.loss import fused_head_loss_sum, head_loss_sum
from litgpt_lite.train.pretrain import pretrain

REPO = Path(__file__).resolve().parents[2]
QUIET = EvalArgs(max_new_tokens=0, max_iters=1)  # one validation at the end: the eval-mode graphs run too


def _pretrain(out_dir: Path, precision: str = "32-true", **train) -> list[float]:
    """Three optimizer steps of 2 micro batches of 2 x 128 tokens on the tiny model; the logged losses."""
    args = train_args(3, global_batch_size=4, micro_batch_size=2, **train)
    pretrain(model_config=Config(**TINY), out_dir=out_dir, precision=precision, eval=QUIET, train=args)
    return losses(out_dir)


# ---------------------------------------------------------------- the flag
def test_auto_compiles_on_cuda_only():
    assert TrainArgs().compile == "auto"
    assert TrainArgs().compiles("cuda") and not TrainArgs().compiles("cpu")
    assert TrainArgs(compile=True).compiles("cpu") and TrainArgs(compile=True).compiles("cuda")
    assert not TrainArgs(compile=False).compiles("cuda")


def test_a_bad_compile_value_is_a_user_error():
    with pytest.raises(UserError, match="--train.compile must be true, false or auto, got 'yes'"):
        train_args(1, compile="yes").validate(1)


@pytest.mark.parametrize(("value", "parsed"), [("auto", "auto"), ("true", True), ("false", False)])
def test_cli_parses_compile(value, parsed, capsys):
    argv = ["pretrain", "--config", str(REPO / "config_hub/pretrain/debug.yaml"), "--train.compile", value]
    with pytest.raises(SystemExit) as done:
        main([*argv, "--print_config"])
    assert done.value.code in (0, None)
    assert yaml.safe_load(capsys.readouterr().out)["train"]["compile"] == parsed


def test_auto_trains_eagerly_on_cpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("auto compiles on a GPU")
    counters.clear()
    _pretrain(tmp_path / "out")  # compile left at its default, auto
    assert not counters["stats"]["unique_graphs"]  # dynamo traced nothing


# ---------------------------------------------------------------- what compiles
def _explain(fn, *args, **kwargs):
    explained = torch._dynamo.explain(fn)(*args, **kwargs)
    return explained.graph_count, explained.graph_break_count


@pytest.mark.parametrize("checkpointed", [False, True])
def test_training_forward_is_one_graph(checkpointed):
    torch.manual_seed(0)
    model = GPT(tiny_config()).train()
    if checkpointed:
        checkpoint_blocks(model)
    x = torch.randint(0, 1000, (2, 64))
    packed = torch.tensor([[0] * 30 + [1] * 34, [0] * 64])  # two samples in row 0
    with compile_settings(True):
        assert _explain(model, x, return_hidden=True) == (1, 0)
        assert _explain(model, x, segment_ids=packed, return_hidden=True) == (1, 0)


def test_head_loss_is_one_graph_and_matches_eager():
    torch.manual_seed(0)
    model = GPT(tiny_config(final_logit_softcapping=30.0))
    hidden, targets = torch.randn(200, 32), torch.randint(0, 1000, (200,))
    targets[:7] = -100
    assert _explain(fused_head_loss_sum, model, hidden, targets) == (1, 0)
    compiled = torch.compile(fused_head_loss_sum)
    assert compiled(model, hidden, targets).item() == pytest.approx(head_loss_sum(model, hidden, targets).item(), 1e-5)


# ---------------------------------------------------------------- compiled training
@pytest.mark.slow
def test_compiled_pretraining_matches_eager_without_graph_breaks(tmp_path):
    """The levers compile too: activation checkpointing and chunked cross-entropy (two chunk sizes: 100, 100, 56)."""
    eager = _pretrain(tmp_path / "eager", compile=False)
    counters.clear()
    compiled = _pretrain(tmp_path / "compiled", compile=True, activation_checkpointing=True, chunked_ce=100)
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] >= 2  # the model and the head+loss ran compiled
    assert len(compiled) == len(eager) == 3
    assert compiled == pytest.approx(eager, abs=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_compiles_training_on_cuda(tmp_path):
    counters.clear()
    auto = _pretrain(tmp_path / "auto", precision="bf16-mixed")
    assert counters["stats"]["unique_graphs"] >= 2 and not counters["graph_break"]
    eager = _pretrain(tmp_path / "eager", precision="bf16-mixed", compile=False)
    assert auto == pytest.approx(eager, abs=2e-2)  # bf16 autocast: kernels of both modes round differently


def test_compiled_head_loss_under_bf16_fabric_keeps_float32_loss():
    """The compiled head+loss inside Fabric's bf16-true precision: bf16 logits, float32 loss and gradients."""
    from lightning.fabric import Fabric

    from litgpt_lite.train.loss import loss_sum

    fabric = Fabric(accelerator="cpu", devices=1, precision="bf16-true")
    torch.manual_seed(0)
    model = fabric.setup_module(GPT(tiny_config()))
    batch = {"input_ids": torch.randint(0, 1000, (2, 16)), "labels": torch.randint(0, 1000, (2, 16))}
    reference = loss_sum(fabric, model, batch, chunk=8)
    loss = loss_sum(fabric, model, batch, chunk=8, compiled=True)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(reference.item(), rel=1e-3)
    loss.backward()
    assert model.module.lm_head.weight.grad is not None
