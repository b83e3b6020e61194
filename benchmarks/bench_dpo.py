"""DPO side by side: `litgpt_lite finetune_dpo` against TRL's DPOTrainer (with a PEFT LoRA), same model, pairs and
batch. Both sides run in our environment (TRL and peft beside transformers 5); the runner times their optimizer
steps with `StepClock` and can run them in lockstep like the other training workloads.

The pairs are the first `micro_batch * steps` standard records of our bundled preference set, given to both sides as
conversational records, so both render them with SmolLM2's chat template. One epoch over exactly those pairs: each
side reports its own real (non-padding) tokens, prompt counted once per sequence (chosen and rejected), per second
of its timed steps.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from bench_common import StepClock

LORA = {"r": 8, "alpha": 16}  # query and value, no dropout, on both sides


def preference_records(n: int) -> list[dict[str, Any]]:
    """`n` conversational pairs from the bundled set's standard records."""
    from litgpt_lite.data.preference import BUNDLED_PREFERENCES

    out = []
    for line in BUNDLED_PREFERENCES.read_text().splitlines():
        r = json.loads(line)
        if isinstance(r.get("prompt"), str) and isinstance(r["chosen"], str):
            out.append(
                {
                    "prompt": [{"role": "user", "content": r["prompt"]}],
                    "chosen": [{"role": "assistant", "content": r["chosen"]}],
                    "rejected": [{"role": "assistant", "content": r["rejected"]}],
                }
            )
    if len(out) < n:
        raise ValueError(f"the bundled set has {len(out)} standard pairs, the workload needs {n}")
    return out[:n]


def _rate(clock: StepClock, tokens: int) -> dict[str, Any]:
    """Tokens per second over the timed steps; every step trains micro_batch of the epoch's pairs."""
    seconds, steps = clock.steady()
    total = len(clock.ends)
    return {"tokens_per_s": tokens * steps / total / seconds, **clock.memory(), "steps": total, "tokens": tokens}


def dpo(p: dict[str, Any]) -> dict[str, Any]:
    """`litgpt_lite finetune_dpo --lora_r 8 --data Preference --data.json_path pairs.jsonl`, one epoch."""
    from litgpt_lite.data.preference import Preference
    from litgpt_lite.train.args import EvalArgs, TrainArgs
    from litgpt_lite.train.dpo import finetune_dpo

    n = p["micro_batch"] * p["steps"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pairs.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in preference_records(n)))
        data = Preference(path, val_split_fraction=0)
        clock = StepClock()
        result = finetune_dpo(
            checkpoint_dir=Path(p["checkpoint_dir"]),
            out_dir=Path(tmp) / "out",
            lora_r=LORA["r"],
            lora_alpha=LORA["alpha"],
            data=data,
            train=TrainArgs(
                global_batch_size=p["micro_batch"],
                micro_batch_size=p["micro_batch"],
                max_steps=p["steps"],
                max_seq_length=p["seq_len"],
                lr_warmup_steps=0,
                save_interval=None,
                log_interval=1,
            ),
            eval=EvalArgs(interval=10**9, max_iters=1, max_new_tokens=0, final_validation=False),
            optimizer={"lr": 5e-4},
            precision=p.get("precision", "32-true"),
            seed=p["seed"],
        )
        clock.close()
        assert result["state"].step == p["steps"]
        pairs = _our_pairs(data, p)
    tokens = sum(2 * len(q.prompt) + len(q.chosen) + len(q.rejected) for q in pairs)
    return _rate(clock, tokens)


def _our_pairs(data, p: dict[str, Any]):
    from litgpt_lite.data.base import DataContext
    from litgpt_lite.prompts import prompt_style_for
    from litgpt_lite.tokenizer import Tokenizer

    tokenizer = Tokenizer(p["checkpoint_dir"])
    style = prompt_style_for(p["checkpoint_dir"], tokenizer)
    return data.build(DataContext(tokenizer, p["seq_len"], p["seed"], style)).train.pairs


def dpo_trl(p: dict[str, Any]) -> dict[str, Any]:
    """TRL's DPOTrainer with a PEFT LoRA on the HF folder of the same weights, same pairs, batch and schedule."""
    import datasets
    import torch
    import trl
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    n = p["micro_batch"] * p["steps"]
    gpu = p.get("device") == "cuda"
    hf_dir = p["hf_dir"]
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    with tempfile.TemporaryDirectory() as tmp:
        args = trl.DPOConfig(
            output_dir=tmp,
            per_device_train_batch_size=p["micro_batch"],
            gradient_accumulation_steps=1,
            max_steps=p["steps"],
            learning_rate=5e-4,
            lr_scheduler_type="cosine",
            warmup_steps=0,
            max_length=p["seq_len"] + 1,  # ours: max_seq_length inputs of a seq_len + 1 token sequence
            gradient_checkpointing=False,
            logging_steps=10**9,
            save_strategy="no",
            report_to="none",
            use_cpu=not gpu,
            bf16=gpu,
            seed=p["seed"],
            dataloader_num_workers=0,
        )
        peft = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
        trainer = trl.DPOTrainer(
            model=model,
            args=args,
            train_dataset=datasets.Dataset.from_list(preference_records(n)),
            processing_class=tokenizer,
            peft_config=peft,
        )
        clock = StepClock()
        trainer.train()
        clock.close()
        rows = trainer.train_dataset
        tokens = sum(2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows)
    return _rate(clock, tokens)
