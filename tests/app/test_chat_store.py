"""The conversation store on a real SQLite file."""

import json
import sqlite3

import pytest

from belle.app.chat_store import ChatStore
from belle.app.errors import InputError, StoreError
from belle.app.export import from_json, load_json_file, to_json, to_markdown


@pytest.fixture
def store(tmp_path):
    s = ChatStore(tmp_path / "belle.db")
    yield s
    s.close()


def _chat(store):
    conv = store.create_conversation("北京旅行", model="smollm2-135m", system_prompt="Be brief.")
    u1 = store.add_message(conv.id, None, "user", "我想去北京旅游，有什么推荐？")
    a1 = store.add_message(conv.id, u1.id, "assistant", "可以去故宫和长城。", stats={"decode_tok_s": 30.0})
    u2 = store.add_message(conv.id, a1.id, "user", "What about food?")
    a2 = store.add_message(conv.id, u2.id, "assistant", "Try Peking duck.")
    return conv, u1, a1, u2, a2


def test_schema_is_versioned_and_wal(store, tmp_path):
    db = sqlite3.connect(tmp_path / "belle.db")
    assert [r[0] for r in db.execute("SELECT name FROM _migrations")] == ["m001_initial",
                                                                         "m002_drop_empty_conversations"]
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
    ChatStore(tmp_path / "belle.db").close()  # reopening applies nothing twice
    assert db.execute("SELECT count(*) FROM _migrations").fetchone()[0] == 2


def test_tree_regenerate_and_edit_keep_alternatives(store):
    conv, u1, a1, u2, a2 = _chat(store)
    a2b = store.add_message(conv.id, u2.id, "assistant", "Try jianbing.")  # regenerate: a sibling
    assert [m.id for m in store.siblings(a2b)] == [a2.id, a2b.id]
    u2b = store.add_message(conv.id, a1.id, "user", "What about hotels?")  # edit: a branch
    a3 = store.add_message(conv.id, u2b.id, "assistant", "Stay near Wangfujing.")
    assert [m.content for m in store.path_to(a3.id)][-2:] == ["What about hotels?", "Stay near Wangfujing."]
    assert store.get_conversation(conv.id).current_leaf == a3.id
    # the old branch is still there, with both answers
    assert store.latest_leaf_under(u2).id == a2b.id
    assert [m.id for m in store.path_to(a2.id)] == [u1.id, a1.id, u2.id, a2.id]
    store.delete_message(u2b.id)
    assert {m.id for m in store.messages(conv.id)} == {u1.id, a1.id, u2.id, a2.id, a2b.id}


def test_chinese_substring_search(store):
    conv, *_ = _chat(store)
    other = store.create_conversation("Paris")
    store.add_message(other.id, None, "user", "Tell me about the Eiffel tower")
    hits = store.search("故宫和长")  # 4 characters: FTS5 trigram index
    assert [h.conversation_id for h in hits] == [conv.id]
    assert "故宫" in hits[0].snippet
    assert [h.conversation_id for h in store.search("长城")] == [conv.id]  # 2 characters: LIKE fallback
    assert [h.conversation_id for h in store.search("eiffel")] == [other.id]
    assert [h.conversation_id for h in store.search("旅行")] == [conv.id]  # a title
    assert store.search("上海") == []
    store.delete_conversation(conv.id)
    assert store.search("故宫和长") == []  # deleted conversations are hidden ...
    store.restore_conversation(conv.id)
    assert store.search("故宫和长")  # ... until the delete is undone


def test_search_sees_edited_content(store):
    conv = store.create_conversation()
    m = store.add_message(conv.id, None, "assistant", "", complete=False)
    store.update_message(m.id, content="流式写入的回答")
    assert [h.message_id for h in store.search("写入的")] == [m.id]


def test_export_markdown_and_json_round_trip(store, tmp_path):
    conv, u1, a1, u2, a2 = _chat(store)
    store.add_message(conv.id, u2.id, "assistant", "Try jianbing.")
    md = to_markdown(store, conv.id)
    assert md.startswith("# 北京旅行") and "## System" in md and "可以去故宫和长城。" in md
    assert "## Assistant (2/2)" in md
    data = to_json(store, conv.id)
    path = tmp_path / "conv.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    new_id = from_json(store, load_json_file(path), str(path))
    assert new_id != conv.id
    old_tree = [(m.role, m.content) for m in store.messages(conv.id)]
    new_tree = [(m.role, m.content) for m in store.messages(new_id)]
    assert new_tree == old_tree

    def shape(cid):
        msgs = store.messages(cid)
        index = {m.id: i for i, m in enumerate(msgs)}
        return [index.get(m.parent_id) for m in msgs]

    assert shape(new_id) == shape(conv.id)
    assert to_json(store, new_id)["conversation"]["system_prompt"] == "Be brief."


def test_import_rejects_bad_json_with_file_and_line(store, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "belle-conversation",\n "version": 1,,}')
    with pytest.raises(InputError, match=r"bad.json: line 2: invalid JSON"):
        load_json_file(bad)
    with pytest.raises(InputError, match="not a belle conversation export"):
        from_json(store, {"hello": 1}, "x.json")
    data = {"format": "belle-conversation", "conversation": {"messages": [{"id": 1, "parent_id": None, "role": "user"}]}}
    with pytest.raises(InputError, match="message #0 lacks field 'content'"):
        from_json(store, data, "x.json")
    assert store.list_conversations() == []


def test_unreadable_store_is_left_untouched(tmp_path):
    path = tmp_path / "belle.db"
    garbage = b"this is not a database" * 100
    path.write_bytes(garbage)
    with pytest.raises(StoreError, match="cannot open the conversation store"):
        ChatStore(path)
    assert path.read_bytes() == garbage


def test_empty_untitled_conversations_of_older_versions_are_dropped(tmp_path):
    """Older versions created a conversation at every `belle chat` start; m002 removes the empty ones
    and nothing else (a titled or system-prompted conversation is kept even without messages)."""
    from belle.app import migrations

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    db.executescript(migrations.m001_initial())
    db.execute("INSERT INTO _migrations VALUES ('m001_initial', 0)")
    for title, system in (("", ""), ("", ""), ("named", ""), ("", "Be brief."), ("", "")):
        db.execute("INSERT INTO conversations (title, created_at, updated_at, system_prompt) VALUES (?, 0, 0, ?)",
                   (title, system))
    db.execute("INSERT INTO messages (conversation_id, role, content, created_at) VALUES (5, 'user', 'hi', 0)")
    db.commit()
    db.close()
    store = ChatStore(path)
    assert sorted(c.id for c in store.list_conversations()) == [3, 4, 5]
    store.close()


def test_search_snippets_end_at_word_boundaries(store):
    conv = store.create_conversation("t")
    text = ("The quick brown fox jumps over the lazy dog while everybody watches the spectacular "
            "performance of the acrobatic animals in the circus tonight, and after that everyone goes home to sleep")
    store.add_message(conv.id, None, "user", text)
    (hit,) = store.search("acrobatic")
    body = hit.snippet.strip("…")
    assert "[acrobatic]" in hit.snippet
    words = text.split()
    assert all(w in words for w in body.replace("[", "").replace("]", "").split()), hit.snippet
    assert hit.snippet.startswith("…") and hit.snippet.endswith("…")
    store.add_message(conv.id, None, "user", "我们明天去长城看看风景，然后回家吃饭")
    (hit,) = [h for h in store.search("长城看") if "长城" in h.snippet]
    assert "[长城看]" in hit.snippet
