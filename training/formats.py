"""BELLE-style instruction data: one record -> chat messages (or plain text), with validation.

Formats:

- `alpaca`: {"instruction", "input", "output"} (BELLE train_0.5M/1M/2M, school_math, generated_chat);
  "target" is accepted for "output"; optional "system" (str) and "history" ([[q, a], ...], earlier
  turns, LLaMA-Factory style).
- `multiturn`: BELLE multiturn_chat_0.8M: alpaca-shaped, earlier turns inside `instruction` as
  "Human:...\\nAssistant:...\\nHuman:...\\nAssistant:", `output` the last reply.
- `conversations`: BELLE train_3.5M / ShareGPT {"conversations": [{"from", "value"}]}, roles mapped
  by CONVERSATION_ROLES; an optional top-level "system" (LLaMA-Factory's sharegpt layout).
- `messages`: OpenAI {"messages": [{"role", "content"}]}.
- `tsv`: a line `query<TAB>answer` (Chinese chit-chat corpora).
- `text`: {"text"} for continued pretraining; every token is trained.

A bad row raises RowError whose message is the reason only, short and lower-case, so that a skip
report can count rows per reason; the caller adds `file:line`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from belle.app.templates import ChatMessage

FORMATS = ("alpaca", "multiturn", "conversations", "messages", "tsv", "text")

# ShareGPT dumps name the model by product ("chatgpt", "bing", "bard"); all of them are the reply side.
CONVERSATION_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
}
MESSAGE_ROLES = ("system", "user", "assistant")
LINE_SUFFIXES = (".tsv", ".txt")

# Only at the start of the text or of a line, so "Human:" quoted inside a reply does not split it.
# BELLE writes no space after the colon; one is tolerated and dropped.
_TURN_MARKER = re.compile(r"^(Human|Assistant):[ ]?", re.MULTILINE)
_MULTITURN_START = re.compile(r"\s*Human:")
_ASSISTANT_LINE = re.compile(r"^Assistant:", re.MULTILINE)


class RowError(ValueError):
    """A bad row; str(err) is the reason only (the caller adds file:line)."""


@dataclass(frozen=True)
class Example:
    # Chat formats: optional system first, then user/assistant alternating, ending with assistant.
    messages: tuple[ChatMessage, ...] = ()
    text: str | None = None  # the `text` format only
    source: str = ""  # "path:line" (filled by data.py)


def detect_format(record: object, path) -> str:
    """The format of a file, from its path (tsv) or its first parsed JSON record."""
    if Path(path).suffix.lower() in LINE_SUFFIXES:
        return "tsv"
    if not isinstance(record, dict):
        raise RowError("not a JSON object")
    if "conversations" in record:
        return "conversations"
    if "messages" in record:
        return "messages"
    if "instruction" in record:
        instruction = record["instruction"]
        if (isinstance(instruction, str) and _MULTITURN_START.match(instruction)
                and _ASSISTANT_LINE.search(instruction)):
            return "multiturn"
        return "alpaca"
    if "text" in record:
        return "text"
    raise RowError("unknown record shape (expected instruction/output, conversations, messages or text)")


def to_example(record: object, fmt: str) -> Example:
    """One parsed record (a dict; for `tsv` the line without its newline) -> an Example."""
    if fmt == "tsv":
        return _tsv(record)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    if not isinstance(record, dict):
        raise RowError("not a JSON object")
    if fmt == "text":
        text = _field(record, "text")
        if _blank(text):
            raise RowError("empty text")
        return Example(text=text)
    if fmt == "alpaca":
        turns = _alpaca(record)
    elif fmt == "multiturn":
        turns = _multiturn(record)
    elif fmt == "conversations":
        turns = _turns(record, "conversations", "from", "value", CONVERSATION_ROLES)
    else:
        turns = _turns(record, "messages", "role", "content", {r: r for r in MESSAGE_ROLES})
    return Example(messages=_chat(turns))


def _blank(text: str) -> bool:
    return not text or text.isspace()  # no stripped copy of a long text


def _field(record: dict, name: str) -> str:
    value = record.get(name)
    if value is None:
        raise RowError(f"missing field '{name}'")
    if not isinstance(value, str):
        raise RowError(f"'{name}' is not a string")
    return value


def _input(record: dict) -> str:
    if record.get("input") is None:  # absent and null both mean no input
        return ""
    return _field(record, "input")


def _system(record: dict) -> list[tuple[str, str]]:
    if record.get("system") is None:
        return []
    return [("system", _field(record, "system"))]


def _output(record: dict) -> str:
    if record.get("output") is None and record.get("target") is not None:
        return _field(record, "target")
    return _field(record, "output")


def _user_text(instruction: str, input_: str) -> str:
    if _blank(input_):
        return instruction
    if _blank(instruction):
        return input_
    return instruction + "\n" + input_


def _alpaca(record: dict) -> list[tuple[str, str]]:
    instruction = _field(record, "instruction")
    input_ = _input(record)
    if _blank(instruction) and _blank(input_):
        raise RowError("empty instruction")
    history = record.get("history") or []
    if not isinstance(history, list):
        raise RowError("'history' is not a list")
    turns = _system(record)
    for pair in history:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise RowError("a 'history' entry is not a [question, answer] pair")
        turns += [("user", pair[0]), ("assistant", pair[1])]
    return turns + [("user", _user_text(instruction, input_)), ("assistant", _output(record))]


def _drop_newline(text: str) -> str:
    # The line break before the next "Human:" / "Assistant:" belongs to the format, not to the turn.
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    return text


def _multiturn(record: dict) -> list[tuple[str, str]]:
    instruction = _field(record, "instruction")
    input_ = _input(record)
    output = _output(record)
    marks = list(_TURN_MARKER.finditer(instruction))
    if not marks:  # a single-turn row in a multi-turn file
        if _blank(instruction) and _blank(input_):
            raise RowError("empty instruction")
        return _system(record) + [("user", _user_text(instruction, input_)), ("assistant", output)]
    if not _blank(instruction[: marks[0].start()]):
        raise RowError("text before the first 'Human:'")
    turns = _system(record)
    for mark, following in zip(marks, marks[1:] + [None]):
        role = "user" if mark.group(1) == "Human" else "assistant"
        if following is None:
            turns.append((role, instruction[mark.end():]))
        else:
            turns.append((role, _drop_newline(instruction[mark.end(): following.start()])))
    role, last = turns[-1]
    if role == "assistant":
        if not _blank(last):
            raise RowError("instruction ends with an assistant reply")
        turns.pop()  # the trailing "Assistant:" is where `output` goes
    if not _blank(input_) and turns[-1][0] == "user":
        turns[-1] = ("user", _user_text(turns[-1][1], input_))
    return turns + [("assistant", output)]


def _turns(record: dict, key: str, role_key: str, content_key: str, roles: dict[str, str]) -> list[tuple[str, str]]:
    items = record.get(key)
    if items is None:
        raise RowError(f"missing field '{key}'")
    if not isinstance(items, list):
        raise RowError(f"'{key}' is not a list")
    turns = []
    for item in items:
        if not isinstance(item, dict):
            raise RowError(f"an entry of '{key}' is not an object")
        if role_key not in item:
            raise RowError(f"an entry of '{key}' has no '{role_key}'")
        if content_key not in item:
            raise RowError(f"an entry of '{key}' has no '{content_key}'")
        name = item[role_key]
        role = roles.get(name.lower()) if isinstance(name, str) else None
        if role is None:
            raise RowError(f"unknown role {name!r}")
        if not isinstance(item[content_key], str):
            raise RowError(f"'{content_key}' is not a string")
        turns.append((role, item[content_key]))
    if key == "conversations" and not (turns and turns[0][0] == "system"):
        turns = _system(record) + turns
    return turns


def _chat(turns: list[tuple[str, object]]) -> tuple[ChatMessage, ...]:
    """Check the shape of a conversation: optional system, then user/assistant alternating, ending
    with a non-empty assistant reply. Contents are kept exactly (tokenization sees the spaces)."""
    messages: list[ChatMessage] = []
    previous = None
    for position, (role, content) in enumerate(turns):
        if not isinstance(content, str):
            raise RowError(f"{role} content is not a string")
        if role == "system":
            if position > 0:
                raise RowError("system message not first")
            if _blank(content):
                continue  # an empty system prompt is the same as none (exports often carry one)
        elif _blank(content):
            raise RowError(f"empty {role} message")
        elif role == "assistant" and previous in (None, "system"):
            raise RowError("first turn is from the assistant")
        elif role == previous:
            raise RowError(f"two {role} turns in a row")
        messages.append(ChatMessage(role, content))
        previous = role
    if previous in (None, "system"):
        raise RowError("no messages")
    if previous != "assistant":
        raise RowError("no assistant reply")
    return tuple(messages)


def _tsv(line: object) -> Example:
    if not isinstance(line, str):
        raise RowError("not a line of text")
    tabs = line.count("\t")
    if tabs != 1:
        raise RowError(f"expected 1 tab, found {tabs}")
    query, answer = line.split("\t")
    if _blank(query):
        raise RowError("empty query")
    if _blank(answer):
        raise RowError("empty answer")
    return Example(messages=(ChatMessage("user", query), ChatMessage("assistant", answer)))
