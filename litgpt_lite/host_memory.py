"""How this process's C library (glibc malloc) treats freed host memory: keep it for reuse, or hand it back.

One switch, `--train.reuse_freed_memory` (on by default for CPU training runs), calls `reuse_freed_memory()` once at
the start of the run. `release_freed_memory()` is the opposite, a one-off trim, for code that has just dropped a
large temporary and wants the process's resident size to fall now (streaming quantization). Both are no-ops where
the C library is not glibc: other libraries' `mallopt` parameters differ.
"""

from __future__ import annotations

import ctypes
import functools

# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap instead of their own mmap once `reuse_freed_memory` ran.
MMAP_THRESHOLD_BYTES = 1 << 30
NEVER_TRIM = 2**31 - 1


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """The process's C library if it is glibc, else None."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None  # glibc's own symbol


def reuse_freed_memory() -> bool:
    """Make glibc malloc keep freed memory in this process for the next allocation, for the rest of its life.

    Blocks of any size up to 1 GiB then come from the heap instead of their own `mmap`, and the heap's free top is
    never returned to the kernel. PyTorch's CPU allocator has no cache of its own, so by default every tensor over
    glibc's (adaptive, at most 32 MB) mmap threshold is page-faulted and zeroed by the kernel each time it is made:
    a training step's logits, their gradient and the large activations. The cost: the process keeps its peak
    memory between steps instead of shrinking.

    Returns:
        Whether both settings took effect (False where the C library is not glibc).
    """
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)
    )


def release_freed_memory() -> bool:
    """Hand the memory that freed blocks left in malloc's heaps back to the kernel now (`malloc_trim(0)`).

    Returns:
        Whether any memory was released (False also where the C library is not glibc).
    """
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.malloc_trim(0))
