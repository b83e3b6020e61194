"""kernels.cpu_linear.CPULinear: its CPU decode paths compute what F.linear computes, and training keeps the plain
path."""

import pytest
import torch
import torch.nn.functional as F

from litgpt_lite.kernels import cpu_bf16, cpu_linear
from litgpt_lite.kernels.cpu_linear import CPULinear
from litgpt_lite.model import RMSNorm


def _layer(in_f, out_f, bias, dtype=torch.float32):
    torch.manual_seed(0)
    layer = CPULinear(in_f, out_f, bias=bias).to(dtype)
    if bias:
        torch.nn.init.normal_(layer.bias)
    return layer


@pytest.mark.parametrize("shape", [(1, 1, 64), (2, 3, 64), (1, 128, 64), (1, 129, 64), (1, 0, 64)])
@pytest.mark.parametrize("out_f", [96, 50, 7])  # 8 blocks, 2 blocks, no split
@pytest.mark.parametrize("bias", [False, True])
def test_inference_paths_equal_f_linear(shape, out_f, bias):
    layer = _layer(64, out_f, bias)
    x = torch.randn(shape)
    with torch.no_grad():
        y = layer(x)
    assert y.shape == (*shape[:-1], out_f)
    torch.testing.assert_close(y, F.linear(x, layer.weight, layer.bias))


def test_the_split_path_runs_for_few_rows_only(monkeypatch):
    """The block split is what runs for a few fp32 rows without autograd, and only then (bmm is its one call)."""
    calls = []
    real_bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda *a: calls.append(a[0].shape) or real_bmm(*a))
    layer = _layer(64, 96, False)
    with torch.no_grad():
        layer(torch.randn(1, 1, 64))
        assert calls == [(8, 1, 64)]
        layer(torch.randn(1, 200, 64))  # more than SPLIT_MAX_ROWS rows
        layer.to(torch.bfloat16)(torch.randn(1, 1, 64, dtype=torch.bfloat16))
    layer.float()(torch.randn(1, 1, 64))  # autograd on: the plain path
    assert calls == [(8, 1, 64)]


def test_gradients_flow_as_in_nn_linear():
    layer = _layer(64, 96, True)
    ref = torch.nn.Linear(64, 96)
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(1, 1, 64)
    layer(x).square().sum().backward()
    ref(x).square().sum().backward()
    torch.testing.assert_close(layer.weight.grad, ref.weight.grad)
    torch.testing.assert_close(layer.bias.grad, ref.bias.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_row_under_compile_equals_f_linear(dtype):
    """The compiled decode step's one-row path (a float32 multiply-sum inductor fuses) rounds like F.linear."""
    layer = _layer(64, 96, True, dtype)
    x = torch.randn(1, 1, 64, dtype=dtype)
    compiled = torch.compile(layer, dynamic=False)
    with torch.no_grad():
        y, ref = compiled(x), F.linear(x, layer.weight, layer.bias)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-2, rtol=2**-7)
    torch.testing.assert_close(y, ref, **tol)


def test_one_row_under_compile_after_a_norm_equals_eager():
    """With a norm producing its input (the decode step's shape: RMSNorm -> Linear), the realized input gives the
    eager values."""
    torch.manual_seed(0)
    norm, layer = RMSNorm(64), _layer(64, 96, False, torch.bfloat16)
    norm = norm.to(torch.bfloat16)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(1, 1, 64, dtype=torch.bfloat16)
    compiled = torch.compile(lambda t: layer(norm(t)), dynamic=False)
    with torch.no_grad():
        y, ref = compiled(x), F.linear(norm(x), layer.weight)
    torch.testing.assert_close(y, ref, atol=1e-2, rtol=2**-7)


def _record_linear_input_dtypes(monkeypatch, native: bool) -> list[torch.dtype]:
    """Pretend the CPU has (or lacks) native bf16; return the list that gets the input dtype of each F.linear call."""
    monkeypatch.setattr(cpu_linear, "cpu_has_native_bf16", lambda: native)
    seen: list[torch.dtype] = []
    real = F.linear
    monkeypatch.setattr(cpu_linear.F, "linear", lambda x, *a: seen.append(x.dtype) or real(x, *a))
    return seen


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize("rows", [0, 1, 7, 8, 32, 33, 300])
def test_bf16_paths_without_native_bf16(monkeypatch, native, rows):
    """bf16: up to KERNEL_MAX_ROWS rows the C kernel runs (no F.linear call), with or without native bf16; above
    that, without native bf16, one F.linear on float32 copies from UPCAST_MIN_ROWS rows, else torch's bf16 kernel.
    Every path is within bf16 rounding of the exact product."""
    seen = _record_linear_input_dtypes(monkeypatch, native)
    layer = _layer(64, 96, True, torch.bfloat16)
    x = torch.randn(1, rows, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        y = layer(x)
    kernel = rows <= CPULinear.KERNEL_MAX_ROWS and cpu_bf16.available()
    upcast = not native and not kernel and rows >= CPULinear.UPCAST_MIN_ROWS
    assert seen == ([] if kernel else [torch.float32 if upcast else torch.bfloat16])
    assert y.dtype == torch.bfloat16
    ref = x.float() @ layer.weight.float().T + layer.bias.float()  # the exact product, in float32
    torch.testing.assert_close(y.float(), ref, atol=1e-2, rtol=2**-7)


def test_bf16_upcast_stays_off_under_autocast_and_autograd(monkeypatch):
    seen = _record_linear_input_dtypes(monkeypatch, native=False)
    layer = _layer(64, 96, False, torch.bfloat16)
    x = torch.randn(1, 16, 64, dtype=torch.bfloat16)
    layer(x)  # autograd on
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x)
    assert seen == [torch.bfloat16, torch.bfloat16]


@pytest.mark.usefixtures("c_kernels")
@pytest.mark.parametrize("rows", [1, 7, 32, 33])
def test_bf16_takes_the_c_kernel_up_to_its_rows(monkeypatch, rows):
    """With the C kernels on (forced where this CPU has native bf16): no F.linear call up to KERNEL_MAX_ROWS rows,
    the float32 upcast above; both within bf16 rounding of the exact product."""
    seen = _record_linear_input_dtypes(monkeypatch, native=False)
    layer = _layer(64, 96, True, torch.bfloat16)
    x = torch.randn(1, rows, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        y = layer(x)
    assert seen == ([] if rows <= CPULinear.KERNEL_MAX_ROWS else [torch.float32])
    ref = x.float() @ layer.weight.float().T + layer.bias.float()
    torch.testing.assert_close(y.float(), ref, atol=1e-2, rtol=2**-7)
