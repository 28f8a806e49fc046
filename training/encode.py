"""Examples -> token ids and labels, through the app's own chat templates.

The chat template is rendered by `belle.app.templates.ChatTemplate`, the renderer the app chats
with, into scaffold pieces (role markers, end tokens) and content pieces (what a person or the
model wrote). Each piece is tokenized on its own and the ids are concatenated, exactly as the app's
engine does at inference (app/engine.py `tokenize_pieces`):
- content with special-token parsing off (typing "<|im_end|>" in data cannot end a turn);
- scaffold split at special tokens, each stretch between them tokenized on its own.
Tokenizing pieces separately makes the boundary between prompt and reply a token boundary: a
template ending in a space ("Assistant: ") cannot merge that space into the first reply token, which
the loss mask would then hide (the bug BELLE hit with its first template).

Labels are -100 everywhere except on assistant content and the end-of-turn token after it (the
first special token in the scaffold that follows the reply: </s> for BELLE, <|im_end|> for ChatML).
BOS: the tokenizer never adds one on its own here; a template that wants BOS writes `bos_token`
(BELLE and ChatML do not, as BELLE trained without it). The `text` format (continued pretraining)
gets what the tokenizer adds to plain text by itself, plus EOS, and trains every token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from belle.app.errors import SettingsError
from belle.app.template_data import BUILTIN_TEMPLATES
from belle.app.templates import ChatMessage, ChatTemplate, make_template

from .formats import Example

IGNORE = -100
# "base": the base model's own chat template (tokenizer.chat_template)
TRAIN_TEMPLATES = ("base", *BUILTIN_TEMPLATES)


def template_source(name: str, tokenizer) -> str:
    """The Jinja source of a training template, as the app knows it."""
    if name == "base":
        own = tokenizer.chat_template
        if isinstance(own, dict):  # several named templates: the default one is the chat template
            own = own.get("default")
        if not own:
            raise SettingsError("template 'base': the base model's tokenizer has no chat template; "
                                "use --template belle or --template chatml")
        return own
    if name not in BUILTIN_TEMPLATES:
        raise SettingsError(f"unknown template '{name}' (choose from: {', '.join(TRAIN_TEMPLATES)})")
    return BUILTIN_TEMPLATES[name][0]


def default_template(tokenizer) -> str:
    """The base model's own template when it has one (an instruction-tuned base keeps its format),
    else BELLE's, as the app picks for a model file without a template."""
    return "base" if tokenizer.chat_template else "belle"


def special_tokens(tokenizer) -> dict[str, int]:
    """Text -> id of every special token: the ones scaffold is split at."""
    specials = {t.content: i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    for text in tokenizer.all_special_tokens:
        token_id = tokenizer.convert_tokens_to_ids(text)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            specials.setdefault(text, token_id)
    return specials


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


@dataclass
class Encoder:
    """Tokenizes examples for one tokenizer, template and length. Picklable (DataLoader workers)."""

    tokenizer: object
    template_name: str
    max_length: int
    template: ChatTemplate = field(init=False)
    specials: dict[str, int] = field(init=False)

    def __post_init__(self):
        tok = self.tokenizer
        source = template_source(self.template_name, tok)
        name = "gguf" if self.template_name == "base" else self.template_name
        self.template = make_template(name, source, tok.bos_token or "", tok.eos_token or "")
        if self.template_name == "base":
            self.template.name = "base"
        self.specials = special_tokens(tok)
        self._split = re.compile("(" + "|".join(map(re.escape, sorted(self.specials, key=len, reverse=True))) + ")")
        # BOS for the `text` format only, when the tokenizer puts one before plain text by itself
        bos = tok.bos_token_id
        self._text_prefix = [bos] if bos is not None and tok("a")["input_ids"][:1] == [bos] else []
        self._check()

    @property
    def source(self) -> str:
        return self.template.source

    # tokenization of pieces

    def _text_ids(self, text: str) -> list[int]:
        if not text:
            return []
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def _scaffold_parts(self, text: str) -> list[tuple[list[int], bool]]:
        """(ids, is_special) for each stretch of scaffold text between special tokens."""
        if not self.specials:
            return [(self._text_ids(text), False)]
        parts = []
        for part in self._split.split(text):
            if part in self.specials:
                parts.append(([self.specials[part]], True))
            elif part:
                parts.append((self._text_ids(part), False))
        return parts

    def _check(self) -> None:
        """The template must put an end-of-turn token after a reply, or the model never learns to stop;
        and every special token it writes must exist in this tokenizer."""
        probe = Example(messages=(ChatMessage("user", "hi"), ChatMessage("assistant", "ok")))
        enc = self._encode_chat(probe.messages)
        text = self.template.render_text(list(probe.messages), add_generation_prompt=False)
        for marker in re.findall(r"<\|[^|<>]+\|>|</s>", text):
            if marker not in self.specials:
                raise SettingsError(f"template '{self.template_name}' writes {marker}, which this tokenizer does not "
                                    f"have as a special token; use --template belle")
        ok_ids = self._text_ids("ok")
        if enc.trained <= len(ok_ids):
            raise SettingsError(f"template '{self.template_name}' puts no end-of-turn token after a reply; "
                                f"a model trained with it would never stop")

    # examples

    def encode(self, example: Example) -> Encoded:
        if example.text is not None:
            plain = self._text_ids(example.text)
            eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
            prefix = self._text_prefix
            return self._truncate(Encoded(prefix + plain + eos, [IGNORE] * len(prefix) + plain + eos))
        return self._truncate(self._encode_chat(example.messages))

    def prompt_ids(self, messages) -> list[int]:
        """The prompt for the next reply, as the app builds it (for evaluating a trained model)."""
        pieces = self.template.render(list(messages), add_generation_prompt=True)
        return self._pieces_to_ids(pieces, messages).input_ids

    def _encode_chat(self, messages) -> Encoded:
        return self._pieces_to_ids(self.template.render(list(messages), add_generation_prompt=False), messages)

    def _pieces_to_ids(self, pieces, messages) -> Encoded:
        ids: list[int] = []
        labels: list[int] = []
        after_reply = False
        for piece in pieces:
            if piece.is_content:
                piece_ids = self._text_ids(piece.text)
                is_reply = piece.message >= 0 and messages[piece.message].role == "assistant"
                ids += piece_ids
                labels += piece_ids if is_reply else [IGNORE] * len(piece_ids)
                after_reply = is_reply
                continue
            for part_ids, is_special in self._scaffold_parts(piece.text):
                ids += part_ids
                # the scaffold after a reply is trained up to and including its first special token
                labels += part_ids if after_reply else [IGNORE] * len(part_ids)
                if is_special:
                    after_reply = False
        return Encoded(ids, labels)

    def _truncate(self, enc: Encoded) -> Encoded:
        """Cut to max_length. Usually the end goes; when the prompt alone is too long, its start goes
        too: the window keeps the start of the reply (up to 3/4 of it) and the prompt's end before it."""
        n, total = self.max_length, len(enc.input_ids)
        if total <= n:
            return enc
        first = next((i for i, x in enumerate(enc.labels) if x != IGNORE), 0)
        start = 0 if first < n else first - max(n - (total - first), n // 4)
        return Encoded(enc.input_ids[start:start + n], enc.labels[start:start + n], truncated=True)
