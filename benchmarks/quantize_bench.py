"""What each bitsandbytes mode costs and saves: weight memory, quality, decode speed, optimizer state, load memory.

    python benchmarks/quantize_bench.py                      # SmolLM2-135M-Instruct from the test cache
    python benchmarks/quantize_bench.py --checkpoint_dir DIR --decode_tokens 8 --json out.json

Measured on the SmolLM2-135M checkpoint (weights as stored, compute in float32: on CPUs without native bf16 a bf16
matmul is ~50x slower) and on a random-init Llama-3.2-1B config (one block quantized for real, times n_layer: every
block has the same shapes). "bf16 bytes" is what the same tensors take in bfloat16. The table goes into
tutorials/quantize.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from litgpt_lite.config import Config  # noqa: E402
from litgpt_lite.kernels import install_kernels  # noqa: E402
from litgpt_lite.loading import load_model  # noqa: E402
from litgpt_lite.lora import LoRARecipe  # noqa: E402
from litgpt_lite.model import Block  # noqa: E402
from litgpt_lite.quantize import (  # noqa: E402
    MODES,
    is_quantized_linear,
    quantize_model,
    quantized_layers_bf16_bytes,
    weight_bytes,
)
from litgpt_lite.tokenizer import Tokenizer  # noqa: E402

DEFAULT_CKPT = Path.home() / ".cache" / "litgpt_lite" / "smollm2_lit"

# Held-out text for the cross-entropy comparison, written for this benchmark (so no model saw it in training).
HELD_OUT_TEXT = """\
The harbour town of Keldmoor sits where a slow brown river meets a cold grey sea. For most of the year the place is
quiet: a baker opens before dawn, two ferries cross to the island and back, and the lighthouse keeper writes the
weather into a ledger that nobody has read since his grandfather kept it. In late autumn, though, the herring arrive,
and for six weeks the town doubles in size. Boats come in from the northern villages, the inns put extra beds in
their attics, and the smell of smoke and salt settles over every street.

Mara Tolven had worked the herring season since she was twelve. At first she only gutted fish on the long tables by
the quay, her fingers numb by noon, but by twenty she owned a share in a boat called the Patient Wren and knew the
banks better than most of the men who had fished them for decades. She kept her own notes, not in a ledger but on
the back of tide tables: where the birds gathered, how the water changed colour before a shoal, which winds pushed
the fish toward the shallows and which scattered them out to sea.

The year the river froze, those notes saved the town. The cold came early and hard. Ice closed the river mouth in a
single night, and the boats that usually sheltered upstream were trapped in the open harbour when the storm arrived.
Mara walked the sea wall at first light and saw that the swell was rising from the south-east, the one direction
the old breakwater did not cover. She remembered a line she had written three winters before: south-east gale,
spring tide, water over the quay by the second high tide.

She went from door to door. Some people laughed; most listened. By mid-morning the boats had been roped together
behind the ferry pier, the nets and barrels carried up to the church hall, and the families from the lowest street
moved in with neighbours on the hill. When the second high tide came, the water rose over the quay exactly as her
note had said, filled the lower street to the height of a window sill, and drained away again by evening.

Nobody was hurt. Two sheds were lost, a cart was found a week later in a field beyond the marsh, and the baker had
to dry out every sack of flour in his cellar. The harbour master, who had never much liked being told anything by
anyone, asked Mara for a copy of her notes. She gave him the originals instead, on the condition that he kept
writing in them.
"""

ONE_B = "Llama-3.2-1B"


def unquantized_bf16_bytes(model: torch.nn.Module) -> int:
    """Bytes the model's non-quantized floating weights take in bf16 (shared storage counted once)."""
    seen, total = set(), 0
    for module in model.modules():
        if is_quantized_linear(module):
            continue
        for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
            key = t.untyped_storage().data_ptr()
            if key in seen or not t.is_floating_point():
                continue
            seen.add(key)
            total += 2 * t.numel()
    return total


def cross_entropy(model, idx: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(idx[:, :-1])
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), idx[:, 1:].flatten()).item()


def decode_tokens_per_second(model, prompt: torch.Tensor, n: int) -> float:
    """Greedy decode with the KV cache; the prefill is not timed."""
    install_kernels(model, "auto")  # the CPU decode paths `LLM.load` installs
    model.set_kv_cache(1, prompt.shape[1] + n + 1)
    with torch.no_grad():
        token = model(prompt, input_pos=0)[:, -1:].argmax(-1)
        t0 = time.perf_counter()
        for t in range(prompt.shape[1], prompt.shape[1] + n):
            token = model(token, input_pos=t)[:, -1:].argmax(-1)
        elapsed = time.perf_counter() - t0
    model.clear_kv_cache()
    return n / elapsed


def bench_smollm2(ckpt: Path, decode_tokens: int, modes: list[str]) -> list[dict]:
    tokenizer = Tokenizer(ckpt)
    idx = torch.tensor([tokenizer.encode(HELD_OUT_TEXT)])
    prompt = idx[:, :16]
    rows = []
    ref = load_model(ckpt, precision=torch.float32)
    ref_bf16 = 2 * sum(p.numel() for p in {id(p): p for p in ref.parameters()}.values())
    ref_ce = cross_entropy(ref, idx)
    rows.append(
        dict(
            mode="none (fp32 compute)", linear_ratio=1.0, model_bytes=ref_bf16, model_ratio=1.0, ce=ref_ce, ce_delta=0.0
        )
    )
    rows[-1]["tok_s"] = decode_tokens_per_second(ref, prompt, decode_tokens)
    del ref
    for mode in modes:
        model = load_model(ckpt, "cpu", torch.float32, quantize=mode)
        linear = weight_bytes(model, only_quantized=True)
        whole = linear + unquantized_bf16_bytes(model)
        ce = cross_entropy(model, idx)
        row = dict(
            mode=mode,
            linear_bytes=linear,
            linear_ratio=linear / quantized_layers_bf16_bytes(model),
            model_bytes=whole,
            model_ratio=whole / ref_bf16,
            ce=ce,
            ce_delta=ce / ref_ce - 1,
            tok_s=decode_tokens_per_second(model, prompt, decode_tokens),
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
        del model
    return rows


def bench_one_b(modes) -> list[dict]:
    """Weight bytes on a random-init 1B config: one block quantized for real, times n_layer, plus the embedding."""
    config = Config.from_name(ONE_B)
    torch.manual_seed(0)
    with torch.device("cpu"):
        block = Block(config, 0).to(torch.bfloat16)
    for p in block.parameters():
        if p.dim() == 2:
            torch.nn.init.normal_(p, std=0.02)
    block_bf16 = 2 * sum(p.numel() for p in block.parameters())
    embedding = 2 * config.padded_vocab_size * config.n_embd * (1 if config.tie_embeddings else 2)
    norms = 2 * config.n_embd
    full = config.n_layer * block_bf16 + embedding + norms
    rows = []
    for mode in modes:
        q = quantize_model(_copy_block(block, config), mode)
        linear = weight_bytes(q, only_quantized=True)
        rest = unquantized_bf16_bytes(q)
        whole = config.n_layer * (linear + rest) + embedding + norms
        rows.append(
            dict(
                mode=mode,
                linear_ratio=linear / quantized_layers_bf16_bytes(q),
                model_bytes=whole,
                model_ratio=whole / full,
            )
        )
    return [dict(mode="none (bf16)", linear_ratio=1.0, model_bytes=full, model_ratio=1.0)] + rows


def _copy_block(block, config):
    clone = Block(config, 0).to(torch.bfloat16)
    clone.load_state_dict(block.state_dict())
    return clone


def optimizer_state_bytes(model: torch.nn.Module, name: str) -> int:
    import bitsandbytes as bnb

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4) if name == "AdamW" else bnb.optim.AdamW8bit(params, lr=1e-4)
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    optimizer.step()
    total = sum(
        t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)
    )
    for p in params:
        p.grad = None
    return total


def bench_optimizers(ckpt: Path) -> list[dict]:
    rows = []
    for method in ("LoRA r=8 (q, v)", "full fine-tune"):
        for name in ("AdamW", "AdamW8bit"):
            model = load_model(ckpt, precision=torch.float32)
            if method.startswith("LoRA"):
                model = LoRARecipe().prepare(model)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            rows.append(
                dict(method=method, optimizer=name, params=trainable, state_bytes=optimizer_state_bytes(model, name))
            )
            print(json.dumps(rows[-1]), flush=True)
            del model
    return rows


LOAD_SCRIPT = """
import json, re, sys, torch
import bitsandbytes
from litgpt_lite.loading import load_model
from litgpt_lite.quantize import quantize_model, weight_bytes

def status(key):
    return int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

torch.nn.Linear(8, 8)(torch.randn(2, 8))
open("/proc/self/clear_refs", "w").write("5")  # reset the peak-RSS counter (VmHWM) after the imports
before = status("VmRSS")
ckpt, how = sys.argv[1], sys.argv[2]
if how == "streaming":
    model = load_model(ckpt, "cpu", torch.bfloat16, quantize="bnb.nf4")
else:
    model = quantize_model(load_model(ckpt, precision=torch.bfloat16), "bnb.nf4")
print(json.dumps({"how": how, "peak_growth": status("VmHWM") - before, "model_bytes": weight_bytes(model)}))
"""


def bench_load_memory(ckpt: Path) -> list[dict]:
    """Peak RSS growth (Linux VmHWM) while loading nf4 in bf16: streaming vs load-then-quantize, fresh processes."""
    from litgpt_lite.checkpoint import load_config

    config = load_config(ckpt)
    largest = max(config.padded_vocab_size, config.intermediate_size) * config.n_embd
    rows = []
    for how in ("streaming", "load then quantize"):
        cwd = Path(__file__).resolve().parents[1]
        run = subprocess.run(
            [sys.executable, "-c", LOAD_SCRIPT, str(ckpt), how], capture_output=True, text=True, check=True, cwd=cwd
        )
        row = json.loads(run.stdout.strip().splitlines()[-1])
        row["largest_layer_bf16"] = 2 * largest
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def print_tables(small, one_b, optimizers, load) -> None:
    print("\n| mode | quantized Linear / bf16 | SmolLM2 whole model | ratio | CE | CE vs fp32 | decode tok/s |")
    print("|---|---|---|---|---|---|---|")
    for r in small:
        print(
            f"| {r['mode']} | {r['linear_ratio']:.3f}x | {mib(r['model_bytes'])} | {r['model_ratio']:.3f}x | "
            f"{r['ce']:.4f} | {100 * r['ce_delta']:+.1f}% | {r['tok_s']:.1f} |"
        )
    print(f"\n| mode ({ONE_B}, random init) | quantized Linear / bf16 | whole model | ratio |")
    print("|---|---|---|---|")
    for r in one_b:
        print(f"| {r['mode']} | {r['linear_ratio']:.3f}x | {mib(r['model_bytes'])} | {r['model_ratio']:.3f}x |")
    print("\n| method | optimizer | trainable params | optimizer state |")
    print("|---|---|---|---|")
    for r in optimizers:
        print(f"| {r['method']} | {r['optimizer']} | {r['params']:,} | {mib(r['state_bytes'])} |")
    print("\n| nf4 load (bf16) | peak RSS growth | quantized model | largest layer (bf16) |")
    print("|---|---|---|---|")
    for r in load:
        print(f"| {r['how']} | {mib(r['peak_growth'])} | {mib(r['model_bytes'])} | {mib(r['largest_layer_bf16'])} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint_dir", type=Path, default=DEFAULT_CKPT)
    parser.add_argument("--decode_tokens", type=int, default=8)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES), help="a subset of the modes")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw figures here")
    args = parser.parse_args()
    if not (args.checkpoint_dir / "lit_model.safetensors").is_file():
        sys.exit(f"{args.checkpoint_dir} is not a converted checkpoint: run the tests once (fixture smollm2_lit)")
    torch.set_grad_enabled(True)
    small = bench_smollm2(args.checkpoint_dir, args.decode_tokens, args.modes)
    one_b = bench_one_b(args.modes)
    optimizers = bench_optimizers(args.checkpoint_dir)
    load = bench_load_memory(args.checkpoint_dir)
    print_tables(small, one_b, optimizers, load)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"\ntorch threads {torch.get_num_threads()}, benchmark peak RSS {mib(peak)}")
    if args.json:
        args.json.write_text(json.dumps(dict(smollm2=small, one_b=one_b, optimizers=optimizers, load=load), indent=1))


if __name__ == "__main__":
    main()
