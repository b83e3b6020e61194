"""cpu_kernel: the C bf16 matmul for few rows computes F.linear's result, and falls back cleanly when it can't build."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from litgpt_lite import cpu_kernel

kernel = cpu_kernel.bf16_linear_kernel()
needs_kernel = pytest.mark.skipif(kernel is None, reason="no AVX2 CPU without native bf16, or no C compiler")


def _exact(x, w, b):
    """The exact product (float64) rounded once to bf16: what a float32-accumulating kernel gives up to its sums'
    own rounding."""
    return F.linear(x.double(), w.double(), None if b is None else b.double()).to(torch.bfloat16)


@needs_kernel
@pytest.mark.parametrize("rows", [1, 3, 8, 13, 32])
@pytest.mark.parametrize("k", [64, 72, 5])  # whole 16-weight pieces, a tail of 8, only a tail
@pytest.mark.parametrize("bias", [False, True])
def test_kernel_equals_the_rounded_exact_product(rows, k, bias):
    torch.manual_seed(rows * 100 + k)
    x = torch.randn(2, rows, k, dtype=torch.bfloat16)
    w = torch.randn(200, k, dtype=torch.bfloat16)
    b = torch.randn(200, dtype=torch.bfloat16) if bias else None
    y = kernel(x, w, b)
    assert y.shape == (2, rows, 200) and y.dtype == torch.bfloat16
    exact = _exact(x, w, b)
    # float32 sums of exact products differ from the float64 sum by far less than a bf16 step: the roundings agree
    # but for values within that of a rounding boundary (none expected at these sizes; allow one in a thousand)
    assert (y != exact).float().mean() <= 1e-3
    torch.testing.assert_close(y.float(), exact.float(), atol=1e-6, rtol=2**-7)  # the rest: one bf16 step at most
    torch.testing.assert_close(y, F.linear(x, w, b), atol=1e-2, rtol=2**-7)  # torch's bf16 kernel


@needs_kernel
def test_kernel_takes_non_contiguous_inputs_and_special_values():
    x = torch.randn(16, 4, dtype=torch.bfloat16).T  # (4, 16), transposed
    w = torch.randn(8, 16, dtype=torch.bfloat16)
    torch.testing.assert_close(kernel(x, w, None), _exact(x, w, None), atol=1e-6, rtol=2**-7)
    x = x.contiguous()
    x[0, 0], x[1, 0] = float("nan"), float("inf")
    y = kernel(x, w, None)
    assert y[0].isnan().all() and y[1].isinf().all()
    assert y[0].view(torch.int16).eq(torch.tensor(0x7FC0, dtype=torch.int16)).all()  # torch's quiet NaN


@needs_kernel
def test_kernel_uses_torch_thread_count():
    x, w = torch.randn(3, 64, dtype=torch.bfloat16), torch.randn(500, 64, dtype=torch.bfloat16)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernel(x, w, None)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, kernel(x, w, None))  # each output is one thread's sum: same bits on any thread count


def _probe(env: dict, tmp_path) -> str:
    """bf16_linear_kernel() in a fresh process with `env` over a cache in tmp_path: 'None' or 'kernel'."""
    code = "from litgpt_lite import cpu_kernel; print('None' if cpu_kernel.bf16_linear_kernel() is None else 'kernel')"
    import os

    full = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), **env}
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, check=True).stdout


@needs_kernel
def test_builds_into_the_user_cache_and_reuses_it(tmp_path):
    assert _probe({}, tmp_path).strip() == "kernel"
    built = list((tmp_path / "litgpt_lite" / "kernels").glob("bf16_linear-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    assert _probe({"CC": "/nonexistent/cc"}, tmp_path).strip() == "None"  # no compiler: no kernel, even cached
    assert _probe({}, tmp_path).strip() == "kernel"
    assert built[0].stat().st_mtime_ns == stamp  # loaded from the cache, not rebuilt


@needs_kernel
def test_off_switch_and_failed_builds_fall_back(tmp_path):
    assert _probe({"LITGPT_LITE_CPU_KERNEL": "0"}, tmp_path).strip() == "None"
    assert _probe({"CC": "false"}, tmp_path).strip() == "None"  # a compiler that fails
    assert not list((tmp_path / "litgpt_lite" / "kernels").glob("*.so"))  # and leaves nothing behind
    (tmp_path / "litgpt_lite" / "kernels").rmdir()  # empty
    (tmp_path / "litgpt_lite" / "kernels").write_text("")  # a file where the cache folder should be
    assert _probe({}, tmp_path).strip() == "None"


@needs_kernel
def test_bf16_model_logits_with_and_without_the_kernel(monkeypatch):
    """A bf16 model's prefill and decode logits through the kernel stay within bf16 rounding of torch's kernels."""
    from test_checkpoint import tiny_config

    import litgpt_lite.model as model

    torch.manual_seed(0)
    gpt = model.GPT(tiny_config()).to(torch.bfloat16).eval()
    idx = torch.randint(0, 64, (1, 7))

    def run():
        gpt.set_kv_cache(1, 16)
        with torch.inference_mode():
            prefill = gpt(idx, input_pos=0)
            step = gpt(idx[:, :1], input_pos=7)
        gpt.clear_kv_cache()
        return prefill, step

    calls = []
    monkeypatch.setattr(model, "bf16_linear_kernel", lambda: lambda *a: calls.append(1) or kernel(*a))
    with_kernel = run()
    assert len(calls) == 2 * (2 * 5 + 1)  # every matmul of both forwards: 5 per layer and the head
    monkeypatch.setattr(model, "bf16_linear_kernel", lambda: None)
    without = run()
    for a, b in zip(with_kernel, without):
        torch.testing.assert_close(a.float(), b.float(), atol=2e-2, rtol=2**-6)
