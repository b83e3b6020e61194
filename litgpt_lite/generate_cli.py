"""`litgpt_lite generate`: complete one prompt and report time to first token, tokens/s and peak memory."""

from __future__ import annotations

import sys
import time
from pathlib import Path


def generate(
    checkpoint_dir: Path,
    prompt: str = "What food do llamas eat?",
    sys_prompt: str | None = None,
    num_samples: int = 1,
    max_new_tokens: int = 50,
    temperature: float = 0.8,
    top_k: int | None = 50,
    top_p: float = 1.0,
    precision: str | None = None,
    quantize: str | None = None,
    compile: bool = False,
    seed: int | None = 1234,
    device: str | None = None,
    raw: bool = False,
    kernels: str = "auto",
) -> None:
    """Generate text with a checkpoint, streaming it to stdout; the timings go to stderr.

    Args:
        checkpoint_dir: a litgpt_lite checkpoint directory.
        prompt: the user prompt (wrapped in the checkpoint's chat template / prompt style unless --raw).
        sys_prompt: an optional system prompt.
        num_samples: how many completions to sample, one after another.
        max_new_tokens: most tokens to generate (clamped to the context length).
        temperature: 0 for greedy decoding; higher samples more freely.
        top_k: sample among the k most likely tokens (None: all).
        top_p: nucleus sampling mass.
        precision: 32-true, bf16-true, 16-true; default is the hardware's fast one (fp32 on CPUs without bf16).
        quantize: bnb.nf4, bnb.nf4-dq, bnb.fp4, bnb.fp4-dq or bnb.int8.
        compile: compile the decode step with torch.compile (static shapes; replayed as a CUDA graph on GPUs). The
            first reply pays the compilation; it pays off on GPUs, where a small model is bound by launch overhead.
        seed: random seed for sampling.
        device: cpu, cuda, cuda:N (default: cuda when available).
        raw: send the prompt as is, without the prompt style.
        kernels: auto installs this hardware's fast paths (e.g. the CPU bf16 kernels); none keeps torch's modules.
    """
    from litgpt_lite.api import LLM, peak_memory_bytes

    llm = LLM.load(
        checkpoint_dir, device=device, precision=precision, quantize=quantize, compile=compile, kernels=kernels
    )
    for i in range(num_samples):
        start = time.perf_counter()
        first, text = None, ""
        stream = llm.generate(
            prompt,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            stream=True,
            sys_prompt=sys_prompt,
            seed=None if seed is None else seed + i,
            apply_prompt_style=not raw,
        )
        for delta in stream:
            first = first or time.perf_counter() - start
            text += delta
            print(delta, end="", flush=True)
        print(flush=True)
        total = time.perf_counter() - start
        n = len(llm.tokenizer.encode(text, bos=False)) if text else 0
        print(f"Time to first token: {first or total:.3f} s", file=sys.stderr)
        print(f"Time for inference {i + 1}: {total:.2f} s, {n} tokens, {n / total:.2f} tokens/s", file=sys.stderr)
    print(f"Peak memory: {peak_memory_bytes(llm.device) / 1e9:.2f} GB", file=sys.stderr)
