"""Prompt styles: how a conversation becomes the text a model was trained on, and which tokens end its turn.

Each style renders a conversation once, as a list of (text, trained) segments: `apply_messages` joins them, and
`apply_for_training` hands them to SFT data modules, which train only on the assistant's segments. The two can
therefore never disagree. Styles resolve by name through `PROMPT_STYLES`; `prompt_style.yaml` stores that name and
is never imported as code (a LitGPT `class_path` is mapped to our name by its class name).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from litgpt_lite.errors import UserError

if TYPE_CHECKING:
    from litgpt_lite.tokenizer import Tokenizer

Message = dict[str, Any]
Segment = tuple[str, bool]  # (text, is assistant output that training learns)

PROMPT_STYLE_FILE = "prompt_style.yaml"
ROLES = ("system", "user", "assistant")
# End-of-turn tokens of the families we know; a tokenizer style stops on those its chat template writes.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


def _check_messages(messages: list[Message]) -> None:
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise UserError(f"Each message needs a role in {ROLES} and a content string, got {message!r}")
        if not isinstance(message.get("content"), str):
            raise UserError(f"Message content must be a string, got {message!r}")


def _split_system(messages: list[Message], style: str) -> tuple[str | None, list[Message]]:
    """The leading system message's content (or None) and the other messages; a later system message is an error."""
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    rest = messages[1:] if system is not None else messages
    if any(m["role"] == "system" for m in rest):
        raise UserError(f"The {style} prompt style takes a system message only as the first message")
    return system, rest


def _merge(segments: list[Segment]) -> list[Segment]:
    """Drop empty segments and join neighbours with the same flag."""
    merged: list[Segment] = []
    for text, trained in segments:
        if not text:
            continue
        if merged and merged[-1][1] == trained:
            merged[-1] = (merged[-1][0] + text, trained)
        else:
            merged.append((text, trained))
    return merged


class PromptStyle:
    """Base class: subclasses set `name` (their registry key) and implement `_segments`."""

    name: ClassVar[str] = ""
    end_tokens: ClassVar[tuple[str, ...]] = ()  # end-of-turn token strings to stop on, beside EOS

    def apply(self, prompt: str, sys_prompt: str | None = None) -> str:
        """The text that asks the model to answer one user prompt.

        Args:
            prompt: the user's message.
            sys_prompt: an optional system message.
        """
        system = [{"role": "system", "content": sys_prompt}] if sys_prompt is not None else []
        return self.apply_messages([*system, {"role": "user", "content": prompt}])

    def apply_messages(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        """Render a conversation (roles system / user / assistant).

        Args:
            messages: dicts with "role" and "content".
            add_generation_prompt: end with what opens the assistant's next turn.
        """
        _check_messages(messages)
        return "".join(text for text, _ in self._segments(messages, add_generation_prompt))

    def apply_for_training(self, messages: list[Message]) -> list[tuple[str, bool]]:
        """The rendered conversation as (text, trained) segments; `trained` marks assistant output.

        The texts join to `apply_messages(messages, add_generation_prompt=False)`. An assistant segment includes the
        style's end-of-turn token so the model learns to stop; styles without one leave EOS to the data module.
        """
        _check_messages(messages)
        return _merge(self._segments(messages, add_generation_prompt=False))

    def _segments(self, messages: list[Message], add_generation_prompt: bool) -> list[Segment]:
        raise NotImplementedError

    def stop_sequences(self, tokenizer: Tokenizer) -> list[list[int]]:
        """Token-id sequences that end the assistant's turn: EOS (and every stop id), plus the end-of-turn tokens."""
        ids = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
        ids += sorted(tokenizer.stop_ids)
        ids += [tokenizer.token_to_id(token) for token in self._stop_token_strings(tokenizer)]
        return [[i] for i in dict.fromkeys(i for i in ids if i is not None)]

    def _stop_token_strings(self, tokenizer: Tokenizer) -> tuple[str, ...]:
        return self.end_tokens

    @staticmethod
    def from_name(name: str, tokenizer: Tokenizer | None = None) -> PromptStyle:
        """The style registered under `name`; the "tokenizer" style needs the tokenizer whose template it uses."""
        if name not in PROMPT_STYLES:
            raise UserError(f"Unknown prompt style {name!r}: choose one of {', '.join(sorted(PROMPT_STYLES))}")
        if name == TokenizerStyle.name:
            if tokenizer is None:
                raise UserError("The 'tokenizer' prompt style needs a tokenizer with a chat template")
            return TokenizerStyle(tokenizer)
        return PROMPT_STYLES[name]()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Default(PromptStyle):
    """Plain text: the prompt as is (a system prompt goes first, messages are separated by a blank line)."""

    name = "default"

    def _segments(self, messages: list[Message], add_generation_prompt: bool) -> list[Segment]:
        segments: list[Segment] = []
        for i, message in enumerate(messages):
            segments += [("\n\n" if i else "", False), (message["content"], message["role"] == "assistant")]
        return segments


class Alpaca(PromptStyle):
    """The Stanford Alpaca instruction format; a user message may carry an "input" for the "### Input:" block."""

    name = "alpaca"
    preamble = (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    )
    preamble_with_input = (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request."
    )

    def apply(self, prompt: str, sys_prompt: str | None = None, input: str = "") -> str:
        """The Alpaca prompt for one instruction, with an optional input (context) block.

        Args:
            prompt: the instruction.
            sys_prompt: replaces the Alpaca preamble when given.
            input: optional context for the instruction.
        """
        system = [{"role": "system", "content": sys_prompt}] if sys_prompt is not None else []
        user = {"role": "user", "content": prompt, **({"input": input} if input else {})}
        return self.apply_messages([*system, user])

    def _segments(self, messages: list[Message], add_generation_prompt: bool) -> list[Segment]:
        system, rest = _split_system(messages, self.name)
        has_input = any(m.get("input") for m in rest)
        segments: list[Segment] = [(system if system is not None else self._preamble(has_input), False)]
        for message in rest:
            if message["role"] == "user":
                block = f"\n\n### Input:\n{message['input']}" if message.get("input") else ""
                segments.append((f"\n\n### Instruction:\n{message['content']}{block}", False))
            else:
                segments += [("\n\n### Response:\n", False), (message["content"], True)]
        if add_generation_prompt:
            segments.append(("\n\n### Response:\n", False))
        return segments

    def _preamble(self, has_input: bool) -> str:
        return self.preamble_with_input if has_input else self.preamble


class Llama2(PromptStyle):
    """Llama-2-chat: `[INST] <<SYS>>...<</SYS>> user [/INST] answer </s><s>[INST] ...` (BOS comes from encode)."""

    name = "llama2"

    def _segments(self, messages: list[Message], add_generation_prompt: bool) -> list[Segment]:
        system, rest = _split_system(messages, self.name)
        segments: list[Segment] = []
        first = True
        for message in rest:
            if message["role"] == "user":
                sys_block = f"<<SYS>>\n{system}\n<</SYS>>\n\n" if first and system is not None else ""
                segments.append((f"{'' if first else '<s>'}[INST] {sys_block}{message['content']} [/INST]", False))
                first = False
            else:
                segments += [(" ", False), (f"{message['content']} </s>", True)]
        return segments


class Mistral(PromptStyle):
    """Mistral-Instruct (v0.2 layout): `[INST] user [/INST]answer</s>[INST] ...`; a system prompt joins the first
    user message."""

    name = "mistral"

    def _segments(self, messages: list[Message], add_generation_prompt: bool) -> list[Segment]:
        system, rest = _split_system(messages, self.name)
        segments: list[Segment] = []
        for message in rest:
            content = message["content"]
            if message["role"] == "user":
                if system is not None:
                    content, system = f"{system}\n\n{content}", None
                segments.append((f"[INST] {content} [/INST]", False))
            else:
                segments.append((f"{content}</s>", True))
        return segments


class TurnStyle(PromptStyle):
    """Formats where every message is `header(role) + content + end` followed by `separator`."""

    header: ClassVar[str] = "{role}"
    end: ClassVar[str] = ""
    separator: ClassVar[str] = ""
    role_names: ClassVar[dict[str, str]] = {}

    def _segments(self, messages: list[Message], add_generation_prompt: bool) -> list[Segment]:
        segments: list[Segment] = []
        for message in self._prepare(messages):
            trained = message["role"] == "assistant"
            segments += [(self._header(message["role"]), False), (message["content"] + self.end, trained)]
            segments.append((self.separator, False))
        if add_generation_prompt:
            segments.append((self._header("assistant"), False))
        return segments

    def _header(self, role: str) -> str:
        return self.header.format(role=self.role_names.get(role, role))

    def _prepare(self, messages: list[Message]) -> list[Message]:
        return messages


class ChatML(TurnStyle):
    """ChatML (Qwen, SmolLM2): `<|im_start|>role\\ncontent<|im_end|>\\n`."""

    name = "chatml"
    header = "<|im_start|>{role}\n"
    end = "<|im_end|>"
    separator = "\n"
    end_tokens = ("<|im_end|>",)


class Llama3(TurnStyle):
    """Llama 3 chat: `<|start_header_id|>role<|end_header_id|>\\n\\ncontent<|eot_id|>` (BOS comes from encode)."""

    name = "llama3"
    header = "<|start_header_id|>{role}<|end_header_id|>\n\n"
    end = "<|eot_id|>"
    end_tokens = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")


class Gemma(TurnStyle):
    """Gemma: `<start_of_turn>user\\n...<end_of_turn>\\n<start_of_turn>model\\n`; a system prompt joins the first
    user turn, as Gemma 3's template does."""

    name = "gemma"
    header = "<start_of_turn>{role}\n"
    end = "<end_of_turn>"
    separator = "\n"
    role_names = {"assistant": "model"}
    end_tokens = ("<end_of_turn>",)

    def _prepare(self, messages: list[Message]) -> list[Message]:
        system, rest = _split_system(messages, self.name)
        if system is None or not rest or rest[0]["role"] != "user":
            return rest if system is None else [{"role": "user", "content": system}, *rest]
        return [{"role": "user", "content": f"{system}\n\n{rest[0]['content']}"}, *rest[1:]]


class Phi3(TurnStyle):
    """Phi-3 / Phi-3.5: `<|user|>\\ncontent<|end|>\\n<|assistant|>\\n`."""

    name = "phi3"
    header = "<|{role}|>\n"
    end = "<|end|>"
    separator = "\n"
    end_tokens = ("<|end|>", "<|endoftext|>")


class Phi4(TurnStyle):
    """Phi-4: `<|im_start|>role<|im_sep|>content<|im_end|>`."""

    name = "phi4"
    header = "<|im_start|>{role}<|im_sep|>"
    end = "<|im_end|>"
    end_tokens = ("<|im_end|>", "<|endoftext|>")


class TokenizerStyle(PromptStyle):
    """The tokenizer's own Jinja chat template, rendered exactly as `transformers` renders it."""

    name = "tokenizer"

    def __init__(self, tokenizer: Tokenizer) -> None:
        if tokenizer.chat_template is None:
            raise UserError(f"The tokenizer in {tokenizer.checkpoint_dir} has no chat template: choose a prompt style")
        self.tokenizer = tokenizer

    def apply_messages(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        """Render a conversation with the tokenizer's chat template (see `PromptStyle.apply_messages`)."""
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)

    def apply_for_training(self, messages: list[Message]) -> list[tuple[str, bool]]:
        """Segments found by rendering growing prefixes of the conversation and diffing them.

        For assistant message i, its turn is what `render(messages[:i + 1])` adds to `render(messages[:i])`, minus
        the part it shares with the generation prompt (the assistant header). The turn is trained up to and including
        its last end-of-turn token. Text a template writes only into a generation prompt (a date, an empty think
        block) is not part of the conversation and so not part of the segments.
        """
        render = self.tokenizer.apply_chat_template
        segments: list[Segment] = []
        done = ""
        for i, message in enumerate(messages):
            if message.get("role") != "assistant":
                continue
            turn = render(messages[: i + 1], add_generation_prompt=False)
            self._check_prefix(done, turn)
            self._check_prefix(render(messages[:i], add_generation_prompt=False), turn)
            header_end = len(os.path.commonprefix([render(messages[:i], add_generation_prompt=True), turn]))
            segments.append((turn[len(done) : header_end], False))
            segments += self._split_turn(turn[header_end:])
            done = turn
        full = render(messages, add_generation_prompt=False)
        self._check_prefix(done, full)
        segments.append((full[len(done) :], False))
        return _merge(segments)

    def _check_prefix(self, prefix: str, text: str) -> None:
        if not text.startswith(prefix):
            raise UserError(
                f"The chat template of {self.tokenizer.checkpoint_dir} does not render a conversation prefix by "
                "prefix, so assistant turns cannot be located: train with an explicit prompt style instead"
            )

    def _split_turn(self, turn: str) -> list[Segment]:
        """An assistant turn as (trained text up to its last stop token, untrained rest such as a newline)."""
        ends = [turn.rfind(token) + len(token) for token in self._stop_token_strings(self.tokenizer) if token in turn]
        cut = max(ends, default=len(turn))
        return [(turn[:cut], True), (turn[cut:], False)]

    def _stop_token_strings(self, tokenizer: Tokenizer) -> tuple[str, ...]:
        template = self.tokenizer.chat_template or ""
        eos = [self.tokenizer.decode([i]) for i in sorted(self.tokenizer.stop_ids)]
        known = [
            token for token in END_OF_TURN_TOKENS if token in template and tokenizer.token_to_id(token) is not None
        ]
        return tuple(dict.fromkeys([*eos, *known]))

    def __repr__(self) -> str:
        return f"TokenizerStyle({str(self.tokenizer.checkpoint_dir)!r})"


PROMPT_STYLES: dict[str, type[PromptStyle]] = {
    cls.name: cls for cls in (Default, Alpaca, Llama2, Llama3, ChatML, Gemma, Phi3, Phi4, Mistral, TokenizerStyle)
}

# LitGPT prompt_style.yaml files name a class (`class_path: litgpt.prompts.Llama3`): map it, never import it.
LITGPT_CLASS_NAMES: dict[str, str] = {
    "Default": "default",
    "Alpaca": "alpaca",
    "Llama2": "llama2",
    "CodeLlama": "llama2",
    "Llama3": "llama3",
    "ChatML": "chatml",
    "Qwen2_5": "chatml",
    "Qwen2_5_Math": "chatml",
    "QwQ": "chatml",
    "Qwen3": "chatml",
    "SmolLM2": "chatml",
    "Salamandra": "chatml",
    "Gemma": "gemma",
    "Phi3": "phi3",
    "Phi4": "phi4",
    "Mistral": "mistral",
}


def save_prompt_style(style: PromptStyle | str, checkpoint_dir: str | Path) -> None:
    """Write `prompt_style.yaml` ({name: <registry key>}) into `checkpoint_dir`.

    Args:
        style: a PromptStyle instance or a registry name.
        checkpoint_dir: the checkpoint directory.
    """
    name = style if isinstance(style, str) else style.name
    if name not in PROMPT_STYLES:
        raise UserError(f"Unknown prompt style {name!r}: choose one of {', '.join(sorted(PROMPT_STYLES))}")
    import yaml

    path = Path(checkpoint_dir) / PROMPT_STYLE_FILE
    path.write_text(yaml.safe_dump({"name": name}), encoding="utf-8")


def load_prompt_style(checkpoint_dir: str | Path, tokenizer: Tokenizer | None = None) -> PromptStyle | None:
    """The style `prompt_style.yaml` in `checkpoint_dir` names, or None when there is no such file.

    Args:
        checkpoint_dir: the checkpoint directory.
        tokenizer: used by the "tokenizer" style; built from `checkpoint_dir` when not given.
    """
    path = Path(checkpoint_dir) / PROMPT_STYLE_FILE
    if not path.is_file():
        return None
    name = _style_name_in(path)
    if name == TokenizerStyle.name and tokenizer is None:
        from litgpt_lite.tokenizer import Tokenizer

        tokenizer = Tokenizer(checkpoint_dir)
    return PromptStyle.from_name(name, tokenizer)


def _style_name_in(path: Path) -> str:
    """The registry key in a prompt_style.yaml: ours ({name: chatml}) or LitGPT's ({class_path: litgpt.prompts.X})."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML ({e}): write it as `name: <style>`") from e
    if isinstance(data, dict) and isinstance(data.get("name"), str):
        return data["name"]
    if isinstance(data, dict) and isinstance(data.get("class_path"), str):
        class_name = data["class_path"].rsplit(".", 1)[-1]
        if class_name in LITGPT_CLASS_NAMES:
            return LITGPT_CLASS_NAMES[class_name]
        raise UserError(
            f"{path} names LitGPT prompt class {class_name!r}, which litgpt_lite has no style for: replace the file's "
            f"content with `name: <style>`, one of {', '.join(sorted(PROMPT_STYLES))}"
        )
    raise UserError(f"{path} should hold `name: <style>`, one of {', '.join(sorted(PROMPT_STYLES))}")


# (pattern in the lower-cased model name, style), first match wins: specific families before generic ones.
_NAME_HINTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("llama-3", "llama3"), "llama3"),
    (("phi-4", "phi4"), "phi4"),
    (("phi-3", "phi3"), "phi3"),
    (("gemma",), "gemma"),
    (("qwen", "smollm"), "chatml"),
)


def style_name_for_model(model_name: str) -> str:
    """Guess a prompt style from a model name (e.g. "Meta-Llama-3-8B-Instruct" -> "llama3"); "default" if unknown."""
    lowered = model_name.lower()
    for patterns, style in _NAME_HINTS:
        if any(p in lowered for p in patterns):
            return style
    if "llama-2" in lowered and "chat" in lowered:
        return "llama2"
    if ("mistral" in lowered or "mixtral" in lowered) and "instruct" in lowered:
        return "mistral"
    return "default"


def prompt_style_for(checkpoint_dir: str | Path, tokenizer: Tokenizer, model_name: str | None = None) -> PromptStyle:
    """The prompt style to use with a checkpoint.

    In order: the style `prompt_style.yaml` names; the tokenizer's chat template; a guess from `model_name` (or the
    directory name).

    Args:
        checkpoint_dir: the checkpoint directory.
        tokenizer: the checkpoint's tokenizer.
        model_name: the model's name, for the guess (defaults to the directory's name).
    """
    saved = load_prompt_style(checkpoint_dir, tokenizer)
    if saved is not None:
        return saved
    if tokenizer.chat_template is not None:
        return TokenizerStyle(tokenizer)
    return PromptStyle.from_name(style_name_for_model(model_name or Path(checkpoint_dir).name))
