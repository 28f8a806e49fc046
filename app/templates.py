"""Render a conversation with a chat template into pieces the engine can tokenize safely.

Every template is Jinja (the GGUF's own `tokenizer.chat_template`, or a built-in one), rendered in a
sandbox as llama-cpp-python does. Message contents are replaced by sentinels before rendering and the
output is split on them, so the engine knows which characters came from the user: those are
tokenized with special-token parsing off, so typing `<|im_end|>` cannot end a turn.
"""

import re
from dataclasses import dataclass
from datetime import datetime

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import SettingsError
from .template_data import BUILTIN_TEMPLATES, TEMPLATE_NAMES


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True)
class Piece:
    text: str
    is_content: bool  # True: written by a person or the model, never parsed for special tokens
    message: int = -1  # for content: the index of the message it came from (training masks by role)


# Private-use characters: no tokenizer or template produces them by itself.
_SENTINEL = "\ue000{}\ue001"
_SENTINEL_RE = re.compile("\ue000(\\d+)\ue001")
# A full-width colon keeps the text readable while breaking an exact role marker.
_DEFUSE_COLON = "\uff1a"


def _raise(message: str):
    raise jinja2.exceptions.TemplateError(message)


@dataclass
class ChatTemplate:
    name: str  # "gguf", "belle", "chatml"
    source: str
    bos_token: str = ""
    eos_token: str = ""
    stop: tuple[str, ...] = ()
    role_markers: tuple[str, ...] = ()

    def __post_init__(self):
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, loader=jinja2.BaseLoader())
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self._compiled = env.from_string(self.source)
        except jinja2.TemplateError as err:
            raise SettingsError(f"chat template '{self.name}' is not valid Jinja: {err}") from None

    def render(self, messages: list[ChatMessage], add_generation_prompt: bool = True) -> list[Piece]:
        """Render, returning scaffold and content pieces in order. Concatenated they equal the
        plain render of the template (modulo defused role markers in user text)."""
        contents = [self._defuse(m.content) if m.role == "user" else m.content for m in messages]
        masked = [{"role": m.role, "content": _SENTINEL.format(i)} for i, m in enumerate(messages)]
        try:
            text = self._compiled.render(
                messages=masked,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except jinja2.TemplateError as err:
            raise SettingsError(f"chat template '{self.name}' failed to render: {err}") from None
        pieces: list[Piece] = []
        pos = 0
        for match in _SENTINEL_RE.finditer(text):
            if match.start() > pos:
                pieces.append(Piece(text[pos : match.start()], False))
            index = int(match.group(1))
            pieces.append(Piece(contents[index], True, index))
            pos = match.end()
        if pos < len(text):
            pieces.append(Piece(text[pos:], False))
        return pieces

    def render_text(self, messages: list[ChatMessage], add_generation_prompt: bool = True) -> str:
        return "".join(p.text for p in self.render(messages, add_generation_prompt))

    def _defuse(self, text: str) -> str:
        # For plain-text templates (BELLE) a user could type "\n\nAssistant: \n" and forge a turn;
        # special-token parsing cannot help there, so the marker itself is made inexact.
        for marker in self.role_markers:
            if marker in text:
                text = text.replace(marker, marker[:-1] + _DEFUSE_COLON)
        return text


def pick_template_name(gguf_template: str | None, requested: str | None = None) -> str:
    """The user's choice wins; then the model's own template; then BELLE for models that carry
    none (BELLE's models predate chat templates in GGUF)."""
    if requested and requested != "auto":
        if requested not in TEMPLATE_NAMES:
            raise SettingsError(f"unknown chat template '{requested}' (choose from: auto, {', '.join(TEMPLATE_NAMES)})")
        if requested == "gguf" and not gguf_template:
            raise SettingsError("chat template 'gguf' asked for, but the model file has no tokenizer.chat_template")
        return requested
    return "gguf" if gguf_template else "belle"


def make_template(name: str, gguf_template: str | None, bos_token: str, eos_token: str) -> ChatTemplate:
    if name == "gguf":
        return ChatTemplate("gguf", gguf_template or "", bos_token, eos_token)
    source, stop, markers = BUILTIN_TEMPLATES[name]
    return ChatTemplate(name, source, bos_token, eos_token, stop, markers)
