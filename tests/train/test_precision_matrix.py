"""Every training precision the CLI accepts, with and without every quantization mode, trains on this machine or is
refused before any compute with one line. On a CPU with native bf16 the default is bf16-true, where the split head
used to get Fabric's float32 copy of the hidden states and crash on its bf16 weights."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import TINY, losses, tiny_checkpoint, train_args

from litgpt_lite.config import Config
from litgpt_lite.errors import UserError
from litgpt_lite.precision import PRECISIONS
from litgpt_lite.quantize import MODES
from litgpt_lite.train.args import EvalArgs
from litgpt_lite.train.finetune import finetune_lora
from litgpt_lite.train.pretrain import pretrain

REPO = Path(__file__).resolve().parents[2]
QUIET = EvalArgs(max_new_tokens=0, final_validation=False)


def _short(steps: int = 2, **overrides):
    """`steps` optimizer steps of 2 x 128 tokens, no warmup, so the second step's loss shows the first update."""
    return train_args(steps, **{"global_batch_size": 2, "micro_batch_size": 2, "lr_warmup_steps": 0, **overrides})


def _refused_here(precision: str, quantize: str | None) -> str | None:
    """The refusal a precision (with a quantization mode) gets on this machine, None where it trains."""
    if precision == "16-mixed" and not torch.cuda.is_available():
        return "16-mixed .* needs a CUDA GPU"
    if precision == "64-true" and quantize is not None:  # bitsandbytes' 4-bit matmul: non-finite float64 gradients
        return "cannot train in --precision 64-true"
    return None


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt")


def test_the_matrix_covers_every_precision_and_mode():
    assert set(PRECISIONS) == {"32-true", "bf16-true", "16-true", "bf16-mixed", "16-mixed", "64-true"}
    assert set(MODES) == {"bnb.nf4", "bnb.nf4-dq", "bnb.fp4", "bnb.fp4-dq", "bnb.int8"}


@pytest.mark.parametrize("quantize", [None, *MODES])
@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_lora_trains_in_every_precision_and_quantization(precision, quantize, tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    refusal = _refused_here(precision, quantize)
    if refusal is not None:
        with pytest.raises(UserError, match=refusal):
            finetune_lora(tiny_ckpt, out_dir=out, quantize=quantize, precision=precision, eval=QUIET, train=_short())
        assert not (out / "logs").exists()  # refused before anything ran
        return
    finetune_lora(tiny_ckpt, out_dir=out, quantize=quantize, precision=precision, eval=QUIET, train=_short())
    first, last = losses(out)
    assert math.isfinite(first) and last < first


@pytest.mark.parametrize("chunked_ce", [0, 64])
def test_pretrain_in_bf16_true_lowers_the_loss(chunked_ce, tmp_path):
    out = tmp_path / "out"
    pretrain(
        model_config=Config(**TINY), out_dir=out, precision="bf16-true", eval=QUIET, train=_short(chunked_ce=chunked_ce)
    )
    first, last = losses(out)
    assert last < first


@pytest.mark.parametrize("quantize", [None, "bnb.nf4"])
def test_lora_and_qlora_in_bf16_true_lower_the_loss(quantize, tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    finetune_lora(tiny_ckpt, out_dir=out, quantize=quantize, precision="bf16-true", eval=QUIET, train=_short(steps=3))
    first, *_, last = losses(out)
    assert last < first


def test_cli_refuses_fp16_autocast_on_cpu_in_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("16-mixed trains on a GPU")
    cmd = [sys.executable, "-m", "litgpt_lite", "pretrain", "--config", "config_hub/pretrain/debug.yaml"]
    cmd += ["--precision", "16-mixed", "--out_dir", str(tmp_path / "out")]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "16-mixed (float16 autocast) needs a CUDA GPU" in done.stderr + done.stdout
