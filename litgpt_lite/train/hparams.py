"""hyperparameters.yaml: an entrypoint's arguments as plain YAML, written into out_dir and out_dir/final, so that
`--config out_dir/hyperparameters.yaml` re-creates the run."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any


def hyperparameters(func: Callable, values: dict[str, Any]) -> dict[str, Any]:
    """The entrypoint's arguments as plain YAML data; `--config` on it re-creates the run from scratch."""
    out: dict[str, Any] = {}
    for name in inspect.signature(func).parameters:
        out[name] = _plain(values[name])
    if "resume" in out:
        out["resume"] = False
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if hasattr(value, "to_config"):
        return _plain(value.to_config())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def write_hyperparameters(out_dir: Path, hparams: dict[str, Any]) -> None:
    import yaml

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "hyperparameters.yaml").write_text(yaml.safe_dump(hparams, sort_keys=False))
