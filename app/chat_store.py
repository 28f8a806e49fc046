"""The conversation store: the only code that knows SQL. Shared by the CLI and the UI.

Messages form a tree per conversation (parent_id): regenerate adds a sibling reply, editing a
user message adds a sibling question; `current_leaf` says which branch is on screen.
"""

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import StoreError
from .migrations import migrate


@dataclass
class Conversation:
    id: int
    title: str
    created_at: float
    updated_at: float
    model: str | None
    template: str
    system_prompt: str
    settings: dict
    pinned: bool
    deleted_at: float | None
    current_leaf: int | None


@dataclass
class Message:
    id: int
    conversation_id: int
    parent_id: int | None
    role: str
    content: str
    created_at: float
    complete: bool = True
    model: str | None = None
    stats: dict | None = field(default=None)


@dataclass
class SearchHit:
    conversation_id: int
    title: str
    message_id: int | None
    snippet: str


def snippet(text: str, query: str, context: int = 40) -> str:
    """The match in `text` marked [like this], with about `context` characters either side, cut
    at word boundaries (spaces) where there are any; Chinese text has none and is cut anywhere."""
    at = text.lower().find(query.lower())
    if at < 0:
        at, query = 0, ""
    start, end = max(0, at - context), min(len(text), at + len(query) + context)
    if start > 0:
        space = text.find(" ", start, at)
        start = space + 1 if space >= 0 else start
    if end < len(text):
        space = text.rfind(" ", at + len(query), end)
        end = space if space >= 0 else end
    head, match, tail = text[start:at], text[at : at + len(query)], text[at + len(query) : end]
    marked = f"{head}[{match}]{tail}" if match else head + tail
    return ("…" if start > 0 else "") + marked.strip() + ("…" if end < len(text) else "")


_CONV_FIELDS = ("title", "model", "template", "system_prompt", "settings", "pinned", "deleted_at", "current_leaf")


def _conversation(row) -> Conversation:
    return Conversation(row["id"], row["title"], row["created_at"], row["updated_at"], row["model"], row["template"],
                        row["system_prompt"], json.loads(row["settings"] or "{}"), bool(row["pinned"]),
                        row["deleted_at"], row["current_leaf"])


def _message(row) -> Message:
    return Message(row["id"], row["conversation_id"], row["parent_id"], row["role"], row["content"],
                   row["created_at"], bool(row["complete"]), row["model"],
                   json.loads(row["stats"]) if row["stats"] else None)


class ChatStore:
    """One SQLite connection (WAL), safe to use from the UI thread and a generation thread."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"{folder}: cannot create the folder for the conversation store "
                             f"({(err.strerror or str(err)).lower()})") from None
        if not self.path.exists():
            # sqlite3 would only say "unable to open database file", which reads as if a belle.db
            # were there and broken; creating the (empty, valid) file ourselves gives the real cause.
            try:
                self.path.open("ab").close()
            except OSError as err:
                raise StoreError(f"{self.path}: cannot create the conversation store: the folder {folder} cannot "
                                 f"be written ({(err.strerror or str(err)).lower()})") from None
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA synchronous=NORMAL")
            migrate(self._db)
        except sqlite3.OperationalError as err:
            if not getattr(err, "sqlite_errorname", "").startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN")):
                raise StoreError(f"{self.path}: cannot open the conversation store ({err})") from None
            # WAL mode writes belle.db-wal and belle.db-shm next to the file, even to read it.
            raise StoreError(f"{self.path}: cannot open the conversation store ({err}): the file and its folder "
                             f"{folder} must be writable") from None
        except sqlite3.DatabaseError as err:
            # Never "repair" by recreating: the file may hold a person's whole history.
            raise StoreError(f"{self.path}: cannot open the conversation store ({err}); "
                             "it was left untouched, move it away to start a new one") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _q(self, sql: str, args=()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as err:
                raise StoreError(f"{self.path}: {err}") from None

    # conversations

    def create_conversation(self, title: str = "", model: str | None = None, template: str = "auto",
                            system_prompt: str = "", settings: dict | None = None) -> Conversation:
        now = time.time()
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO conversations (title, created_at, updated_at, model, template, system_prompt, settings)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (title, now, now, model, template, system_prompt, json.dumps(settings or {})))
            return self.get_conversation(cur.lastrowid)

    def get_conversation(self, conversation_id: int) -> Conversation:
        rows = self._q("SELECT * FROM conversations WHERE id = ?", (conversation_id,))
        if not rows:
            raise StoreError(f"no conversation with id {conversation_id}")
        return _conversation(rows[0])

    def list_conversations(self, include_deleted: bool = False, limit: int = 1000) -> list[Conversation]:
        where = "" if include_deleted else "WHERE deleted_at IS NULL"
        rows = self._q(f"SELECT * FROM conversations {where} ORDER BY pinned DESC, updated_at DESC, id DESC LIMIT ?",
                       (limit,))
        return [_conversation(r) for r in rows]

    def update_conversation(self, conversation_id: int, **changes) -> Conversation:
        unknown = set(changes) - set(_CONV_FIELDS)
        if unknown:
            raise ValueError(f"unknown conversation fields: {sorted(unknown)}")
        if "settings" in changes:
            changes["settings"] = json.dumps(changes["settings"])
        if changes:
            cols = ", ".join(f"{k} = ?" for k in changes)
            self._q(f"UPDATE conversations SET {cols}, updated_at = ? WHERE id = ?",
                    (*changes.values(), time.time(), conversation_id))
        return self.get_conversation(conversation_id)

    def delete_conversation(self, conversation_id: int) -> None:
        """Soft delete: hidden from lists and search until restored or purged."""
        self._q("UPDATE conversations SET deleted_at = ? WHERE id = ?", (time.time(), conversation_id))

    def restore_conversation(self, conversation_id: int) -> None:
        self._q("UPDATE conversations SET deleted_at = NULL WHERE id = ?", (conversation_id,))

    def purge_conversation(self, conversation_id: int) -> None:
        """Delete for good (a conversation whose first message could not be answered)."""
        self._q("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    def purge_deleted(self) -> int:
        with self._lock:
            return self._db.execute("DELETE FROM conversations WHERE deleted_at IS NOT NULL").rowcount

    # messages

    def add_message(self, conversation_id: int, parent_id: int | None, role: str, content: str,
                    complete: bool = True, model: str | None = None, stats: dict | None = None,
                    created_at: float | None = None) -> Message:
        now = time.time()
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO messages (conversation_id, parent_id, role, content, created_at, complete, model, stats)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (conversation_id, parent_id, role, content, created_at or now, int(complete), model,
                 json.dumps(stats) if stats else None))
            self._db.execute("UPDATE conversations SET current_leaf = ?, updated_at = ? WHERE id = ?",
                             (cur.lastrowid, now, conversation_id))
            return self.get_message(cur.lastrowid)

    def update_message(self, message_id: int, content: str | None = None, complete: bool | None = None,
                       stats: dict | None = None) -> None:
        sets, args = [], []
        if content is not None:
            sets.append("content = ?"), args.append(content)
        if complete is not None:
            sets.append("complete = ?"), args.append(int(complete))
        if stats is not None:
            sets.append("stats = ?"), args.append(json.dumps(stats))
        if sets:
            self._q(f"UPDATE messages SET {', '.join(sets)} WHERE id = ?", (*args, message_id))

    def delete_message(self, message_id: int) -> None:
        """Delete a message and everything below it."""
        self._q("DELETE FROM messages WHERE id = ?", (message_id,))

    def get_message(self, message_id: int) -> Message:
        rows = self._q("SELECT * FROM messages WHERE id = ?", (message_id,))
        if not rows:
            raise StoreError(f"no message with id {message_id}")
        return _message(rows[0])

    def messages(self, conversation_id: int) -> list[Message]:
        return [_message(r) for r in self._q("SELECT * FROM messages WHERE conversation_id = ? ORDER BY id",
                                             (conversation_id,))]

    def children(self, conversation_id: int, parent_id: int | None) -> list[Message]:
        rows = self._q("SELECT * FROM messages WHERE conversation_id = ? AND parent_id IS ? ORDER BY id",
                       (conversation_id, parent_id))
        return [_message(r) for r in rows]

    def siblings(self, message: Message) -> list[Message]:
        """The message and its alternatives (same parent, same role), oldest first."""
        return [m for m in self.children(message.conversation_id, message.parent_id) if m.role == message.role]

    def path_to(self, leaf_id: int | None) -> list[Message]:
        """Root-to-leaf list of messages ending at leaf_id."""
        if leaf_id is None:
            return []
        rows = self._q(
            """WITH RECURSIVE up(id) AS (SELECT ? UNION ALL SELECT m.parent_id FROM messages m JOIN up ON m.id = up.id
                                          WHERE m.parent_id IS NOT NULL)
               SELECT messages.* FROM messages JOIN up ON messages.id = up.id""", (leaf_id,))
        by_id = {r["id"]: _message(r) for r in rows}
        path, node = [], by_id.get(leaf_id)
        while node:
            path.append(node)
            node = by_id.get(node.parent_id)
        return path[::-1]

    def latest_leaf_under(self, message: Message) -> Message:
        """Follow the newest child down from message: where a branch switch lands."""
        node = message
        while kids := self.children(message.conversation_id, node.id):
            node = kids[-1]
        return node

    def incomplete_messages(self) -> list[Message]:
        return [_message(r) for r in self._q("SELECT * FROM messages WHERE complete = 0 ORDER BY id")]

    # search

    def search(self, query: str, limit: int = 50) -> list[SearchHit]:
        """Substring search over titles and message text. FTS5 trigram needs 3+ characters; shorter
        queries (two-character Chinese words are common) fall back to LIKE."""
        query = query.strip()
        if not query:
            return []
        like = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        if len(query) >= 3:
            phrase = '"' + query.replace('"', '""') + '"'
            rows = self._q(
                """SELECT m.id AS mid, c.id AS cid, c.title AS title, m.content AS content
                   FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid
                   JOIN conversations c ON c.id = m.conversation_id
                   WHERE messages_fts MATCH ? AND c.deleted_at IS NULL
                   ORDER BY c.updated_at DESC, m.id LIMIT ?""", (phrase, limit))
        else:
            rows = self._q(
                """SELECT m.id AS mid, c.id AS cid, c.title AS title, m.content AS content
                   FROM messages m JOIN conversations c ON c.id = m.conversation_id
                   WHERE m.content LIKE ? ESCAPE '\\' AND c.deleted_at IS NULL
                   ORDER BY c.updated_at DESC, m.id LIMIT ?""", (like, limit))
        hits = [SearchHit(r["cid"], r["title"], r["mid"], snippet(r["content"], query)) for r in rows]
        seen = {h.conversation_id for h in hits}
        for r in self._q("SELECT id, title FROM conversations WHERE title LIKE ? ESCAPE '\\' AND deleted_at IS NULL",
                         (like,)):
            if r["id"] not in seen:
                hits.append(SearchHit(r["id"], r["title"], None, r["title"]))
        return hits[:limit]
