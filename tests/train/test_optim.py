"""Optimizer specs: names, class paths, shorthands (numbers stay numbers), bitsandbytes on CPU, the schedule."""

from __future__ import annotations

import warnings

import pytest
import torch

from litgpt_lite.errors import UserError
from litgpt_lite.train.optim import build_optimizer, build_scheduler, split_spec


def _params():
    return [torch.nn.Parameter(torch.randn(64, 64))]


def test_shorthands_keep_numbers_numbers():
    name, args = split_spec({"lr": "3e-4", "weight_decay": "0.1", "betas": "[0.9, 0.95]", "amsgrad": "true"})
    assert name == "AdamW"
    assert args == {"lr": 3e-4, "weight_decay": 0.1, "betas": [0.9, 0.95], "amsgrad": True}
    opt = build_optimizer({"lr": "3e-4", "weight_decay": "0.1"}, _params(), defaults={"lr": 1.0})
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["lr"] == 3e-4 and opt.param_groups[0]["weight_decay"] == 0.1


def test_class_path_dict_and_plain_names():
    opt = build_optimizer({"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1, "momentum": 0.9}}, _params())
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9
    # shorthands beside a class_path are init args too; defaults fill only what the class accepts
    opt = build_optimizer({"class_path": "SGD", "lr": "0.5"}, _params(), defaults={"lr": 1e-3, "betas": (0.9, 0.9)})
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["lr"] == 0.5
    assert isinstance(build_optimizer("Adam", _params(), defaults={"lr": 1e-3}), torch.optim.Adam)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("AdamWW", "Did you mean AdamW"),
        ("torch.optim.Nope", "cannot be imported"),
        ({"lr": 1, "foo": 2}, "'foo'"),
        ("torch.nn.Linear", "not a torch.optim.Optimizer"),
    ],
)
def test_bad_optimizers_are_user_errors(spec, message):
    with pytest.raises(UserError, match=message):
        build_optimizer(spec, _params())


def test_bitsandbytes_8bit_adamw_steps_on_cpu():
    pytest.importorskip("bitsandbytes")
    p = torch.nn.Parameter(torch.randn(256, 256))
    opt = build_optimizer("bitsandbytes.optim.AdamW8bit", [p], defaults={"lr": 1e-2})
    before = p.detach().clone()
    p.grad = torch.randn_like(p)
    opt.step()
    assert not torch.equal(before, p.detach())
    state = opt.state[p]
    assert any(v.dtype == torch.uint8 for v in state.values() if isinstance(v, torch.Tensor))  # 8-bit moments


def test_paged_optimizer_falls_back_on_cpu_with_one_warning():
    pytest.importorskip("bitsandbytes")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = build_optimizer("PagedAdamW8bit", _params(), defaults={"lr": 1e-3}, device_type="cpu")
    assert type(opt).__name__ == "AdamW8bit"
    assert len([w for w in caught if "pages memory" in str(w.message)]) == 1


def test_warmup_then_cosine_to_min_lr():
    opt = torch.optim.SGD(_params(), lr=1.0)
    sched = build_scheduler(opt, warmup_steps=4, total_steps=20, min_lr=0.1)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert lrs[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))  # monotone decay
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)  # reaches min_lr at the last step


def test_adamw_runs_fused_unless_the_user_chose_an_implementation():
    """Plain CPU parameters get torch's fused Adam/AdamW kernel; the update matches the for-loop implementation up to
    float32 rounding. A user's `fused`/`foreach`, another optimizer or non-plain tensors keep torch's default."""
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(300, 40)) for _ in range(3)]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    start = [p.detach().clone() for p in ps]
    fused = build_optimizer("AdamW", ps, {"lr": 1e-2, "weight_decay": 0.1})
    loop = build_optimizer({"class_path": "AdamW", "init_args": {"foreach": False}}, qs, {"lr": 1e-2})
    assert fused.param_groups[0]["fused"] is True
    assert not loop.param_groups[0]["fused"] and loop.param_groups[0]["foreach"] is False
    loop.param_groups[0]["weight_decay"] = 0.1
    for _ in range(10):
        for p, q in zip(ps, qs):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        fused.step()
        loop.step()
    for p, q, p0 in zip(ps, qs, start):
        assert (p - p0).abs().mean() > 1e-2  # the weights moved
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    groups = [{"params": iter([torch.nn.Parameter(torch.ones(2))]), "lr": 0.1}]  # an iterator is read once
    assert build_optimizer("Adam", groups).param_groups[0]["fused"] is True
    assert build_optimizer({"fused": "false"}, [torch.nn.Parameter(torch.ones(2))]).param_groups[0]["fused"] is False
    assert not build_optimizer("SGD", [torch.nn.Parameter(torch.ones(2))], {"lr": 0.1}).param_groups[0].get("fused")
    meta = [torch.nn.Parameter(torch.ones(2, device="meta"))]
    assert not build_optimizer("AdamW", meta).param_groups[0]["fused"]
