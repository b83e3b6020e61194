"""The user-facing inference path on the real SmolLM2 checkpoint: LLM API, generate CLI, chat REPL in a pty."""

import subprocess
import sys

import pytest

from litgpt_lite import LLM


@pytest.fixture(scope="module")
def llm(smollm2_lit):
    return LLM.load(smollm2_lit)


def test_llm_generate_greedy_batch_and_stream(llm):
    answer = llm.generate("What is the capital of France?", max_new_tokens=20, temperature=0)
    assert answer.startswith("The capital of France is Paris.")
    prompts = ["What is 2+2?", "What is the capital of France?"]
    batch = llm.generate(prompts, max_new_tokens=20, temperature=0)
    assert batch[1] == answer
    assert batch[0] == llm.generate(prompts[0], max_new_tokens=20, temperature=0)
    assert "".join(llm.generate(prompts[1], max_new_tokens=20, temperature=0, stream=True)) == answer
    assert llm.generate(prompts[1], max_new_tokens=20, temperature=0, stop=["Paris"]) == "The capital of France is "
    longer = llm.generate(prompts[1], max_new_tokens=20, temperature=0, ignore_eos=True)  # runs past <|im_end|>
    assert longer.startswith(answer) and len(longer) > len(answer)


def test_llm_benchmark_reports_metrics(llm):
    text, metrics = llm.benchmark(max_new_tokens=5, temperature=0)
    assert text
    assert metrics["Tokens/sec"][0] > 0 and metrics["Seconds to first token"][0] > 0
    assert metrics["Peak memory (GB)"][0] > 0.1


def test_generate_cli_bad_checkpoint_is_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "litgpt_lite", "generate", str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: Checkpoint dir {tmp_path / 'nope'} does not exist"


def test_chat_two_turns_in_a_pty(smollm2_lit):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(
        sys.executable,
        ["-m", "litgpt_lite", "chat", str(smollm2_lit), "--temperature", "0", "--max_new_tokens", "24"],
        encoding="utf-8",
        timeout=120,
    )
    try:
        child.expect(">> User: ")
        child.sendline("What is the capital of France?")
        child.expect(">> User: ")
        assert "Paris" in child.before
        child.sendline("And of \\")  # a multiline message
        child.sendline("Germany?")
        child.expect(">> User: ")
        assert "Berlin" in child.before
        child.sendline("!reset")
        child.expect("history cleared")
        child.sendline("!quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_kernels_flag_on_generate(tmp_path):
    """`--kernels none` loads and generates; a wrong value is one line and exit code 2, before any loading."""
    import torch
    from tiny_configs import tiny_llama
    from tokenizer_fixtures import build_bpe_dir

    from litgpt_lite.checkpoint import save_checkpoint
    from litgpt_lite.model import GPT

    torch.manual_seed(0)
    config = tiny_llama(vocab_size=600)
    ckpt = save_checkpoint(GPT(config), config, tmp_path / "ckpt", tokenizer_dir=build_bpe_dir(tmp_path / "tok"))
    base = [sys.executable, "-m", "litgpt_lite", "generate", str(ckpt), "--max_new_tokens", "3", "--device", "cpu"]
    ok = subprocess.run([*base, "--kernels", "none", "--raw", "true"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "Time for inference 1" in ok.stderr
    bad = subprocess.run([*base, "--kernels", "fast"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: --kernels must be one of auto, none, got 'fast'"
