"""Tokenizer directories built offline for tests: a byte-level BPE (tokenizer.json) and a SentencePiece BPE model.

Both are trained in well under a second on a small synthetic corpus that mixes English, code, accents, CJK and emoji.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SPECIALS = ["<|endoftext|>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]

# Exercises what HF chat templates use: bos_token, namespace, loop controls, raise_exception, tojson (non-ascii kept),
# strftime_now, the {% generation %} tag, and trim_blocks / lstrip_blocks whitespace control.
CHAT_TEMPLATE = """{{ bos_token }}
{%- set ns = namespace(turns=0) %}
{% for message in messages %}
    {% if message['role'] not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('Unknown role: ' + message['role']) }}
    {% endif %}
    {% if loop.index > 100 %}{% break %}{% endif %}
    {% set ns.turns = ns.turns + 1 %}
<|im_start|>{{ message['role'] }}
    {% if message['role'] == 'assistant' %}
{% generation %}{{ message['content'] | trim }}<|im_end|>{% endgeneration %}

    {% else %}
{{ message['content'] | trim }}{% if message.meta is defined %} {{ message.meta | tojson }}{% endif %}<|im_end|>

    {% endif %}
{% endfor %}
{% if tools %}<|im_start|>tools
{{ tools | tojson }}<|im_end|>
{% endif %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% if ns.turns > 2 %}(year {{ strftime_now('%Y') }}) {% endif %}
{% endif %}"""

_WORDS = (
    "the quick brown fox jumps over a lazy dog while hello world tokenizer model language learning data train "
    "python code def return import class self print value key list dict for in if else café naïve über señor "
    "東京 日本語 中文 测试 한국어 😀 🎉 👍 🇫🇷 x = 1 + 2 * 3 { } ( ) [ ] : ; , . ! ? # -> == !="
).split()


def corpus(lines: int = 1500, seed: int = 0) -> list[str]:
    """Deterministic synthetic training text, with code-like indentation and whitespace runs."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 14))]
        indent = " " * rng.choice([0, 0, 0, 4, 8])
        out.append(indent + " ".join(words) + rng.choice(["", "\n", "\t", "  "]))
    return out


def build_bpe_dir(out: Path, bos: str = "config", chat_template: str | None = CHAT_TEMPLATE) -> Path:
    """A byte-level BPE tokenizer directory with bos <s>, eos </s> and two ChatML tokens.

    Args:
        out: directory to create.
        bos: how BOS gets added: "config" (tokenizer_config add_bos_token: true), "post_processor" (tokenizer.json
            TemplateProcessing, no add_bos_token key), "both", or "config_off" (post-processor adds it but the
            config says add_bos_token: false).
        chat_template: stored in tokenizer_config.json when not None.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer)
    if bos in ("post_processor", "both", "config_off"):
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
        )
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<|endoftext|>",
        "clean_up_tokenization_spaces": False,
    }
    if bos in ("config", "both", "config_off"):
        config["add_bos_token"] = bos != "config_off"
    if chat_template is not None:
        config["chat_template"] = chat_template
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    im_end = tokenizer.token_to_id("<|im_end|>")
    generation = {"bos_token_id": 1, "eos_token_id": [tokenizer.token_to_id("</s>"), im_end]}
    (out / "generation_config.json").write_text(json.dumps(generation))
    return out


def build_sentencepiece_dir(out: Path, legacy: bool = False) -> Path:
    """A SentencePiece BPE model with byte fallback, loaded by transformers 5 as LlamaTokenizer.

    Trained like Llama's: identity normalization, dummy prefix, whitespace kept as is, digits split.

    Args:
        out: directory to create.
        legacy: the tokenizer_config `legacy` flag (true: a space is prepended after every special token too).
    """
    import sentencepiece as spm

    out.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()),
        model_prefix=str(out / "tokenizer"),
        vocab_size=500,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        split_digits=True,
        num_threads=1,
        minloglevel=2,
    )
    (out / "tokenizer.vocab").unlink()
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": legacy,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out
