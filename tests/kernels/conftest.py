"""Fixtures for the kernel tests: the C bf16 kernels forced on where the CPU can run them."""

import pytest

from litgpt_lite.kernels import cpu_bf16, cpu_linear


@pytest.fixture
def c_kernels(monkeypatch):
    """The C bf16 kernels built and on, and `CPULinear` taking its non-native-bf16 paths (the float32 upcast above
    the kernel's rows) also on a CPU with native bf16; skips where they cannot build (no AVX2, no compiler)."""
    monkeypatch.setattr(cpu_linear, "cpu_has_native_bf16", lambda: False)
    monkeypatch.delenv(cpu_bf16.OFF_ENV, raising=False)
    cpu_bf16._library.cache_clear()
    if not cpu_bf16.available():
        pytest.skip("no AVX2 CPU, or no C compiler")
    yield
    cpu_bf16._library.cache_clear()  # the next caller sees the real hardware again
