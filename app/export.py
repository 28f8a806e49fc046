"""Export a conversation to Markdown (the branch on screen, for reading) or JSON (the whole tree,
for import); import that JSON back as a new conversation."""

import json
from dataclasses import asdict
from datetime import datetime, timezone

from .chat_store import ChatStore
from .errors import InputError

FORMAT = "belle-conversation"
FORMAT_VERSION = 1


def to_markdown(store: ChatStore, conversation_id: int) -> str:
    conv = store.get_conversation(conversation_id)
    when = datetime.fromtimestamp(conv.created_at, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    path = store.path_to(conv.current_leaf)
    # A conversation on "the default model" stores no model; its replies record the one that wrote them.
    used = sorted({m.model for m in path if m.role == "assistant" and m.model})
    model = conv.model or ", ".join(used) or "(none yet)"
    lines = [f"# {conv.title or 'Untitled'}", "", f"- model: {model}", f"- template: {conv.template}",
             f"- created: {when}", ""]
    if conv.system_prompt:
        lines += ["## System", "", conv.system_prompt, ""]
    for msg in path:
        heading = {"user": "User", "assistant": "Assistant", "system": "System"}[msg.role]
        alternatives = len(store.siblings(msg))
        if alternatives > 1:
            heading += f" ({store.siblings(msg).index(msg) + 1}/{alternatives})"
        if not msg.complete:
            heading += " (incomplete)"
        lines += [f"## {heading}", "", msg.content, ""]
        if msg.stats:
            s = msg.stats
            lines += [f"*{s.get('generated_tokens', '?')} tokens, {s.get('decode_tok_s', 0):.1f} tok/s, "
                      f"first token {s.get('ttft_s', 0):.2f} s, stop: {s.get('stop_reason', '?')}*", ""]
    return "\n".join(lines)


def to_json(store: ChatStore, conversation_id: int) -> dict:
    conv = store.get_conversation(conversation_id)
    data = asdict(conv)
    data["messages"] = [asdict(m) for m in store.messages(conversation_id)]
    return {"format": FORMAT, "version": FORMAT_VERSION, "conversation": data}


def from_json(store: ChatStore, data: dict, source: str = "<json>") -> int:
    """Create a new conversation from `to_json` output; message ids are renumbered, the tree kept."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"{source}: not a belle conversation export (field 'format' must be '{FORMAT}')")
    conv = data.get("conversation") or {}
    messages = conv.get("messages")
    if not isinstance(messages, list):
        raise InputError(f"{source}: field 'conversation.messages' is missing or not a list")
    new = store.create_conversation(conv.get("title", ""), conv.get("model"), conv.get("template", "auto"),
                                    conv.get("system_prompt", ""), conv.get("settings") or {})
    id_map: dict[int, int] = {}
    for i, m in enumerate(sorted(messages, key=lambda m: m.get("id", 0))):
        try:
            parent = m["parent_id"]
            if parent is not None and parent not in id_map:
                raise InputError(f"{source}: message #{i} (id {m.get('id')}) names parent {parent}, which comes later or is missing")
            if m["role"] not in ("system", "user", "assistant"):
                raise InputError(f"{source}: message #{i} has role {m['role']!r}")
            added = store.add_message(new.id, id_map.get(parent), m["role"], str(m["content"]),
                                      bool(m.get("complete", True)), m.get("model"), m.get("stats"), m.get("created_at"))
        except KeyError as err:
            store.delete_conversation(new.id)
            raise InputError(f"{source}: message #{i} lacks field {err}") from None
        except InputError:
            store.delete_conversation(new.id)
            raise
        id_map[m["id"]] = added.id
    leaf = id_map.get(conv.get("current_leaf"))
    store.update_conversation(new.id, current_leaf=leaf if leaf else (max(id_map.values()) if id_map else None),
                              pinned=bool(conv.get("pinned", False)))
    return new.id


def load_json_file(path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: line {err.lineno}: invalid JSON ({err.msg})") from None
