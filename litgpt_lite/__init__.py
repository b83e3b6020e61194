"""litgpt_lite: one readable GPT, one fit loop, one generation core.

The public names load lazily so `import litgpt_lite` (and config-only commands) stay free of torch.
"""

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["LLM", "GPT", "Config", "Tokenizer", "PromptStyle", "load_model"]

_LAZY = {
    "LLM": "litgpt_lite.api",
    "GPT": "litgpt_lite.model",
    "Config": "litgpt_lite.config",
    "Tokenizer": "litgpt_lite.tokenizer",
    "PromptStyle": "litgpt_lite.prompts",
    "load_model": "litgpt_lite.loading",
}

if TYPE_CHECKING:  # pragma: no cover
    from litgpt_lite.api import LLM
    from litgpt_lite.config import Config
    from litgpt_lite.loading import load_model
    from litgpt_lite.model import GPT
    from litgpt_lite.prompts import PromptStyle
    from litgpt_lite.tokenizer import Tokenizer


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'litgpt_lite' has no attribute {name!r}")
