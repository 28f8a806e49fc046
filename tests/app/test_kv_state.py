"""Saved conversation states (app/kv_state.py) on the real default model: a new process resumes a
conversation from its state and gives the greedy answers of one process that never stopped (not
always those of a fresh read: see the first test); anything that changed, and any damaged file,
falls back to reading it again."""

import ctypes
import json
import logging
import os
import re
import shutil
import threading

import pytest

from belle.app import kv_state
from belle.app.chat_store import ChatStore
from belle.app.session import ChatSession, ConversationSettings, EngineCache
from tests.conftest import run_belle

GREEDY = ["--set", "temperature=0", "--set", "top_k=1"]


def _chat(home, *args):
    r = run_belle("chat", "--json", "--threads", "2", *args, env={"BELLE_HOME": str(home)})
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    return json.loads(r.stdout)


def _header(path):
    found = kv_state.read_header(path)
    assert found is not None, path
    return found[0]


def test_a_new_process_resumes_and_answers_as_if_it_had_never_stopped(default_model_path, belle_home, tmp_path):
    first = _chat(belle_home, "-p", "My cat is called Tom. Tell me about cats.", "--n-ctx", "1024", *GREEDY,
                  "--set", "max_tokens=24")
    conv = first["conversation_id"]
    state = belle_home / "states" / f"conv-{conv}.state"
    assert state.exists()  # a one-shot -p waits for the save before it exits
    assert first["stats"]["restored_tokens"] == 0
    second = _chat(belle_home, "-c", str(conv), "-p", "What is my cat called?")
    # the first answer's tokens are in the state, so all of the history up to the new question is restored
    assert second["stats"]["restored_tokens"] == second["stats"]["cached_tokens"] >= first["stats"]["prompt_tokens"]
    # what a person sees after a plain -p: the answer on stdout, the resume on stderr
    r = run_belle("chat", "--threads", "2", "-c", str(conv), "-p", "And what do cats eat?",
                  env={"BELLE_HOME": str(belle_home)})
    assert r.returncode == 0, r.stderr
    third_answer = r.stdout.removesuffix("\n")
    said = re.search(r"\[resumed instantly: ([\d,]+) tokens from the saved state\]", r.stderr)
    assert said and int(said[1].replace(",", "")) > second["stats"]["restored_tokens"], r.stderr
    assert "resumed" not in r.stdout
    assert _header(state)["n_tokens"] > int(said[1].replace(",", ""))

    # A new process that reads it all again (the same store without the states, saving and restoring
    # off) evaluates the earlier answers' tokens as a prompt batch, while the state holds them as they
    # were generated, one at a time: llama.cpp's logits differ between the two (up to ~0.9 here), so
    # greedy texts may part after a few words. What must hold exactly is that a restore loses nothing:
    # the resumed process answers as one process that kept the whole conversation in memory does.
    plain = tmp_path / "plain-home"
    shutil.copytree(belle_home, plain, ignore=shutil.ignore_patterns("states"))
    (plain / "config.json").write_text(json.dumps({"kv_state_budget_mb": 0}))
    question = ["-c", str(conv), "-p", "Give my cat a nickname."]
    resumed, reread = _chat(belle_home, *question), _chat(plain, *question)
    assert resumed["stats"]["restored_tokens"] == resumed["stats"]["cached_tokens"] > 50
    assert reread["stats"]["restored_tokens"] == reread["stats"]["cached_tokens"] == 0 and reread["answer"]
    assert resumed["stats"]["prompt_tokens"] == reread["stats"]["prompt_tokens"]
    assert not (plain / "states").exists()

    store = ChatStore(tmp_path / "one-process.db")
    engines = EngineCache(n_threads=2, kv_type="f16", state_budget_mb=0)
    try:
        session = _session(store, engines, default_model_path, n_ctx=1024, max_tokens=24)
        answers = []
        for text in ("My cat is called Tom. Tell me about cats.", "What is my cat called?", "And what do cats eat?",
                     "Give my cat a nickname."):
            turn = session.send(text)
            turn.run()
            answers.append(turn.text)
        assert turn.stats["restored_tokens"] == 0 and turn.stats["cached_tokens"] == resumed["stats"]["cached_tokens"]
    finally:
        engines.close()
        store.close()
    assert answers == [first["answer"], second["answer"], third_answer, resumed["answer"]]
    assert resumed["answer"]

    r = run_belle("models", "states", env={"BELLE_HOME": str(belle_home)})
    assert r.returncode == 0 and r.stdout.startswith("saved states: 1 (") and "budget 2,000 MB" in r.stdout, r.stdout
    r = run_belle("models", "states", "--clear", env={"BELLE_HOME": str(belle_home)})
    assert r.returncode == 0 and r.stdout.startswith("deleted 1 saved state ("), r.stdout
    assert not state.exists()


def _session(store, engines, model, n_ctx=512, max_tokens=12):
    session = ChatSession.new(store, engines, str(model), settings=ConversationSettings(n_ctx=n_ctx))
    for name, value in (("temperature", 0), ("top_k", 1), ("max_tokens", max_tokens)):
        session.set_param(name, value)
    return session


def _open_and_ask(store, conv_id, text="Why?", budget_mb=100, **overrides):
    """A fresh engine (as in a new process) opens the conversation and answers."""
    engines = EngineCache(n_threads=2, kv_type=overrides.pop("kv_type", "f16"), state_budget_mb=budget_mb)
    try:
        session = ChatSession.open(store, engines, conv_id)
        for name, value in overrides.items():
            session.override(name, value)
        turn = session.send(text)
        turn.run()
        return turn
    finally:
        engines.close()


def _saved_conversation(model, tmp_path, *texts):
    """A conversation chatted in and its state saved (closing the engine waits for the save)."""
    store = ChatStore(tmp_path / "belle.db")
    engines = EngineCache(n_threads=2, kv_type="f16", state_budget_mb=100)
    try:
        session = _session(store, engines, model)
        for text in texts:
            session.send(text).run()
    finally:
        engines.close()
    return store, session.id


def test_a_changed_model_template_prompt_or_n_ctx_reads_again(default_model_path, tmp_path, caplog):
    model = tmp_path / "copy.gguf"
    shutil.copyfile(default_model_path, model)
    store, conv = _saved_conversation(model, tmp_path, "Hi! I like tea.", "What do I like?")
    state = kv_state.state_path(kv_state.folder(), conv)
    os.utime(state, (1000, 1000))
    caplog.set_level(logging.INFO, logger="belle.app.kv_state")

    same = _open_and_ask(store, conv)
    assert same.stats["restored_tokens"] == same.stats["cached_tokens"] > 20
    assert state.stat().st_mtime > 1000  # a restore makes it the most recently used
    good = state.read_bytes()  # each run below saves a state of its own: each starts from this one

    changes = [({"system_prompt": "You are a pirate."}, "token"),  # the prompt no longer starts the same
               ({"template": "belle"}, "template"), ({"n_ctx": "640"}, "n_ctx"), ({"kv_type": "q8_0"}, "kv_type")]
    for overrides, why in changes:
        state.write_bytes(good)
        caplog.clear()
        turn = _open_and_ask(store, conv, **overrides)
        if why == "token":  # only the tokens before the system prompt's text can come from the state
            assert turn.stats["restored_tokens"] == turn.stats["cached_tokens"] < 8, turn.stats
        else:
            assert turn.stats["restored_tokens"] == turn.stats["cached_tokens"] == 0, overrides
            assert f"saved state does not fit ({why} " in caplog.text, caplog.text
    # the model file is replaced at the same path (a new download): another mtime, so another identity
    os.utime(model, ns=(model.stat().st_atime_ns, model.stat().st_mtime_ns + 1_000_000_000))
    state.write_bytes(good)
    caplog.clear()
    turn = _open_and_ask(store, conv)
    assert turn.stats["restored_tokens"] == 0 and "saved state does not fit (model_mtime_ns " in caplog.text
    store.close()




def test_a_damaged_state_is_read_again_with_a_log_line(default_model_path, tmp_path, caplog):
    store, conv = _saved_conversation(default_model_path, tmp_path, "Name a fruit.")
    leaf = store.get_conversation(conv).current_leaf
    state = kv_state.state_path(kv_state.folder(), conv)
    good = state.read_bytes()
    # What reading the conversation again answers (see the first test: not always what a restore
    # answers); budget 0 neither loads nor saves.
    reference = _open_and_ask(store, conv, "Another one?", budget_mb=0)
    assert reference.stats["cached_tokens"] == 0 and reference.text and state.read_bytes() == good
    caplog.set_level(logging.INFO, logger="belle.app.kv_state")
    header_end = good.index(b"\n", len(kv_state.MAGIC)) + 1
    middle = header_end + (len(good) - header_end) // 2
    damaged = {
        "truncated": (good[: len(good) - 1000], "truncated"),
        "flipped byte": (good[:middle] + bytes([good[middle] ^ 0xFF]) + good[middle + 1 :], "crc32 mismatch"),
        "bad magic": (b"XX" + good[2:], "bad magic"),
        "cut header": (good[: header_end - 50], "unreadable saved state"),
        "empty": (b"", "bad magic"),
    }
    for name, (data, log_text) in damaged.items():
        state.write_bytes(data)
        store.update_conversation(conv, current_leaf=leaf)  # the same question again, on a branch of its own
        caplog.clear()
        turn = _open_and_ask(store, conv, "Another one?")
        assert turn.stats["restored_tokens"] == turn.stats["cached_tokens"] == 0, name
        assert turn.text == reference.text, name
        assert log_text in caplog.text, (name, caplog.text)
    store.close()


def test_cancelled_replies_and_switches_save_the_right_tokens(default_model_path, tmp_path):
    store = ChatStore(tmp_path / "belle.db")
    engines = EngineCache(n_threads=2, kv_type="f16", state_budget_mb=100)
    try:
        a = _session(store, engines, default_model_path)
        a.set_param("max_tokens", 200)
        cancel = threading.Event()
        turn = a.send("Write a long story about a dragon.", cancel)
        pieces = []
        for piece in turn:
            pieces.append(piece)
            cancel.set()
        assert turn.stats["stop_reason"] == "cancelled"
        a_prompt = turn.stats["prompt_tokens"]
        engine = engines.engine
        a_tokens = engine.llm.input_ids[: engine.llm.n_tokens].tolist()
        # another conversation right away, before A's save may have run: A's KV is copied before it is overwritten
        b = _session(store, engines, default_model_path)
        b.send("Name a colour.").run()
        b_tokens = engine.llm.input_ids[: engine.llm.n_tokens].tolist()
        assert kv_state.flush()
        assert _header(kv_state.state_path(kv_state.folder(), a.id))["tokens"] == a_tokens
        assert _header(kv_state.state_path(kv_state.folder(), b.id))["tokens"] == b_tokens
        # back to A on the same engine: its state gives more than the KV (which holds B) has
        turn = a.send("Go on.")
        turn.run()
        assert turn.stats["restored_tokens"] == turn.stats["cached_tokens"] >= a_prompt
    finally:
        engines.close()
        store.close()


def test_q8_0_halves_the_state_and_resumes(default_model_path, tmp_path):
    store = ChatStore(tmp_path / "belle.db")
    sizes = {}
    for kv_type in ("f16", "q8_0"):
        engines = EngineCache(n_threads=2, kv_type=kv_type, state_budget_mb=100)
        try:
            session = _session(store, engines, default_model_path)
            turn = session.send("Name three colours.")
            assert turn.run() is not None and turn.text  # q8_0 (with flash attention) loads and answers
        finally:
            engines.close()
        header = _header(kv_state.state_path(kv_state.folder(), session.id))
        assert header["kv_type"] == kv_type
        sizes[kv_type] = header["payload_size"] / header["n_tokens"]
        resumed = _open_and_ask(store, session.id, kv_type=kv_type)
        assert resumed.stats["restored_tokens"] > 0
    assert 0.4 < sizes["q8_0"] / sizes["f16"] < 0.6, sizes
    store.close()


def _snap(conversation, size, seq):
    payload = (ctypes.c_uint8 * size)(*([7] * size))
    return kv_state.Snapshot(conversation, {"conversation": conversation, "n_tokens": 1, "tokens": [1]}, payload, seq)


def test_least_recently_used_states_go_first_and_crash_leftovers_are_cleaned(tmp_path):
    where = tmp_path / "states"
    for conv, seq in ((1, 1), (2, 2)):
        kv_state.write(where, _snap(conv, 1000, seq), budget_bytes=10_000)
    one, two = kv_state.state_path(where, 1), kv_state.state_path(where, 2)
    os.utime(one, (1000, 1000))
    os.utime(two, (2000, 2000))
    os.utime(one, (3000, 3000))  # conversation 1 was restored since: 2 is the least recently used
    old_tmp = where / "conv-5.state.12345.tmp"  # a crash's leftover
    old_tmp.write_bytes(b"x" * 500)
    os.utime(old_tmp, (1000, 1000))
    new_tmp = where / "conv-6.state.12346.tmp"  # may be another process writing now
    new_tmp.write_bytes(b"y" * 10)
    assert kv_state.disk_used(where).count == 2
    # a leftover is never loaded: conversation 5 has no state
    assert kv_state.read_header(kv_state.state_path(where, 5)) is None
    size = one.stat().st_size
    kv_state.write(where, _snap(3, 1000, 3), budget_bytes=2 * size + 100)
    assert sorted(p.name for p in where.iterdir()) == ["conv-1.state", "conv-3.state", "conv-6.state.12346.tmp"]
    # an older snapshot never replaces a newer file
    assert kv_state.write(where, _snap(3, 1000, 1), budget_bytes=10_000) is None
    gone = kv_state.clear(where)
    assert gone.count == 2 and list(where.iterdir()) == []
    # a state larger than the whole budget is not kept either
    kv_state.write(where, _snap(4, 5000, 4), budget_bytes=4000)
    assert list(where.iterdir()) == []


def test_bad_kv_settings_are_one_line_errors(default_model_path, belle_home):
    from belle.app.engine import Engine, LoadSettings
    from belle.app.errors import SettingsError

    (belle_home / "config.json").write_text(json.dumps({"kv_cache_type": "q4"}))
    with pytest.raises(SettingsError, match="kv_cache_type must be one of f16, q8_0, got 'q4'"):
        EngineCache()
    (belle_home / "config.json").write_text(json.dumps({"kv_state_budget_mb": -1}))
    with pytest.raises(SettingsError, match="kv_state_budget_mb must be a whole number"):
        EngineCache()
    with pytest.raises(SettingsError, match="KV cache type must be one of f16, q8_0"):
        Engine.load(default_model_path, LoadSettings(n_ctx=256, kv_type="q4_0"))


def test_a_restore_loses_nothing(default_model_path, tmp_path, caplog):
    """The KV after a restore, copied again, is byte for byte the saved payload."""
    store, conv = _saved_conversation(default_model_path, tmp_path, "Name a fruit.")
    store.close()
    state = kv_state.state_path(kv_state.folder(), conv)
    header, offset = kv_state.read_header(state)
    good = state.read_bytes()
    engines = EngineCache(n_threads=2, kv_type="f16", state_budget_mb=100)
    try:
        engine = engines.get(str(default_model_path), 512, "auto")
        with engine.lock:
            restored = kv_state.restore(engine, kv_state.folder(), conv, engine.template.name, header["tokens"] + [1])
            engine.owner = conv
            snap = kv_state.snapshot(engine)
            # a header that asks for an impossible payload: logged, the KV emptied, never raised
            huge = {**header, "payload_size": 1 << 62}
            state.write_bytes(kv_state.MAGIC + json.dumps(huge).encode() + b"\n" + bytes(snap.payload))
            engine.llm.n_tokens = 0
            assert kv_state.restore(engine, kv_state.folder(), conv, engine.template.name, header["tokens"]) == 0
            assert engine.llm.n_tokens == 0 and "truncated or too long" in caplog.text
    finally:
        engines.close()
    assert restored == header["n_tokens"] > 10
    assert snap.header["tokens"] == header["tokens"]
    assert bytes(snap.payload) == good[offset:]
