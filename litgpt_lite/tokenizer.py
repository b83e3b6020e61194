"""One Tokenizer over HF `tokenizers` (tokenizer.json) and SentencePiece (tokenizer.model), plus the chat template.

It reads a checkpoint directory the way `transformers.AutoTokenizer` does, so that encodings, decodings and rendered
chat templates match it: special tokens come from tokenizer_config.json (and generation_config.json for the ids a
model stops on), and BOS is added when transformers 5 would add it, never twice: for tokenizer.json when its
post-processor adds it, for tokenizer.model when tokenizer_config.json says `add_bos_token: true`.
The heavy libraries (`tokenizers`, `sentencepiece`, `jinja2`) are imported only when a tokenizer is built, and torch
is never imported: `decode` takes tensors by duck typing (`.tolist()`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from litgpt_lite.errors import UserError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
_REPLACEMENT_CHAR = "\ufffd"


def _read_json(path: Path) -> dict[str, Any]:
    """The JSON object in `path`, {} when the file does not exist; a malformed file is a UserError."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}): restore it from the original model repository") from e
    if not isinstance(data, dict):
        raise UserError(f"{path} should hold a JSON object: restore it from the original model repository")
    return data


def _token_content(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken dict with a 'content'."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _as_id_list(value: Any) -> list[int]:
    """generation_config.json ids: an int, a list of ints, or missing."""
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int)]
    return []


def _config_added_tokens(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Tokens that tokenizer_config.json adds to the vocabulary, as AddedToken-like dicts with 'content' and 'special'.

    HF adds the named special tokens (bos, eos, unk, pad), the extra special tokens and the `added_tokens_decoder`
    entries when the tokenizer does not already treat them as added tokens.
    """
    tokens: list[dict[str, Any]] = []
    for key, entry in config.get("added_tokens_decoder", {}).items():
        if isinstance(entry, dict) and isinstance(entry.get("content"), str) and str(key).isdigit():
            tokens.append({"special": False, **entry, "id": int(key)})
    names = [config.get(key) for key in ("bos_token", "eos_token", "unk_token", "pad_token")]
    for key in ("additional_special_tokens", "extra_special_tokens"):
        extra = config.get(key)
        names += list(extra.values()) if isinstance(extra, dict) else list(extra or [])
    for value in names:
        content = _token_content(value)
        if content is not None:
            spec = dict(value) if isinstance(value, dict) else {"content": content}
            tokens.append({**spec, "special": True})
    return tokens


class _HuggingFaceBackend:
    """tokenizer.json through the `tokenizers` library."""

    name = "huggingface"

    def __init__(self, path: Path, config: dict[str, Any]) -> None:
        from tokenizers import AddedToken
        from tokenizers import Tokenizer as HFTokenizer

        try:
            self.tokenizer = HFTokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises a bare Exception for any parse error
            raise UserError(f"{path} is not a valid tokenizer.json ({e}): re-download the tokenizer files") from e
        self.tokenizer.no_truncation()  # a tokenizer.json may carry truncation / padding settings: encode is raw
        self.tokenizer.no_padding()
        known = {token.content for token in self.tokenizer.get_added_tokens_decoder().values()}
        for spec in _config_added_tokens(config):
            if spec["content"] in known:
                continue
            known.add(spec["content"])
            options = {k: spec[k] for k in ("single_word", "lstrip", "rstrip", "normalized") if k in spec}
            options.setdefault("normalized", not spec["special"])
            token = AddedToken(spec["content"], special=spec["special"], **options)
            (self.tokenizer.add_special_tokens if spec["special"] else self.tokenizer.add_tokens)([token])
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def default_id(self, kind: str) -> int | None:
        return None

    def adds_bos_eos(self, config: dict[str, Any], bos_id: int | None, eos_id: int | None) -> tuple[bool, bool]:
        """Whether the tokenizer.json post-processor puts BOS in front and EOS at the end of an encoding.

        transformers 5 ignores tokenizer_config.json's add_bos_token / add_eos_token when a tokenizer.json exists:
        the post-processor alone decides, so it does here too.
        """
        plain = self.tokenizer.encode("a", add_special_tokens=False).ids
        full = self.tokenizer.encode("a", add_special_tokens=True).ids
        if len(full) == len(plain):
            return False, False
        return bool(full) and full[0] == bos_id, bool(full) and full[-1] == eos_id and full[-1] != plain[-1]


class _SentencePieceBackend:
    """tokenizer.model through `sentencepiece`, splitting and spacing text the way transformers' LlamaTokenizer does.

    transformers 5 converts tokenizer.model into a `tokenizers` pipeline whose Metaspace pre-tokenizer adds the
    dummy-prefix space only to the first piece of text (prepend_scheme "first"), or to every piece between added
    tokens when the config says `legacy: true` ("always"), and never doubles a space the text already starts with.
    SentencePiece would add it everywhere, so pieces are encoded by a second processor whose dummy prefix is off and
    the space is added here.
    """

    name = "sentencepiece"
    # A serialized ModelProto field 3 (normalizer_spec) holding add_dummy_prefix=false and
    # remove_extra_whitespaces=false. Protobuf merges repeated message fields, so appending it to a model overrides
    # just those two settings.
    _RAW_NORMALIZER = b"\x1a\x04\x18\x00\x20\x00"

    def __init__(self, path: Path, config: dict[str, Any]) -> None:
        import sentencepiece as spm

        proto = path.read_bytes()
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=proto)
            self.raw = spm.SentencePieceProcessor(model_proto=proto + self._RAW_NORMALIZER)
        except Exception as e:  # sentencepiece raises RuntimeError or OSError depending on the failure
            raise UserError(f"{path} is not a valid SentencePiece model ({e}): re-download the tokenizer files") from e
        self.prepend_scheme = self._prepend_scheme(config)
        self.added: dict[str, int] = {}  # token text -> id, for the tokens split out of text before encoding
        self.special_ids: set[int] = set()
        for spec in _config_added_tokens(config):
            if (token_id := self._added_id(spec)) is not None:
                self.added[spec["content"]] = token_id
                if spec["special"]:
                    self.special_ids.add(token_id)
        for i in range(self.sp.get_piece_size()):
            if self.sp.is_control(i) or self.sp.is_unknown(i):
                self.added.setdefault(self.sp.id_to_piece(i), i)
                self.special_ids.add(i)
        self.id_to_added = {i: content for content, i in self.added.items()}
        self.vocab_size = max([self.sp.get_piece_size(), *(i + 1 for i in self.id_to_added)])
        pattern = "|".join(re.escape(t) for t in sorted(self.added, key=len, reverse=True) if t)
        self.splitter = re.compile(f"({pattern})") if pattern else None

    def _prepend_scheme(self, config: dict[str, Any]) -> str:
        model_adds_prefix = self.sp.encode("a", out_type=str)[0].startswith("\u2581")
        if config.get("add_prefix_space") is False or not model_adds_prefix:
            return "never"
        return "always" if config.get("legacy") is True else "first"

    def _added_id(self, spec: dict[str, Any]) -> int | None:
        piece_id = self.sp.piece_to_id(spec["content"])
        if piece_id != self.sp.unk_id() or spec["content"] == self.sp.id_to_piece(self.sp.unk_id()):
            return piece_id
        return spec.get("id")  # beyond the model's pieces (e.g. an added <pad>): only added_tokens_decoder knows it

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        parts = self.splitter.split(text) if self.splitter else [text]
        offset = 0
        for i, part in enumerate(parts):
            if i % 2:  # the splitter's capture group: an added token
                ids.append(self.added[part])
            elif part:
                ids += self._encode_piece(part, at_start=offset == 0)
            offset += len(part)
        return ids

    def _encode_piece(self, text: str, at_start: bool) -> list[int]:
        prepend = self.prepend_scheme == "always" or (self.prepend_scheme == "first" and at_start)
        if prepend and not text.startswith(" "):
            text = " " + text
        return self.raw.encode(text)

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        out: list[str] = []
        pending = bytearray()  # byte-fallback pieces, joined before decoding as UTF-8
        for i in ids:
            if i in self.id_to_added:
                if skip_special_tokens and i in self.special_ids:
                    continue
                piece = self.id_to_added[i]
            elif self.sp.is_byte(i):
                pending.append(int(self.sp.id_to_piece(i)[3:5], 16))
                continue
            else:
                piece = self.sp.id_to_piece(i).replace("\u2581", " ")
            out.append(self._flush_bytes(pending))
            out.append(piece)
        out.append(self._flush_bytes(pending))
        text = "".join(out)
        if self.prepend_scheme != "never" and text.startswith(" "):
            text = text[1:]
        return text

    @staticmethod
    def _flush_bytes(pending: bytearray) -> str:
        """Like the `tokenizers` ByteFallback decoder: invalid UTF-8 becomes one U+FFFD per byte."""
        if not pending:
            return ""
        try:
            text = pending.decode("utf-8")
        except UnicodeDecodeError:
            text = _REPLACEMENT_CHAR * len(pending)
        pending.clear()
        return text

    def token_to_id(self, token: str) -> int | None:
        if token in self.added:
            return self.added[token]
        piece_id = self.sp.piece_to_id(token)
        return None if piece_id == self.sp.unk_id() else piece_id

    def default_id(self, kind: str) -> int | None:
        piece_id = {"bos": self.sp.bos_id, "eos": self.sp.eos_id, "pad": self.sp.pad_id}[kind]()
        return piece_id if piece_id >= 0 else None

    def adds_bos_eos(self, config: dict[str, Any], bos_id: int | None, eos_id: int | None) -> tuple[bool, bool]:
        """tokenizer_config.json's add_bos_token / add_eos_token; transformers 5 defaults both to false."""
        return bool(config.get("add_bos_token", False)), bool(config.get("add_eos_token", False))


class DecodeStream:
    """Incremental detokenizer: `step` returns the new text for one more token, never half a UTF-8 character.

    It decodes a short window (the tokens of the last emitted delta, then the new ones) and returns what the new
    tokens add to the window's text. Text that ends in U+FFFD is held back until later tokens complete the character;
    `flush` returns whatever is still held at the end.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix_len = 0
        self._prefix_text = ""

    def step(self, token_id: int) -> str:
        """Add one token id and return the text it completes ("" while a character is still incomplete)."""
        self._ids.append(int(token_id))
        text = self._tokenizer.decode(self._ids, skip_special_tokens=self._skip)
        complete = len(text) > len(self._prefix_text) and not text.endswith(_REPLACEMENT_CHAR)
        if not complete or not text.startswith(self._prefix_text):
            return ""
        delta = text[len(self._prefix_text) :]
        self._ids = self._ids[self._prefix_len :]
        self._prefix_len = len(self._ids)
        self._prefix_text = self._tokenizer.decode(self._ids, skip_special_tokens=self._skip)
        return delta

    def flush(self) -> str:
        """Return the text still held back (an incomplete character decodes as U+FFFD), and reset the stream."""
        text = self._tokenizer.decode(self._ids, skip_special_tokens=self._skip)
        delta = text[len(self._prefix_text) :] if len(text) > len(self._prefix_text) else ""
        self._ids, self._prefix_len, self._prefix_text = [], 0, ""
        return delta


class Tokenizer:
    """Text <-> token ids for a checkpoint directory, matching `transformers.AutoTokenizer` on the same directory.

    Attributes:
        checkpoint_dir: the directory the files were read from.
        backend: "huggingface" (tokenizer.json) or "sentencepiece" (tokenizer.model).
        bos_id, eos_id, pad_id: special token ids, None where the tokenizer has none.
        stop_ids: every id that ends generation (eos plus generation_config.json's eos_token_id list).
        add_bos, add_eos: whether an encoding gets BOS / EOS by default (as transformers 5 decides it).
        vocab_size: the number of ids, added tokens included.
        chat_template: the Jinja chat template, or None.
    """

    def __init__(self, checkpoint_dir: str | Path) -> None:
        """Read the tokenizer files in `checkpoint_dir`.

        Args:
            checkpoint_dir: a directory with tokenizer.json or tokenizer.model, and optionally tokenizer_config.json,
                generation_config.json and chat_template.jinja.
        """
        self.checkpoint_dir = Path(checkpoint_dir)
        config = _read_json(self.checkpoint_dir / "tokenizer_config.json")
        generation = _read_json(self.checkpoint_dir / "generation_config.json")
        self._backend = self._load_backend(config)
        self.backend: str = self._backend.name
        self.vocab_size: int = self._backend.vocab_size
        self._special_tokens = {
            k: t for k in ("bos", "eos", "unk", "pad") if (t := _token_content(config.get(f"{k}_token")))
        }
        generation_eos = _as_id_list(generation.get("eos_token_id"))
        self.bos_id = self._special_id("bos", _as_id_list(generation.get("bos_token_id")))
        self.eos_id = self._special_id("eos", generation_eos)
        self.pad_id = self._special_id("pad", _as_id_list(generation.get("pad_token_id")))
        self.stop_ids: set[int] = {i for i in [self.eos_id, *generation_eos] if i is not None}
        adds_bos, adds_eos = self._backend.adds_bos_eos(config, self.bos_id, self.eos_id)
        self.add_bos: bool = adds_bos and self.bos_id is not None
        self.add_eos: bool = adds_eos and self.eos_id is not None
        self.chat_template: str | None = self._read_chat_template(config)
        self._compiled_template: Any = None

    def _load_backend(self, config: dict[str, Any]) -> _HuggingFaceBackend | _SentencePieceBackend:
        if not self.checkpoint_dir.is_dir():
            raise UserError(
                f"{self.checkpoint_dir} is not a directory: pass the checkpoint directory with the tokenizer"
            )
        if (path := self.checkpoint_dir / "tokenizer.json").is_file():
            return _HuggingFaceBackend(path, config)
        if (path := self.checkpoint_dir / "tokenizer.model").is_file():
            return _SentencePieceBackend(path, config)
        raise UserError(
            f"{self.checkpoint_dir} has no tokenizer: expected {' or '.join(TOKENIZER_FILES)} there "
            "(copy them from the original model repository, or run litgpt_lite download again)"
        )

    def _special_id(self, kind: str, fallback_ids: list[int]) -> int | None:
        token = self._special_tokens.get(kind)
        if token is not None and (token_id := self._backend.token_to_id(token)) is not None:
            return token_id
        return fallback_ids[0] if fallback_ids else self._backend.default_id(kind)

    def _read_chat_template(self, config: dict[str, Any]) -> str | None:
        path = self.checkpoint_dir / "chat_template.jinja"
        if path.is_file():
            return path.read_text(encoding="utf-8")
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        return template if isinstance(template, str) else None

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.checkpoint_dir)!r}, backend={self.backend!r}, vocab_size={self.vocab_size})"

    def token_to_id(self, token: str) -> int | None:
        """The id of one token string (e.g. "<|im_end|>"), or None if the vocabulary lacks it."""
        return self._backend.token_to_id(token)

    def encode(self, text: str, bos: bool | None = None, eos: bool = False, max_length: int = -1) -> list[int]:
        """Token ids of `text`; special tokens written in the text (like "<|im_start|>") become their ids.

        Args:
            text: the text to encode.
            bos: put BOS first; None does what the tokenizer config says. BOS is never added twice.
            eos: append EOS.
            max_length: keep only the first `max_length` ids when > 0.
        """
        ids = self._backend.encode(text)
        if self.add_bos if bos is None else bos:
            if self.bos_id is None:
                raise UserError(f"The tokenizer in {self.checkpoint_dir} has no BOS token: encode with bos=False")
            if not ids or ids[0] != self.bos_id:
                ids = [self.bos_id, *ids]
        if eos:
            if self.eos_id is None:
                raise UserError(f"The tokenizer in {self.checkpoint_dir} has no EOS token: encode with eos=False")
            ids = [*ids, self.eos_id]
        return ids[:max_length] if max_length > 0 else ids

    def decode(self, ids: Iterable[int] | int | Any, skip_special_tokens: bool = False) -> str:
        """Text of token ids (a list, an int, or a tensor / array with `.tolist()`)."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, int):
            ids = [ids]
        return self._backend.decode([int(i) for i in ids], skip_special_tokens)

    def decode_stream(self, skip_special_tokens: bool = False) -> DecodeStream:
        """A streaming decoder: feed ids one at a time with `.step(id)`, then call `.flush()` at the end."""
        return DecodeStream(self, skip_special_tokens)

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **template_kwargs: Any
    ) -> str:
        """Render a conversation with the tokenizer's Jinja chat template, as `transformers` does (tokenize=False).

        Args:
            messages: dicts with "role" and "content" (keys whose value is None are dropped, like transformers does).
            add_generation_prompt: end with the header that starts the assistant's reply.
            template_kwargs: extra variables for the template (e.g. `enable_thinking=False`, `tools=[...]`).
        """
        if self.chat_template is None:
            raise UserError(
                f"The tokenizer in {self.checkpoint_dir} has no chat template: pass a prompt style by name instead"
            )
        if self._compiled_template is None:
            self._compiled_template = _compile_chat_template(self.chat_template)
        import jinja2

        variables = {f"{kind}_token": token for kind, token in self._special_tokens.items()}
        variables.update(tools=None, documents=None)
        variables.update(template_kwargs)
        cleaned = [{k: v for k, v in message.items() if v is not None} for message in messages]
        try:
            return self._compiled_template.render(
                messages=cleaned, add_generation_prompt=add_generation_prompt, **variables
            )
        except jinja2.TemplateError as e:
            raise UserError(f"The chat template of {self.checkpoint_dir} refused these messages: {e}") from e


def _compile_chat_template(template: str) -> Any:
    """Compile an HF chat template in a sandbox with the globals and filters HF templates expect."""
    from datetime import datetime

    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(Extension):
        """`{% generation %}...{% endgeneration %}` marks assistant text for HF's masks; here it only renders."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise UserError(
            f"The chat template is not valid Jinja ({e}): fix chat_template in tokenizer_config.json"
        ) from e
