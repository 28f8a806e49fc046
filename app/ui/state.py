"""What the chat UI shows and does, without Flet: the conversation list, the branch on screen, the
reply being streamed, search. Controls subscribe with `listen(fn)` and redraw on `fn(event)`.

Generation runs in a worker thread. Text pieces are collected there and at most
`max_updates_per_s` "stream" events go out per second (a page update costs a diff and a websocket
message; doing one per token would slow generation and flood the browser)."""

import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..chat_store import ChatStore, Conversation, Message, SearchHit
from ..engine import SAMPLING_LIMITS
from ..errors import BelleError
from ..session import MAX_N_CTX, MIN_N_CTX, ChatSession, ConversationSettings, EngineCache, Turn

log = logging.getLogger(__name__)

# events passed to listeners
CONVERSATIONS = "conversations"  # the sidebar list changed
MESSAGES = "messages"  # the branch on screen changed (open, switch, a turn began or ended)
STREAM = "stream"  # more text of the reply being generated
STATUS = "status"  # busy / phase / error / notice changed


@dataclass
class MessageItem:
    """One message of the branch on screen, with its place among its alternatives."""
    message: Message
    index: int  # 1-based position among siblings
    count: int  # number of siblings (alternatives), 1 if none

    @property
    def id(self) -> int:
        return self.message.id


@dataclass
class Segment:
    """A piece of a reply: Markdown text, or a fenced code block (drawn with its own copy button)."""
    kind: str  # "text" | "code"
    text: str
    lang: str = ""


_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)(?:^```[ \t]*$|\Z)", re.S | re.M)


def split_code_blocks(text: str) -> list[Segment]:
    """Split Markdown into text and fenced code blocks; an unclosed fence (still streaming) runs to
    the end of the text."""
    out, pos = [], 0
    for m in _FENCE.finditer(text):
        if m.start() > pos and text[pos:m.start()].strip():
            out.append(Segment("text", text[pos:m.start()].strip("\n")))
        out.append(Segment("code", m.group(2).rstrip("\n"), m.group(1).strip()))
        pos = m.end()
    if text[pos:].strip() or not out:
        out.append(Segment("text", text[pos:].strip("\n")))
    return out


def cut_off_reason(message: Message) -> str | None:
    """"length" when an answer stopped at max tokens, "context" when the context window was full,
    else None: such an answer gets a mark and a Continue button (the CLI prints "[cut off]")."""
    if message.role != "assistant" or not message.complete or not message.stats:
        return None
    reason = message.stats.get("stop_reason")
    return reason if reason in ("length", "context") else None


class UIError(BelleError):
    """A mistake the UI explains in the person's language: `key` and `values` for i18n.tr (the
    English text is the exception's message, for logs and tests)."""

    def __init__(self, key: str, **values):
        from .i18n import tr

        self.key, self.values = key, values
        super().__init__(self.text(lambda k, **v: tr("en", k, **v)))

    def text(self, t) -> str:
        values = dict(self.values)
        if "field" in values:  # a setting's name is also the i18n key of its label
            values["field"] = t(values["field"])
        return t(self.key, **values)


def error_text(err: BelleError, t) -> str:
    return err.text(t) if isinstance(err, UIError) else str(err)


# The chat settings the settings dialog edits, with the ranges the session accepts (taken from the
# engine and session, not repeated), so a wrong value is explained with the field's label instead
# of the internal name ('max_tokens').
SETTING_LIMITS: dict[str, tuple[type, float, float]] = {
    "temperature": (float, *SAMPLING_LIMITS["temperature"]),
    "top_p": (float, *SAMPLING_LIMITS["top_p"]),
    "max_tokens": (int, *SAMPLING_LIMITS["max_tokens"]),
    "n_ctx": (int, MIN_N_CTX, MAX_N_CTX),
}
# App settings (config.json) typed into the same dialog, checked the same way
APP_SETTING_LIMITS: dict[str, tuple[type, float, float]] = {"kv_state_budget_mb": (int, 0, 1 << 20)}


def parse_setting(name: str, text: str) -> int | float:
    """The number typed into a settings field, or UIError(setting_whole | setting_number) naming
    the field (`field` value: the i18n key of its label, which is the setting's name)."""
    kind, lo, hi = SETTING_LIMITS.get(name) or APP_SETTING_LIMITS[name]
    key = "setting_whole" if kind is int else "setting_number"
    try:
        value = kind(str(text).strip())
    except ValueError:
        raise UIError(key, field=name, lo=lo, hi=hi) from None
    if not lo <= value <= hi:
        raise UIError(key, field=name, lo=lo, hi=hi)
    return value


class ChatState:
    def __init__(self, store: ChatStore, engines: EngineCache, default_model: str | None = None,
                 max_updates_per_s: float = 20.0, clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.engines = engines
        self.default_model = default_model
        self.min_interval = 1.0 / max_updates_per_s
        self.clock = clock
        self.session: ChatSession | None = None  # None: a new chat not yet saved (nothing sent)
        self.items: list[MessageItem] = []
        self.busy = False
        self.phase = ""  # "loading" (the model) | "generating" | ""
        self.streaming_id: int | None = None  # id of the assistant message being generated
        self.streaming_text = ""
        self.dropped: list[Message] = []  # left out of the last prompt to fit n_ctx
        self.error: str | None = None
        self.last_turn: Message | None = None
        self.last_stop = ""  # stop_reason of the last turn ("cancelled", "length", ...), also when its reply was removed
        self.stream_events = 0  # "stream" events sent during the last turn
        self.last_deleted: int | None = None
        self._usage: tuple[int, int] | None = None
        self._cancel: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self._listeners: list[Callable[[str], None]] = []
        self._watch: sqlite3.Connection | None = None  # see store_changed
        self._data_version = 0

    # listeners

    def listen(self, fn: Callable[[str], None]) -> None:
        self._listeners.append(fn)

    def _emit(self, event: str) -> None:
        for fn in list(self._listeners):
            try:
                fn(event)
            except Exception:  # a broken control must not kill the generation thread
                log.exception("UI listener failed on %s", event)

    # the conversation list

    def conversations(self) -> list[Conversation]:
        return self.store.list_conversations()

    def search(self, text: str) -> list[SearchHit]:
        """One hit per conversation, best first (the store's trigram index finds Chinese substrings)."""
        hits, seen = [], set()
        for hit in self.store.search(text):
            if hit.conversation_id not in seen:
                seen.add(hit.conversation_id)
                hits.append(hit)
        return hits

    def store_changed(self) -> bool:
        """Whether another connection (`belle chat` in another process, another tab, this tab's
        own generation thread) wrote to the store since the last call: SQLite's data_version
        changes exactly then. One pragma on a connection of our own, cheap enough to poll every
        few seconds; the sidebar redraws only when it says so. The first call takes the reference
        point and says False."""
        if self._watch is None:
            self._watch = sqlite3.connect(self.store.path, check_same_thread=False, isolation_level=None)
            self._data_version = self._watch.execute("PRAGMA data_version").fetchone()[0]
            return False
        version = self._watch.execute("PRAGMA data_version").fetchone()[0]
        changed, self._data_version = version != self._data_version, version
        return changed

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    @property
    def conversation_id(self) -> int | None:
        """The open conversation's id; None for a new chat (also one whose settings were changed:
        it is only written to the store with its first message)."""
        return self.session.id if self.session else None

    @property
    def saved(self) -> bool:
        return self.session is not None and self.session.saved

    def new_chat(self) -> None:
        self._require_idle()
        self.session = None
        self._set_branch()

    def open(self, conversation_id: int) -> None:
        self._require_idle()
        self.session = ChatSession.open(self.store, self.engines, conversation_id)
        self._set_branch()

    def ensure_session(self) -> ChatSession:
        """The open conversation; for a new chat one that lives in memory (settings need somewhere
        to live) and is written to the store with its first message, so opening the app or
        changing a setting and leaving leaves no empty conversation behind."""
        if self.session is None:
            self.session = ChatSession.new(self.store, self.engines, model=self.default_model,
                                           settings=ConversationSettings())
        return self.session

    def rename(self, conversation_id: int, title: str) -> None:
        self.store.update_conversation(conversation_id, title=title.strip())
        if self.session and self.session.id == conversation_id:
            self.session.refresh()
        self._emit(CONVERSATIONS)

    def toggle_pin(self, conversation_id: int) -> None:
        conv = self.store.get_conversation(conversation_id)
        self.store.update_conversation(conversation_id, pinned=not conv.pinned)
        self._emit(CONVERSATIONS)

    def delete(self, conversation_id: int) -> None:
        """Soft delete; `undo_delete` brings it back."""
        if self.session and self.session.id == conversation_id:
            self.stop()
            self.wait()
            self.session = None
            self._set_branch()
        self.store.delete_conversation(conversation_id)
        self.last_deleted = conversation_id
        self._emit(CONVERSATIONS)

    def undo_delete(self) -> None:
        if self.last_deleted is not None:
            self.store.restore_conversation(self.last_deleted)
            self.last_deleted = None
            self._emit(CONVERSATIONS)

    # the branch on screen

    def _set_branch(self) -> None:
        self.items = []
        if self.session:
            for msg in self.session.path():
                sibs = self.store.siblings(msg)
                index = next(i for i, m in enumerate(sibs) if m.id == msg.id) + 1
                self.items.append(MessageItem(msg, index, len(sibs)))
        self._usage = None
        self._emit(MESSAGES)

    def switch(self, message_id: int, step: int) -> None:
        """Show the previous (-1) or next (+1) alternative of a message."""
        self._require_idle()
        self.session.switch(message_id, step)
        self._set_branch()

    def context_usage(self) -> tuple[int | None, int]:
        """(tokens the branch takes or None when unknown, n_ctx). Counting needs the loaded model, so
        it is only done once a turn has loaded it: opening a chat never loads a model."""
        n_ctx = self.session.settings.n_ctx if self.session else ConversationSettings().n_ctx
        if not self.saved or not self.items:
            return 0, n_ctx
        if self.busy or self.engines.engine is None or self.engines.engine.n_ctx != n_ctx:
            return (self._usage[0] if self._usage else None), n_ctx
        if self._usage is None:
            try:
                self._usage = self.session.context_usage()
            except BelleError as err:
                log.info("no token count: %s", err)
                return None, n_ctx
        return self._usage

    # generating

    def send(self, text: str) -> None:
        if not text.strip():
            raise UIError("empty_message")
        self._require_idle()
        session = self.ensure_session()
        self._start(lambda cancel: session.send(text, cancel))

    def regenerate(self) -> None:
        self._require_idle()
        if not self.session or not self.items:
            raise UIError("nothing_to_regenerate")
        session = self.session
        self._start(lambda cancel: session.regenerate(cancel))

    def continue_reply(self) -> None:
        """Go on writing the last answer (cut off by max tokens): the text is added to the same message."""
        self._require_idle()
        if not self.saved or not self.items or self.items[-1].message.role != "assistant":
            raise UIError("nothing_to_continue")
        session = self.session
        self._start(lambda cancel: session.continue_reply(cancel))

    def edit(self, message_id: int, text: str) -> None:
        """A new version of a user message: a new branch; the old one stays reachable with ‹ ›."""
        if not text.strip():
            raise UIError("empty_message")
        self._require_idle()
        session = self.session
        self._start(lambda cancel: session.edit(message_id, text, cancel))

    def stop(self) -> None:
        if self._cancel is not None:
            self._cancel.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the running turn has ended (tests, benchmark, shutdown)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _require_idle(self) -> None:
        if self.busy:
            raise UIError("busy")

    def _start(self, begin: Callable[[threading.Event], Turn]) -> None:
        self.busy = True
        self.error = None
        self.dropped = []
        self.stream_events = 0
        self.last_stop = ""
        self._cancel = threading.Event()
        self.phase = "loading" if self.engines.engine is None else "generating"
        self._emit(STATUS)
        self._thread = threading.Thread(target=self._run, args=(begin, self._cancel), daemon=True,
                                        name="belle-generate")
        self._thread.start()

    def _run(self, begin: Callable[[threading.Event], Turn], cancel: threading.Event) -> None:
        try:
            turn = begin(cancel)
            self.dropped = list(turn.dropped)
            self.streaming_id = turn.message.id
            self.streaming_text = turn.text  # Continue: the text the answer already had
            self.phase = "generating"
            self._set_branch()  # shows the question and the empty reply
            self._emit(STATUS)
            self._emit(CONVERSATIONS)  # a new chat now has a title
            last = self.clock()
            for piece in turn:
                self.streaming_text += piece
                now = self.clock()
                if now - last >= self.min_interval:
                    last = now
                    self.stream_events += 1
                    self._emit(STREAM)
            self.last_turn = turn.message  # None: the reply ended before its first word and was removed
            self.last_stop = turn.stats.get("stop_reason", "")
        except BelleError as err:
            self.error = str(err)
        except Exception as err:  # keep the app usable; the log has the traceback
            log.exception("generation failed")
            self.error = f"{type(err).__name__}: {err}"
        finally:
            self.busy = False
            self.phase = ""
            self.streaming_id = None
            self._cancel = None
            if self.session:
                self._set_branch()
            self._emit(STATUS)
            self._emit(CONVERSATIONS)
