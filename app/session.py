"""A conversation being chatted in: the glue between the store and the engine, shared by
`belle chat` and the UI.

- A new conversation lives in memory until its first message is sent; only then is it written to
  the store, so opening the app or `belle chat` and leaving leaves no empty conversation behind.
- Settings saved with a conversation: model, template, system prompt, sampling (max_tokens
  included), n_ctx and overflow; `/set`, `/system` and the UI's chat settings change them.
  Overrides (`belle chat -c ID --set ...`) apply to this session only and are never saved.
- Replies are written to the store while they stream (every `flush_s` seconds), so if the process
  dies mid-reply the text so far is there after a restart, marked incomplete. A reply that ends
  with no text at all (stopped or failed before its first word) is removed, not kept as a blank.
"""

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import device, kv_state, models
from .catalog import load_catalog
from .config import check_kv_settings, load_config
from .chat_store import ChatStore, Conversation, Message
from .engine import Engine, LoadSettings, Reply, Sampling
from .errors import BelleError, ContextOverflowError, SettingsError
from .templates import ChatMessage

log = logging.getLogger(__name__)

OVERFLOW_POLICIES = ("truncate", "refuse")
DEFAULT_N_CTX = 4096


def default_n_ctx() -> int:
    """A new conversation's context size: smaller on a phone, whose KV cache competes with every
    other app for memory."""
    return device.PHONE_N_CTX if device.is_phone() else DEFAULT_N_CTX


@dataclass
class ConversationSettings:
    """What a conversation remembers besides its messages (stored as JSON in the store)."""
    sampling: Sampling = field(default_factory=Sampling)
    n_ctx: int = field(default_factory=default_n_ctx)
    overflow: str = "truncate"

    @classmethod
    def from_dict(cls, data: dict) -> "ConversationSettings":
        return cls(Sampling.from_dict(data.get("sampling")), int(data.get("n_ctx", default_n_ctx())),
                   data.get("overflow", "truncate"))

    def as_dict(self) -> dict:
        return {"sampling": vars(self.sampling).copy(), "n_ctx": self.n_ctx, "overflow": self.overflow}

    def apply(self, name: str, value) -> "ConversationSettings":
        """Set one setting from user input (a string from /set or --set, a number from the UI)."""
        if name not in SETTING_NAMES:
            known = ", ".join((*SETTING_NAMES, "template", "model"))
            raise SettingsError(f"unknown setting '{name}' (settings: {known})")
        if name == "n_ctx":
            try:
                n_ctx = int(str(value).strip())
            except ValueError:
                raise SettingsError(f"setting 'n_ctx' needs a whole number, got {value!r}") from None
            if not MIN_N_CTX <= n_ctx <= MAX_N_CTX:
                raise SettingsError(f"setting 'n_ctx' must be between {MIN_N_CTX} and {MAX_N_CTX}, got {n_ctx}")
            self.n_ctx = n_ctx
        elif name == "overflow":
            if value not in OVERFLOW_POLICIES:
                raise SettingsError(f"setting 'overflow' must be one of {', '.join(OVERFLOW_POLICIES)}, got {value!r}")
            self.overflow = value
        else:
            self.sampling.update(name, value)
        return self


# What `/set` and `--set` accept besides the sampling fields, and the conversation fields that
# `-m/--model` and `-t/--template` override.
SETTING_NAMES = (*(f.name for f in dataclasses.fields(Sampling)), "n_ctx", "overflow")
MIN_N_CTX, MAX_N_CTX = 64, 1 << 20


class EngineCache:
    """Keeps one model loaded and reloads only when the model file, n_ctx or KV cache type changes,
    so switching between conversations on the same model keeps llama.cpp's KV prefix cache warm.

    `kv_type` and `state_budget_mb` (saved conversation states, kv_state.py): None takes them from
    config.json, so every front end (CLI, UI) gets the user's settings without passing them."""

    def __init__(self, n_threads: int | None = None, n_gpu_layers: int = 0, kv_type: str | None = None,
                 state_budget_mb: int | None = None):
        self.n_threads = n_threads
        self.n_gpu_layers = n_gpu_layers
        if kv_type is None or state_budget_mb is None:
            config = check_kv_settings(load_config())
            kv_type = kv_type or config.kv_cache_type
            state_budget_mb = config.kv_state_budget_mb if state_budget_mb is None else state_budget_mb
        self.kv_type = kv_type
        self.state_budget_mb = state_budget_mb
        self.engine: Engine | None = None
        self._key = None
        self._lock = threading.Lock()

    def get(self, model: str | None, n_ctx: int, template: str) -> Engine:
        path = models.resolve(model)
        key = (str(Path(path).resolve()), n_ctx, self.kv_type)
        with self._lock:
            if self.engine is None or self._key != key:
                self.close()
                entry = load_catalog().by_file(Path(path).name)
                settings = LoadSettings(n_ctx=n_ctx, n_threads=self.n_threads, n_gpu_layers=self.n_gpu_layers,
                                        template=template, kv_type=self.kv_type)
                self.engine = Engine.load(path, settings, entry.template if entry else None)
                self.set_state_budget(self.state_budget_mb)
                self._key = key
            elif (template or "auto") != (self.engine.settings.template or "auto"):
                self.engine.set_template(template)
                self.engine.settings.template = template
            return self.engine

    def set_state_budget(self, mb: int) -> None:
        """The saved states' disk budget, for the loaded model too (the settings dialog changes it)."""
        self.state_budget_mb = mb
        if self.engine is not None:
            self.engine.state_budget_bytes = mb * 1_000_000  # MB of 10^6 bytes, as `belle models states` shows them

    def close(self) -> None:
        if self.engine is not None:
            kv_state.flush()  # the last reply's state is saved before its model is freed
            self.engine.close()
            self.engine = None
            self._key = None


class Turn:
    """One reply being generated and saved: iterate for text pieces.

    Afterwards `message` is the saved reply, or None when the reply ended with no text (stopped
    while the prompt was read, or failed): that empty message is deleted and the branch ends at
    the question again, which a regenerate answers."""

    def __init__(self, session: "ChatSession", reply: Reply, message: Message, dropped: list[Message],
                 before: str = "", before_stats: dict | None = None):
        self.session = session
        self.reply = reply
        self.message: Message | None = message
        self.dropped = dropped  # history messages left out of the prompt to fit n_ctx
        self.before = before  # text the message already had (Continue)
        self.before_stats = before_stats or {}

    @property
    def text(self) -> str:
        return self.before + self.reply.text

    @property
    def stats(self) -> dict:
        stats = self.reply.stats.as_dict()
        stats["generated_tokens"] += self.before_stats.get("generated_tokens", 0)
        return stats

    def cancel(self) -> None:
        self.reply.cancel()

    def __iter__(self) -> Iterator[str]:
        store, flush_s = self.session.store, self.session.flush_s
        last_flush = time.monotonic()
        try:
            for piece in self.reply:
                yield piece
                if time.monotonic() - last_flush >= flush_s:
                    store.update_message(self.message.id, content=self.text)
                    last_flush = time.monotonic()
        finally:
            self._save()

    def _save(self) -> None:
        store, message = self.session.store, self.message
        if not self.text:
            store.delete_message(message.id)
            store.update_conversation(message.conversation_id, current_leaf=message.parent_id)
            self.message = None
            return
        # "interrupted": an exception ended the reply (the loop sets every other reason itself)
        complete = self.reply.stats.stop_reason != "interrupted"
        store.update_message(message.id, content=self.text, complete=complete, stats=self.stats)
        self.message = store.get_message(message.id)

    def run(self, on_piece: Callable[[str], None] | None = None) -> Message | None:
        for piece in self:
            if on_piece:
                on_piece(piece)
        return self.message


class ChatSession:
    def __init__(self, store: ChatStore, engines: EngineCache, conversation: Conversation, flush_s: float = 0.5):
        self.store = store
        self.engines = engines
        self.conversation = conversation  # id None: not in the store yet (nothing sent)
        self.flush_s = flush_s
        self.overrides: dict[str, str] = {}  # this session only, never saved: name -> value

    # opening

    @classmethod
    def new(cls, store: ChatStore, engines: EngineCache, model: str | None = None, template: str = "auto",
            system_prompt: str = "", settings: ConversationSettings | None = None) -> "ChatSession":
        """A new conversation, kept in memory until its first message is sent."""
        settings = settings or ConversationSettings()
        now = time.time()
        conv = Conversation(None, "", now, now, model, template, system_prompt, settings.as_dict(), False, None, None)
        return cls(store, engines, conv)

    @classmethod
    def open(cls, store: ChatStore, engines: EngineCache, conversation_id: int) -> "ChatSession":
        return cls(store, engines, store.get_conversation(conversation_id))

    def refresh(self) -> Conversation:
        if self.saved:
            self.conversation = self.store.get_conversation(self.conversation.id)
        return self.conversation

    # state

    @property
    def id(self) -> int | None:
        return self.conversation.id

    @property
    def saved(self) -> bool:
        return self.conversation.id is not None

    @property
    def stored_settings(self) -> ConversationSettings:
        return ConversationSettings.from_dict(self.conversation.settings)

    @property
    def settings(self) -> ConversationSettings:
        """The settings in force: the conversation's own, with this session's overrides on top."""
        settings = self.stored_settings
        for name, value in self.overrides.items():
            if name in SETTING_NAMES:
                settings.apply(name, value)
        return settings

    @property
    def model(self) -> str | None:
        return self.overrides.get("model", self.conversation.model)

    @property
    def template(self) -> str:
        return self.overrides.get("template", self.conversation.template)

    @property
    def system_prompt(self) -> str:
        return self.overrides.get("system_prompt", self.conversation.system_prompt)

    def path(self) -> list[Message]:
        return self.store.path_to(self.refresh().current_leaf)

    def engine(self) -> Engine:
        return self.engines.get(self.model, self.settings.n_ctx, self.template)

    def history(self, messages: list[Message]) -> list[ChatMessage]:
        system = [ChatMessage("system", self.system_prompt)] if self.system_prompt else []
        return system + [ChatMessage(m.role, m.content) for m in messages]

    def context_usage(self) -> tuple[int, int]:
        """(tokens of the branch on screen that the model sees, n_ctx) for the token meter. Once
        the branch outgrows the context, older turns are left out of the prompt, so the meter
        counts what is kept ("374 / 300" read as a bug)."""
        engine = self.engine()
        history = self.history(self.path())
        used = len(engine.prompt_tokens(history))
        if used > engine.n_ctx:
            try:
                used = len(engine.fit(history, 0).prompt_tokens)
            except ContextOverflowError:
                used = engine.n_ctx
        return used, engine.n_ctx

    # changing settings (saved with the conversation; in memory until it is saved)

    def _update(self, **changes) -> None:
        if self.saved:
            self.conversation = self.store.update_conversation(self.id, **changes)
        else:
            self.conversation = dataclasses.replace(self.conversation, **changes)

    def set_system_prompt(self, text: str) -> None:
        self.overrides.pop("system_prompt", None)
        self._update(system_prompt=text)

    def set_template(self, name: str) -> None:
        _check_template(name)
        self.overrides.pop("template", None)
        self._update(template=name)

    def set_model(self, model: str | None) -> None:
        models.resolve(model)  # fail now, not at the next message
        self.overrides.pop("model", None)
        self._update(model=model)

    def set_param(self, name: str, value) -> None:
        """Change a setting and save it with the conversation (/set, the UI's chat settings)."""
        settings = self.stored_settings.apply(name, value)
        self.overrides.pop(name, None)
        self._update(settings=settings.as_dict())

    def override(self, name: str, value) -> None:
        """Change a setting for this session only (`belle chat -c ID --set ...`): never saved."""
        if name == "model":
            models.resolve(value)
        elif name == "template":
            _check_template(value)
        elif name != "system_prompt":
            self.settings.apply(name, value)  # validates
        self.overrides[name] = value

    def rename(self, title: str) -> None:
        self._update(title=title)

    def _save_conversation(self, title: str) -> None:
        c = self.conversation
        self.conversation = self.store.create_conversation(title, c.model, c.template, c.system_prompt, c.settings)

    # chatting

    def send(self, text: str, cancel: threading.Event | None = None) -> Turn:
        """Add a user message and start the reply. If the reply cannot start (the conversation
        does not fit and the overflow policy says refuse, the model cannot be loaded), the message
        is taken back out and the error raised: the caller still has the text."""
        if not text.strip():
            raise BelleError("empty message: type something first")
        created = not self.saved
        if created:
            self._save_conversation(title_from(text))
        parent = self.refresh().current_leaf
        user = self.store.add_message(self.id, parent, "user", text)
        if not self.conversation.title:
            self.rename(title_from(text))
        try:
            return self._reply_to(user, cancel)
        except BaseException:
            self.store.delete_message(user.id)
            if created:
                self.store.purge_conversation(self.id)
                self.conversation = dataclasses.replace(self.conversation, id=None, current_leaf=None)
            else:
                self._update(current_leaf=parent)
            raise

    def regenerate(self, cancel: threading.Event | None = None) -> Turn:
        """A new alternative to the last reply (the old one stays as a sibling), or the answer to
        a question whose reply was stopped before its first word."""
        path = self.path() if self.saved else []
        if not path:
            raise BelleError("nothing to regenerate yet")
        user = path[-1] if path[-1].role == "user" else self.store.get_message(path[-1].parent_id)
        return self._reply_to(user, cancel)

    def continue_reply(self, cancel: threading.Event | None = None) -> Turn:
        """Go on writing the last answer (after it was cut off by max_tokens or stopped): the new
        text is appended to the same message."""
        path = self.path() if self.saved else []
        if not path or path[-1].role != "assistant" or not path[-1].content:
            raise BelleError("there is no answer to continue")
        last = path[-1]
        engine = self.engine()
        settings = self.settings
        history = self.history(path[:-1])
        reply = engine.reply(history, settings.sampling, cancel, settings.overflow, prefix=last.content,
                             conversation=self.id)
        n_system = 1 if self.system_prompt else 0
        dropped = [path[i - n_system] for i in reply.fit.dropped]
        self.store.update_message(last.id, complete=False)  # until the continuation is saved
        return Turn(self, reply, last, dropped, before=last.content, before_stats=last.stats)

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
        reply = engine.reply(history, settings.sampling, cancel, settings.overflow, conversation=self.id)
        n_system = 1 if self.system_prompt else 0
        dropped = [path[i - n_system] for i in reply.fit.dropped]
        message = self.store.add_message(self.id, user.id, "assistant", "", complete=False,
                                         model=self.model or models.default_model_id())
        return Turn(self, reply, message, dropped)


def _check_template(name: str) -> None:
    from .template_data import TEMPLATE_NAMES

    if name not in ("auto", *TEMPLATE_NAMES):
        raise SettingsError(f"unknown chat template '{name}' (choose from: auto, {', '.join(TEMPLATE_NAMES)})")


def title_from(text: str, limit: int = 40) -> str:
    """A conversation's title: its first message on one line, cut at `limit` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
