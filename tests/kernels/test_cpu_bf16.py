"""kernels.cpu_bf16: the C bf16 matmul for few rows, RMSNorm, RoPE and one-query attention compute what torch
computes, the swapped-in modules use them where they apply, and they fall back cleanly when they can't build."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import litgpt_lite.model as model
from litgpt_lite.kernels import cpu_bf16, install_kernels
from litgpt_lite.kernels.cpu_attention import CPUCausalSelfAttention
from litgpt_lite.kernels.cpu_norm import CPURMSNorm

kernel, norm_kernel, attend_kernel = cpu_bf16.bf16_linear, cpu_bf16.bf16_rms_norm, cpu_bf16.bf16_attend_one
rope_kernel = cpu_bf16.bf16_rope
# in a fresh process: the kernels as on a CPU without native bf16 (this CPU runs their AVX2 code either way)
FORCE = "from litgpt_lite.kernels import cpu_bf16; cpu_bf16.cpu_has_native_bf16 = lambda: False; "
needs_kernel = pytest.mark.usefixtures("c_kernels")  # forced on where the CPU can run them (tests/kernels/conftest)


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


@needs_kernel
@pytest.mark.parametrize("shape", [(1, 1, 576), (2, 3, 64), (4, 20), (3, 2, 5, 24)])
@pytest.mark.parametrize("unit_offset", [False, True])
def test_rms_norm_kernel_equals_the_torch_ops(shape, unit_offset):
    """The C norm computes RMSNorm's float32 math (Llama: round, then times the bf16 weight; Gemma: times 1 + weight in
    float32, rounded once): within one bf16 step of torch's ops, which it matches almost everywhere."""
    torch.manual_seed(len(shape))
    norm = model.RMSNorm(shape[-1], eps=1e-5, unit_offset=unit_offset).to(torch.bfloat16)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(shape, dtype=torch.bfloat16) * 3
    with torch.no_grad():
        ref = norm(x)
        y = install_kernels(norm)(x)
    assert type(norm) is CPURMSNorm
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    assert (y != ref).float().mean() <= 0.01
    torch.testing.assert_close(y.float(), ref.float(), atol=1e-6, rtol=2**-7)
    # and from float64: x * rsqrt(mean(x^2) + eps), weighted as above
    xd = x.double()
    normed = xd / (xd.square().mean(-1, keepdim=True) + 1e-5).sqrt()
    wd = norm.weight.double()
    exact = normed * (1 + wd) if unit_offset else wd * normed.to(torch.bfloat16).double()
    torch.testing.assert_close(y.double(), exact, atol=1e-6, rtol=2**-7)


@needs_kernel
def test_rms_norm_kernel_stays_off_for_autograd_and_other_dtypes(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_bf16, "bf16_rms_norm", lambda *a: calls.append(1) or norm_kernel(*a))
    norm = install_kernels(model.RMSNorm(64))
    norm(torch.randn(2, 64))  # float32
    norm.to(torch.bfloat16)(torch.randn(2, 64, dtype=torch.bfloat16)).sum().backward()  # autograd
    assert calls == []
    with torch.no_grad():
        norm(torch.randn(2, 64, dtype=torch.bfloat16))
    assert calls == [1]


@needs_kernel
@pytest.mark.parametrize("B,H,G,S,D", [(1, 9, 3, 55, 64), (2, 4, 4, 1, 20), (3, 8, 2, 300, 24)])
def test_attention_kernel_equals_sdpa(B, H, G, S, D):
    """One query per row over a cache slice (strided, as the KV cache's narrowed buffers are), grouped heads: SDPA's
    values within bf16 rounding, and the float64 attention within one bf16 step."""
    torch.manual_seed(S)
    cache = torch.randn(2, B, G, S + 5, D, dtype=torch.bfloat16)
    k, v = cache[0].narrow(2, 0, S), cache[1].narrow(2, 0, S)
    q = torch.randn(B, 1, H, D, dtype=torch.bfloat16).transpose(1, 2)  # (B, H, 1, D), heads not outermost
    scale = D**-0.5
    y = attend_kernel(q, k, v, scale)
    sdpa = F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=G != H)
    assert y.shape == sdpa.shape == (B, H, 1, D) and y.dtype == torch.bfloat16
    torch.testing.assert_close(y, sdpa, atol=1e-2, rtol=2**-7)
    kd, vd = (t.double().repeat_interleave(H // G, dim=1) for t in (k, v))
    exact = torch.softmax(q.double() @ kd.transpose(-1, -2) * scale, dim=-1) @ vd
    torch.testing.assert_close(y.double(), exact, atol=1e-5, rtol=2**-7)


@needs_kernel
def test_decode_step_attention_takes_the_kernel_only_without_a_mask(monkeypatch):
    """A bf16 decode step over the whole cache calls the kernel; a padded batch (a mask) and float32 use SDPA."""
    from test_checkpoint import tiny_config

    calls = []
    monkeypatch.setattr(cpu_bf16, "bf16_attend_one", lambda *a: calls.append(1) or attend_kernel(*a))
    torch.manual_seed(0)
    gpt = install_kernels(model.GPT(tiny_config()).eval())
    with torch.inference_mode():
        for dtype, pad_lens, expected in (
            (torch.float32, None, 0),
            (torch.bfloat16, torch.tensor([0, 2]), 0),
            (torch.bfloat16, None, 2),
        ):
            gpt.to(dtype).set_kv_cache(2, 16)
            gpt(torch.randint(0, 64, (2, 5)), input_pos=0, pad_lens=pad_lens)
            calls.clear()
            gpt(torch.randint(0, 64, (2, 1)), input_pos=5, pad_lens=pad_lens)
            assert len(calls) == expected  # one per layer
            gpt.clear_kv_cache()


@needs_kernel
@pytest.mark.parametrize("B,T,n,D", [(1, 1, 64, 64), (2, 5, 16, 24), (3, 4, 8, 8)])
def test_rope_kernel_equals_apply_rope_bit_for_bit(monkeypatch, B, T, n, D):
    """Queries and keys viewed out of a fused projection (strided), full and partial rotary, cos/sin per row or
    shared: the same bits as torch's bf16 ops, through the swapped-in attention's `rotate`."""
    from test_checkpoint import tiny_config

    torch.manual_seed(B * T)
    qkv = torch.randn(B, T, 7, D, dtype=torch.bfloat16) * 4
    x = qkv[:, :, :5]  # 5 of 7 heads, as queries and keys are in the fused qkv
    attn = install_kernels(model.CausalSelfAttention(tiny_config(), 0))
    assert type(attn) is CPUCausalSelfAttention
    calls = []
    monkeypatch.setattr(cpu_bf16, "bf16_rope", lambda *a: calls.append(1) or rope_kernel(*a))
    for rows in (B, 1):
        angles = torch.randn(rows, T, 1, n)
        cos, sin = angles.cos().bfloat16(), angles.sin().bfloat16()
        with torch.inference_mode():
            y = attn.rotate(x, cos, sin)
            ref = model.apply_rope(x, cos, sin)
        assert y.shape == ref.shape and torch.equal(y, ref)
    assert len(calls) == 2


def test_the_openmp_runtime_is_torchs_own_where_two_are_loaded(tmp_path):
    torch_dir = tmp_path / "site-packages" / "torch"
    system, bundled = "/usr/lib/x86_64-linux-gnu/libgomp.so.1", str(torch_dir / "lib" / "libgomp.so.1")
    pick = cpu_bf16.pick_runtime
    assert pick(["[heap]", system, "/usr/lib/libc.so.6", bundled, bundled], torch_dir) == Path(bundled)
    assert pick(["[heap]", system, system], torch_dir) == Path(system)  # torch built against the system's
    assert pick(["/opt/intel/lib/libiomp5.so"], torch_dir) == Path("/opt/intel/lib/libiomp5.so")
    assert pick(["[heap]", "/usr/lib/libc.so.6"], torch_dir) is None
    if cpu_bf16.available():  # built here, so this process has torch's OpenMP runtime loaded
        assert cpu_bf16._openmp_runtime() is not None


def _probe(env: dict, tmp_path) -> str:
    """cpu_bf16.available() in a fresh process with `env` over a cache in tmp_path: 'None' or 'kernel'."""
    code = FORCE + "print('kernel' if cpu_bf16.available() else 'None')"
    import os

    full = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), **env}
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, check=True).stdout


@needs_kernel
def test_builds_into_the_user_cache_and_reuses_it(tmp_path):
    assert _probe({}, tmp_path).strip() == "kernel"
    built = list((tmp_path / "litgpt_lite" / "kernels").glob("cpu_bf16-*.so"))
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
    """A bf16 model's prefill and decode logits through the kernels stay within bf16 rounding of torch's kernels."""
    from test_checkpoint import tiny_config

    torch.manual_seed(0)
    gpt = install_kernels(model.GPT(tiny_config()).to(torch.bfloat16).eval())
    idx = torch.randint(0, 64, (1, 7))

    def run():
        gpt.set_kv_cache(1, 16)
        with torch.inference_mode():
            prefill = gpt(idx, input_pos=0)
            step = gpt(idx[:, :1], input_pos=7)
        gpt.clear_kv_cache()
        return prefill, step

    calls = []
    monkeypatch.setattr(cpu_bf16, "bf16_linear", lambda *a: calls.append("mm") or kernel(*a))
    monkeypatch.setattr(cpu_bf16, "bf16_rms_norm", lambda *a: calls.append("norm") or norm_kernel(*a))
    monkeypatch.setattr(cpu_bf16, "bf16_attend_one", lambda *a: calls.append("attend") or attend_kernel(*a))
    with_kernel = run()
    assert calls.count("mm") == 2 * (2 * 5 + 1)  # every matmul of both forwards: 5 per layer and the head
    assert calls.count("norm") == 2 * (2 * 2 + 1)  # and every norm: 2 per layer and the final one
    assert calls.count("attend") == 2  # and the decode step's attention in each layer
    install_kernels(gpt, "none")
    calls.clear()
    without = run()
    assert calls == []
    for a, b in zip(with_kernel, without):
        torch.testing.assert_close(a.float(), b.float(), atol=2e-2, rtol=2**-6)
