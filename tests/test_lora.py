"""LoRA / DoRA: adapters start as a no-op, train alone, save alone, and merge exactly into a full checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_configs import tiny_llama

from litgpt_lite.checkpoint import WEIGHTS, save_checkpoint
from litgpt_lite.config import Config
from litgpt_lite.errors import UserError
from litgpt_lite.loading import load_model
from litgpt_lite.lora import LORA_WEIGHTS, LORA_YAML, LoRALinear, LoRARecipe, merge_lora_modules
from litgpt_lite.merge_lora import merge_lora_cli
from litgpt_lite.model import GPT

llama = tiny_llama


def neox() -> Config:
    return Config(
        name="tiny-neox",
        architecture="GPTNeoXForCausalLM",
        n_layer=2,
        n_embd=48,
        n_head=4,
        vocab_size=100,
        padding_multiple=64,
        block_size=64,
        mlp_class="GptNeoxMLP",
        intermediate_size=96,
        rotary_percentage=0.25,
        parallel_residual=True,
        attn_bias=True,
        attn_proj_bias=True,
        mlp_bias=True,
        lm_head_bias=False,
    )


def moe() -> Config:
    return llama(name="tiny-moe", mlp_class="LLaMAMoE", n_expert=4, n_expert_per_token=2, tie_embeddings=False)


def make_base(tmp_path: Path, config: Config) -> Path:
    torch.manual_seed(0)
    out = tmp_path / "base"
    save_checkpoint(GPT(config), config, out)
    return out


def randomize_adapters(model: torch.nn.Module) -> None:
    """Trained adapters are not zero: give B (and DoRA's magnitude) values so the merge has something to do."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif name.endswith("lora_magnitude"):
                p.mul_(1 + 0.2 * torch.rand(p.shape, generator=g))


def tokens(vocab: int, T: int = 12) -> torch.Tensor:
    return torch.randint(0, vocab, (2, T), generator=torch.Generator().manual_seed(2))


CASES = {
    "query+value": (llama, dict()),
    "key+value only": (llama, dict(query=False, key=True, value=True)),
    "key only, mlp, head (tied)": (llama, dict(query=False, key=True, value=False, mlp=True, head=True)),
    "dora everywhere": (llama, dict(key=True, projection=True, mlp=True, head=True, dora=True, r=4, alpha=8)),
    "neox with biases": (neox, dict(projection=True, mlp=True, dora=True)),
    "moe experts": (moe, dict(mlp=True, head=True)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_merge_is_exact(tmp_path, case):
    make_config, flags = CASES[case]
    config = make_config()
    base = make_base(tmp_path, config)
    recipe = LoRARecipe(dropout=0.1, **flags)
    model = recipe.prepare(load_model(base))
    randomize_adapters(model)
    model.eval()  # no dropout: the merged model has none
    idx = tokens(config.vocab_size)
    with torch.no_grad():
        expected = model(idx)
        assert not torch.allclose(expected, load_model(base)(idx), atol=1e-3)  # the adapters change the output
    lora_dir = tmp_path / "lora"
    recipe.export(model, lora_dir, base)
    merge_lora_cli(lora_dir, out_dir=tmp_path / "merged")
    merged = load_model(tmp_path / "merged")
    assert merged.config.tie_embeddings == (config.tie_embeddings and not flags.get("head", False))
    with torch.no_grad():
        torch.testing.assert_close(merged(idx), expected, rtol=1e-5, atol=1e-4)
    # the in-memory merge agrees too, and a LoRA dir loads for inference as it is
    with torch.no_grad():
        torch.testing.assert_close(merge_lora_modules(model)(idx), expected, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(load_model(lora_dir)(idx), expected, rtol=1e-5, atol=1e-4)


def test_adapters_start_as_a_no_op(tmp_path):
    config = llama()
    base = make_base(tmp_path, config)
    idx = tokens(config.vocab_size)
    with torch.no_grad():
        expected = load_model(base)(idx)
        for flags in (dict(mlp=True, head=True), dict(dora=True, key=True, projection=True)):
            model = LoRARecipe(**flags).prepare(load_model(base)).eval()
            torch.testing.assert_close(model(idx), expected, rtol=1e-5, atol=1e-5)


def test_only_adapters_train_and_disabled_blocks_stay_put(tmp_path):
    config = llama()
    model = LoRARecipe(r=4, query=False, key=True, value=False, dora=True).prepare(
        load_model(make_base(tmp_path, config))
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.rsplit(".", 1)[-1] in ("lora_A", "lora_B", "lora_magnitude") for n in trainable)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    idx = tokens(config.vocab_size, 16)
    losses = []
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
        loss.backward()
        assert {n for n, p in model.named_parameters() if p.grad is not None} == trainable
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    qkv = model.transformer.h[0].attn.qkv
    assert isinstance(qkv, LoRALinear)
    delta = qkv.delta_weight()
    q_rows = config.n_head * config.head_size
    kv_rows = config.n_query_groups * config.head_size
    assert delta[:q_rows].abs().max() == 0 and delta[q_rows + kv_rows :].abs().max() == 0  # Q and V untouched
    assert delta[q_rows : q_rows + kv_rows].abs().max() > 0  # K learned


def test_trainable_state_round_trips_and_checks_names(tmp_path):
    config = llama()
    base = make_base(tmp_path, config)
    recipe = LoRARecipe(mlp=True)
    trained = recipe.prepare(load_model(base))
    randomize_adapters(trained)
    state = recipe.trainable_state(trained)
    assert state and all(".lora_" in k for k in state)
    assert sum(t.numel() for t in state.values()) < 0.2 * sum(p.numel() for p in load_model(base).parameters())
    fresh = recipe.prepare(load_model(base))
    recipe.load_trainable_state(fresh, state)
    idx = tokens(config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(idx), trained.eval()(idx))
    other = LoRARecipe(mlp=False).prepare(load_model(base))
    with pytest.raises(UserError, match="same LoRA flags"):
        recipe.load_trainable_state(other, state)


def test_export_writes_adapters_yaml_and_base_files(tmp_path):
    import yaml

    base = make_base(tmp_path, llama())
    (base / "prompt_style.yaml").write_text("name: chatml\n")
    recipe = LoRARecipe(r=4, alpha=8, key=True)
    model = recipe.prepare(load_model(base))
    recipe.export(model, tmp_path / "out", base)
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} >= {LORA_WEIGHTS, LORA_YAML, "model_config.yaml", "prompt_style.yaml"}
    info = yaml.safe_load((out / LORA_YAML).read_text())
    assert info["r"] == 4 and info["alpha"] == 8 and info["key"] is True and info["dora"] is False
    assert Path(info["base_checkpoint_dir"]) == base.resolve()
    assert not (out / WEIGHTS).exists()  # adapters only
    # merge_lora with no out_dir writes the full weights into the LoRA dir itself and keeps the adapters
    merge_lora_cli(out)
    assert (out / WEIGHTS).is_file() and (out / LORA_WEIGHTS).is_file()
    load_model(out)


@pytest.mark.slow  # importing transformers dominates: ~25 s on 2 busy cores
def test_merged_checkpoint_converts_to_hugging_face(tmp_path):
    transformers = pytest.importorskip("transformers")
    from litgpt_lite.convert import convert_from_litgpt

    config = Config.from_name(
        "SmolLM2-135M", n_layer=2, n_embd=64, n_head=4, n_query_groups=2, intermediate_size=96, vocab_size=128
    )
    config.padded_vocab_size = 128
    base = make_base(tmp_path, config)
    recipe = LoRARecipe(mlp=True, head=True, dora=True)
    model = recipe.prepare(load_model(base))
    randomize_adapters(model)
    recipe.export(model, tmp_path / "lora", base)
    merge_lora_cli(tmp_path / "lora", out_dir=tmp_path / "merged")
    convert_from_litgpt(tmp_path / "merged", tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", torch_dtype=torch.float32).eval()
    idx = tokens(128)
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model.eval()(idx), rtol=1e-4, atol=1e-4)


def test_merge_errors_are_clear(tmp_path):
    with pytest.raises(UserError, match="has no lit_model.lora.safetensors"):
        merge_lora_cli(make_base(tmp_path, llama()))
    base = tmp_path / "base"
    recipe = LoRARecipe()
    recipe.export(recipe.prepare(load_model(base)), tmp_path / "lora", base)
    with pytest.raises(UserError, match="base_checkpoint_dir"):
        merge_lora_cli(tmp_path / "lora", base_checkpoint_dir=tmp_path / "nowhere")
    other, smaller = tmp_path / "other", llama(n_embd=32, n_head=2, n_query_groups=1)
    save_checkpoint(GPT(smaller), smaller, other)
    with pytest.raises(UserError, match="has shape"):  # adapters of another model size
        merge_lora_cli(tmp_path / "lora", base_checkpoint_dir=other, out_dir=tmp_path / "merged")
    import shutil

    shutil.rmtree(base)
    with pytest.raises(UserError, match="base checkpoint .* is missing"):
        merge_lora_cli(tmp_path / "lora")


def test_bad_hyperparameters_are_clear():
    with pytest.raises(UserError, match="lora_r"):
        LoRARecipe(r=0)
    with pytest.raises(UserError, match="adapts no layer"):
        LoRARecipe(query=False, value=False)
    with pytest.raises(UserError, match="lora_dropout"):
        LoRARecipe(dropout=1.0)
