"""Real weights: SmolLM2-135M-Instruct, our model vs transformers on the same folder."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from litgpt_lite.generate import greedy_tokens  # noqa: E402
from litgpt_lite.loading import load_model  # noqa: E402
from litgpt_lite.tokenizer import Tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def models(smollm2_hf, smollm2_lit):
    hf = transformers.AutoModelForCausalLM.from_pretrained(smollm2_hf, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(smollm2_hf)
    return hf, tok, load_model(smollm2_lit)


@pytest.fixture(scope="module")
def our_tokenizer(smollm2_lit):
    return Tokenizer(smollm2_lit)


def test_full_sequence_logits_match(models):
    hf, tok, ours = models
    ids = tok("The quick brown fox jumps over the lazy dog. def add(a, b): return a + b", return_tensors="pt")
    with torch.no_grad():
        expected = hf(**ids).logits
        got = ours(ids.input_ids)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_greedy_32_tokens_match_hf_generate(models, our_tokenizer):
    hf, tok, ours = models
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = hf.generate(
            ids, max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0, min_new_tokens=32
        )[0, ids.shape[1] :].tolist()
    got = greedy_tokens(ours, our_tokenizer, ids[0].tolist(), 32)
    assert got == expected
    assert tok.decode(got).startswith("The capital of France is Paris.")
