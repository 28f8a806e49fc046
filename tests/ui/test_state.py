"""The UI's state logic without a browser, on the real default model: send, stop, regenerate,
branch switch, edit, search, the overflow notice, the conversation list."""

import math
import time

import pytest

from belle.app import paths
from belle.app.chat_store import ChatStore
from belle.app.gguf_info import CARD_FIELDS
from belle.app.session import EngineCache
from belle.app.ui import state as events
from belle.app.ui.i18n import STRINGS, tr
from belle.app.ui.model_list import model_rows
from belle.app.session import ChatSession
from belle.app.ui.state import SETTING_LIMITS, ChatState, UIError, cut_off_reason, parse_setting, split_code_blocks
from tests.conftest import CARD


@pytest.fixture(scope="module")
def engines(default_model_path):
    cache = EngineCache(n_threads=2)
    yield cache
    cache.close()


@pytest.fixture
def state(belle_home, engines):
    store = ChatStore(paths.store_path())
    s = ChatState(store, engines)
    s.seen = []
    s.listen(s.seen.append)
    yield s
    s.stop()
    s.wait(30)
    s.close()
    store.close()


def short(state, n=24):
    """Keep replies short so the tests stay fast."""
    state.ensure_session().set_param("max_tokens", n)


def test_send_streams_and_saves(state):
    short(state, 48)
    t0 = time.monotonic()
    state.send("What is the capital of France?")
    assert state.busy
    assert state.wait(60)
    elapsed = time.monotonic() - t0
    assert not state.busy and state.error is None
    user, reply = [i.message for i in state.items]
    assert (user.role, reply.role) == ("user", "assistant")
    assert reply.complete and reply.content and reply.stats["generated_tokens"] > 0
    assert state.streaming_text == reply.content
    # batched: at most ~20 page updates a second, however fast the tokens come
    assert 0 < state.stream_events <= math.ceil(elapsed * 20) + 1
    assert events.STREAM in state.seen and state.seen[-1] in (events.STATUS, events.CONVERSATIONS)
    [conv] = state.conversations()
    assert conv.title == "What is the capital of France?"


def test_stop_keeps_partial_reply(state):
    state.ensure_session().set_param("max_tokens", 400)
    state.send("Write a long story about a dragon who learns to cook.")
    deadline = time.monotonic() + 30
    while len(state.streaming_text) < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    state.stop()
    assert state.wait(10)
    reply = state.items[-1].message
    assert reply.stats["stop_reason"] == "cancelled"
    assert reply.complete and reply.content.startswith(state.streaming_text[:10])
    assert reply.stats["generated_tokens"] < 400


def test_regenerate_keeps_alternatives_and_switches(state):
    short(state)
    state.send("Name a fruit.")
    state.wait(60)
    first = state.items[-1].message
    state.regenerate()
    state.wait(60)
    assert (state.items[-1].index, state.items[-1].count) == (2, 2)
    second = state.items[-1].message
    state.switch(second.id, -1)
    assert state.items[-1].id == first.id and state.items[-1].index == 1
    state.switch(first.id, +1)
    assert state.items[-1].id == second.id


def test_edit_makes_a_branch(state):
    short(state)
    state.send("Name a colour.")
    state.wait(60)
    old_user = state.items[0].message
    state.edit(old_user.id, "Name an animal.")
    state.wait(60)
    assert state.items[0].message.content == "Name an animal." and state.items[0].count == 2
    state.switch(state.items[0].id, -1)
    assert state.items[0].id == old_user.id and len(state.items) == 2


def test_busy_refuses_a_second_send(state):
    state.ensure_session().set_param("max_tokens", 200)
    state.send("Count from one to fifty.")
    with pytest.raises(Exception, match="Stop"):
        state.send("another")
    state.stop()
    state.wait(10)


def test_overflow_notice(state):
    session = state.ensure_session()
    session.set_param("n_ctx", 256)
    session.set_param("max_tokens", 16)
    long = "Tell me about the sea. " * 12  # ~70 tokens a message
    for _ in range(3):
        state.send(long)
        state.wait(60)
    assert state.dropped, "older turns should have been left out of a 256-token context"
    assert state.items[0].message.content == long  # dropped from the prompt, not from the chat
    used, n_ctx = state.context_usage()
    # the meter counts what the model sees: older turns are left out, so it stays within the context
    assert n_ctx == 256 and 0 < used <= 256


def test_search_finds_chinese_substring_one_hit_per_conversation(state):
    store = state.store
    conv = store.create_conversation("旅行")
    m = store.add_message(conv.id, None, "user", "我想去北京看看万里长城。")
    store.add_message(conv.id, m.id, "assistant", "万里长城很长。")
    store.create_conversation("other")
    hits = state.search("万里长城")
    assert [h.conversation_id for h in hits] == [conv.id]
    assert [h.conversation_id for h in state.search("长城")] == [conv.id]  # two characters: LIKE fallback


def test_conversation_list_actions(state):
    short(state)
    state.send("Hello")
    state.wait(60)
    conv_id = state.conversation_id
    state.rename(conv_id, "问候")
    state.toggle_pin(conv_id)
    [conv] = state.conversations()
    assert conv.title == "问候" and conv.pinned
    state.delete(conv_id)
    assert state.conversations() == [] and state.session is None and state.items == []
    state.undo_delete()
    assert [c.id for c in state.conversations()] == [conv_id]
    state.open(conv_id)
    assert len(state.items) == 2


def test_incomplete_message_is_shown_marked(state):
    store = state.store
    conv = store.create_conversation("crash")
    m = store.add_message(conv.id, None, "user", "hi")
    store.add_message(conv.id, m.id, "assistant", "half a rep", complete=False)
    state.open(conv.id)
    assert not state.items[-1].message.complete


def test_split_code_blocks():
    segs = split_code_blocks("Here:\n```python\nprint('hi')\n```\nDone.")
    assert [(s.kind, s.text, s.lang) for s in segs] == [("text", "Here:", ""), ("code", "print('hi')", "python"),
                                                        ("text", "Done.", "")]
    streaming = split_code_blocks("Look:\n```js\nlet a = 1;")
    assert streaming[-1].kind == "code" and streaming[-1].text == "let a = 1;"
    assert split_code_blocks("") == [split_code_blocks("")[0]] and split_code_blocks("plain")[0].text == "plain"


def test_model_rows_badges(default_model_path):
    rows = model_rows(4096, available=64 << 30)
    local = [r for r in rows if r.local]
    assert local and local[0].verdict == "fits" and local[0].size == default_model_path.stat().st_size
    assert {r.verdict for r in model_rows(4096, available=1 << 20)} == {"wont_fit"}
    big = next(r for r in model_rows(4096, available=6 << 30) if r.id == "qwen2.5-7b-instruct-q4_k_m")
    assert big.verdict == "tight" and not big.local


def test_model_rows_carry_the_model_card(default_model_path, card_model_path, tmp_path, monkeypatch):
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / default_model_path.name).symlink_to(default_model_path)
    (folder / "built.gguf").symlink_to(card_model_path)
    monkeypatch.setenv("BELLE_MODELS_DIR", str(folder))
    cards = {r.id: r.card for r in model_rows(4096, available=64 << 30) if r.local}
    assert cards == {"smollm2-135m": {}, "built.gguf": {**CARD, "licence": "Apache-2.0"}}


def test_every_label_is_translated():
    assert set(STRINGS["zh"]) == set(STRINGS["en"])
    assert tr("zh", "stop") == "停止" and tr("en", "context", used=5, n_ctx=10) == "Context 5 / 10"


def test_listener_failure_does_not_stop_generation(state):
    short(state, 8)
    state.listen(lambda event: 1 / 0)
    state.send("Hi")
    assert state.wait(60) and state.error is None and state.items[-1].message.content


def test_first_run_fetches_only_a_missing_default_model(default_model_path, monkeypatch, tmp_path):
    from belle.app.ui.first_run import missing_default_model

    assert missing_default_model(None) is None  # the test models folder has it
    monkeypatch.setenv("BELLE_MODELS_DIR", str(tmp_path / "empty"))
    entry = missing_default_model(None)
    assert entry is not None and entry.id == "smollm2-135m"
    assert missing_default_model("qwen2.5-7b-instruct-q4_k_m") is None  # not fetchable by us: the send error says how


def test_continue_extends_a_cut_off_answer(state):
    session = state.ensure_session()
    session.set_param("max_tokens", 8)
    session.set_param("temperature", 0)
    state.send("Write a long story about a dragon who learns to cook.")
    assert state.wait(60) and state.error is None
    first = state.items[-1].message
    assert cut_off_reason(first) == "length"
    state.continue_reply()
    assert state.wait(60) and state.error is None
    after = state.items[-1].message
    assert after.id == first.id and len(state.items) == 2  # the same answer, longer
    assert after.content.startswith(first.content) and len(after.content) > len(first.content)
    assert after.stats["generated_tokens"] > first.stats["generated_tokens"]


def test_continue_needs_an_answer(state):
    with pytest.raises(UIError, match="no answer to continue"):
        state.continue_reply()


def test_new_chat_is_saved_with_its_first_message(state):
    """Opening the app and changing settings leaves no conversation behind; the first message
    creates exactly one, with those settings."""
    session = state.ensure_session()
    session.set_param("temperature", 0.3)
    session.set_param("max_tokens", 8)
    session.set_system_prompt("Be brief.")
    assert state.conversations() == [] and not state.saved
    assert state.context_usage() == (0, 4096)  # no model loaded, nothing saved
    state.send("Hi")
    assert state.wait(60) and state.error is None
    [conv] = state.conversations()
    assert state.saved and conv.id == state.conversation_id
    assert conv.settings["sampling"]["temperature"] == 0.3 and conv.settings["sampling"]["max_tokens"] == 8
    assert conv.system_prompt == "Be brief."


def test_new_chat_then_leave_writes_nothing(state):
    state.ensure_session().set_param("n_ctx", 1024)
    state.new_chat()
    state.ensure_session().set_template("chatml")
    assert state.conversations() == []


def test_store_changed_sees_other_connections(state):
    assert not state.store_changed()  # the first call only takes the reference
    assert not state.store_changed()
    other = ChatStore(paths.store_path())  # stands in for `belle chat` in another process
    other.create_conversation("elsewhere")
    other.close()
    assert state.store_changed()
    assert not state.store_changed()


def test_setting_limits_match_the_session(belle_home, engines):
    store = ChatStore(paths.store_path())
    session = ChatSession.new(store, engines)
    for name, (kind, lo, hi) in SETTING_LIMITS.items():
        session.set_param(name, lo)
        session.set_param(name, hi)
        for bad in (lo - 1, hi + 1):
            with pytest.raises(Exception):
                session.set_param(name, bad)
            with pytest.raises(UIError):
                parse_setting(name, str(bad))
    store.close()


def test_setting_errors_use_the_label():
    with pytest.raises(UIError) as err:
        parse_setting("max_tokens", "0")
    assert str(err.value) == "Max tokens: enter a whole number from 1 to 1048576."
    assert err.value.text(lambda k, **v: tr("zh", k, **v)) == "最大生成词元数：请输入 1 到 1048576 之间的整数。"
    with pytest.raises(UIError, match="Temperature: enter a number from 0 to 5"):
        parse_setting("temperature", "warm")
    assert parse_setting("top_p", " 0.9 ") == 0.9 and parse_setting("n_ctx", "2048") == 2048


def test_every_key_the_ui_uses_is_translated():
    """A key missing from the strings shows as itself, in English, in both languages."""
    import re
    from pathlib import Path

    ui = Path(__file__).resolve().parents[2] / "app" / "ui"
    used = set()
    for path in ui.glob("*.py"):
        used |= set(re.findall(r"\bt\(\s*\"([a-z_]+)\"", path.read_text(encoding="utf-8")))
    used |= {f"cut_off_{r}" for r in ("length", "context")} | set(SETTING_LIMITS)
    used |= {f"card_{f}" for f in CARD_FIELDS}  # the model card's labels, by field name
    assert used, "no t(...) calls found"
    assert not used - set(STRINGS["en"]), used - set(STRINGS["en"])
    assert not used - set(STRINGS["zh"]), used - set(STRINGS["zh"])


LONG_PASTE = " ".join(f"Line {i}: the quick brown fox jumps over the lazy dog near the river bank." for i in range(180))


def test_stop_while_a_long_message_is_read(state):
    """Stop 3 s into reading a ~3,000-token message ends the turn within seconds (the engine reads
    long prompts in chunks and checks Stop between them), not after the whole prompt."""
    state.ensure_session().set_param("max_tokens", 64)
    state.send(LONG_PASTE)
    time.sleep(3)
    t0 = time.monotonic()
    state.stop()
    assert state.wait(30)
    assert time.monotonic() - t0 < 10
    assert state.last_stop == "cancelled" and state.error is None
    assert all(i.message.content for i in state.items), "no empty answer is left"


def test_small_context_many_questions(state):
    """Context 300, max tokens 60: question after question never fails and never leaves an empty
    answer (older turns are left out instead)."""
    session = state.ensure_session()
    session.set_param("n_ctx", 300)
    session.set_param("max_tokens", 60)
    for q in ["What is the capital of France?", "Tell me about the sea.", "Name three animals.",
              "What is two plus two?", "Write a haiku about rain.", "What colour is the sky?"]:
        state.send(q)
        assert state.wait(60)
        assert state.error is None, (q, state.error)
    assert all(i.message.content for i in state.items)
    assert [i.message.role for i in state.items] == ["user", "assistant"] * 6
