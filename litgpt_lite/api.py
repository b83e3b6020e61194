"""The Python API: `LLM.load(...)`, `.generate(...)` (batched, streaming) and `.benchmark(...)`."""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from litgpt_lite.errors import UserError
from litgpt_lite.generate import SamplingParams, generate_completions, stream_generate
from litgpt_lite.loading import load_for_inference


def _looks_like_repo_id(name: str) -> bool:
    """`org/name` with no path-like parts: what the Hub calls a repo id."""
    import re

    return re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None and not name.startswith((".", "/"))


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class LLM:
    """A loaded model with its tokenizer and prompt style.

    >>> llm = LLM.load("checkpoints/HuggingFaceTB/SmolLM2-135M-Instruct")
    >>> llm.generate("What is the capital of France?", max_new_tokens=20, temperature=0)
    """

    def __init__(self, model, tokenizer, prompt_style, checkpoint_dir: Path) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.prompt_style = prompt_style
        self.checkpoint_dir = Path(checkpoint_dir)

    @classmethod
    def load(
        cls,
        model: str | Path,
        device: str | None = None,
        precision: str | None = None,
        quantize: str | None = None,
        access_token: str | None = None,
        checkpoint_dir: str | Path = "checkpoints",
        compile: bool = False,
        adapter: str | Path | None = None,
        kernels: str = "auto",
    ) -> LLM:
        """Load a checkpoint directory, or a Hub repo id (downloaded and converted when not present yet).

        Args:
            model: a checkpoint dir (full, pre-quantized or a LoRA output dir) or a Hub repo id (org/name).
            device: cpu, cuda, cuda:N (default: cuda when available).
            precision: 32-true, bf16-true, 16-true (default: the hardware's fast one).
            quantize: bnb.nf4, bnb.nf4-dq, bnb.fp4, bnb.fp4-dq or bnb.int8.
            access_token: Hugging Face token for gated repos.
            checkpoint_dir: where a repo id is downloaded to.
            compile: compile the decode step with torch.compile.
            adapter: a LoRA output dir to put on top of `model`.
            kernels: auto installs this hardware's fast paths; none keeps torch's modules.
        """
        path = Path(model)
        if not path.exists() and _looks_like_repo_id(str(model)):
            from litgpt_lite.download import ensure_checkpoint

            path = ensure_checkpoint(str(model), access_token=access_token, checkpoint_dir=checkpoint_dir)
        gpt, tokenizer, style = load_for_inference(path, device, precision, quantize, adapter, kernels)
        if compile:  # the decode step, with static shapes; a CUDA graph on GPUs
            gpt.compile_decode(mode="reduce-overhead" if gpt.lm_head.weight.device.type == "cuda" else None)
        return cls(gpt, tokenizer, style, path)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _encode(self, prompt: str, sys_prompt: str | None, apply_prompt_style: bool) -> list[int]:
        text = self.prompt_style.apply(prompt, sys_prompt=sys_prompt) if apply_prompt_style else prompt
        return self.tokenizer.encode(text)

    def _params(self, max_new_tokens, temperature, top_k, top_p, stop, seed, ignore_eos=False) -> SamplingParams:
        stop_ids = [] if ignore_eos else self.prompt_style.stop_sequences(self.tokenizer)  # eos and end-of-turn ids
        stop = [stop] if isinstance(stop, str) else list(stop or [])
        return SamplingParams(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop=stop,
            stop_token_ids=stop_ids,
            ignore_eos=ignore_eos,
        )

    def generate(
        self,
        prompt: str | list[str],
        max_new_tokens: int = 50,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float = 1.0,
        stop: str | list[str] | None = None,
        stream: bool = False,
        sys_prompt: str | None = None,
        seed: int | None = None,
        apply_prompt_style: bool = True,
        ignore_eos: bool = False,
    ) -> str | list[str] | Iterator[str]:
        """Complete one prompt (returns str) or a batch (returns list[str]); `stream=True` yields text deltas.

        Prompts of different lengths run as one left-padded batch. The prompt style (chat template) is applied unless
        `apply_prompt_style=False`. A stream over a list of prompts yields `(index, delta)` pairs. `ignore_eos=True`
        runs every prompt to `max_new_tokens`, past end-of-sequence and end-of-turn tokens (fixed-length outputs).
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise UserError("generate() needs at least one prompt")
        ids = [self._encode(p, sys_prompt, apply_prompt_style) for p in prompts]
        params = self._params(max_new_tokens, temperature, top_k, top_p, stop, seed, ignore_eos)
        if stream:
            return self._stream(ids, params, single=isinstance(prompt, str))
        texts = [c.text for c in generate_completions(self.model, self.tokenizer, ids, params)]
        return texts[0] if isinstance(prompt, str) else texts

    def _stream(self, ids, params, single: bool) -> Iterator:
        for deltas in stream_generate(self.model, self.tokenizer, ids, params):
            for d in deltas:
                if d.text:
                    yield d.text if single else (d.row, d.text)

    def benchmark(self, prompt: str = "What is the capital of France?", num_iterations: int = 1, **kwargs) -> tuple:
        """Generate `num_iterations` times; return (text, metrics) with time to first token, tokens/s, memory."""
        metrics: dict[str, list[float]] = {"Seconds to first token": [], "Tokens/sec": [], "Seconds total": []}
        text = ""
        for _ in range(num_iterations):
            start = time.perf_counter()
            first, n_tokens, text = None, 0, ""
            for delta in self.generate(prompt, stream=True, **kwargs):
                first = first or time.perf_counter() - start
                text += delta
            total = time.perf_counter() - start
            n_tokens = len(self.tokenizer.encode(text, bos=False)) if text else 0
            metrics["Seconds to first token"].append(first or total)
            metrics["Seconds total"].append(total)
            metrics["Tokens/sec"].append(n_tokens / total if total else 0.0)
        metrics["Peak memory (GB)"] = [peak_memory_bytes(self.device) / 1e9]
        return text, metrics

    def __repr__(self) -> str:
        return f"LLM({self.checkpoint_dir}, device={self.device})"
