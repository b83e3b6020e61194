"""Recipes: what a training method changes. The fit loop is the same for all of them.

A recipe prepares the model before `fabric.setup` (freeze, inject adapters, quantize), names the state that goes
into a resumable checkpoint, and writes the final artifact. `FullRecipe` serves pretraining and full fine-tuning;
`LoRARecipe` (litgpt_lite/lora.py) serves LoRA and QLoRA.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from litgpt_lite.errors import UserError


@runtime_checkable
class Recipe(Protocol):
    name: str  # "pretrain" | "full" | "lora"

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module: ...

    def trainable_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]: ...

    def load_trainable_state(self, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None: ...

    def export(self, model: torch.nn.Module, out_dir: Path, base_checkpoint_dir: Path | None) -> None: ...


class FullRecipe:
    """Every parameter trains; the export is a complete checkpoint directory.

    Args:
        name: "pretrain" or "full" (recorded in logs only).
        prompt_style: the prompt style name to store with the exported checkpoint (None: copy the base's).
    """

    def __init__(self, name: str = "full", prompt_style: str | None = None) -> None:
        self.name, self.prompt_style = name, prompt_style

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def trainable_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        state = model.state_dict()
        if getattr(model.config, "tie_embeddings", False):
            state.pop("lm_head.weight", None)  # the same tensor as wte.weight
        return state

    def load_trainable_state(self, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_embeddings)]
        if missing or unexpected:
            first = (missing or unexpected)[0]
            raise UserError(f"The checkpoint does not match the model ({first!r} missing or unexpected)")

    def export(self, model: torch.nn.Module, out_dir: Path, base_checkpoint_dir: Path | None) -> None:
        from litgpt_lite.checkpoint import save_checkpoint

        state = {k: v.detach().cpu() for k, v in self.trainable_state(model).items()}
        save_checkpoint(state, model.config, out_dir, tokenizer_dir=base_checkpoint_dir, prompt_style=self.prompt_style)
