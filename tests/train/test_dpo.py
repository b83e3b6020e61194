"""finetune_dpo: the losses and log-probs equal TRL's on the same model and pairs, the LoRA reference is the base
model, resume is exact, and a short real run on SmolLM2-135M-Instruct learns the bundled preferences."""

from __future__ import annotations

import copy
import json
import math
import types

import pytest
import torch
from train_helpers import tiny_checkpoint, train_args

from litgpt_lite.data.base import DataContext, collate
from litgpt_lite.data.preference import Preference
from litgpt_lite.data.text import BUNDLED_TOKENIZER
from litgpt_lite.errors import UserError
from litgpt_lite.train.args import EvalArgs
from litgpt_lite.train.dpo import DPOArgs, DPORecipe, adapters_disabled, finetune_dpo, split_pairs

QUICK_EVAL = EvalArgs(interval=1000, max_iters=2, max_new_tokens=0, final_validation=False)
RECORDS = [
    {"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "The capital of France is Rome."},
    {"prompt": "What is 2 plus 3?", "chosen": "2 plus 3 is 5.", "rejected": "Seven."},
    {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."}],
        "chosen": [{"role": "assistant", "content": "Blue."}],
        "rejected": [{"role": "assistant", "content": "I would rather not say which color I like."}],
    },
    {
        "chosen": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}],
        "rejected": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "No."}],
    },
]


def _logged(out_dir) -> list[dict[str, float]]:
    """The run's logged rows (logs/metrics.csv) with their numbers as floats; empty cells left out."""
    from litgpt_lite.train.loggers import read_metrics

    rows = read_metrics(out_dir / "logs" / "metrics.csv")
    return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in rows]


def _fabric():
    import lightning as L

    return L.Fabric(accelerator="cpu", devices=1, precision="32-true")


def _pairs(tmp_path, records=RECORDS, style: str = "alpaca"):
    from litgpt_lite.prompts import PromptStyle
    from litgpt_lite.tokenizer import Tokenizer

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    tokenizer = Tokenizer(BUNDLED_TOKENIZER)
    ctx = DataContext(tokenizer, 128, 0, PromptStyle.from_name(style))
    return Preference(path, val_split_fraction=0).build(ctx).train


# ---------------------------------------------------------------- parity with TRL
@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A tiny random Llama (HF), our conversion of it with random LoRA adapters (the policy), and the HF model of
    the merged policy: reference = the HF base, policy = the HF merge."""
    transformers = pytest.importorskip("transformers")
    from litgpt_lite.checkpoint import save_checkpoint
    from litgpt_lite.convert import convert_from_litgpt, convert_to_litgpt
    from litgpt_lite.loading import load_model
    from litgpt_lite.lora import LoRARecipe, merge_lora_modules

    root = tmp_path_factory.mktemp("dpo_parity")
    config = transformers.LlamaConfig(
        vocab_size=1024,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    hf_ref = transformers.LlamaForCausalLM(config).eval()
    hf_ref.save_pretrained(root / "hf")
    convert_to_litgpt(root / "hf", out_dir=root / "lit")
    ours = LoRARecipe(r=4, alpha=8, dropout=0.0, query=True, value=True, mlp=True).prepare(load_model(root / "lit"))
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(name)))
    merged = merge_lora_modules(copy.deepcopy(ours))
    save_checkpoint(merged, merged.config, root / "merged")
    convert_from_litgpt(root / "merged", root / "hf_policy")
    hf_policy = transformers.LlamaForCausalLM.from_pretrained(root / "hf_policy", dtype=torch.float32).eval()
    return ours.eval(), hf_policy, hf_ref


def _trl_dpo(hf_policy, hf_ref, loss_type: str, beta: float, tmp_path):
    """TRL's DPOTrainer on the two HF models (driven through its collator and `_compute_loss`)."""
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(BUNDLED_TOKENIZER / "tokenizer.json"))
    tokenizer.eos_token = tokenizer.pad_token = "<|endoftext|>"
    args = trl.DPOConfig(
        output_dir=str(tmp_path / "trl"),
        loss_type=[loss_type],
        beta=beta,
        report_to="none",
        use_cpu=True,
        bf16=False,
        max_length=None,
        disable_dropout=True,
    )
    dummy = datasets.Dataset.from_list([{"prompt": "a", "chosen": " b", "rejected": " c"}])
    return trl.DPOTrainer(model=hf_policy, ref_model=hf_ref, args=args, train_dataset=dummy, processing_class=tokenizer)


def _trl_examples(dataset) -> list[dict]:
    return [{"prompt_ids": p.prompt, "chosen_ids": p.chosen, "rejected_ids": p.rejected} for p in dataset.pairs]


def _ours(model, dataset, args: DPOArgs):
    """Our recipe's loss over the pairs (one micro batch), per-pair log-probs, and the step metrics."""
    recipe = DPORecipe(types.SimpleNamespace(name="lora"), args, out_dir=".")
    batch = collate([dataset[i] for i in range(len(dataset))])
    fabric = _fabric()
    with torch.no_grad():
        loss = recipe.loss_sum(fabric, model, batch) / recipe.count_targets([batch])
        ids, labels = split_pairs(batch)
        from litgpt_lite.train.dpo import sequence_logps

        logps, _ = sequence_logps(fabric, model, ids, labels)
    return float(loss), logps, recipe.pop_metrics(fabric)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_and_ipo_equal_trl(loss_type, tiny_models, tmp_path):
    ours_model, hf_policy, hf_ref = tiny_models
    dataset = _pairs(tmp_path)
    beta = 0.3
    trainer = _trl_dpo(hf_policy, hf_ref, loss_type, beta, tmp_path)
    inputs = trainer.data_collator(_trl_examples(dataset))
    assert inputs["completion_mask"].sum() == sum(len(p.chosen) + len(p.rejected) for p in dataset.pairs)
    with torch.no_grad():
        trl_loss = float(trainer._compute_loss(hf_policy, inputs, return_outputs=False))
        trl_chosen, trl_rejected = trainer.compute_ref_log_probs(hf_policy, inputs)  # TRL's logps of the policy
    loss, logps, metrics = _ours(ours_model, dataset, DPOArgs(loss=loss_type, beta=beta))
    torch.testing.assert_close(logps, torch.cat((trl_chosen, trl_rejected)).float(), atol=1e-5, rtol=1e-5)
    assert abs(loss - trl_loss) < 1e-5, (loss, trl_loss)
    assert loss > 0.05 and not math.isclose(loss, math.log(2), abs_tol=1e-3)  # the policy really differs
    trl_metrics = {k: v[-1] for k, v in trainer._metrics["eval"].items()}  # "eval": the models are in eval mode
    for ours_name, trl_name in [
        ("rewards/chosen", "rewards/chosen"),
        ("rewards/rejected", "rewards/rejected"),
        ("rewards/accuracy", "rewards/accuracies"),
        ("rewards/margin", "rewards/margins"),
        ("logps/chosen", "logps/chosen"),
        ("logps/rejected", "logps/rejected"),
    ]:
        assert abs(metrics[ours_name] - trl_metrics[trl_name]) < 1e-4, (ours_name, metrics, trl_metrics)


def _trl_cpo_loss(loss_type: str, beta: float, label_smoothing: float, gamma: float = 0.5):
    """TRL's CPOTrainer.cpo_loss (SimPO with cpo_alpha=0; its sigmoid is DPO's with label smoothing) bound to the
    settings it reads."""
    from trl.experimental.cpo import CPOTrainer

    settings = types.SimpleNamespace(
        alpha=0.0,
        beta=beta,
        label_smoothing=label_smoothing,
        loss_type=loss_type,
        simpo_gamma=gamma,
        accelerator=types.SimpleNamespace(device="cpu"),
    )
    return lambda chosen, rejected: CPOTrainer.cpo_loss(settings, chosen, rejected)


def _trl_batch_logps(hf_model, dataset, average: bool) -> torch.Tensor:
    """[chosen; rejected] log-probs from the HF model's logits through TRL's CPOTrainer.get_batch_logps."""
    from trl.experimental.cpo import CPOTrainer

    rows, labels = [], []
    for side in ("chosen", "rejected"):
        for p in dataset.pairs:
            response = getattr(p, side)
            rows.append(p.prompt + response)
            labels.append([-100] * len(p.prompt) + response)
    T = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (T - len(r)) for r in rows])
    label_ids = torch.tensor([r + [-100] * (T - len(r)) for r in labels])
    attention_mask = torch.arange(T) < torch.tensor([len(r) for r in rows])[:, None]
    with torch.no_grad():
        logits = hf_model(ids, attention_mask=attention_mask.long()).logits
    return CPOTrainer.get_batch_logps(logits, label_ids, average_log_prob=average)


def test_simpo_and_conservative_dpo_equal_trl(tiny_models, tmp_path):
    ours_model, hf_policy, hf_ref = tiny_models
    dataset = _pairs(tmp_path)
    # SimPO: reference-free, length-normalized (CPOTrainer, loss_type="simpo", cpo_alpha=0)
    avg = _trl_batch_logps(hf_policy, dataset, average=True)
    trl_losses, trl_c, trl_r = _trl_cpo_loss("simpo", 2.0, 0.1, gamma=1.2)(*avg.chunk(2))
    loss, _, metrics = _ours(ours_model, dataset, DPOArgs(loss="simpo", beta=2.0, label_smoothing=0.1, gamma=1.2))
    assert abs(loss - float(trl_losses.mean())) < 1e-5
    assert abs(metrics["rewards/chosen"] - float(trl_c.mean())) < 1e-5
    assert abs(metrics["logps/rejected"] - float(avg.chunk(2)[1].mean())) < 1e-5
    # conservative DPO: TRL's label-smoothed sigmoid on the policy/reference log-ratios
    policy, ref = _trl_batch_logps(hf_policy, dataset, False), _trl_batch_logps(hf_ref, dataset, False)
    ratios = (policy - ref).chunk(2)
    trl_losses, _, _ = _trl_cpo_loss("sigmoid", 0.3, 0.2)(*ratios)
    loss, _, _ = _ours(ours_model, dataset, DPOArgs(loss="sigmoid", beta=0.3, label_smoothing=0.2))
    assert abs(loss - float(trl_losses.mean())) < 1e-5


def test_lora_reference_is_the_base_model(tiny_models, tmp_path):
    """With adapters switched off, the LoRA model computes the base model's logits exactly; then they come back."""
    ours_model, hf_policy, hf_ref = tiny_models
    idx = torch.randint(0, 1024, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        policy = ours_model(idx)
        with adapters_disabled(ours_model):
            base = ours_model(idx)
        again = ours_model(idx)
    torch.testing.assert_close(base[..., :1024], hf_ref(idx).logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, policy)
    assert (policy - base).abs().max() > 1e-3


# ---------------------------------------------------------------- runs of the command
@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt")


@pytest.mark.parametrize("quantize", [None, "bnb.nf4"])
def test_first_step_loss_is_ln2_and_metrics_are_logged(quantize, tiny_ckpt, tmp_path):
    """LoRA starts with B = 0: policy = reference, so the sigmoid loss of step 1 is ln 2 and the rewards are 0 (with
    QLoRA too: the reference is the same 4-bit base)."""
    ckpt = tiny_ckpt
    if quantize:
        pytest.importorskip("bitsandbytes")
        ckpt = tiny_checkpoint(tmp_path / "wide", n_embd=64, intermediate_size=128)  # 4-bit blocks of 64
    finetune_dpo(
        ckpt, out_dir=tmp_path / "out", quantize=quantize, train=train_args(2), eval=QUICK_EVAL, precision="32-true"
    )
    first = _logged(tmp_path / "out")[0]
    assert abs(first["loss"] - math.log(2)) < 1e-6
    assert first["rewards/chosen"] == 0 and first["rewards/margin"] == 0 and first["rewards/accuracy"] == 0
    assert first["logps/chosen"] < 0 and first["logps/rejected"] < 0
    from litgpt_lite.train.loggers import read_metrics

    rows = read_metrics(tmp_path / "out" / "logs" / "metrics.csv")
    assert {"rewards/accuracy", "rewards/margin", "logps/chosen", "tokens_per_sec"} <= set(rows[0])
    assert float(rows[0]["loss"]) == pytest.approx(math.log(2), abs=1e-6)
    assert (tmp_path / "out" / "final" / "lit_model.lora.safetensors").is_file()
    assert (tmp_path / "out" / "hyperparameters.yaml").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_resume_equals_uninterrupted_run(method, tiny_ckpt, tmp_path):
    """Stop at step 3, resume from its checkpoint: steps 4-6 match to 1e-6. Full DPO reads its cached reference
    log-probs back instead of recomputing them (the weights at step 3 are no longer the reference)."""
    out = tmp_path / "out"

    def run(resume=False, out_dir=out):
        return finetune_dpo(
            tiny_ckpt,
            out_dir=out_dir,
            full=method == "full",
            lora_dropout=0.1,  # the RNG must resume too
            train=train_args(6, save_interval=3),
            eval=QUICK_EVAL,
            precision="32-true",
            optimizer={"lr": 3e-3 if method == "lora" else 1e-3},
            resume=resume,
        )

    run()
    a = [h["loss"] for h in _logged(out) if "loss" in h]
    cache = out / "reference_logps.safetensors"
    if method == "full":
        assert cache.is_file()
        written = cache.stat().st_mtime_ns
    (out / "logs" / "metrics.csv").unlink()  # so every row read below comes from the resumed run
    run(resume=out / "checkpoints" / "step-000003")
    b = [h["loss"] for h in _logged(out) if "loss" in h]
    assert len(a) == 6 and len(b) == 3
    assert max(abs(x - y) for x, y in zip(a[3:], b)) < 1e-6, (a, b)
    assert abs(a[-1] - math.log(2)) > 1e-4  # it trained
    if method == "full":
        assert cache.stat().st_mtime_ns == written
        cache.unlink()
        with pytest.raises(UserError, match="reference log-probs"):
            run(resume=out / "checkpoints" / "step-000003")


def test_bad_arguments_are_one_line_errors(tiny_ckpt, tmp_path):
    with pytest.raises(UserError, match="label_smoothing"):
        finetune_dpo(tiny_ckpt, out_dir=tmp_path, dpo=DPOArgs(loss="ipo", label_smoothing=0.1))
    with pytest.raises(UserError, match="beta"):
        finetune_dpo(tiny_ckpt, out_dir=tmp_path, dpo=DPOArgs(beta=0))
    with pytest.raises(UserError, match="--full"):
        finetune_dpo(tiny_ckpt, out_dir=tmp_path, full=True, quantize="bnb.nf4")
    from litgpt_lite.data.sft import Instructions

    with pytest.raises(UserError, match="Preference"):
        finetune_dpo(tiny_ckpt, out_dir=tmp_path, data=Instructions())


@pytest.mark.slow
def test_smollm2_learns_the_bundled_preferences(smollm2_lit, tmp_path):
    """SmolLM2-135M-Instruct, LoRA, 16 steps of 4 bundled pairs: on held-out pairs the reward accuracy rises above
    0.5 and the margin above 0 (both are 0 before the first step: policy = reference)."""
    from litgpt_lite.train.args import TrainArgs

    finetune_dpo(
        smollm2_lit,
        out_dir=tmp_path / "out",
        lora_key=True,
        lora_projection=True,
        lora_mlp=True,
        data=Preference(prompt_style="chatml"),  # SmolLM2's template without its default system prompt: shorter
        train=TrainArgs(
            global_batch_size=4,
            micro_batch_size=4,
            max_steps=16,
            max_seq_length=96,
            lr_warmup_steps=2,
            save_interval=None,
        ),
        eval=EvalArgs(interval=1000, max_iters=4, max_new_tokens=0, initial_validation=False),
        optimizer={"lr": 1e-3},
        precision="32-true",
    )
    val = [h for h in _logged(tmp_path / "out") if "val_loss" in h][-1]
    assert val["val_rewards/accuracy"] > 0.5 and val["val_rewards/margin"] > 0, val
    assert val["val_loss"] < math.log(2)
    assert (tmp_path / "out" / "final" / "lit_model.lora.safetensors").is_file()


def test_cli_errors_are_one_line_with_exit_code_2(tiny_ckpt, tmp_path, capsys):
    from litgpt_lite.__main__ import main

    def error(*argv: str) -> str:
        assert main(["finetune_dpo", str(tiny_ckpt), "--out_dir", str(tmp_path / "out"), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err
        return err

    assert "missing.jsonl does not exist" in error("--data", "Preference", "--data.json_path", "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n" + json.dumps({"prompt": "a"}))
    assert "record 1 has no 'chosen' field" in error("--data", "Preference", "--data.json_path", str(bad))
    assert "--dpo.beta must be positive" in error("--dpo.beta", "0")


def _dpo_cli(ckpt, out_dir, *extra: str) -> list[dict[str, str]]:
    import subprocess
    import sys
    from pathlib import Path

    from litgpt_lite.train.loggers import read_metrics

    args = ["--train.max_steps", "3", "--train.global_batch_size", "8", "--train.micro_batch_size", "2"]
    args += ["--train.max_seq_length", "96", "--eval.max_new_tokens", "0", "--precision", "32-true"]
    cmd = [sys.executable, "-m", "litgpt_lite", "finetune_dpo", str(ckpt), "--out_dir", str(out_dir), *args, *extra]
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return read_metrics(out_dir / "logs" / "metrics.csv")


@pytest.mark.slow
def test_full_dpo_on_two_processes_matches_one(tiny_ckpt, tmp_path):
    """DDP: the reference pass shares its batches between the processes and the step metrics are reduced over
    them, so two processes log what one does."""
    one = _dpo_cli(tiny_ckpt, tmp_path / "one", "--full", "true", "--optimizer.lr", "1e-3")
    two = _dpo_cli(tiny_ckpt, tmp_path / "two", "--full", "true", "--optimizer.lr", "1e-3", "--devices", "2")
    keys = ["loss", "rewards/chosen", "rewards/accuracy", "rewards/margin", "logps/rejected", "val_loss"]
    assert len(one) == len(two) >= 4  # initial validation, 3 steps (and the final validation)
    for a, b in zip(one, two):
        for key in keys:
            if a[key]:
                assert abs(float(a[key]) - float(b[key])) < 1e-5, (key, a, b)
