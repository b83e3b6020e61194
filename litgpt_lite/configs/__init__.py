"""The registry of named configs: one small data module per family, each entry a dict of `Config` fields.

Every entry carries, in a comment, the link to the HF config.json it was read from.
"""

from __future__ import annotations

import importlib

FAMILIES = ("llama", "mistral", "gemma", "qwen", "phi", "falcon", "olmo", "smollm2", "pythia")


def _collect() -> dict[str, dict]:
    registry: dict[str, dict] = {}
    for family in FAMILIES:
        module = importlib.import_module(f"litgpt_lite.configs.{family}")
        for conf in module.configs:
            name = conf.get("name") or conf["hf_config"]["name"]
            if name in registry:
                raise RuntimeError(f"config {name} is registered twice")
            registry[name] = {**conf, "name": name}
    return registry


name_to_config: dict[str, dict] = _collect()
