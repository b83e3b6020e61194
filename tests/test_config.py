"""The named-config registry and `Config` constructors: names, sizes, HF config.json (both dialects), files."""

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest

from litgpt_lite.config import Config
from litgpt_lite.configs import FAMILIES, name_to_config
from litgpt_lite.convert.hf_config import ARCHITECTURES, config_from_hf, config_to_hf
from litgpt_lite.errors import UserError

# fields that say where a config came from rather than what the model is
_PROVENANCE = {"hf_config", "padding_multiple"}


def _model_fields(config: Config) -> dict:
    return {k: v for k, v in config.to_dict().items() if k not in _PROVENANCE}


# ---------------------------------------------------------------- the registry itself
@pytest.mark.parametrize("name", sorted(name_to_config))
def test_every_registered_config_constructs(name):
    config = Config.from_name(name)
    assert config.name == name == config.hf_config["name"]
    assert config.hf_config["org"]
    assert config.architecture in ARCHITECTURES
    # HF checkpoints load only when the embedding has exactly the rows of the HF vocab_size
    assert config.padded_vocab_size == config.vocab_size


def test_every_entry_links_its_hf_config():
    """Each family module names the config.json of every entry it registers (braces expand loop-made names)."""
    src = Path(__file__).resolve().parents[1] / "litgpt_lite" / "configs"
    links: set[tuple[str, str]] = set()
    for family in FAMILIES:
        text = (src / f"{family}.py").read_text()
        for org, name in re.findall(r"https://huggingface\.co/([^/\s]+)/(\S+?)/blob/main/config\.json", text):
            links.update((org, n) for n in _expand_braces(name))
    missing = [n for n, c in name_to_config.items() if (c["hf_config"]["org"], c["hf_config"]["name"]) not in links]
    assert not missing


def _expand_braces(pattern: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    out = []
    for option in match.group(1).split(","):
        out += _expand_braces(pattern[: match.start()] + option + pattern[match.end() :])
    return out


def test_registry_covers_the_families_users_ask_for():
    wanted = [
        "Llama-2-7b-chat-hf", "Meta-Llama-3-8B-Instruct", "Llama-3.1-8B", "Llama-3.2-3B-Instruct",
        "Llama-3.3-70B-Instruct", "CodeLlama-34b-Python-hf", "CodeLlama-70b-Instruct-hf", "Mistral-7B-Instruct-v0.3",
        "Mixtral-8x7B-Instruct-v0.1", "gemma-7b-it", "gemma-2-27b-it", "gemma-3-12b-it", "Qwen2.5-72B-Instruct",
        "Qwen2.5-Coder-7B", "Qwen2.5-Math-7B-Instruct", "Qwen3-32B", "Qwen3-235B-A22B", "phi-2",
        "Phi-3-mini-128k-instruct", "Phi-3.5-mini-instruct", "phi-4", "Phi-4-mini-instruct", "pythia-12b-deduped",
        "falcon-40b-instruct", "Falcon3-10B-Instruct", "OLMo-1B-hf", "OLMo-2-1124-13B-Instruct",
        "SmolLM2-1.7B-Instruct", "TinyLlama-1.1B-Chat-v1.0",
    ]  # fmt: skip
    assert [n for n in wanted if n not in name_to_config] == []


@pytest.mark.parametrize("name", sorted(name_to_config))
def test_config_json_round_trip(name):
    """Writing an entry as an HF config.json and reading it back gives the entry: conversion both ways agrees."""
    config = Config.from_name(name)
    back = config_from_hf(config_to_hf(config), name=name)
    expected, got = _model_fields(config), _model_fields(back)
    if config.architecture == "Gemma3ForConditionalGeneration":  # written as its text model
        assert got.pop("architecture") == "Gemma3ForCausalLM"
        expected.pop("architecture")
    assert got == expected


# Known parameter counts (tied embeddings counted once). The first five are the counts the model cards and
# `sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(...).parameters())` report.
PARAM_COUNTS = {
    "SmolLM2-135M": 134_515_008,
    "pythia-70m": 70_426_624,
    "Llama-3.2-1B": 1_235_814_400,
    "Qwen2.5-0.5B": 494_032_768,
    "gemma-2-2b": 2_614_341_888,
    "Llama-2-7b-hf": 6_738_415_616,
    "Mistral-7B-v0.1": 7_241_732_096,
    "Mixtral-8x7B-v0.1": 46_702_792_704,
    "phi-2": 2_779_683_840,
    "falcon-7b": 6_921_720_704,
    "gemma-7b": 8_537_680_896,
    "gemma-3-1b-it": 999_885_952,
    "Meta-Llama-3-8B": 8_030_261_248,
    "Phi-3-mini-4k-instruct": 3_821_079_552,
}


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_parameter_count(name):
    torch = pytest.importorskip("torch")
    from litgpt_lite.model import GPT

    with torch.device("meta"):
        model = GPT(Config.from_name(name))
    assert sum(p.numel() for p in model.parameters()) == PARAM_COUNTS[name]


# ---------------------------------------------------------------- from_name
def test_from_name_is_case_insensitive():
    assert Config.from_name("smollm2-135m") == Config.from_name("SmolLM2-135M")
    assert Config.from_name("LLAMA-3.2-1B").name == "Llama-3.2-1B"


def test_from_name_applies_overrides():
    config = Config.from_name("pythia-14m", n_layer=2, block_size=64)
    assert (config.n_layer, config.block_size, config.n_embd) == (2, 64, 128)


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UserError) as err:
        Config.from_name("Llama-3.2-1B-Instrct")
    message = str(err.value)
    assert "Unknown model name 'Llama-3.2-1B-Instrct'" in message
    assert "Llama-3.2-1B-Instruct" in message
    assert "\n" not in message


# ---------------------------------------------------------------- config_from_hf, both dialects
# Abridged config.json files as they are on the Hub (the older dialect: rope_theta / rope_scaling / patterns).
HF_LEGACY = {
    "Llama-3.2-1B": {
        "_name_or_path": "meta-llama/Llama-3.2-1B",
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 128256,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-05,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
    },
    "gemma-2-2b": {
        "_name_or_path": "google/gemma-2-2b",
        "architectures": ["Gemma2ForCausalLM"],
        "model_type": "gemma2",
        "vocab_size": 256000,
        "hidden_size": 2304,
        "intermediate_size": 9216,
        "num_hidden_layers": 26,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-06,
        "rope_theta": 10000.0,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": 256,
        "sliding_window": 4096,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        "cache_implementation": "hybrid",
    },
    "gemma-3-1b-it": {
        "_name_or_path": "google/gemma-3-1b-it",
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "vocab_size": 262144,
        "hidden_size": 1152,
        "intermediate_size": 6912,
        "num_hidden_layers": 26,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000,
        "rope_local_base_freq": 10000,
        "rope_scaling": None,
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": 256,
        "sliding_window": 512,
        "sliding_window_pattern": 6,
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
    },
    "Qwen2.5-0.5B": {
        "_name_or_path": "Qwen/Qwen2.5-0.5B",
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": 151936,
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "use_sliding_window": False,
        "max_window_layers": 24,
        "tie_word_embeddings": True,
    },
    "Qwen3-30B-A3B": {
        "_name_or_path": "Qwen/Qwen3-30B-A3B",
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "vocab_size": 151936,
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "moe_intermediate_size": 768,
        "num_hidden_layers": 48,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "norm_topk_prob": True,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "sliding_window": None,
        "use_sliding_window": False,
        "attention_bias": False,
        "tie_word_embeddings": False,
    },
    "Mistral-7B-v0.1": {
        "_name_or_path": "mistralai/Mistral-7B-v0.1",
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
        "tie_word_embeddings": False,
    },
    "phi-2": {
        "_name_or_path": "microsoft/phi-2",
        "architectures": ["PhiForCausalLM"],
        "model_type": "phi",
        "vocab_size": 51200,
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "max_position_embeddings": 2048,
        "layer_norm_eps": 1e-05,
        "partial_rotary_factor": 0.4,
        "rope_theta": 10000.0,
        "hidden_act": "gelu_new",
        "qk_layernorm": False,
        "tie_word_embeddings": False,
    },
    "falcon-7b": {
        "_name_or_path": "tiiuae/falcon-7b",
        "architectures": ["FalconForCausalLM"],
        "model_type": "falcon",
        "vocab_size": 65024,
        "hidden_size": 4544,
        "num_hidden_layers": 32,
        "num_attention_heads": 71,
        "layer_norm_epsilon": 1e-05,
        "multi_query": True,
        "new_decoder_architecture": False,
        "parallel_attn": True,
        "bias": False,
        "alibi": False,
    },
    "OLMo-2-1124-7B": {
        "_name_or_path": "allenai/OLMo-2-1124-7B",
        "architectures": ["Olmo2ForCausalLM"],
        "model_type": "olmo2",
        "vocab_size": 100352,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-06,
        "rope_theta": 500000,
        "rope_scaling": None,
        "attention_bias": False,
        "tie_word_embeddings": False,
    },
}


def _to_v5_dialect(legacy: dict) -> dict:
    """The same config.json as transformers 5.x writes it: `rope_parameters` (per layer type) and `layer_types`."""
    hf = copy.deepcopy(legacy)
    params = {"rope_theta": float(hf.pop("rope_theta", 10000.0)), "rope_type": "default"}
    if scaling := hf.pop("rope_scaling", None):
        params.update(scaling)
    if "partial_rotary_factor" in hf:
        params["partial_rotary_factor"] = hf.pop("partial_rotary_factor")
    local_base = hf.pop("rope_local_base_freq", None)
    hf["rope_parameters"] = params
    if local_base is not None:
        local = {"rope_theta": float(local_base), "rope_type": "default"}
        hf["rope_parameters"] = {"full_attention": params, "sliding_attention": local}
    n = hf["num_hidden_layers"]
    if pattern := hf.pop("sliding_window_pattern", None):
        hf["layer_types"] = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n)]
    elif hf.get("model_type") == "gemma2":
        hf["layer_types"] = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
    return hf


@pytest.mark.parametrize("name", sorted(HF_LEGACY))
@pytest.mark.parametrize("dialect", ["legacy", "v5"])
def test_config_from_hf_matches_the_registry(name, dialect):
    hf = HF_LEGACY[name] if dialect == "legacy" else _to_v5_dialect(HF_LEGACY[name])
    assert _model_fields(config_from_hf(hf)) == _model_fields(Config.from_name(name))


@pytest.mark.parametrize("name", ["Llama-3.2-1B", "gemma-2-2b", "gemma-3-1b-it", "Qwen3-30B-A3B", "phi-2"])
def test_config_from_hf_reads_what_transformers_writes(name):
    """Load the Hub file into transformers' own config class and save it again: the 5.x file reads the same."""
    transformers = pytest.importorskip("transformers")
    legacy = dict(HF_LEGACY[name])
    legacy.pop("_name_or_path")
    written = transformers.AutoConfig.for_model(legacy.pop("model_type"), **legacy).to_dict()
    assert "rope_parameters" in written
    got = config_from_hf(written, name=name)
    assert _model_fields(got) == _model_fields(Config.from_name(name))


def test_config_from_hf_reads_a_folder(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps(HF_LEGACY["Qwen2.5-0.5B"]))
    assert config_from_hf(tmp_path) == config_from_hf(HF_LEGACY["Qwen2.5-0.5B"])


def test_config_from_hf_rejects_an_unsupported_architecture():
    with pytest.raises(UserError, match="Unsupported architecture 'BertForMaskedLM'"):
        config_from_hf({"architectures": ["BertForMaskedLM"], "model_type": "bert"})


# ---------------------------------------------------------------- files
@pytest.mark.parametrize("name", ["gemma-3-4b-it", "Llama-3.1-8B", "Qwen3-30B-A3B", "OLMo-1B-hf"])
def test_from_file_round_trips_save(tmp_path, name):
    config = Config.from_name(name)
    config.save(tmp_path / "model_config.yaml")
    assert Config.from_file(tmp_path / "model_config.yaml") == config


def test_from_file_rejects_unknown_fields(tmp_path):
    path = tmp_path / "model_config.yaml"
    path.write_text("n_layer: 2\nn_embd: 32\nn_head: 4\nnot_a_field: 1\n")
    with pytest.raises(UserError, match="unknown config fields: not_a_field"):
        Config.from_file(path)


def test_config_import_is_torch_free():
    code = (
        "import sys, litgpt_lite.config; from litgpt_lite.config import Config; Config.from_name('gemma-2-2b'); "
        "assert 'torch' not in sys.modules, 'torch was imported'; "
        "assert 'litgpt_lite.convert' not in sys.modules, 'the config imported convert'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


# ---------------------------------------------------------------- field checks: one clear line for a bad value
BAD_FIELDS = [
    ("n_layer", "two", "n_layer must be an integer; got 'two'"),
    ("mlp_class", "os.system", "mlp_class must be one of GptNeoxMLP, LLaMAMLP, GemmaMLP, LLaMAMoE; got 'os.system'"),
    ("norm_class", "FancyNorm", "norm_class must be one of RMSNorm, LayerNorm; got 'FancyNorm'"),
    ("tie_embeddings", "yes please", "tie_embeddings must be true or false; got 'yes please'"),
    ("head_size", 1.5, "head_size must be an integer or null; got 1.5"),
    ("sliding_window_layers", [0, "1"], "sliding_window_layers must be a list of integers or null; got [0, '1']"),
    ("rope_scaling", {"type": "ntk"}, "rope_scaling type must be one of linear, llama3, yarn, longrope; got 'ntk'"),
    ("hf_config", "meta-llama", "hf_config must be a mapping; got 'meta-llama'"),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD_FIELDS, ids=[f for f, _, _ in BAD_FIELDS])
def test_a_bad_field_value_is_one_clear_line(tmp_path, field, value, message):
    import yaml

    path = tmp_path / "model_config.yaml"
    path.write_text(yaml.safe_dump({**Config.from_name("SmolLM2-135M-Instruct").to_dict(), field: value}))
    with pytest.raises(ValueError) as raised:
        Config.from_file(path)
    assert str(raised.value) == f"{path}: {message}"
    assert isinstance(raised.value, UserError)  # the CLI prints it as one line


def test_float_fields_take_ints_and_yaml_exponent_strings(tmp_path):
    path = tmp_path / "model_config.yaml"  # YAML 1.1 reads 1e-5 (no dot) as a string
    path.write_text("n_layer: 2\nn_embd: 32\nn_head: 4\nnorm_eps: 1e-5\nrope_base: 10000\n")
    config = Config.from_file(path)
    assert config.norm_eps == 1e-5 and config.rope_base == 10000
    path.write_text("n_layer: 2\nn_embd: 32\nn_head: 4\nnorm_eps: tiny\n")
    with pytest.raises(ValueError, match="norm_eps must be a number; got 'tiny'"):
        Config.from_file(path)


@pytest.mark.parametrize(("field", "value"), [("n_layer", "two"), ("mlp_class", "os.system"), ("norm_class", "X")])
def test_cli_reports_a_bad_model_config_in_one_line(tmp_path, capsys, field, value):
    import yaml
    from tiny_configs import tiny_llama
    from tokenizer_fixtures import build_bpe_dir

    from litgpt_lite.__main__ import main
    from litgpt_lite.checkpoint import save_checkpoint
    from litgpt_lite.model import GPT

    config = tiny_llama()
    ckpt = save_checkpoint(GPT(config), config, tmp_path / "ckpt", tokenizer_dir=build_bpe_dir(tmp_path / "tok"))
    data = yaml.safe_load((ckpt / "model_config.yaml").read_text())
    (ckpt / "model_config.yaml").write_text(yaml.safe_dump({**data, field: value}))
    assert main(["generate", str(ckpt), "--prompt", "hi", "--max_new_tokens", "1"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert f"model_config.yaml: {field} must be" in err and repr(value) in err, err
