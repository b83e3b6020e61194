"""`--train.reuse_freed_memory`: a CPU training process keeps the memory that freed tensors give back, so the next
step's large tensors are not page-faulted and zeroed by the kernel again. Each run is its own process, because
glibc's malloc settings are process-wide."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
STEPS = 6
LOGITS_MB = 4 * 128 * 32768 * 4 / 2**20  # one micro batch's logits: 64 MB, over glibc's 32 MB mmap ceiling

# Pretrain a tiny model with a 32k vocabulary for STEPS steps and report the process's page faults.
SCRIPT = f"""
import resource, sys, tempfile
from pathlib import Path
sys.path.insert(0, {str(HERE)!r})
from train_helpers import TINY, train_args
from litgpt_lite.config import Config
from litgpt_lite.train.args import EvalArgs
from litgpt_lite.train.pretrain import pretrain

with tempfile.TemporaryDirectory() as out:
    pretrain(
        model_config=Config(**{{**TINY, "vocab_size": 32768}}),
        out_dir=Path(out),
        train=train_args({STEPS}, global_batch_size=4, reuse_freed_memory=sys.argv[1] == "true"),
        eval=EvalArgs(interval=1000, max_iters=1, max_new_tokens=0, initial_validation=False, final_validation=False),
        precision="32-true",
    )
print("FAULTS", resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
"""


def _faults(flag: str) -> int:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, flag], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stdout.split("FAULTS")[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_training_process_reuses_freed_memory():
    kept, returned = _faults("true"), _faults("false")
    # glibc's default faults each step's logits and their gradient in afresh; kept memory spares most of that
    pages_per_step = 2 * LOGITS_MB * 2**20 / 4096
    assert returned - kept > (STEPS - 1) * pages_per_step, (kept, returned)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_host_memory_switches_take_effect_on_glibc():
    """Both calls reach glibc (a fresh process: the settings are process-wide); elsewhere they return False."""
    script = (
        "import ctypes, sys\n"
        "from litgpt_lite.host_memory import release_freed_memory, reuse_freed_memory\n"
        "glibc = hasattr(ctypes.CDLL(None), 'gnu_get_libc_version')\n"
        "blocks = [bytearray(1 << 20) for _ in range(64)]\n"
        "del blocks\n"
        "print(glibc, reuse_freed_memory(), isinstance(release_freed_memory(), bool))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    glibc, reused, released = proc.stdout.split()
    assert reused == glibc and released == "True"
