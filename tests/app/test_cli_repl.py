"""The interactive REPL in a real terminal (tmux): question, /regen, Ctrl+C mid-reply, /search, /bye."""

import os
import shlex
import subprocess
import time
import uuid

import pytest

from belle.app.chat_store import ChatStore
from tests.conftest import BELLE, ROOT

pytestmark = pytest.mark.skipif(subprocess.run(["which", "tmux"], capture_output=True).returncode != 0,
                                reason="tmux is installed by scripts/setup.sh --dev")


class Tmux:
    def __init__(self, command: str, env: dict, output_dir):
        self.socket = f"belle-test-{uuid.uuid4().hex[:8]}"
        self.output_dir = output_dir
        env = {**env, "PYTHONFAULTHANDLER": "1"}  # a stuck program dumps its stack on SIGABRT
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        self._tmux("new-session", "-d", "-s", "t", "-x", "150", "-y", "50", f"env {exports} {command}")
        self._tmux("set-option", "-t", "t", "remain-on-exit", "on")

    def _tmux(self, *args):
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True).stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "t", "-S", "-200")

    def send(self, *keys):
        self._tmux("send-keys", "-t", "t", *keys)

    def wait_for(self, predicate, timeout=90, what=""):
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = self.screen()
            if predicate(text):
                return text
            time.sleep(0.2)
        if not self.dead():
            pid = self._tmux("list-panes", "-t", "t", "-F", "#{pane_pid}").strip()
            subprocess.run(["kill", "-ABRT", pid])
            time.sleep(1)
        (self.output_dir / "screen.txt").write_text(self.screen())
        raise AssertionError(f"timed out waiting for {what}; screen saved in {self.output_dir / 'screen.txt'}")

    def prompts(self) -> int:
        """How many prompts were shown, if the newest one is waiting for input; else 0."""
        lines = [line.rstrip() for line in self.screen().splitlines() if line.strip()]
        if not lines or lines[-1] != ">>>":
            return 0
        return sum(1 for line in lines if line.startswith(">>>"))

    def dead(self) -> bool:
        return self._tmux("list-panes", "-t", "t", "-F", "#{pane_dead}").strip() == "1"

    def exit_status(self) -> str:
        return self._tmux("list-panes", "-t", "t", "-F", "#{pane_dead_status}").strip()

    def kill(self):
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


def test_repl_session(default_model_path, belle_home, output_dir):
    env = {k: os.environ[k] for k in ("BELLE_HOME", "BELLE_MODELS_DIR", "PATH")}
    cmd = " ".join(shlex.quote(x) for x in [*BELLE, "chat", "--set", "max_tokens=40"])
    t = Tmux(f"sh -c 'cd {ROOT} && exec {cmd}'", env, output_dir)
    try:
        t.wait_for(lambda s: "/help for commands" in s and t.prompts() == 1, what="the banner")
        t.send("What is the capital of France?", "Enter")
        t.wait_for(lambda s: t.prompts() == 2, what="the first answer")
        t.send("/regen", "Enter")
        t.wait_for(lambda s: "[answer 2/2]" in s and t.prompts() == 3, what="a second answer")

        t.send("/set max_tokens 2000", "Enter")
        t.wait_for(lambda s: "max_tokens = 2000" in s, what="/set")
        t.send("Write a very long story about a dragon who learns to cook.", "Enter")
        before = t.screen()
        t.wait_for(lambda s: len(s) > len(before) + 80, what="the story to start streaming")
        t.send("C-c")
        screen = t.wait_for(lambda s: "[stopped]" in s, what="[stopped] after Ctrl+C")
        assert not t.dead(), "Ctrl+C stopped the reply, not the program"

        t.send("/search capital of", "Enter")
        t.wait_for(lambda s: "What is the capital of France" in s.split("/search capital of")[-1], what="search hit")
        t.send("/stats", "Enter")
        t.wait_for(lambda s: "stop: cancelled" in s, what="stats of the stopped reply")
        t.send("/bye", "Enter")
        t.wait_for(lambda s: t.dead() and t.exit_status() != "", what="the program to exit")
        assert t.exit_status() == "0"
        (output_dir / "screen.txt").write_text(t.screen())
    finally:
        t.kill()

    store = ChatStore(belle_home / "belle.db")
    (conv,) = store.list_conversations()
    path = store.path_to(conv.current_leaf)
    assert [m.role for m in path] == ["user", "assistant", "user", "assistant"]
    first_answer = path[1]
    assert len(store.siblings(first_answer)) == 2  # /regen kept both answers
    story = path[-1]
    assert story.complete and story.stats["stop_reason"] == "cancelled" and story.content  # partial kept


def test_repl_commands_and_multiline(default_model_path, belle_home, output_dir):
    # a reply cut off by a crash, left in the store as the UI and CLI would find it
    store = ChatStore(belle_home / "belle.db")
    crashed = store.create_conversation("crashed chat")
    u = store.add_message(crashed.id, None, "user", "Tell me a story")
    store.add_message(crashed.id, u.id, "assistant", "Once upon a time", complete=False)
    store.close()

    env = {k: os.environ[k] for k in ("BELLE_HOME", "BELLE_MODELS_DIR", "PATH")}
    cmd = " ".join(shlex.quote(x) for x in [*BELLE, "chat", "--set", "max_tokens=24", "--set", "temperature=0"])
    t = Tmux(f"sh -c 'cd {ROOT} && exec {cmd}'", env, output_dir)
    export = output_dir / "conversation.md"
    try:
        t.wait_for(lambda s: t.prompts() == 1, what="the banner")
        t.send("/system Always answer in one short sentence.", "Enter")
        t.wait_for(lambda s: "system prompt set" in s, what="/system")
        t.send('"""', "Enter")
        t.send("First line of my question.", "Enter")
        t.send("Second line: what is 2+2?", "Enter")
        t.send('"""', "Enter")
        t.wait_for(lambda s: t.prompts() == 3, what="the multi-line answer")  # banner, /system, question
        t.send("/show", "Enter")
        t.wait_for(lambda s: "context:" in s and "temperature=0" in s and "Always answer" in s, what="/show")
        t.send(f"/export {export}", "Enter")
        t.wait_for(lambda s: f"saved {export}" in s, what="/export")
        t.send("/undo", "Enter")
        t.wait_for(lambda s: "removed 2 message(s)" in s, what="/undo")
        t.send("/new", "Enter")
        t.wait_for(lambda s: "new conversation 3" in s, what="/new")
        t.send("/list", "Enter")
        t.wait_for(lambda s: "crashed chat" in s, what="/list")
        t.send(f"/open {crashed.id}", "Enter")
        t.wait_for(lambda s: "Once upon a time (incomplete)" in s, what="the incomplete reply")
        t.send("/set temperature warm", "Enter")
        t.wait_for(lambda s: "error: setting 'temperature' needs a number" in s, what="a one-line error")
        t.send("/bye", "Enter")
        t.wait_for(lambda s: t.dead() and t.exit_status() != "", what="the program to exit")
        (output_dir / "screen.txt").write_text(t.screen())
    finally:
        t.kill()
    md = export.read_text(encoding="utf-8")
    assert "## System\n\nAlways answer in one short sentence." in md
    assert "First line of my question.\nSecond line: what is 2+2?" in md
    store = ChatStore(belle_home / "belle.db")
    conv = store.get_conversation(2)
    assert conv.system_prompt == "Always answer in one short sentence."
    assert store.path_to(conv.current_leaf) == []  # /undo removed the exchange
