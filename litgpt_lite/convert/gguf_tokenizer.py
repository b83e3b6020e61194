"""The tokenizer of a GGUF file (`tokenizer.ggml.*`) as Hugging Face files: tokenizer.json, tokenizer_config.json and
generation_config.json.

The GGUF is llama.cpp's contract, so the rebuilt tokenizer follows llama.cpp's rules, not transformers' GGUF
converter (which swaps bos/eos for SmolLM2 and builds a Unigram model for Gemma 3's SentencePiece-BPE vocabulary):

- `gpt2`: byte-level BPE from the token list and the merges, split by the regex of the `pre` tokenizer name;
- `llama`: SentencePiece-style BPE. The merges come from the scores (a pair merges with the priority of the piece it
  makes), unknown characters fall back to `<0xXX>` byte tokens, spaces become "▁".

Control tokens become special added tokens and user-defined ones plain added tokens, both matched on the raw text
before the model sees it, as llama.cpp does.
"""

from __future__ import annotations

import json
from typing import Any

from litgpt_lite.errors import UserError

# llama.cpp token types (gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# llama.cpp's pre-tokenizer regexes, by the `tokenizer.ggml.pre` names that use them
_GPT2_REGEX = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_LLAMA3_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)
_QWEN2_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)
PRE_TOKENIZERS: dict[str, str] = {
    "default": "gpt2",
    "gpt2": "gpt2",
    "gpt-2": "gpt2",
    "smollm": "digits+gpt2",
    "starcoder": "digits+gpt2",
    "refact": "digits+gpt2",
    "llama-bpe": "llama3",
    "llama3": "llama3",
    "llama-v3": "llama3",
    "qwen2": "qwen2",
    "deepseek-r1-qwen": "qwen2",
}


def tokenizer_files(meta: dict[str, Any]) -> dict[str, str]:
    """The text of tokenizer.json, tokenizer_config.json and generation_config.json for GGUF metadata `meta`.

    Raises UserError when the GGUF carries no vocabulary or one of a kind not supported here.
    """
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise UserError("The GGUF file has no tokenizer (no tokenizer.ggml.tokens): it cannot be imported on its own")
    kind = meta.get("tokenizer.ggml.model")
    if kind == "gpt2":
        tok = _byte_level_bpe(meta)
    elif kind == "llama":
        tok = _sentencepiece_bpe(meta)
    else:
        raise UserError(f"GGUF tokenizer model {kind!r} is not supported (gpt2 and llama are)")
    _add_special_tokens(tok, meta)
    ids = special_token_ids(meta)
    add_bos, add_eos = _adds_bos_eos(meta, ids)
    tok.post_processor = _post_processor(tokens, ids, add_bos, add_eos, byte_level=kind == "gpt2")
    config = _tokenizer_config(meta, ids, add_bos, add_eos)
    generation = {f"{k}_token_id": i for k, i in ids.items() if k in ("bos", "eos", "pad")}
    eot = meta.get("tokenizer.ggml.eot_token_id")
    if eot is not None and "eos" in ids and int(eot) != ids["eos"]:  # Gemma's <end_of_turn> also ends a turn
        generation["eos_token_id"] = [ids["eos"], int(eot)]
    return {
        "tokenizer.json": tok.to_str(pretty=True),
        "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False) + "\n",
        "generation_config.json": json.dumps(generation, indent=2) + "\n",
    }


def special_token_ids(meta: dict[str, Any]) -> dict[str, int]:
    """{"bos": id, "eos": id, "unk": id, "pad": id} for the ids the GGUF names (and that exist in its vocabulary)."""
    keys = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "pad": "padding_token_id"}
    n = len(meta["tokenizer.ggml.tokens"])
    out = {}
    for kind, key in keys.items():
        value = meta.get(f"tokenizer.ggml.{key}")
        if value is not None and 0 <= int(value) < n:
            out[kind] = int(value)
    return out


# ---------------------------------------------------------------- the two model kinds
def _byte_level_bpe(meta: dict[str, Any]):
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    pre = meta.get("tokenizer.ggml.pre") or "default"
    if pre not in PRE_TOKENIZERS:
        raise UserError(f"GGUF pre-tokenizer {pre!r} is not supported. Supported: {', '.join(PRE_TOKENIZERS)}")
    merges = meta.get("tokenizer.ggml.merges")
    if not merges:
        raise UserError("The GGUF's gpt2 tokenizer has no merges (tokenizer.ggml.merges)")
    tokens = meta["tokenizer.ggml.tokens"]
    style = PRE_TOKENIZERS[pre]
    model = BPE(
        {t: i for i, t in enumerate(tokens)},
        [tuple(m.split(" ", 1)) for m in merges],
        ignore_merges=style == "llama3",  # llama.cpp takes a whole pre-token that is in the vocabulary as is
    )
    tok = Tokenizer(model)
    if style == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif style == "digits+gpt2":  # SmolLM / StarCoder: every digit on its own, then GPT-2's regex
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    else:
        regex = _LLAMA3_REGEX if style == "llama3" else _QWEN2_REGEX
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(regex), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece_bpe(meta: dict[str, Any]):
    from tokenizers import Tokenizer, decoders, normalizers
    from tokenizers.models import BPE

    tokens = meta["tokenizer.ggml.tokens"]
    scores = meta.get("tokenizer.ggml.scores")
    if not scores or len(scores) != len(tokens):
        raise UserError("The GGUF's llama (SentencePiece) tokenizer needs one score per token (tokenizer.ggml.scores)")
    types = _token_types(meta)
    unk = special_token_ids(meta).get("unk")
    byte_fallback = any(t == BYTE for t in types)
    model = BPE(
        {t: i for i, t in enumerate(tokens)},
        _merges_from_scores(tokens, scores, types),
        unk_token=tokens[unk] if unk is not None else None,
        byte_fallback=byte_fallback,
        fuse_unk=True,
    )
    tok = Tokenizer(model)
    add_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    # A normalizer runs on each stretch of text between added tokens: like llama.cpp, the "▁" prefix then goes
    # before every stretch that follows a special token, and before a text that already starts with a space
    prefix = [normalizers.Prepend("▁")] if add_prefix else []
    tok.normalizer = normalizers.Sequence([*prefix, normalizers.Replace(" ", "▁")])
    steps = [decoders.Replace("▁", " ")]
    if byte_fallback:
        steps.append(decoders.ByteFallback())
    steps.append(decoders.Fuse())
    if add_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(steps)
    return tok


def _merges_from_scores(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """BPE merges that reproduce SentencePiece's rule: merge the adjacent pair whose joined piece scores highest.

    Every split of a mergeable piece into two pieces of the vocabulary is a merge, ranked by the joined piece's score
    (ties: the one with the lower id first, as SentencePiece's vocabulary order does).
    """
    mergeable = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (NORMAL, USER_DEFINED)}
    ranked = []
    for piece, i in mergeable.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in mergeable and right in mergeable:
                ranked.append((-scores[i], i, mergeable[left], mergeable[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


# ---------------------------------------------------------------- shared pieces
def _token_types(meta: dict[str, Any]) -> list[int]:
    types = meta.get("tokenizer.ggml.token_type")
    n = len(meta["tokenizer.ggml.tokens"])
    if types is None:
        return [NORMAL] * n
    if len(types) != n:
        raise UserError(f"The GGUF has {len(types)} token types for {n} tokens: the file is inconsistent")
    return [int(t) for t in types]


def _add_special_tokens(tok, meta: dict[str, Any]) -> None:
    """Control and unknown tokens match as special tokens, user-defined ones as plain added tokens (raw text)."""
    from tokenizers import AddedToken

    tokens, types = meta["tokenizer.ggml.tokens"], _token_types(meta)
    special = [
        AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty in (CONTROL, UNKNOWN)
    ]
    plain = [AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == USER_DEFINED]
    tok.add_special_tokens(special)
    tok.add_tokens(plain)


def _adds_bos_eos(meta: dict[str, Any], ids: dict[str, int]) -> tuple[bool, bool]:
    """What the GGUF says, else llama.cpp's defaults: BOS for SentencePiece and Llama-3 vocabularies, never EOS."""
    style = PRE_TOKENIZERS.get(meta.get("tokenizer.ggml.pre") or "default")
    defaults = {"bos": meta.get("tokenizer.ggml.model") == "llama" or style == "llama3", "eos": False}
    out = []
    for which in ("bos", "eos"):
        said = meta.get(f"tokenizer.ggml.add_{which}_token")
        if said and which not in ids:
            raise UserError(f"The GGUF says to add a {which} token but names none (tokenizer.ggml.{which}_token_id)")
        out.append(bool(said) if said is not None else defaults[which] and which in ids)
    return out[0], out[1]


def _post_processor(tokens: list[str], ids: dict[str, int], add_bos: bool, add_eos: bool, byte_level: bool):
    from tokenizers import processors

    steps = [processors.ByteLevel(trim_offsets=False)] if byte_level else []
    if add_bos or add_eos:
        bos = f"{tokens[ids['bos']]} " if add_bos else ""
        eos = f" {tokens[ids['eos']]}" if add_eos else ""
        specials = sorted({(tokens[ids[k]], ids[k]) for k, on in (("bos", add_bos), ("eos", add_eos)) if on})
        steps.append(
            processors.TemplateProcessing(
                single=f"{bos}$A{eos}", pair=f"{bos}$A{eos} {bos}$B:1{eos}".replace("  ", " "), special_tokens=specials
            )
        )
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else processors.Sequence(steps)


def _tokenizer_config(meta: dict[str, Any], ids: dict[str, int], add_bos: bool, add_eos: bool) -> dict[str, Any]:
    tokens = meta["tokenizer.ggml.tokens"]
    arch = meta.get("general.architecture", "")
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
    config.update({f"{k}_token": tokens[i] for k, i in ids.items()})
    config.update(add_bos_token=add_bos, add_eos_token=add_eos, clean_up_tokenization_spaces=False)
    if f"{arch}.context_length" in meta:
        config["model_max_length"] = int(meta[f"{arch}.context_length"])
    if meta.get("tokenizer.chat_template"):
        config["chat_template"] = meta["tokenizer.chat_template"]
    return config
