"""Prompt styles: renderings, training segments, stop sequences, prompt_style.yaml, and the choice of a style."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizer_fixtures import build_bpe_dir

from litgpt_lite.errors import UserError
from litgpt_lite.prompts import (
    PROMPT_STYLES,
    PromptStyle,
    TokenizerStyle,
    load_prompt_style,
    prompt_style_for,
    save_prompt_style,
    style_name_for_model,
)
from litgpt_lite.tokenizer import Tokenizer

CONVERSATION = [
    {"role": "system", "content": "SYS"},
    {"role": "user", "content": "U1"},
    {"role": "assistant", "content": "A1"},
    {"role": "user", "content": "U2"},
]
TRAINING = [*CONVERSATION, {"role": "assistant", "content": "A2"}]

ALPACA = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
# style -> (apply("P"), apply("P", sys_prompt="S"), apply_messages(CONVERSATION))
EXPECTED = {
    "default": ("P", "S\n\nP", "SYS\n\nU1\n\nA1\n\nU2"),
    "alpaca": (
        f"{ALPACA}\n\n### Instruction:\nP\n\n### Response:\n",
        "S\n\n### Instruction:\nP\n\n### Response:\n",
        "SYS\n\n### Instruction:\nU1\n\n### Response:\nA1\n\n### Instruction:\nU2\n\n### Response:\n",
    ),
    "llama2": (
        "[INST] P [/INST]",
        "[INST] <<SYS>>\nS\n<</SYS>>\n\nP [/INST]",
        "[INST] <<SYS>>\nSYS\n<</SYS>>\n\nU1 [/INST] A1 </s><s>[INST] U2 [/INST]",
    ),
    "llama3": (
        "<|start_header_id|>user<|end_header_id|>\n\nP<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        "<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nP<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        "<|start_header_id|>system<|end_header_id|>\n\nSYS<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nU1<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nA1<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nU2<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    "chatml": (
        "<|im_start|>user\nP<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nP<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nU1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
        "<|im_start|>user\nU2<|im_end|>\n<|im_start|>assistant\n",
    ),
    "gemma": (
        "<start_of_turn>user\nP<end_of_turn>\n<start_of_turn>model\n",
        "<start_of_turn>user\nS\n\nP<end_of_turn>\n<start_of_turn>model\n",
        "<start_of_turn>user\nSYS\n\nU1<end_of_turn>\n<start_of_turn>model\nA1<end_of_turn>\n"
        "<start_of_turn>user\nU2<end_of_turn>\n<start_of_turn>model\n",
    ),
    "phi3": (
        "<|user|>\nP<|end|>\n<|assistant|>\n",
        "<|system|>\nS<|end|>\n<|user|>\nP<|end|>\n<|assistant|>\n",
        "<|system|>\nSYS<|end|>\n<|user|>\nU1<|end|>\n<|assistant|>\nA1<|end|>\n<|user|>\nU2<|end|>\n<|assistant|>\n",
    ),
    "phi4": (
        "<|im_start|>user<|im_sep|>P<|im_end|><|im_start|>assistant<|im_sep|>",
        "<|im_start|>system<|im_sep|>S<|im_end|><|im_start|>user<|im_sep|>P<|im_end|><|im_start|>assistant<|im_sep|>",
        "<|im_start|>system<|im_sep|>SYS<|im_end|><|im_start|>user<|im_sep|>U1<|im_end|>"
        "<|im_start|>assistant<|im_sep|>A1<|im_end|><|im_start|>user<|im_sep|>U2<|im_end|><|im_start|>assistant<|im_sep|>",
    ),
    "mistral": ("[INST] P [/INST]", "[INST] S\n\nP [/INST]", "[INST] SYS\n\nU1 [/INST]A1</s>[INST] U2 [/INST]"),
}


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bpe_dir(tmp_path_factory.mktemp("prompts") / "bpe")


@pytest.fixture(scope="module")
def tokenizers(bpe_dir: Path, smollm2_hf: Path) -> dict[str, Tokenizer]:
    return {"bpe": Tokenizer(bpe_dir), "smollm2": Tokenizer(smollm2_hf)}


def test_every_registered_style_is_covered() -> None:
    assert set(PROMPT_STYLES) == {*EXPECTED, "tokenizer"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_style_renders_single_and_multi_turn(name: str) -> None:
    style = PromptStyle.from_name(name)
    single, with_system, multi = EXPECTED[name]
    assert style.apply("P") == single
    assert style.apply("P", sys_prompt="S") == with_system
    assert style.apply_messages(CONVERSATION) == multi
    assert style.name == name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_training_segments_join_to_the_rendering(name: str) -> None:
    style = PromptStyle.from_name(name)
    segments = style.apply_for_training(TRAINING)
    assert "".join(text for text, _ in segments) == style.apply_messages(TRAINING, add_generation_prompt=False)
    trained = "".join(text for text, is_output in segments if is_output)
    untrained = "".join(text for text, is_output in segments if not is_output)
    assert "A1" in trained and "A2" in trained and "U1" not in trained and "SYS" not in trained
    assert "A1" not in untrained and "A2" not in untrained
    for token in style.end_tokens[:1]:  # the end-of-turn token is learned, so the model learns to stop
        assert trained.count(token) == 2


def test_alpaca_input_block() -> None:
    prompt = PromptStyle.from_name("alpaca").apply("Translate", input="Bonjour")
    assert "paired with an input" in prompt
    assert prompt.endswith("### Instruction:\nTranslate\n\n### Input:\nBonjour\n\n### Response:\n")


def test_bad_messages_raise_user_error() -> None:
    with pytest.raises(UserError, match="role"):
        PromptStyle.from_name("chatml").apply_messages([{"role": "robot", "content": "x"}])
    with pytest.raises(UserError, match="system message only as the first"):
        PromptStyle.from_name("llama2").apply_messages([*CONVERSATION, {"role": "system", "content": "late"}])


def test_tokenizer_style_equals_transformers(tokenizers: dict[str, Tokenizer]) -> None:
    transformers = pytest.importorskip("transformers")
    for tokenizer in tokenizers.values():
        style = PromptStyle.from_name("tokenizer", tokenizer)
        reference = transformers.AutoTokenizer.from_pretrained(tokenizer.checkpoint_dir)
        for messages in (CONVERSATION, CONVERSATION[1:2], TRAINING):
            expected = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            assert style.apply_messages(messages) == expected
        single = [{"role": "system", "content": "S"}, {"role": "user", "content": "P"}]
        assert style.apply("P", sys_prompt="S") == reference.apply_chat_template(
            single, tokenize=False, add_generation_prompt=True
        )


def test_chatml_matches_smollm2_template(tokenizers: dict[str, Tokenizer]) -> None:
    # with a system message SmolLM2's own template is plain ChatML
    template = PromptStyle.from_name("tokenizer", tokenizers["smollm2"])
    assert PromptStyle.from_name("chatml").apply_messages(CONVERSATION) == template.apply_messages(CONVERSATION)


def test_tokenizer_style_training_segments(tokenizers: dict[str, Tokenizer]) -> None:
    for tokenizer in tokenizers.values():
        style = TokenizerStyle(tokenizer)
        segments = style.apply_for_training(TRAINING)
        assert "".join(text for text, _ in segments) == style.apply_messages(TRAINING, add_generation_prompt=False)
        trained = [text for text, is_output in segments if is_output]
        assert trained == ["A1<|im_end|>", "A2<|im_end|>"]  # both templates are ChatML-like; "\n" is not trained


def test_tokenizer_style_rejects_templates_that_are_not_prefix_stable(bpe_dir: Path, tmp_path: Path) -> None:
    path = build_bpe_dir(tmp_path / "unstable", chat_template="{{ messages | length }}{% for m in messages %}"
                         "{{ m.content }}{% endfor %}")  # fmt: skip
    style = TokenizerStyle(Tokenizer(path))
    with pytest.raises(UserError, match="prefix by prefix"):
        style.apply_for_training(TRAINING)


def test_stop_sequences(tokenizers: dict[str, Tokenizer]) -> None:
    bpe, smol = tokenizers["bpe"], tokenizers["smollm2"]
    im_end = bpe.token_to_id("<|im_end|>")
    assert PromptStyle.from_name("chatml").stop_sequences(smol) == [[2]]  # SmolLM2's eos is <|im_end|>
    assert PromptStyle.from_name("chatml").stop_sequences(bpe) == [[2], [im_end]]
    assert PromptStyle.from_name("default").stop_sequences(bpe) == [[2], [im_end]]  # generation_config eos list
    assert PromptStyle.from_name("llama3").stop_sequences(bpe) == [[2], [im_end]]  # no <|eot_id|> in this vocab
    assert TokenizerStyle(bpe).stop_sequences(bpe) == [[2], [im_end]]


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(UserError, match="Unknown prompt style 'nope': choose one of alpaca, chatml"):
        PromptStyle.from_name("nope")
    with pytest.raises(UserError, match="needs a tokenizer"):
        PromptStyle.from_name("tokenizer")


@pytest.mark.parametrize("name", sorted(PROMPT_STYLES))
def test_save_load_round_trip(name: str, bpe_dir: Path, tmp_path: Path) -> None:
    checkpoint = build_bpe_dir(tmp_path / "ckpt") if name == "tokenizer" else tmp_path
    style = PromptStyle.from_name(name, Tokenizer(checkpoint) if name == "tokenizer" else None)
    save_prompt_style(style, checkpoint)
    assert (checkpoint / "prompt_style.yaml").read_text() == f"name: {name}\n"
    loaded = load_prompt_style(checkpoint)
    assert type(loaded) is type(style)
    assert loaded.apply_messages(CONVERSATION) == style.apply_messages(CONVERSATION)


def test_load_without_file_is_none(tmp_path: Path) -> None:
    assert load_prompt_style(tmp_path) is None


@pytest.mark.parametrize(
    ("class_path", "name"),
    [("litgpt.prompts.Llama3", "llama3"), ("litgpt.prompts.SmolLM2", "chatml"), ("litgpt.prompts.Phi4", "phi4")],
)
def test_litgpt_yaml_maps_class_names(tmp_path: Path, class_path: str, name: str) -> None:
    (tmp_path / "prompt_style.yaml").write_text(f"class_path: {class_path}\ninit_args: {{}}\n")
    assert type(load_prompt_style(tmp_path)) is PROMPT_STYLES[name]


def test_litgpt_yaml_never_imports(tmp_path: Path) -> None:
    (tmp_path / "prompt_style.yaml").write_text("class_path: os.system\n")
    with pytest.raises(UserError, match="LitGPT prompt class 'system'"):
        load_prompt_style(tmp_path)
    (tmp_path / "prompt_style.yaml").write_text("- just a list\n")
    with pytest.raises(UserError, match="name: <style>"):
        load_prompt_style(tmp_path)


def test_prompt_style_for_prefers_yaml_then_template_then_name(bpe_dir: Path, tmp_path: Path) -> None:
    tokenizer = Tokenizer(bpe_dir)
    assert isinstance(prompt_style_for(bpe_dir, tokenizer), TokenizerStyle)
    plain_dir = build_bpe_dir(tmp_path / "Meta-Llama-3-8B-Instruct", chat_template=None)
    plain = Tokenizer(plain_dir)
    assert prompt_style_for(plain_dir, plain).name == "llama3"  # guessed from the directory name
    assert prompt_style_for(plain_dir, plain, model_name="Qwen2.5-0.5B-Instruct").name == "chatml"
    save_prompt_style("gemma", plain_dir)
    assert prompt_style_for(plain_dir, plain, model_name="Qwen2.5-0.5B-Instruct").name == "gemma"


@pytest.mark.parametrize(
    ("model_name", "style"),
    [
        ("meta-llama/Meta-Llama-3.1-8B-Instruct", "llama3"),
        ("Llama-2-7b-chat-hf", "llama2"),
        ("Qwen/Qwen2.5-7B-Instruct", "chatml"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "chatml"),
        ("google/gemma-2-2b-it", "gemma"),
        ("microsoft/Phi-3-mini-4k-instruct", "phi3"),
        ("microsoft/phi-4", "phi4"),
        ("mistralai/Mistral-7B-Instruct-v0.2", "mistral"),
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", "mistral"),
        ("mistralai/Mistral-7B-v0.1", "default"),
        ("EleutherAI/pythia-160m", "default"),
    ],
)
def test_style_name_for_model(model_name: str, style: str) -> None:
    assert style_name_for_model(model_name) == style
