"""Fixtures for the kernel tests: the C bf16 kernels forced on where the CPU can run them."""

import pytest

from litgpt_lite.kernels import cpu_bf16, cpu_linear


@pytest.fixture
def c_kernels(monkeypatch):
    """The C bf16 kernels built and on, also on a CPU with native bf16 (which runs their AVX2 code as well, though
    `install_kernels` would not choose them there); skips where they cannot build (no AVX2, no compiler)."""
    for module in (cpu_bf16, cpu_linear):
        monkeypatch.setattr(module, "cpu_has_native_bf16", lambda: False)
    monkeypatch.delenv(cpu_bf16.OFF_ENV, raising=False)
    cpu_bf16._library.cache_clear()
    if not cpu_bf16.available():
        pytest.skip("no AVX2 CPU, or no C compiler")
    yield
    cpu_bf16._library.cache_clear()  # the next caller sees the real hardware again
