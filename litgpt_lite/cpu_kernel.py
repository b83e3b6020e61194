"""A C kernel for bf16 matmuls with few rows (decoding, short prompts) on x86-64 CPUs without native bf16.

On such CPUs (AVX2, or AVX-512 without its BF16 extension) torch's bf16 matrix-vector kernel spends its time
converting weights to float32, and a matmul with m rows costs about m matrix-vector products: prefilling a 7-token
prompt through SmolLM2-135M took 97 ms of matmuls, against 16 ms for one decode step. `cpu_kernel.c` converts each
weight once for up to 8 rows: the same prefill's matmuls take 22 ms.

The kernel is compiled on first use (about half a second) with the system C compiler (`$CC`, else `cc`) into the
user cache (`$XDG_CACHE_HOME/litgpt_lite/kernels`, else `~/.cache/...`), keyed by the source and the build recipe,
and loaded with ctypes. It links against the OpenMP runtime torch has loaded, so it runs on torch's threads, as many
as `torch.get_num_threads()`. Where anything is missing (no compiler, another architecture, no OpenMP runtime in
torch) `bf16_linear_kernel()` returns None and `model.Linear` uses torch's kernels. `LITGPT_LITE_CPU_KERNEL=0`
turns the kernel off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("cpu_kernel.c")
FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-fPIC", "-shared")
OFF_ENV = "LITGPT_LITE_CPU_KERNEL"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "litgpt_lite" / "kernels"


def _openmp_runtime() -> Path | None:
    """The OpenMP runtime library torch's CPU kernels run on, as loaded in this process (Linux)."""
    if "OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        path = line.split(maxsplit=5)[-1]
        if "/libgomp" in path or "/libiomp5" in path:
            return Path(path)
    return None


def _build(cc: str, runtime: Path, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:  # build aside, then rename: concurrent loaders are safe
        obj, lib = Path(tmp) / "kernel.o", Path(tmp) / out.name
        subprocess.run([cc, *FLAGS[:-1], "-c", str(SOURCE), "-o", str(obj)], check=True, capture_output=True)
        # link against torch's runtime by path (not -lgomp, the system's): one thread pool in the process
        link = [cc, "-shared", str(obj), str(runtime), f"-Wl,-rpath,{runtime.parent}", "-o", str(lib)]
        subprocess.run(link, check=True, capture_output=True)
        os.replace(lib, out)


@functools.cache
def bf16_linear_kernel() -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor] | None:
    """`f(x, w, b)` computing `F.linear(x, w, b)` for contiguous bf16 `w` (and `b`) on the CPU, or None where the
    kernel cannot be built or would not help (a CPU with native bf16 has oneDNN's kernels)."""
    from litgpt_lite.precision import cpu_has_native_bf16

    if os.environ.get(OFF_ENV, "1") == "0" or platform.machine() not in ("x86_64", "AMD64"):
        return None
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512") or cpu_has_native_bf16():
        return None
    cc = shutil.which(os.environ.get("CC") or "cc")
    runtime = _openmp_runtime()
    if cc is None or runtime is None:
        return None
    recipe = "\0".join([SOURCE.read_text(), cc, *FLAGS, str(runtime)])
    path = cache_dir() / f"bf16_linear-{hashlib.sha256(recipe.encode()).hexdigest()[:16]}.so"
    try:
        if not path.exists():
            _build(cc, runtime, path)
        fn = ctypes.CDLL(str(path)).bf16_linear
    except (OSError, subprocess.CalledProcessError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 3 + [ctypes.c_int]
    fn.restype = None

    def bf16_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        n, k = w.shape
        xf = x.reshape(-1, k).float().contiguous()
        y = torch.empty(*x.shape[:-1], n, dtype=torch.bfloat16)
        bias = None if b is None else b.data_ptr()
        fn(xf.data_ptr(), w.data_ptr(), bias, y.data_ptr(), xf.shape[0], n, k, torch.get_num_threads())
        return y

    return bf16_linear
