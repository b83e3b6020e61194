"""`litgpt_lite evaluate`: lm-eval on OUR model, not on a copy converted to transformers.

`LitLM` is an `lm_eval` model over the litgpt_lite GPT: `loglikelihood` scores several requests per forward pass
(right-padded: causal attention keeps each row blind to the padding after it), `loglikelihood_rolling` uses lm-eval's
own window split, and `generate_until` runs the generation core with the task's stop strings. Tokenization follows
lm-eval's `HFLM` rules, so the numbers match it on the same weights.

Bundled tasks (litgpt_lite/eval_tasks) run offline: a multiple-choice task, a perplexity task and a generation task.
"""

from __future__ import annotations

import difflib
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from lm_eval.api.model import TemplateLM
from tqdm import tqdm

from litgpt_lite.errors import UserError

BUNDLED_TASKS_DIR = Path(__file__).parent / "eval_tasks"


class LitLM(TemplateLM):
    """An lm-eval language model over a litgpt_lite GPT and its tokenizer."""

    def __init__(self, model, tokenizer, batch_size: int = 8, max_gen_toks: int = 256, seed: int = 1234) -> None:
        super().__init__()
        self.model, self._tokenizer = model, tokenizer
        self.batch_size = batch_size
        self.max_gen_toks = max_gen_toks
        self.seed = seed
        self.vocab_size = model.config.vocab_size  # the padded rows of lm_head are no tokens: keep them out

    # ---- what TemplateLM needs
    @property
    def eot_token_id(self) -> int:
        return self._tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        bos = self._tokenizer.bos_id
        return bos if bos is not None else self._tokenizer.eos_id

    @property
    def max_length(self) -> int:
        return self.model.config.block_size

    @property
    def device(self) -> torch.device:
        return self.model.lm_head.weight.device

    @property
    def tokenizer_name(self) -> str:
        return str(self._tokenizer.checkpoint_dir).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs) -> list[int]:  # fmt: skip
        """Like HFLM: the tokenizer's own BOS rule unless told, and no second BOS if the text starts with one."""
        bos = add_special_tokens
        if add_special_tokens is None and self._tokenizer.bos_id is not None:
            if string.startswith(self._tokenizer.decode([self.prefix_token_id])):
                bos = False
        ids = self._tokenizer.encode(string, bos=bos)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=True)

    # ---- scoring
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), whether greedy decoding gives the continuation) per request.

        Requests whose model input is the same (a question's one-token answer choices) share one forward row.
        """
        rows: dict[tuple[int, ...], list[int]] = {}
        for i, (_, context, continuation) in enumerate(requests):
            rows.setdefault(self._input_row(context, continuation), []).append(i)
        unique = sorted(rows, key=len, reverse=True)  # similar lengths together: less padding
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        with tqdm(total=len(requests), disable=disable_tqdm, desc="Running loglikelihood requests") as bar:
            for start in range(0, len(unique), self.batch_size):
                chunk = unique[start : start + self.batch_size]
                hidden = self._hidden(chunk)
                for b, tokens in enumerate(chunk):
                    for i in rows[tokens]:
                        results[i] = self._score(hidden[b, : len(tokens)], requests[i][2])
                        if requests[i][0] is not None:
                            self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
                    bar.update(len(rows[tokens]))
        return results  # type: ignore[return-value]

    def _input_row(self, context: list[int], continuation: list[int]) -> tuple[int, ...]:
        if not context or not continuation:
            raise ValueError("loglikelihood needs a non-empty context and continuation")
        if len(continuation) > self.max_length:
            raise UserError(f"A continuation of {len(continuation)} tokens exceeds the context of {self.max_length}")
        return tuple((context + continuation)[-(self.max_length + 1) :][:-1])  # the last token is only predicted

    @torch.inference_mode()
    def _hidden(self, rows: list[tuple[int, ...]]) -> torch.Tensor:
        """Final hidden states (B, T, C) of right-padded rows (causal attention: padding after a row is unseen)."""
        T = max(len(tokens) for tokens in rows)
        idx = torch.zeros(len(rows), T, dtype=torch.long)
        for b, tokens in enumerate(rows):
            idx[b, : len(tokens)] = torch.tensor(tokens)
        return self.model(idx.to(self.device), return_hidden=True)

    @torch.inference_mode()
    def _score(self, hidden: torch.Tensor, continuation: list[int]) -> tuple[float, bool]:
        """Score a continuation from the hidden states (T, C) of its row: it is predicted by the last n positions."""
        n = len(continuation)
        logits = self.model.logits(hidden[-n:])[:, : self.vocab_size]
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # (n, V)
        target = torch.tensor(continuation, device=logprobs.device)
        picked = logprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        return float(picked.sum()), bool((logprobs.argmax(-1) == target).all())

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts, in lm-eval's disjoint windows of the model's context."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        windows, owners = [], []
        for i, (text,) in enumerate(req.args for req in requests):
            tokens = self.tok_encode(text)
            for window in get_rolling_token_windows(tokens, self.prefix_token_id, self.max_length, context_len=1):
                windows.append((None, *make_disjoint_window(window)))
                owners.append(i)
        totals = [0.0] * len(requests)
        for owner, (ll, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)):
            totals[owner] += ll
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ---- generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Generate for each (context, gen_kwargs) until a stop string, EOS or `max_gen_toks`, in batches."""
        from litgpt_lite.generate import generate_completions

        prepared = [self._generation_request(i, *req.args) for i, req in enumerate(requests)]
        order = sorted(range(len(prepared)), key=lambda i: -len(prepared[i][0]))
        outputs: list[str] = [""] * len(requests)
        for start in tqdm(range(0, len(order), self.batch_size), disable=disable_tqdm, desc="Generating"):
            chunk = order[start : start + self.batch_size]
            prompts = [prepared[i][0] for i in chunk]
            params = [prepared[i][1] for i in chunk]
            for i, completion in zip(chunk, generate_completions(self.model, self._tokenizer, prompts, params)):
                outputs[i] = completion.text
                self.cache_hook.add_partial("generate_until", requests[i].args, completion.text)
        return outputs

    def _generation_request(self, index: int, context: str, gen_kwargs: dict[str, Any]):
        from litgpt_lite.generate import SamplingParams

        kwargs = dict(gen_kwargs or {})
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
        sample = bool(kwargs.pop("do_sample", False))
        temperature = float(kwargs.pop("temperature", 0.0) or 0.0) if sample else 0.0
        top_p = float(kwargs.pop("top_p", 1.0) or 1.0)
        top_k = kwargs.pop("top_k", None)
        room = max(1, self.max_length - max_new)  # like HFLM: keep the end of a long context, leave room to answer
        prompt = self.tok_encode(context, left_truncate_len=room)
        params = SamplingParams(
            max_new_tokens=max_new, temperature=temperature, top_k=top_k, top_p=top_p, seed=self.seed + index,
            stop=until,
        )  # fmt: skip
        return prompt, params


# ---------------------------------------------------------------- tasks
def materialize_bundled_tasks(out_dir: Path) -> Path:
    """Copy the bundled task YAMLs to `out_dir` with absolute `data_files` paths.

    `datasets.load_dataset("json", data_files=...)` resolves relative paths against the working directory, not the
    YAML's folder, so the bundled YAMLs (which name their JSONL files relative to themselves) are rewritten.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in BUNDLED_TASKS_DIR.glob("*.yaml"):
        config = yaml.safe_load(path.read_text())
        files = config.get("dataset_kwargs", {}).get("data_files", {})
        for split, name in files.items():
            files[split] = str((BUNDLED_TASKS_DIR / name).resolve())
        (out_dir / path.name).write_text(yaml.safe_dump(config, sort_keys=False))
    return out_dir


def task_manager_for(names: list[str], include_paths: list[Path]):
    """A TaskManager that knows `names`; lm-eval's own ~14k tasks are indexed only when one of them is asked for."""
    from lm_eval.tasks import TaskManager

    local = TaskManager(include_path=[str(p) for p in include_paths], include_defaults=False)
    if all(name in local.all_tasks for name in names):
        return local
    manager = TaskManager(include_path=[str(p) for p in include_paths])
    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown:
        close = difflib.get_close_matches(unknown[0], manager.all_tasks, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UserError(
            f"Unknown task {unknown[0]!r}.{hint} Run `litgpt_lite evaluate <checkpoint>` without --tasks to list them"
        )
    return manager


def check_tasks_load(names: list[str], manager) -> None:
    """Build each task once (which fetches its dataset) so a dataset that cannot be had fails with one clear line."""
    from lm_eval.tasks import get_task_dict

    for name in names:
        try:
            get_task_dict([name], manager)
        except OSError as e:  # ConnectionError, hub and datasets "not found" errors all derive from OSError
            raise UserError(
                f"Task {name!r} could not load its dataset {_dataset_of(name, manager)} ({_first_line(e)}). Without"
                " network access, put the data in local files and pass a folder of task YAMLs with --include_path"
            ) from None
        except Exception as e:  # a broken task config: still one line, naming the task
            raise UserError(f"Task {name!r} could not be built: {type(e).__name__}: {_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _dataset_of(name: str, manager) -> str:
    entry = manager.task_index.get(name)
    config = getattr(entry, "cfg", None) or {}
    path = config.get("dataset_path")
    if path is None:
        return "(a group of tasks)"
    subset = config.get("dataset_name")
    return repr(f"{path}/{subset}" if subset else path)


def list_tasks(include_path: Path | None) -> None:
    from lm_eval.tasks import TaskManager

    print("Bundled tasks (run offline):")
    for path in sorted(BUNDLED_TASKS_DIR.glob("*.yaml")):
        first_line = path.read_text().splitlines()[0].lstrip("# ")
        print(f"  {yaml.safe_load(path.read_text())['task']:<18} {first_line}")
    if include_path is not None:
        local = TaskManager(include_path=str(include_path), include_defaults=False)
        print(f"Tasks in {include_path}: {', '.join(local.all_tasks) or '(none)'}")
    n = len(TaskManager(include_defaults=True).all_tasks)
    print(f"...and {n} tasks, groups and tags from lm-eval (`python -m lm_eval ls tasks` lists them).")
    print("Run: litgpt_lite evaluate <checkpoint> --tasks litgpt_lite_mc,litgpt_lite_ppl")


# ---------------------------------------------------------------- the command
def _parse_tasks(tasks: str | list[str] | None) -> list[str]:
    items = tasks.split(",") if isinstance(tasks, str) else list(tasks or [])
    names = [t.strip() for t in items if t.strip()]
    return list(dict.fromkeys(names))


def _limit(limit: float | None) -> int | float | None:
    if limit is None:
        return None
    if limit <= 0:
        raise UserError(f"--limit must be > 0 (a count, or a fraction below 1), got {limit}")
    return int(limit) if limit >= 1 else limit


def evaluate(
    checkpoint_dir: Path,
    tasks: str | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    limit: float | None = None,
    include_path: Path | None = None,
    out_dir: Path | None = None,
    seed: int = 1234,
    device: str | None = None,
    dtype: str | None = None,
    quantize: str | None = None,
    kernels: str = "auto",
) -> dict | None:
    """Evaluate a checkpoint with lm-eval (EleutherAI's LM Evaluation Harness), on this model directly.

    Args:
        checkpoint_dir: the checkpoint directory to evaluate.
        tasks: comma-separated task names (e.g. litgpt_lite_mc,hellaswag); leave out to list the tasks.
        num_fewshot: few-shot examples put before each question (default: each task's own setting).
        batch_size: requests per forward pass.
        limit: evaluate only this many examples per task (a fraction when below 1); for quick checks.
        include_path: a folder of extra lm-eval task YAMLs (e.g. tasks over local copies of datasets).
        out_dir: where results.json goes (default: <checkpoint_dir>/evaluate).
        seed: the random seed (sampling, few-shot selection).
        device: cpu, cuda or cuda:N (default: cuda when available).
        dtype: 32-true, bf16-true or 16-true; default is the hardware's fast one (fp32 on CPUs without bf16).
        quantize: bnb.nf4, bnb.nf4-dq, bnb.fp4, bnb.fp4-dq or bnb.int8 (needs bitsandbytes).
        kernels: auto installs this hardware's fast paths (e.g. the CPU bf16 kernels); none keeps torch's modules.
    """
    from litgpt_lite.checkpoint import validate_checkpoint_dir
    from litgpt_lite.loading import check_load_options, load_for_inference
    from litgpt_lite.precision import normalize_precision, resolve_device
    from litgpt_lite.quantized_checkpoint import is_prequantized

    checkpoint_dir = validate_checkpoint_dir(checkpoint_dir, need_weights=not is_prequantized(checkpoint_dir))
    if include_path is not None and not Path(include_path).is_dir():
        raise UserError(f"--include_path {include_path} is not a directory of task YAMLs")
    names = _parse_tasks(tasks)
    if not names:
        list_tasks(include_path)
        return None
    if batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {batch_size}")
    if num_fewshot is not None and num_fewshot < 0:
        raise UserError(f"--num_fewshot must be >= 0, got {num_fewshot}")
    limit_value = _limit(limit)
    torch_device = resolve_device(device)
    normalize_precision(dtype, torch_device)
    check_load_options(quantize, kernels)
    out_dir = Path(out_dir) if out_dir is not None else checkpoint_dir / "evaluate"

    with tempfile.TemporaryDirectory(prefix="litgpt_lite_tasks_") as tmp:
        include = [materialize_bundled_tasks(Path(tmp))] + ([Path(include_path)] if include_path else [])
        manager = task_manager_for(names, include)
        check_tasks_load(names, manager)
        model, tokenizer, _ = load_for_inference(checkpoint_dir, torch_device, dtype, quantize, kernels=kernels)
        lm = LitLM(model, tokenizer, batch_size=batch_size, seed=seed)
        results = _run(lm, names, manager, num_fewshot, limit_value, seed)
    _report(results, out_dir)
    return results


def _run(lm: LitLM, names: list[str], manager, num_fewshot: int | None, limit, seed: int) -> dict:
    from lm_eval import simple_evaluate

    results = simple_evaluate(
        model=lm, tasks=names, num_fewshot=num_fewshot, limit=limit, task_manager=manager, log_samples=False,
        random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
    )  # fmt: skip
    if results is None:
        raise UserError("lm-eval returned no results")
    return results


def _report(results: dict, out_dir: Path) -> None:
    from lm_eval.utils import handle_non_serializable, make_table

    print(make_table(results))
    if results.get("groups"):
        print(make_table(results, "groups"))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    saved = {k: v for k, v in results.items() if k != "samples"}
    path.write_text(json.dumps(saved, indent=2, default=handle_non_serializable, ensure_ascii=False))
    print(f"Saved {path}")
