"""C kernels for bf16 inference on x86-64 CPUs with AVX2 but without native bf16 (AMD Zen 2-4, most Intel client
CPUs): a matmul with few rows, RMSNorm, RoPE, and one query's attention over a KV cache.

On such CPUs torch's bf16 matrix-vector kernel spends its time converting weights to float32, and a matmul with m
rows costs about m matrix-vector products: prefilling a 7-token prompt through SmolLM2-135M took 97 ms of matmuls,
against 16 ms for one decode step. `bf16_linear` converts each weight once for up to 8 rows: that prefill's matmuls
take 22 ms. The norm, RoPE and the attention replace torch calls whose fixed costs dominate at a decode step's sizes
(the eight small ops of a bf16 RMSNorm took ~50 us inside a step): SmolLM2-135M's bf16 decode step went from 28.2
to 23.1 ms on 2 cores. All compute in float32: the matmul, the norm and RoPE round to bf16 where torch does (RoPE
gives torch's bits exactly), the attention only its output (its scores and weights stay float32). The sums run in
another order than torch's, so results can differ from torch's in the last bf16 bit, and greedy bf16 text can part
from torch's after some tokens (bf16 logits often tie). `LITGPT_LITE_CPU_KERNEL=0` gives torch's kernels, and their
exact bits, back.

The kernels are compiled on first use (about half a second) with the system C compiler (`$CC`, else `cc`) into the
user cache (`$XDG_CACHE_HOME/litgpt_lite/kernels`, else `~/.cache/...`), keyed by the source and the build recipe,
and loaded with ctypes. They link against the OpenMP runtime torch has loaded, so they run on torch's threads, as
many as `torch.get_num_threads()`. Where anything is missing (no compiler, another architecture, no OpenMP runtime
in torch) `available()` is False and the swapped-in modules (`install_kernels`) use torch's ops.
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
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("cpu_bf16.c")
COMPILE_FLAGS = ("-O3", "-mavx2", "-mfma", "-ffp-contract=off", "-fopenmp", "-fPIC")
# --no-undefined: a compiler whose OpenMP calls torch's runtime lacks (clang's __kmpc_*) fails here, not at a call
LINK_FLAGS = ("-shared", "-lm", "-Wl,--no-undefined")
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
    return pick_runtime([line.split(maxsplit=5)[-1] for line in maps.splitlines()], Path(torch.__file__).parent)


def pick_runtime(mapped: list[str], torch_dir: Path) -> Path | None:
    """Among a process's mapped files, the OpenMP runtime: the one shipped inside torch's package where there is one
    (another library may have loaded the system's as well; a second runtime is a second thread pool), else the first."""
    found = [Path(p) for p in dict.fromkeys(mapped) if "/libgomp" in p or "/libiomp5" in p]
    return next((p for p in found if torch_dir in p.parents), found[0] if found else None)


def _build(cc: str, runtime: Path, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:  # build aside, then rename: concurrent loaders are safe
        obj, lib = Path(tmp) / "kernel.o", Path(tmp) / out.name
        subprocess.run([cc, *COMPILE_FLAGS, "-c", str(SOURCE), "-o", str(obj)], check=True, capture_output=True)
        # link against torch's runtime by path (not -lgomp, the system's): one thread pool in the process
        link = [cc, str(obj), str(runtime), f"-Wl,-rpath,{runtime.parent}", *LINK_FLAGS, "-o", str(lib)]
        subprocess.run(link, check=True, capture_output=True)
        os.replace(lib, out)


def supported() -> bool:
    """Whether the kernels would help here, before building them: an x86-64 CPU with AVX2 (or AVX-512), and
    `LITGPT_LITE_CPU_KERNEL` not "0". They help with native bf16 too: on an AVX512-BF16 AMD EPYC (2 cores) a
    SmolLM2-135M bf16 decode step takes 16.0 ms with them against 29.7 ms with torch's oneDNN kernels."""
    if os.environ.get(OFF_ENV, "1") == "0" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The built kernels, or None where they are not `supported` or cannot be built."""
    if not supported():
        return None
    cc = shutil.which(os.environ.get("CC") or "cc")
    runtime = _openmp_runtime()
    if cc is None or runtime is None:
        return None
    recipe = "\0".join([SOURCE.read_text(), cc, *COMPILE_FLAGS, *LINK_FLAGS, str(runtime)])
    path = cache_dir() / f"cpu_bf16-{hashlib.sha256(recipe.encode()).hexdigest()[:16]}.so"
    try:
        if not path.exists():
            _build(cc, runtime, path)
        lib = ctypes.CDLL(str(path))
        lib.bf16_linear.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 3 + [ctypes.c_int]
        lib.bf16_linear.restype = ctypes.c_int
        lib.bf16_rms_norm.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long] * 2 + [ctypes.c_float] + [ctypes.c_int] * 2
        lib.bf16_rms_norm.restype = None
        lib.bf16_attend_one.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 13 + [ctypes.c_float, ctypes.c_int]
        lib.bf16_attend_one.restype = ctypes.c_int
        lib.bf16_rope.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 10
        lib.bf16_rope.restype = None
    except (OSError, subprocess.CalledProcessError, AttributeError):
        return None
    return lib


def available() -> bool:
    """Whether the kernels below can run in this process (built and loaded; see the module's docstring)."""
    return _library() is not None


# The kernels. Call them only where `available()`; each takes bf16 CPU tensors and returns a new contiguous one.
def bf16_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """`F.linear(x, w, b)` for bf16 `x` and contiguous bf16 `w` (and `b`)."""
    n, k = w.shape
    x = x.contiguous()
    y = torch.empty(*x.shape[:-1], n, dtype=torch.bfloat16)
    bias = None if b is None else b.data_ptr()
    threads = torch.get_num_threads()
    if _library().bf16_linear(x.data_ptr(), w.data_ptr(), bias, y.data_ptr(), x.numel() // k, n, k, threads):
        raise MemoryError("out of memory for a bf16 matmul's float32 input")
    return y


def bf16_rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float, unit_offset: bool) -> torch.Tensor:
    """`model.RMSNorm`'s forward for bf16 `x` and contiguous bf16 `w`."""
    x = x.contiguous()
    y = torch.empty_like(x)
    n = x.shape[-1]
    threads = torch.get_num_threads()
    _library().bf16_rms_norm(x.data_ptr(), w.data_ptr(), y.data_ptr(), x.numel() // n, n, eps, unit_offset, threads)
    return y


def bf16_attend_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """SDPA without a mask for one query per row: q (B, H, 1, D), k and v (B, G, S, D), each with a contiguous last
    dimension (a decode step over its cache); returns (B, H, 1, D)."""
    B, H, _, D = q.shape
    G, S = k.shape[1], k.shape[2]
    y = torch.empty(B, H, 1, D, dtype=torch.bfloat16)
    qs, ks, vs = q.stride(), k.stride(), v.stride()
    ptrs = (q.data_ptr(), k.data_ptr(), v.data_ptr(), y.data_ptr())
    strides = (qs[0], qs[1], ks[0], ks[1], ks[2], vs[0], vs[1], vs[2])
    if _library().bf16_attend_one(*ptrs, B, H, G, S, D, *strides, scale, torch.get_num_threads()):
        raise MemoryError("out of memory for an attention step's scores")
    return y


def bf16_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`model.apply_rope`, bit for bit, for x (B, T, heads, D) and cos, sin (B or 1, T, 1, n) of equal strides, each
    with a contiguous last dimension."""
    B, T, heads, D = x.shape
    y = torch.empty(B, T, heads, D, dtype=torch.bfloat16)
    xs, cs = x.stride(), cos.stride()
    cs_b = 0 if cos.shape[0] == 1 else cs[0]
    ptrs = (x.data_ptr(), cos.data_ptr(), sin.data_ptr(), y.data_ptr())
    _library().bf16_rope(*ptrs, B, T, heads, D, cos.shape[-1], xs[0], xs[1], xs[2], cs_b, cs[1])
    return y
