"""`litgpt_lite chat`: an interactive multi-turn REPL that streams answers."""

from __future__ import annotations

import sys
from pathlib import Path

HELP = (
    "Chat with the model. Commands: !reset clears the history, !quit (or !exit) leaves. "
    "End a line with \\ to continue your message on the next line."
)


def read_message(prompt: str = ">> User: ") -> str | None:
    """One user message; lines ending in a backslash continue it. None at end of input."""
    lines = []
    while True:
        try:
            line = input(prompt if not lines else "... ")
        except EOFError:
            return None if not lines else "\n".join(lines)
        if line.endswith("\\"):
            lines.append(line[:-1])
            continue
        lines.append(line)
        return "\n".join(lines)


def chat(
    checkpoint_dir: Path,
    max_new_tokens: int = 512,
    temperature: float = 0.8,
    top_k: int | None = 50,
    top_p: float = 1.0,
    sys_prompt: str | None = None,
    precision: str | None = None,
    quantize: str | None = None,
    compile: bool = False,
    seed: int | None = None,
    device: str | None = None,
    kernels: str = "auto",
) -> None:
    """Chat with a checkpoint in the terminal, keeping the conversation history.

    Args:
        checkpoint_dir: a litgpt_lite checkpoint directory.
        max_new_tokens: most tokens per answer (clamped to what the context has left).
        temperature: 0 for greedy decoding; higher samples more freely.
        top_k: sample among the k most likely tokens (None: all).
        top_p: nucleus sampling mass.
        sys_prompt: an optional system prompt at the start of the conversation.
        precision: 32-true, bf16-true, 16-true; default is the hardware's fast one.
        quantize: bnb.nf4, bnb.nf4-dq, bnb.fp4, bnb.fp4-dq or bnb.int8.
        compile: compile the decode step with torch.compile (static shapes; replayed as a CUDA graph on GPUs). The
            first reply pays the compilation; it pays off on GPUs, where a small model is bound by launch overhead.
        seed: random seed for sampling.
        device: cpu, cuda, cuda:N (default: cuda when available).
        kernels: auto installs this hardware's fast paths (e.g. the CPU bf16 kernels); none keeps torch's modules.
    """
    from litgpt_lite.api import LLM
    from litgpt_lite.errors import UserError
    from litgpt_lite.generate import SamplingParams, stream_generate

    llm = LLM.load(
        checkpoint_dir, device=device, precision=precision, quantize=quantize, compile=compile, kernels=kernels
    )
    stop_ids = llm.prompt_style.stop_sequences(llm.tokenizer)
    history: list[dict] = [{"role": "system", "content": sys_prompt}] if sys_prompt else []
    print(HELP, flush=True)
    turn = 0
    while True:
        message = read_message()
        if message is None or message.strip() in ("!quit", "!exit"):
            break
        if message.strip() == "!reset":
            history = history[:1] if sys_prompt else []
            print("(history cleared)", flush=True)
            continue
        if not message.strip():
            continue
        history.append({"role": "user", "content": message})
        ids = llm.tokenizer.encode(llm.prompt_style.apply_messages(history))
        params = SamplingParams(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=None if seed is None else seed + turn,
            stop_token_ids=stop_ids,
        )
        print(">> Assistant: ", end="", flush=True)
        answer = ""
        try:
            for deltas in stream_generate(llm.model, llm.tokenizer, [ids], params):
                for d in deltas:
                    answer += d.text
                    print(d.text, end="", flush=True)
        except UserError as e:
            history.pop()
            print(f"\n(error: {e}; use !reset to start over)", flush=True)
            continue
        print("\n", flush=True)
        history.append({"role": "assistant", "content": answer})
        turn += 1
    print("bye", file=sys.stderr)
