"""A conversation being chatted in: the glue between the store and the engine, shared by
`belle chat` and the UI.

Replies are written to the store while they stream (every `flush_s` seconds), so if the process
dies mid-reply the text so far is there after a restart, marked incomplete.
"""

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import models
from .catalog import load_catalog
from .chat_store import ChatStore, Conversation, Message
from .engine import Engine, LoadSettings, Reply, Sampling
from .errors import BelleError, SettingsError
from .templates import ChatMessage

log = logging.getLogger(__name__)

OVERFLOW_POLICIES = ("truncate", "refuse")
DEFAULT_N_CTX = 4096


@dataclass
class ConversationSettings:
    """What a conversation remembers besides its messages (stored as JSON in the store)."""
    sampling: Sampling = field(default_factory=Sampling)
    n_ctx: int = DEFAULT_N_CTX
    overflow: str = "truncate"

    @classmethod
    def from_dict(cls, data: dict) -> "ConversationSettings":
        return cls(Sampling.from_dict(data.get("sampling")), int(data.get("n_ctx", DEFAULT_N_CTX)),
                   data.get("overflow", "truncate"))

    def as_dict(self) -> dict:
        return {"sampling": vars(self.sampling).copy(), "n_ctx": self.n_ctx, "overflow": self.overflow}


class EngineCache:
    """Keeps one model loaded and reloads only when the model file or n_ctx changes, so switching
    between conversations on the same model keeps llama.cpp's KV prefix cache warm."""

    def __init__(self, n_threads: int | None = None, n_gpu_layers: int = 0):
        self.n_threads = n_threads
        self.n_gpu_layers = n_gpu_layers
        self.engine: Engine | None = None
        self._key = None
        self._lock = threading.Lock()

    def get(self, model: str | None, n_ctx: int, template: str) -> Engine:
        path = models.resolve(model)
        key = (str(Path(path).resolve()), n_ctx)
        with self._lock:
            if self.engine is None or self._key != key:
                self.close()
                entry = load_catalog().by_file(Path(path).name)
                settings = LoadSettings(n_ctx=n_ctx, n_threads=self.n_threads, n_gpu_layers=self.n_gpu_layers,
                                        template=template)
                self.engine = Engine.load(path, settings, entry.template if entry else None)
                self._key = key
            elif (template or "auto") != (self.engine.settings.template or "auto"):
                self.engine.set_template(template)
                self.engine.settings.template = template
            return self.engine

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None
            self._key = None


class Turn:
    """One reply being generated and saved: iterate for text pieces."""

    def __init__(self, session: "ChatSession", reply: Reply, message: Message, dropped: list[Message]):
        self.session = session
        self.reply = reply
        self.message = message
        self.dropped = dropped  # history messages left out of the prompt to fit n_ctx

    def cancel(self) -> None:
        self.reply.cancel()

    def __iter__(self) -> Iterator[str]:
        store, flush_s = self.session.store, self.session.flush_s
        last_flush = time.monotonic()
        try:
            for piece in self.reply:
                yield piece
                if time.monotonic() - last_flush >= flush_s:
                    store.update_message(self.message.id, content=self.reply.text)
                    last_flush = time.monotonic()
        finally:
            store.update_message(self.message.id, content=self.reply.text, complete=True,
                                 stats=self.reply.stats.as_dict())
            self.message = store.get_message(self.message.id)

    def run(self, on_piece: Callable[[str], None] | None = None) -> Message:
        for piece in self:
            if on_piece:
                on_piece(piece)
        return self.message


class ChatSession:
    def __init__(self, store: ChatStore, engines: EngineCache, conversation: Conversation, flush_s: float = 0.5):
        self.store = store
        self.engines = engines
        self.conversation = conversation
        self.flush_s = flush_s

    # opening

    @classmethod
    def new(cls, store: ChatStore, engines: EngineCache, model: str | None = None, template: str = "auto",
            system_prompt: str = "", settings: ConversationSettings | None = None) -> "ChatSession":
        settings = settings or ConversationSettings()
        conv = store.create_conversation("", model, template, system_prompt, settings.as_dict())
        return cls(store, engines, conv)

    @classmethod
    def open(cls, store: ChatStore, engines: EngineCache, conversation_id: int) -> "ChatSession":
        return cls(store, engines, store.get_conversation(conversation_id))

    def refresh(self) -> Conversation:
        self.conversation = self.store.get_conversation(self.conversation.id)
        return self.conversation

    # state

    @property
    def id(self) -> int:
        return self.conversation.id

    @property
    def settings(self) -> ConversationSettings:
        return ConversationSettings.from_dict(self.conversation.settings)

    def path(self) -> list[Message]:
        return self.store.path_to(self.refresh().current_leaf)

    def engine(self) -> Engine:
        return self.engines.get(self.conversation.model, self.settings.n_ctx, self.conversation.template)

    def history(self, messages: list[Message]) -> list[ChatMessage]:
        system = [ChatMessage("system", self.conversation.system_prompt)] if self.conversation.system_prompt else []
        return system + [ChatMessage(m.role, m.content) for m in messages]

    def context_usage(self) -> tuple[int, int]:
        """(tokens the branch on screen takes, n_ctx) for the token meter."""
        engine = self.engine()
        return len(engine.prompt_tokens(self.history(self.path()))), engine.n_ctx

    # changing settings

    def set_system_prompt(self, text: str) -> None:
        self.conversation = self.store.update_conversation(self.id, system_prompt=text)

    def set_template(self, name: str) -> None:
        from .template_data import TEMPLATE_NAMES

        if name not in ("auto", *TEMPLATE_NAMES):
            raise SettingsError(f"unknown chat template '{name}' (choose from: auto, {', '.join(TEMPLATE_NAMES)})")
        self.conversation = self.store.update_conversation(self.id, template=name)

    def set_model(self, model: str | None) -> None:
        models.resolve(model)  # fail now, not at the next message
        self.conversation = self.store.update_conversation(self.id, model=model)

    def set_param(self, name: str, value) -> None:
        settings = self.settings
        if name == "n_ctx":
            try:
                settings.n_ctx = int(value)
            except ValueError:
                raise SettingsError(f"setting 'n_ctx' needs a whole number, got {value!r}") from None
            if not 64 <= settings.n_ctx <= 1 << 20:
                raise SettingsError(f"setting 'n_ctx' must be between 64 and 1048576, got {settings.n_ctx}")
        elif name == "overflow":
            if value not in OVERFLOW_POLICIES:
                raise SettingsError(f"setting 'overflow' must be one of {', '.join(OVERFLOW_POLICIES)}, got {value!r}")
            settings.overflow = value
        else:
            settings.sampling.update(name, value)
        self.conversation = self.store.update_conversation(self.id, settings=settings.as_dict())

    def rename(self, title: str) -> None:
        self.conversation = self.store.update_conversation(self.id, title=title)

    # chatting

    def send(self, text: str, cancel: threading.Event | None = None) -> Turn:
        if not text.strip():
            raise BelleError("empty message: type something first")
        parent = self.refresh().current_leaf
        user = self.store.add_message(self.id, parent, "user", text)
        if not self.conversation.title:
            self.rename(_title_from(text))
        return self._reply_to(user, cancel)

    def regenerate(self, cancel: threading.Event | None = None) -> Turn:
        """A new alternative to the last reply; the old one stays as a sibling."""
        path = self.path()
        if not path:
            raise BelleError("nothing to regenerate yet")
        user = path[-1] if path[-1].role == "user" else self.store.get_message(path[-1].parent_id)
        return self._reply_to(user, cancel)

    def edit(self, message_id: int, text: str, cancel: threading.Event | None = None) -> Turn:
        """Editing a user message starts a new branch from its parent; the old branch is kept."""
        old = self.store.get_message(message_id)
        if old.role != "user" or old.conversation_id != self.id:
            raise BelleError(f"message {message_id} is not a user message of this conversation")
        user = self.store.add_message(self.id, old.parent_id, "user", text)
        return self._reply_to(user, cancel)

    def undo(self) -> list[Message]:
        """Remove the last exchange (the last user message and its reply) from the branch."""
        path = self.path()
        if not path:
            return []
        cut = next((i for i in range(len(path) - 1, -1, -1) if path[i].role == "user"), len(path) - 1)
        removed = path[cut:]
        self.store.delete_message(removed[0].id)
        self.store.update_conversation(self.id, current_leaf=path[cut - 1].id if cut > 0 else None)
        self.refresh()
        return removed

    def switch(self, message_id: int, step: int) -> Message:
        """Show the previous (-1) or next (+1) alternative of a message; returns the new leaf."""
        msg = self.store.get_message(message_id)
        sibs = self.store.siblings(msg)
        target = sibs[(sibs.index(next(m for m in sibs if m.id == msg.id)) + step) % len(sibs)]
        leaf = self.store.latest_leaf_under(target)
        self.store.update_conversation(self.id, current_leaf=leaf.id)
        self.refresh()
        return leaf

    def _reply_to(self, user: Message, cancel: threading.Event | None) -> Turn:
        engine = self.engine()
        settings = self.settings
        path = self.store.path_to(user.id)
        history = self.history(path)
        reply = engine.reply(history, settings.sampling, cancel, settings.overflow)
        n_system = 1 if self.conversation.system_prompt else 0
        dropped = [path[i - n_system] for i in reply.fit.dropped]
        message = self.store.add_message(self.id, user.id, "assistant", "", complete=False,
                                         model=self.conversation.model or models.default_model_id())
        return Turn(self, reply, message, dropped)


def _title_from(text: str, limit: int = 40) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
