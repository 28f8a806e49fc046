"""Schema of the conversation store as named migrations, applied in order on every open and
recorded in the `_migrations` table (the pattern of simonw/llm's migrations.py)."""

import sqlite3
import time


def m001_initial() -> str:
    return """
        CREATE TABLE conversations (
            id INTEGER PRIMARY KEY,
            title TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            model TEXT,                              -- catalog id or file path
            template TEXT NOT NULL DEFAULT 'auto',   -- auto | gguf | belle | chatml
            system_prompt TEXT NOT NULL DEFAULT '',
            settings TEXT NOT NULL DEFAULT '{}',     -- JSON: sampling and context settings
            pinned INTEGER NOT NULL DEFAULT 0,
            deleted_at REAL,                         -- soft delete, so the UI can undo
            current_leaf INTEGER                     -- last message of the branch on screen
        );
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            parent_id INTEGER REFERENCES messages(id) ON DELETE CASCADE,
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
            content TEXT NOT NULL,
            created_at REAL NOT NULL,
            complete INTEGER NOT NULL DEFAULT 1,     -- 0 while streaming; stays 0 if the process died
            model TEXT,
            stats TEXT                               -- JSON ReplyStats of an assistant message
        );
        CREATE INDEX messages_by_parent ON messages(conversation_id, parent_id);

        -- trigram: substring search that works for Chinese, which has no spaces between words
        CREATE VIRTUAL TABLE messages_fts USING fts5(
            content, content='messages', content_rowid='id', tokenize='trigram'
        );
        CREATE TRIGGER messages_ai AFTER INSERT ON messages BEGIN
            INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
        END;
        CREATE TRIGGER messages_ad AFTER DELETE ON messages BEGIN
            INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
        END;
        CREATE TRIGGER messages_au AFTER UPDATE OF content ON messages BEGIN
            INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
            INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
        END;
    """


def m002_drop_empty_conversations() -> str:
    # Before conversations were created with their first message, every `belle chat` that quit
    # without a question left an empty "(untitled)" row. Those held nothing anyone wrote.
    return """
        DELETE FROM conversations
        WHERE title = '' AND system_prompt = '' AND id NOT IN (SELECT DISTINCT conversation_id FROM messages);
    """


MIGRATIONS = [m001_initial, m002_drop_empty_conversations]


def migrate(db: sqlite3.Connection) -> list[str]:
    """Apply what is missing; return the names applied."""
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    done = {row[0] for row in db.execute("SELECT name FROM _migrations")}
    applied = []
    for migration in MIGRATIONS:
        if migration.__name__ in done:
            continue
        # One transaction per migration: a crash half-way leaves the previous schema intact.
        db.executescript(
            f"BEGIN;\n{migration()}\n"
            f"INSERT INTO _migrations (name, applied_at) VALUES ('{migration.__name__}', {time.time()});\nCOMMIT;"
        )
        applied.append(migration.__name__)
    return applied
