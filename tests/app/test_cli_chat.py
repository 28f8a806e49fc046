"""`belle chat` through the real entry point, in subprocesses."""

import json
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from belle.app.chat_store import ChatStore
from tests.conftest import BELLE, ROOT, run_belle


def _no_traceback(result):
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_prompt_prints_only_the_answer_and_logs_it(default_model_path, belle_home):
    r = run_belle("chat", "-p", "Name three colors.", "--set", "temperature=0", "--set", "max_tokens=40")
    assert r.returncode == 0, r.stderr
    answer = r.stdout.strip()
    assert answer and "belle" not in answer.lower() and ">>>" not in answer
    store = ChatStore(belle_home / "belle.db")
    (conv,) = store.list_conversations()
    assert [m.role for m in store.path_to(conv.current_leaf)] == ["user", "assistant"]
    assert store.path_to(conv.current_leaf)[-1].content == answer
    assert conv.title == "Name three colors."


def test_stdin_and_json(default_model_path):
    r = run_belle("chat", "--json", "-p", "Summarize:", "--set", "max_tokens=24", input="The sky is blue. Grass is green.")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["answer"] and data["conversation_id"] == 1
    assert data["stats"]["generated_tokens"] >= 1 and data["stats"]["stop_reason"] in ("eos", "length")
    assert data["model"] == "smollm2-135m"


def test_continue_a_conversation_reuses_its_history(default_model_path, belle_home):
    r1 = run_belle("chat", "--json", "-p", "My name is Ada.", "--set", "max_tokens=16")
    conv_id = json.loads(r1.stdout)["conversation_id"]
    r2 = run_belle("chat", "--json", "-c", str(conv_id), "-p", "What is my name?", "--set", "max_tokens=16")
    assert r2.returncode == 0, r2.stderr
    store = ChatStore(belle_home / "belle.db")
    path = store.path_to(store.get_conversation(conv_id).current_leaf)
    assert [m.content for m in path if m.role == "user"] == ["My name is Ada.", "What is my name?"]
    assert json.loads(r2.stdout)["stats"]["prompt_tokens"] > json.loads(r1.stdout)["stats"]["prompt_tokens"]


def test_bad_input_gets_one_line_and_nonzero_exit(default_model_path, tmp_path, belle_home):
    cases = []
    r = run_belle("chat", "-p", "hi", "--model", "no-such-model")
    cases.append((r, "unknown model id 'no-such-model'"))
    trunc = tmp_path / "half.gguf"
    trunc.write_bytes(default_model_path.read_bytes()[:30_000_000])
    cases.append((run_belle("chat", "-p", "hi", "--model", str(trunc)), "half.gguf: truncated"))
    junk = tmp_path / "junk.gguf"
    junk.write_text("hello")
    cases.append((run_belle("chat", "-p", "hi", "--model", str(junk)), "junk.gguf: not a GGUF file"))
    cases.append((run_belle("models", "info", str(tmp_path / "missing.gguf")), "missing.gguf: no such model file"))
    cases.append((run_belle("chat", "-p", "hi", "--n-ctx", "2000000"), "must be between 64 and 1048576"))
    cases.append((run_belle("chat", "-p", "hi", "--set", "temperature=hot"), "setting 'temperature' needs a number"))
    cases.append((run_belle("models", "pull", "nope"), "unknown model id 'nope'"))
    for result, expected in cases:
        assert result.returncode == 1, (result.args, result.stderr)
        line = _no_traceback(result)
        assert line.startswith("belle: error: ") and expected in line, line


def test_unreadable_store_is_reported_and_kept(default_model_path, belle_home):
    db = belle_home / "belle.db"
    db.write_bytes(b"garbage" * 1000)
    r = run_belle("chat", "-p", "hi")
    assert r.returncode == 1
    assert "belle.db: cannot open the conversation store" in _no_traceback(r)
    assert db.read_bytes() == b"garbage" * 1000


def test_killed_mid_reply_keeps_the_partial_reply(default_model_path, belle_home):
    proc = subprocess.Popen([*BELLE, "chat", "-p", "Write a very long story about a dragon and a knight.",
                             "--set", "max_tokens=3000", "--set", "temperature=0.8", "--set", "seed=7"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    db_path = belle_home / "belle.db"
    partial = None
    deadline = time.time() + 120
    try:
        while time.time() < deadline and partial is None:
            time.sleep(0.1)
            if not db_path.exists():
                continue
            try:
                db = sqlite3.connect(db_path, timeout=1)
                row = db.execute("SELECT id, content FROM messages WHERE role='assistant' AND complete=0 "
                                 "AND length(content) > 20").fetchone()
                db.close()
            except sqlite3.OperationalError:
                continue
            if row:
                partial = row
        assert partial, "no partial reply was written while streaming"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    store = ChatStore(db_path)
    msg = store.get_message(partial[0])
    assert not msg.complete and msg.content.startswith(partial[1])
    assert [m.id for m in store.incomplete_messages()] == [msg.id]
    # the conversation can go on after the crash
    conv_id = msg.conversation_id
    r = run_belle("chat", "-c", str(conv_id), "-p", "Thanks!", "--set", "max_tokens=8")
    assert r.returncode == 0, r.stderr


def test_app_never_imports_torch_at_runtime(default_model_path):
    code = ("import sys; from belle.app.cli import main; "
            "rc = main(['chat', '-p', 'hi', '--set', 'max_tokens=4']); "
            "bad = [m for m in ('torch', 'transformers', 'peft', 'accelerate') if m in sys.modules]; "
            "print('LOADED', bad); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "LOADED []" in r.stdout


def test_help_lists_the_commands():
    r = run_belle("--help")
    for cmd in ("chat", "models", "bench"):
        assert cmd in r.stdout


ANIMALS = ("cats", "dogs", "birds", "fish", "horses", "cows", "bees")


def test_small_context_drops_old_turns_instead_of_crashing(default_model_path, belle_home):
    """The report: n_ctx 300, max_tokens 60, "Tell me about cats / dogs / ..." crashed at the 4th-5th
    question with a numpy broadcast error, and every later message in that conversation too."""
    r = run_belle("chat", "--json", "--n-ctx", "300", "--set", "max_tokens=60", "--set", "temperature=0",
                  "-p", "Tell me about cats.")
    assert r.returncode == 0, r.stderr
    conv_id = json.loads(r.stdout)["conversation_id"]
    dropped = 0
    for animal in ANIMALS[1:]:
        r = run_belle("chat", "--json", "-c", str(conv_id), "-p", f"Tell me about {animal}.")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["answer"], animal
        assert out["stats"]["prompt_tokens"] + out["stats"]["generated_tokens"] <= 300
        dropped = max(dropped, len(out["dropped_message_ids"]))
    assert dropped > 0, "the context should have overflowed"
    store = ChatStore(belle_home / "belle.db")
    path = store.path_to(store.get_conversation(conv_id).current_leaf)
    assert [m.role for m in path] == ["user", "assistant"] * len(ANIMALS)
    assert all(m.content for m in path), "no empty message is left behind"


def test_flags_with_continue_apply_to_this_run_only(default_model_path, belle_home):
    r = run_belle("chat", "--json", "-p", "Hello!", "--set", "max_tokens=8")
    conv_id = json.loads(r.stdout)["conversation_id"]
    store = ChatStore(belle_home / "belle.db")
    saved = store.get_conversation(conv_id).settings
    # --n-ctx is honoured: a 128-token context cannot hold this question
    long_question = "Please explain this in detail: " + "why is the sky blue and the grass green? " * 20
    r = run_belle("chat", "-c", str(conv_id), "--n-ctx", "128", "-p", long_question)
    assert r.returncode == 1
    assert "n_ctx 128" in _no_traceback(r)
    # a one-shot --set is not saved into the conversation, and a refused message is taken back out
    r = run_belle("chat", "-c", str(conv_id), "--set", "overflow=refuse", "--set", "temperature=0.1",
                  "-p", "Thanks!")
    assert r.returncode == 0, r.stderr
    conv = store.get_conversation(conv_id)
    assert conv.settings == saved
    assert [m.content for m in store.path_to(conv.current_leaf) if m.role == "user"] == ["Hello!", "Thanks!"]


def test_a_refused_first_message_leaves_no_conversation(default_model_path, belle_home):
    r = run_belle("chat", "--n-ctx", "128", "-p", "word " * 300)
    assert r.returncode == 1
    assert "the last message alone needs more than" in _no_traceback(r)
    store = ChatStore(belle_home / "belle.db")
    assert store.list_conversations(include_deleted=True) == []
