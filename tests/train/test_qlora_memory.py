"""QLoRA keeps its frozen base in 4 bits (8 for int8) plus 16-bit embeddings and norms, through the real
`finetune_lora` setup: recipe prepare, Fabric's precision and the optimizer, with no full-precision copy left anywhere.
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import is_fake
from train_helpers import tiny_checkpoint, tiny_config

bnb = pytest.importorskip("bitsandbytes")

from litgpt_lite.checkpoint import load_config  # noqa: E402
from litgpt_lite.lora import LoRARecipe  # noqa: E402
from litgpt_lite.model import GPT  # noqa: E402
from litgpt_lite.modules import unwrap_model  # noqa: E402
from litgpt_lite.quantize import MODES, is_quantized_linear, quantize_model, weight_bytes  # noqa: E402


def _setup(checkpoint_dir: Path, out_dir: Path, precision: str | None, quantize: str = "bnb.nf4", **lora):
    """The model, optimizer and Fabric of `finetune_lora --quantize` after its setup and one optimizer step (AdamW
    makes its state at the first step), through the training runtime's own functions."""
    from litgpt_lite.data.sft import Instructions
    from litgpt_lite.train.args import EvalArgs, TrainArgs
    from litgpt_lite.train.distributed import make_fabric
    from litgpt_lite.train.runtime import Run, _setup_training, check_inputs

    run = Run(
        recipe=LoRARecipe(quantize=quantize, **lora),
        out_dir=out_dir,
        data=Instructions(),
        train=TrainArgs(global_batch_size=1, micro_batch_size=1, max_steps=1, max_seq_length=16),
        eval=EvalArgs(),
        optimizer="AdamW",
        optimizer_defaults={"lr": 2e-3, "weight_decay": 0.0},
        hparams={},
        checkpoint_dir=checkpoint_dir,
        precision=precision,
    )
    check_inputs(run)
    fabric = make_fabric(1, 1, "auto", run.precision)
    pieces = _setup_training(fabric, run, load_config(checkpoint_dir), total_steps=1, sharded=False)
    idx = torch.randint(0, 100, (1, 17), generator=torch.Generator().manual_seed(0))
    logits = pieces.model(idx[:, :-1])
    fabric.backward(F.cross_entropy(logits.flatten(0, 1).float(), idx[:, 1:].flatten()))
    pieces.optimizer.step()
    pieces.optimizer.zero_grad()
    return fabric, pieces


def _optimizer_state(optimizer) -> tuple[set[int], int]:
    """(ids of the parameters with optimizer state, bytes of that state)."""
    state = optimizer.state
    tensors = [t for s in state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    return {id(p) for p in state}, sum(t.numel() * t.element_size() for t in tensors)


def _full_weight_shapes(model: torch.nn.Module) -> set[tuple[int, int]]:
    return {(m.out_features, m.in_features) for m in model.modules() if is_quantized_linear(m)}


def _live_float_tensors(min_numel: int) -> list[torch.Tensor]:
    """Every floating tensor the Python heap holds (modules, optimizer, loader leftovers) with >= min_numel elements."""
    gc.collect()
    found = []
    for obj in gc.get_objects():
        try:
            if not issubclass(type(obj), torch.Tensor) or is_fake(obj) or obj.device.type == "meta":
                continue  # fake/meta tensors (e.g. torch.compile's, from earlier tests in the process) hold no memory
            if obj.is_floating_point() and obj.numel() >= min_numel:
                found.append(obj)
        except ReferenceError:  # a dead weak proxy
            continue
    return found


def _check_no_dense_copies(model: torch.nn.Module) -> None:
    """No live floating tensor has the shape of a quantized Linear's weight, and every floating tensor as large as
    the smallest such weight is 16-bit or smaller (the embedding) or trainable (none here is that large)."""
    shapes = _full_weight_shapes(model)
    smallest = min(a * b for a, b in shapes)
    for t in _live_float_tensors(smallest):
        assert tuple(t.shape) not in shapes and tuple(t.shape[::-1]) not in shapes, (t.shape, t.dtype)
        assert t.element_size() <= 2, (t.shape, t.dtype)


@pytest.mark.parametrize("precision", [None, "32-true"])  # the default, and float32 compute (CPUs without bf16)
def test_qlora_stores_the_frozen_base_in_4_and_16_bits_on_smollm2(smollm2_lit, tmp_path, precision):
    """SmolLM2-135M under `finetune_lora --quantize bnb.nf4`: parameters and buffers take at most 0.45x the bf16 model
    (theory: 0.440x with float32 adapters; the 16-bit tied embedding alone is 0.21x; before 16-bit storage, 32-true
    held 0.650x), the LoRA parameters are the only ones with optimizer state, and no full-precision copy of a weight
    is alive anywhere in the process."""
    fabric, pieces = _setup(smollm2_lit, tmp_path, precision)
    model = unwrap_model(pieces.model)
    with torch.device("meta"):
        bf16_bytes = 2 * sum(p.numel() for p in GPT(load_config(smollm2_lit)).parameters())
    held = weight_bytes(model)
    assert held <= 0.45 * bf16_bytes, (held, bf16_bytes, held / bf16_bytes)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    lora = {id(p) for n, p in model.named_parameters() if ".lora_" in n}
    with_state, state_bytes = _optimizer_state(pieces.optimizer)
    assert trainable == lora == with_state
    lora_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    assert 2 * lora_bytes <= state_bytes <= 2 * lora_bytes + 8 * len(with_state)  # two moments and a step count
    _check_no_dense_copies(model)
    wte = model.transformer.wte.weight
    assert wte.dtype == torch.bfloat16 and model.lm_head.weight is wte  # tied: one 16-bit copy


@pytest.mark.parametrize("mode", list(MODES))
def test_quantized_linears_hold_no_full_precision_weight(tmp_path, mode):
    """Through the real setup at 32-true (compute in float32): the quantized Linears hold no floating tensor of
    their weight's shape, every unquantized frozen weight is 16-bit, and the adapters are float32."""
    checkpoint = tiny_checkpoint(tmp_path / "ckpt", n_embd=64, intermediate_size=128, tie_embeddings=True)
    fabric, pieces = _setup(checkpoint, tmp_path / "out", "32-true", mode, mlp=True, projection=True)
    model = unwrap_model(pieces.model)
    quantized = [m for m in model.modules() if is_quantized_linear(m)]
    assert len(quantized) == 2 * 5
    for module in quantized:
        for t in [*module.parameters(), *module.buffers()]:
            assert not (t.is_floating_point() and t.shape == (module.out_features, module.in_features)), t.dtype
        assert module.weight.element_size() == 1 and not module.weight.requires_grad
    for name, p in model.named_parameters():
        if ".lora_" in name:
            assert p.dtype == torch.float32 and p.requires_grad, name
        elif p.is_floating_point():
            assert p.dtype == torch.bfloat16 and not p.requires_grad, name
    _check_no_dense_copies(model)


def _rounded_reference(model: GPT, mode: str, **lora) -> GPT:
    """QLoRA as before 16-bit storage: quantized Linears, every other weight in float32 (holding bf16 values)."""
    from litgpt_lite.lora import LoRAConfig, inject_lora

    for p in model.parameters():
        p.requires_grad_(False)
    quantize_model(model, mode)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.copy_(p.to(torch.bfloat16).float())
    return inject_lora(model, LoRAConfig(**lora))


@pytest.mark.parametrize("tied", [True, False])
def test_16_bit_storage_computes_as_float32_storage(tied):
    """Under float32 compute the loss and the adapters' gradients equal those of a float32-stored model whose frozen
    weights hold the same bf16-rounded values; the logits stay float32 and greedy decoding (KV cache) runs."""
    from generation_helpers import greedy

    torch.manual_seed(0)
    config = tiny_config(n_embd=64, intermediate_size=128, tie_embeddings=tied)
    lora = dict(r=4, alpha=8, dropout=0.0, mlp=True, head=True)
    models = []
    for build in (
        lambda m: LoRARecipe(**lora, quantize="bnb.nf4").prepare(m),
        lambda m: _rounded_reference(m, "bnb.nf4", **lora),
    ):
        torch.manual_seed(0)
        model = GPT(config)
        torch.manual_seed(1)
        models.append(build(model))
    stored, reference = models
    assert stored.transformer.wte.weight.dtype == torch.bfloat16
    assert reference.transformer.wte.weight.dtype == torch.float32
    with torch.no_grad():  # the same adapters, made non-zero so the head and block adapters matter
        for (_, a), (_, b) in zip(stored.named_parameters(), reference.named_parameters()):
            if a.requires_grad:
                a.normal_(0, 0.05)
                b.copy_(a)
    idx = torch.randint(0, 1024, (2, 24), generator=torch.Generator().manual_seed(2))
    losses, grads = [], []
    for model in (stored, reference):
        logits = model(idx[:, :-1])
        assert logits.dtype == torch.float32
        loss = F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
        loss.backward()
        losses.append(loss)
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-5)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=name)
    stored.eval()
    assert greedy(stored, [5, 17, 42], max_new_tokens=4) == greedy(reference.eval(), [5, 17, 42], max_new_tokens=4)


def test_adapter_gradients_survive_an_inference_forward():
    """The training loop validates and samples between steps. On AVX512-BF16 CPUs bitsandbytes would repack a 4-bit
    weight for its inference kernel at the first eval forward, and that kernel has no backward: the gradients through
    the frozen base to the adapters of lower layers would be silently dropped from then on."""
    torch.manual_seed(0)
    model = LoRARecipe(r=4, dropout=0.0, quantize="bnb.nf4", mlp=True).prepare(
        GPT(tiny_config(n_embd=64, intermediate_size=128))
    )
    idx = torch.randint(0, 1024, (2, 16), generator=torch.Generator().manual_seed(1))

    def lora_grads():
        model.train()
        model.zero_grad()
        model(idx).logsumexp(-1).mean().backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    before = lora_grads()
    model.eval()
    with torch.no_grad():
        model(idx)
    after = lora_grads()
    for name in before:
        assert after[name] is not None, f"{name} got no gradient after an inference forward"
        torch.testing.assert_close(after[name], before[name], msg=name)


def test_4bit_layers_compute_in_the_autocast_dtype():
    """Under bf16-mixed (autocast) a 4-bit base computes in bf16 and returns bf16, as autocast makes nn.Linear do, so
    the activations after it (the MLP's products, the attention inputs) are kept for backward in bf16, not float32."""
    model = LoRARecipe(r=4, quantize="bnb.nf4", mlp=True).prepare(GPT(tiny_config(n_embd=64, intermediate_size=128)))
    x = torch.randn(4, 16, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.transformer.h[0].mlp.fc_1.base(x).dtype == torch.bfloat16
        assert model.transformer.h[0].mlp(x).dtype == torch.bfloat16
    assert model.transformer.h[0].mlp.fc_1.base(x).dtype == torch.float32  # no autocast: the input's dtype
