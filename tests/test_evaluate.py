"""`litgpt_lite evaluate`: our lm-eval model against lm-eval's own HFLM on the same weights, and the command itself."""

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from lm_eval.api.instance import Instance

from litgpt_lite.checkpoint import save_checkpoint
from litgpt_lite.config import Config
from litgpt_lite.errors import UserError
from litgpt_lite.evaluate import LitLM, evaluate, materialize_bundled_tasks, task_manager_for
from litgpt_lite.loading import load_model
from litgpt_lite.model import GPT
from litgpt_lite.tokenizer import Tokenizer

TINY_BLOCK = 48  # small, so a paragraph needs several rolling windows


@pytest.fixture(scope="module")
def tiny_checkpoint(smollm2_hf, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = Config(
        name="tiny-eval", block_size=TINY_BLOCK, vocab_size=49152, padding_multiple=64, n_layer=2, n_embd=32,
        n_head=4, n_query_groups=2, intermediate_size=64, norm_class="RMSNorm", mlp_class="LLaMAMLP",
        rope_base=10000.0,
    )  # fmt: skip
    model = GPT(config)
    with torch.no_grad():  # a larger init spreads the logits, so greedy picks are not near-ties
        model.lm_head.weight.mul_(30)
    return save_checkpoint(model, config, tmp_path_factory.mktemp("eval") / "tiny", tokenizer_dir=smollm2_hf)


@pytest.fixture(scope="module")
def tiny_lm(tiny_checkpoint) -> LitLM:
    return LitLM(load_model(tiny_checkpoint, precision=torch.float32), Tokenizer(tiny_checkpoint), batch_size=4)


@pytest.fixture(scope="module")
def tiny_hflm(tiny_checkpoint, tmp_path_factory):
    from lm_eval.models.huggingface import HFLM

    from litgpt_lite.convert import convert_from_litgpt

    hf_dir = convert_from_litgpt(tiny_checkpoint, tmp_path_factory.mktemp("eval_hf") / "hf")
    return HFLM(pretrained=str(hf_dir), dtype="float32", batch_size=4, device="cpu", max_length=TINY_BLOCK)


def _requests(kind: str, args_list: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=args, idx=i) for i, args in enumerate(args_list)]


LL_PAIRS = [
    ("The capital of France is", " Paris"),
    ("Question: How many legs does a spider have?\nAnswer:", " eight"),
    ("Question: How many legs does a spider have?\nAnswer:", " six"),
    ("One two three", " four five six seven"),
    ("A", " b"),
    ("", "Hello world"),  # empty context: the prefix token stands in
]


def test_loglikelihood_matches_hflm_and_a_plain_forward(tiny_lm, tiny_hflm, tiny_checkpoint):
    ours = tiny_lm.loglikelihood(_requests("loglikelihood", LL_PAIRS), disable_tqdm=True)
    theirs = tiny_hflm.loglikelihood(_requests("loglikelihood", LL_PAIRS), disable_tqdm=True)
    for (ll, greedy), (ref_ll, ref_greedy) in zip(ours, theirs):
        assert ll == pytest.approx(ref_ll, abs=1e-4)
        assert greedy == ref_greedy
    # and, by hand, for the first pair: one unbatched forward over context + continuation
    tok = tiny_lm._tokenizer
    context, continuation = tiny_lm._encode_pair(*LL_PAIRS[0])
    logits = tiny_lm.model(torch.tensor([context + continuation]))[0, :, : tiny_lm.vocab_size]
    logprobs = torch.log_softmax(logits, -1)[len(context) - 1 : -1]
    by_hand = logprobs.gather(-1, torch.tensor(continuation)[:, None]).sum().item()
    assert ours[0][0] == pytest.approx(by_hand, rel=1e-6, abs=1e-5)  # fp32 kernels differ in summation order
    assert tok.decode(continuation) == " Paris"


def test_batch_size_does_not_change_scores(tiny_checkpoint, tiny_lm):
    one = LitLM(tiny_lm.model, tiny_lm._tokenizer, batch_size=1)
    a = one.loglikelihood(_requests("loglikelihood", LL_PAIRS), disable_tqdm=True)
    b = tiny_lm.loglikelihood(_requests("loglikelihood", LL_PAIRS), disable_tqdm=True)
    assert [x[0] for x in a] == pytest.approx([x[0] for x in b], rel=1e-6, abs=1e-5)


def test_rolling_loglikelihood_matches_hflm_over_several_windows(tiny_lm, tiny_hflm):
    text = (
        "The river runs through the middle of the town, and three old stone bridges connect the northern and "
        "southern districts. Every autumn the leaves on the maple trees turn red and orange before they fall and "
        "cover the paths in the park. The library on the corner opens at nine o'clock and closes at six, except on "
        "Sundays, when it stays closed all day. "
    ) * 2
    assert len(tiny_lm.tok_encode(text)) > 2 * TINY_BLOCK  # three windows at least
    texts = [(text,), ("Short text.",)]
    ours = tiny_lm.loglikelihood_rolling(_requests("loglikelihood_rolling", texts), disable_tqdm=True)
    theirs = tiny_hflm.loglikelihood_rolling(_requests("loglikelihood_rolling", texts), disable_tqdm=True)
    assert ours == pytest.approx(theirs, rel=1e-6, abs=1e-4)  # sums of ~100 token log-probs


def test_generate_until_matches_hflm_and_stops(tiny_lm, tiny_hflm):
    free = tiny_lm.generate_until(_requests("generate_until", [("Q: What is", {"max_gen_toks": 10})]), True)[0]
    stop = free[2:4]
    args = [
        ("Q: What is", {"until": [stop], "max_gen_toks": 10, "do_sample": False}),
        ("Another prompt that is longer than the first one", {"until": ["\n"], "max_gen_toks": 6}),
    ]
    ours = tiny_lm.generate_until(_requests("generate_until", args), disable_tqdm=True)
    theirs = tiny_hflm.generate_until(_requests("generate_until", args), disable_tqdm=True)
    assert ours == theirs
    assert ours[0] == free[: free.find(stop)]


def test_cli_writes_results_json(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    tasks = "litgpt_lite_mc,litgpt_lite_ppl,litgpt_lite_qa"
    cmd = [sys.executable, "-m", "litgpt_lite", "evaluate", str(tiny_checkpoint), "--tasks", tasks,
           "--limit", "3", "--batch_size", "4", "--out_dir", str(out)]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "|litgpt_lite_mc" in run.stdout and "exact_match" in run.stdout  # lm-eval's table
    results = json.loads((out / "results.json").read_text())["results"]
    assert set(results) == {"litgpt_lite_mc", "litgpt_lite_ppl", "litgpt_lite_qa"}
    assert 0 <= results["litgpt_lite_mc"]["acc,none"] <= 1
    assert results["litgpt_lite_ppl"]["word_perplexity,none"] > 1
    assert results["litgpt_lite_qa"]["exact_match,strip"] == 0  # a random model answers nothing right
    assert json.loads((out / "results.json").read_text())["n-samples"]["litgpt_lite_mc"]["effective"] == 3


def test_unfetchable_dataset_is_one_line_naming_it(tiny_checkpoint, tmp_path):
    (tmp_path / "remote.yaml").write_text(
        "task: my_remote_task\ndataset_path: no-such-org/no-such-dataset\noutput_type: multiple_choice\n"
        "test_split: test\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{c}}'\ndoc_to_target: 0\n"
        "metric_list:\n  - metric: acc\n"
    )
    cmd = [sys.executable, "-m", "litgpt_lite", "evaluate", str(tiny_checkpoint), "--tasks", "my_remote_task",
           "--include_path", str(tmp_path)]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 2
    error = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "Traceback" not in run.stderr
    assert "no-such-org/no-such-dataset" in error[0] and "--include_path" in error[0]


@pytest.mark.slow
def test_smollm2_multiple_choice_parity_with_hflm(smollm2_hf, smollm2_lit):
    """Per-example loglikelihoods and accuracies on the bundled multiple-choice task equal HFLM's (fp32)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    with tempfile.TemporaryDirectory() as tmp:
        manager = task_manager_for(["litgpt_lite_mc"], [materialize_bundled_tasks(Path(tmp))])
        ours = LitLM(load_model(smollm2_lit, precision=torch.float32), Tokenizer(smollm2_lit), batch_size=8)
        theirs = HFLM(pretrained=str(smollm2_hf), dtype="float32", batch_size=8, device="cpu")
        runs = [
            simple_evaluate(model=lm, tasks=["litgpt_lite_mc"], limit=6, task_manager=manager, log_samples=True)
            for lm in (ours, theirs)
        ]
    samples = [sorted(r["samples"]["litgpt_lite_mc"], key=lambda s: s["doc_id"]) for r in runs]
    lls = [[resp[0][0] for s in run for resp in s["resps"]] for run in samples]
    assert len(lls[0]) == 6 * 4
    assert lls[0] == pytest.approx(lls[1], abs=1e-4)
    for metric in ("acc,none", "acc_norm,none"):
        assert runs[0]["results"]["litgpt_lite_mc"][metric] == runs[1]["results"]["litgpt_lite_mc"][metric]


@pytest.mark.slow
def test_listing_tasks_and_unknown_task(tiny_checkpoint, capsys):
    """Both need lm-eval's full task index (~14k YAMLs), hence slow."""
    evaluate(tiny_checkpoint)
    out = capsys.readouterr().out
    assert all(name in out for name in ("litgpt_lite_mc", "litgpt_lite_ppl", "litgpt_lite_qa"))
    assert int(re.search(r"and (\d+) tasks", out).group(1)) > 1000
    with pytest.raises(UserError, match="Did you mean: litgpt_lite_mc"):
        evaluate(tiny_checkpoint, tasks="litgpt_lite_mcq")
