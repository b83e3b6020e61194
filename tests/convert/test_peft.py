"""PEFT-format LoRA/DoRA adapters, both ways: our LoRA dir -> `peft.PeftModel.from_pretrained` over the base's HF
export gives our logits; a `peft.get_peft_model` adapter -> our LoRA dir gives PEFT's logits (fp32, assert_close).
On a tiny random-init Llama (GQA, so q and k/v blocks differ in size) and on the real SmolLM2-135M-Instruct."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from litgpt_lite.__main__ import main  # noqa: E402
from litgpt_lite.checkpoint import LORA_WEIGHTS, read_safetensors  # noqa: E402
from litgpt_lite.convert import convert_from_litgpt, convert_to_litgpt  # noqa: E402
from litgpt_lite.errors import UserError  # noqa: E402
from litgpt_lite.loading import load_model  # noqa: E402
from litgpt_lite.lora import LoRAConfig, inject_lora, lora_modules, save_lora  # noqa: E402
from litgpt_lite.merge_lora import merge_lora_cli  # noqa: E402

VOCAB = 96
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# SmolLM2 in fp32: PEFT and we sum the same products in another order; over 30 layers that moves logits of size ~35
# by up to 1.4e-4 (measured), and up to 5.3e-4 where our loader merges the adapters into the weights first (it does
# for full-precision bases). A mapping mistake moves them by the adapters' whole effect, asserted to be above 1.
SMOLLM2_ATOL = 1e-3


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The shared CI box runs several suites at once; two contending threads made a SmolLM2 forward 15x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
ARCHITECTURES = {  # GQA throughout, so the q block and the k/v blocks differ in size
    "llama": ("LlamaConfig", dict(num_key_value_heads=2)),
    "llama_tied": ("LlamaConfig", dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "phi3": ("Phi3Config", dict(num_key_value_heads=2, pad_token_id=0)),  # HF fuses qkv_proj and gate_up_proj
    "neox": ("GPTNeoXConfig", dict(rotary_pct=0.25)),  # HF interleaves q/k/v per head in query_key_value
}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """arch -> (our checkpoint dir, its convert_from_litgpt HF export) of a tiny random-init model, built once."""
    made = {}

    def make(arch: str = "llama"):
        if arch not in made:
            tmp = tmp_path_factory.mktemp(arch)
            cls_name, extra = ARCHITECTURES[arch]
            config = getattr(transformers, cls_name)(**TINY, **extra, bos_token_id=1, eos_token_id=2)
            torch.manual_seed(0)
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            with torch.no_grad():  # norms away from 1 so a mixed-up row cannot hide
                for name, p in model.named_parameters():
                    if "norm" in name and name.endswith("weight"):
                        p.normal_(1, 0.3)
            model.save_pretrained(tmp / "hf_src")
            convert_to_litgpt(tmp / "hf_src", out_dir=tmp / "lit")
            convert_from_litgpt(tmp / "lit", tmp / "hf")
            made[arch] = tmp / "lit", tmp / "hf"
        return made[arch]

    return make


@pytest.fixture(scope="module")
def tiny(tiny_models):
    return tiny_models("llama")


def _tokens(vocab: int = VOCAB) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 9), generator=torch.Generator().manual_seed(1))


def _our_lora_dir(base, out_dir, dora: bool, key: bool = True, seed: int = 3, std: float = 0.2, head: bool = False):
    """A LoRA output dir of ours with random nonzero B (and, for DoRA, magnitudes away from the row norms)."""
    model = load_model(base)
    flags = dict(query=True, key=key, value=True, projection=True, mlp=True, head=head)
    cfg = LoRAConfig(r=4, alpha=8, dora=dora, **flags)
    inject_lora(model, cfg)
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in lora_modules(model).values():
            module.lora_B.normal_(0, std)
            if module.lora_magnitude is not None:
                module.lora_magnitude.mul_(torch.rand_like(module.lora_magnitude) + 0.5)
    save_lora(model, cfg, out_dir, base)
    return out_dir


def _ours(lora_dir, idx, vocab: int = VOCAB):
    with torch.no_grad():
        return load_model(lora_dir, kernels="none")(idx)[..., :vocab]  # our vocab may be padded past HF's


def _peft_logits(hf_dir, adapter_dir, idx):
    """PEFT's logits, after checking it loads every adapter tensor and finds none missing."""
    base = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(base, adapter_dir).eval()
    wanted = set(peft.get_peft_model_state_dict(model, save_embedding_layers=False))  # the base's own lm_head stays
    assert set(read_safetensors(adapter_dir / "adapter_model.safetensors")) == wanted
    with torch.no_grad():
        return model(idx).logits


PHI3_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
NEOX_TARGETS = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
OURS_CASES = {  # arch, DoRA, key block adapted, lm_head adapted, PEFT target_modules, PEFT rank_pattern
    "llama": ("llama", False, True, False, LLAMA_TARGETS, {}),
    # the key block has no adapter but a trained DoRA magnitude: PEFT gets a zero pair on k_proj carrying it
    "llama-dora": ("llama", True, False, False, LLAMA_TARGETS, {}),
    "llama_tied-head": ("llama_tied", False, True, True, [*LLAMA_TARGETS, "lm_head"], {}),
    # fused on HF's side: q, k and v blocks side by side in qkv_proj (rank 12), fc_1 and fc_2 in gate_up_proj (8)
    "phi3": ("phi3", False, True, False, PHI3_TARGETS, dict(qkv_proj=12, gate_up_proj=8)),
    "phi3-dora": ("phi3", True, False, False, PHI3_TARGETS, dict(qkv_proj=8, gate_up_proj=8)),
    "neox-dora": ("neox", True, True, False, NEOX_TARGETS, dict(query_key_value=12)),
}


@pytest.mark.parametrize("case", list(OURS_CASES))
def test_ours_to_peft_and_back(tiny_models, tmp_path, case):
    arch, dora, key, head, targets, ranks = OURS_CASES[case]
    lit, hf = tiny_models(arch)
    lora = _our_lora_dir(lit, tmp_path / "lora", dora=dora, key=key, head=head)
    idx = _tokens()
    expected = _ours(lora, idx)
    assert not torch.allclose(expected, load_model(lit)(idx).detach()[..., :VOCAB])  # the adapters do change the logits

    out = convert_from_litgpt(lora, tmp_path / "peft")  # default for a dir with adapters only: PEFT format
    settings = json.loads((out / "adapter_config.json").read_text())
    assert settings["peft_type"] == "LORA" and settings["task_type"] == "CAUSAL_LM" and settings["bias"] == "none"
    assert (settings["r"], settings["lora_alpha"], settings["use_dora"]) == (4, 8, dora)
    assert sorted(settings["target_modules"]) == sorted(targets)
    for module, rank in ranks.items():  # alpha grows with the rank, so every block keeps alpha / r = 2
        assert settings["rank_pattern"][module] == rank and settings["alpha_pattern"][module] == 2 * rank
    keys = set(read_safetensors(out / "adapter_model.safetensors"))
    layer = "gpt_neox.layers.1.attention" if arch == "neox" else "model.layers.1.self_attn"
    assert f"base_model.model.{layer}.{targets[0]}.lora_A.weight" in keys
    assert any(k.endswith("lora_magnitude_vector") for k in keys) == dora
    torch.testing.assert_close(_peft_logits(hf, out, idx), expected)

    back = convert_to_litgpt(out, base=lit, out_dir=tmp_path / "back")
    torch.testing.assert_close(_ours(back, idx), expected)


def test_merge_true_writes_the_merged_full_model(tiny, tmp_path):
    lit, _ = tiny
    lora = _our_lora_dir(lit, tmp_path / "lora", dora=True)
    idx = _tokens()
    assert main(["convert_from_litgpt", str(lora), str(tmp_path / "full"), "--merge", "true"]) == 0
    assert not (tmp_path / "full" / "adapter_config.json").exists()
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "full", dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(idx).logits, _ours(lora, idx))
    # a LoRA dir merged in place holds full weights: converting it still writes the full model, as before
    merge_lora_cli(lora)
    convert_from_litgpt(lora, tmp_path / "full2")
    assert (tmp_path / "full2" / "config.json").is_file() and not (tmp_path / "full2" / "adapter_config.json").exists()
    convert_from_litgpt(lora, tmp_path / "adapters", merge=False)  # unless asked for the adapters
    assert (tmp_path / "adapters" / "adapter_config.json").is_file()
    with pytest.raises(UserError, match="has no lit_model.lora.safetensors"):
        convert_from_litgpt(lit, tmp_path / "nothing", merge=False)


PEFT_CASES = {  # arch, LoraConfig arguments
    "lora": ("llama", dict(target_modules=["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])),
    "patterns": (  # different ranks and alphas per module: our blocks get the widest rank, zero-padded
        "llama",
        dict(
            target_modules=["q_proj", "k_proj", "v_proj", "down_proj"],
            rank_pattern={"v_proj": 8, "down_proj": 2},
            alpha_pattern={"k_proj": 3},
        ),
    ),
    "rslora": ("llama", dict(target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], use_rslora=True)),
    # DoRA on q and v only: our fused qkv's magnitude gives the k rows the base row norms, a scale of exactly 1
    "dora": ("llama", dict(target_modules=["q_proj", "v_proj", "up_proj", "gate_proj"], use_dora=True)),
    "head": ("llama_tied", dict(target_modules=["v_proj", "lm_head"])),
    # one fused qkv_proj pair feeds all three of our blocks; gate_up_proj feeds fc_1 and fc_2
    "phi3-dora": ("phi3", dict(target_modules=["qkv_proj", "gate_up_proj"], use_dora=True)),
    "neox": ("neox", dict(target_modules=["query_key_value", "dense_4h_to_h"])),
}


def _peft_adapter(hf_dir, out_dir, seed: int = 5, **kwargs):
    """An adapter made by PEFT itself, with random nonzero B (init_lora_weights=False); PEFT's logits on idx."""
    base = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    config = peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, task_type="CAUSAL_LM", **kwargs)
    model = peft.get_peft_model(base, config).eval()
    if kwargs.get("use_dora"):
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_magnitude_vector" in name:
                    p.mul_(torch.rand_like(p) + 0.5)
    model.save_pretrained(out_dir)
    return model


@pytest.mark.parametrize("case", list(PEFT_CASES))
def test_peft_to_ours(tiny_models, tmp_path, case):
    arch, kwargs = PEFT_CASES[case]
    lit, hf = tiny_models(arch)
    model = _peft_adapter(hf, tmp_path / "peft", **kwargs)
    idx = _tokens()
    with torch.no_grad():
        expected = model(idx).logits
    out = convert_to_litgpt(tmp_path / "peft", base=lit, out_dir=tmp_path / "ours")
    assert (out / LORA_WEIGHTS).is_file() and (out / "lora.yaml").is_file() and (out / "model_config.yaml").is_file()
    torch.testing.assert_close(_ours(out, idx), expected)
    torch.testing.assert_close(_ours(out, idx), expected)
    merge_lora_cli(out, out_dir=tmp_path / "merged")  # merge_lora takes it as it takes finetune_lora's output
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "merged")(idx)[..., :VOCAB], expected)


def test_converts_in_place_by_default(tiny, tmp_path):
    lit, hf = tiny
    model = _peft_adapter(hf, tmp_path / "peft", **PEFT_CASES["lora"][1])
    assert main(["convert_to_litgpt", str(tmp_path / "peft"), "--base", str(lit)]) == 0
    with torch.no_grad():
        torch.testing.assert_close(_ours(tmp_path / "peft", _tokens()), model(_tokens()).logits)


def test_unsupported_adapters_get_one_line(tiny, tmp_path, capsys):
    lit, hf = tiny
    _peft_adapter(hf, tmp_path / "embed", target_modules=["q_proj", "embed_tokens"])
    capsys.readouterr()
    assert main(["convert_to_litgpt", str(tmp_path / "embed"), "--base", str(lit)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "embed_tokens" in err and "cannot take" in err, err

    _peft_adapter(hf, tmp_path / "saved", target_modules=["q_proj"], modules_to_save=["lm_head"])
    with pytest.raises(UserError, match="modules_to_save"):
        convert_to_litgpt(tmp_path / "saved", base=lit)
    with pytest.raises(UserError, match="pass --base"):
        convert_to_litgpt(tmp_path / "saved")

    _peft_adapter(hf, tmp_path / "other", target_modules=["q_proj"])
    weights = read_safetensors(tmp_path / "other" / "adapter_model.safetensors")
    renamed = {k.replace("q_proj", "query_key_value"): v for k, v in weights.items()}  # another architecture's
    from litgpt_lite.checkpoint import save_state_dict

    save_state_dict(renamed, tmp_path / "other" / "adapter_model.safetensors")
    with pytest.raises(UserError, match="adapts model.layers.0.self_attn.query_key_value, which litgpt_lite LoRA"):
        convert_to_litgpt(tmp_path / "other", base=lit)


def test_a_changed_lm_head_copy_is_refused(tiny_models, tmp_path):
    """PEFT saves a targeted lm_head's frozen weight beside its adapter; it must be the base's own."""
    lit, hf = tiny_models("llama_tied")
    _peft_adapter(hf, tmp_path / "peft", target_modules=["lm_head"])
    path = tmp_path / "peft" / "adapter_model.safetensors"
    weights = read_safetensors(path)
    assert "base_model.model.lm_head.base_layer.weight" in weights  # what the "head" case above already accepts
    weights["base_model.model.lm_head.base_layer.weight"][0, 0] += 1
    from litgpt_lite.checkpoint import save_state_dict

    save_state_dict(weights, path)
    with pytest.raises(UserError, match="changed weights for lm_head"):
        convert_to_litgpt(tmp_path / "peft", base=lit)


# ---------------------------------------------------------------- the real SmolLM2-135M-Instruct
@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_smollm2_ours_to_peft(smollm2_hf, smollm2_lit, tmp_path, dora):
    lora = _our_lora_dir(smollm2_lit, tmp_path / "lora", dora=dora, std=0.05)
    idx = _tokens(49152)
    expected = _ours(lora, idx, vocab=49152)
    with torch.no_grad():
        assert (expected - load_model(smollm2_lit)(idx)).abs().max() > 1
    convert_from_litgpt(lora, tmp_path / "peft")
    got = _peft_logits(smollm2_hf, tmp_path / "peft", idx)
    torch.testing.assert_close(got, expected, atol=SMOLLM2_ATOL, rtol=0)


def test_smollm2_peft_to_ours(smollm2_hf, smollm2_lit, tmp_path):
    """The converted dir loads the way generate/chat/serve/evaluate load a LoRA dir: LLM.load."""
    from litgpt_lite.api import LLM

    model = _peft_adapter(smollm2_hf, tmp_path / "peft", target_modules=LLAMA_TARGETS, use_dora=True)
    idx = _tokens(49152)
    with torch.no_grad():
        expected = model(idx).logits
    del model
    out = convert_to_litgpt(tmp_path / "peft", base=smollm2_lit, out_dir=tmp_path / "ours")
    llm = LLM.load(out, device="cpu", precision="32-true")
    with torch.no_grad():
        got = llm.model(idx)[..., :49152]
        assert (expected - load_model(smollm2_lit)(idx)).abs().max() > 1
    torch.testing.assert_close(got, expected, atol=SMOLLM2_ATOL, rtol=0)
    assert llm.generate("Hello", max_new_tokens=3, temperature=0)
