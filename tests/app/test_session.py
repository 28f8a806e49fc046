"""ChatSession on the real default model and a real SQLite store."""

from belle.app.chat_store import ChatStore
from belle.app.session import ChatSession, ConversationSettings, EngineCache


def test_context_meter_counts_what_the_model_sees(default_model_path, tmp_path):
    store = ChatStore(tmp_path / "belle.db")
    engines = EngineCache(n_threads=2)
    try:
        session = ChatSession.new(store, engines, str(default_model_path), settings=ConversationSettings(n_ctx=256))
        assert not session.saved and store.list_conversations() == []
        session._save_conversation("long chat")
        parent = None
        for i in range(12):
            parent = store.add_message(session.id, parent and parent.id, "user", f"Question {i}: " + "more " * 10)
            parent = store.add_message(session.id, parent.id, "assistant", f"Answer {i}: " + "here " * 10)
        used, n_ctx = session.context_usage()
        assert n_ctx == 256
        assert 0 < used <= 256, used  # the whole branch is ~600 tokens; older turns are left out
    finally:
        engines.close()
        store.close()
