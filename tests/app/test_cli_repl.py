"""The interactive REPL in a real terminal (tmux): question, /regen, Ctrl+C mid-reply, /search, /bye."""

import glob
import os
import shlex
import shutil
import signal
import subprocess
import time
import uuid

import pytest

from belle.app.chat_store import ChatStore
from tests.conftest import BELLE, ROOT

pytestmark = pytest.mark.skipif(subprocess.run(["which", "tmux"], capture_output=True).returncode != 0,
                                reason="tmux is installed by scripts/setup.sh --dev")


class Tmux:
    def __init__(self, command: str, env: dict, output_dir, width: int = 150):
        self.socket = f"belle-test-{uuid.uuid4().hex[:8]}"
        self.output_dir = output_dir
        env = {**env, "PYTHONFAULTHANDLER": "1"}  # a stuck program dumps its stack on SIGABRT
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        self._tmux("new-session", "-d", "-s", "t", "-x", str(width), "-y", "50", f"env {exports} {command}")
        self._tmux("set-option", "-t", "t", "remain-on-exit", "on")
        self.pid = int(self._tmux("list-panes", "-t", "t", "-F", "#{pane_pid}").strip())

    def _tmux(self, *args):
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True).stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "t", "-S", "-200")

    def send(self, *keys):
        self._tmux("send-keys", "-t", "t", *keys)

    def paste(self, text: str):
        """Paste text as a terminal would (each newline an Enter)."""
        subprocess.run(["tmux", "-L", self.socket, "load-buffer", "-"], input=text, text=True, check=True)
        self._tmux("paste-buffer", "-t", "t", "-d")

    def wait_for(self, predicate, timeout=90, what=""):
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = self.screen()
            if predicate(text):
                return text
            time.sleep(0.2)
        report = self.output_dir / "stuck.txt"
        report.write_text(f"timed out waiting for {what}\n\n{self.diagnose()}")
        (self.output_dir / "screen.txt").write_text(self.screen())
        raise AssertionError(f"timed out waiting for {what}; screen in {self.output_dir / 'screen.txt'}, "
                             f"process states and stacks in {report}")

    def processes(self) -> list[int]:
        """The pane's process and all its descendants (the pane may look dead to tmux while its
        process lives on without its terminal)."""
        root = self.pid
        if not os.path.exists(f"/proc/{root}"):
            return []
        children: dict[int, list[int]] = {}
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                fields = open(stat).read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
        tree, todo = [], [root]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo += children.get(pid, [])
        return tree

    def diagnose(self) -> str:
        """What a stuck program is doing: every process of the pane with its threads' states, the
        native stacks (gdb, where installed) and Python's own stack dump (faulthandler on SIGABRT,
        sent to the Python process itself: the pane's first process may be a shell)."""
        out = [f"tmux: pane dead {self.dead()}, exit status {self.exit_status()!r}"]
        server = int(self._tmux("display-message", "-p", "#{pid}").strip())
        for pid in (server, self.pid):
            try:
                status = open(f"/proc/{pid}/status").read().splitlines()
            except OSError:
                continue
            keep = ("Name", "State", "PPid", "SigQ", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")
            out.append(f"== {'tmux server' if pid == server else 'pane process'} {pid}: "
                       + "; ".join(line for line in status if line.startswith(keep)))
        pids = self.processes()
        for pid in pids:
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
                out.append(f"== pid {pid}: {cmd}")
                for task in sorted(glob.glob(f"/proc/{pid}/task/*")):
                    state = open(f"{task}/stat").read().rsplit(")", 1)[1].split()[0]
                    wchan = open(f"{task}/wchan").read() if os.path.exists(f"{task}/wchan") else "?"
                    comm = open(f"{task}/comm").read().strip()
                    out.append(f"   thread {task.rsplit('/', 1)[1]} {comm}: state {state}, wchan {wchan}")
            except OSError as err:
                out.append(f"== pid {pid}: gone ({err})")
                continue
            if shutil.which("gdb"):
                bt = subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt"],
                                    capture_output=True, text=True, timeout=60)
                out.append(bt.stdout[-20000:])
        pythons = [p for p in pids if "python" in open(f"/proc/{p}/cmdline", "rb").read().decode(errors="replace")]
        for pid in pythons:
            os.kill(pid, signal.SIGABRT)  # PYTHONFAULTHANDLER=1: the Python stacks go to the screen
        time.sleep(2)
        out.append("== screen after SIGABRT\n" + self.screen())
        return "\n".join(out)

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

    def exit_code(self) -> int | None:
        """The program's exit code once it has exited, else None.

        Not from tmux alone: when a pane's terminal closes, Debian's tmux 3.3a runs libutempter's
        helper with SIGCHLD set to SIG_DFL, and a program that exits in those few milliseconds
        (its terminal closes a moment before it exits, longer with more threads and a busy
        machine) is never reaped: the pane looks dead with no exit status, for ever. This made
        "waiting for the program to exit" time out now and then. A zombie's /proc/PID/stat still
        holds its exit code (field 52), so read it there."""
        status = self.exit_status()
        if status:
            return int(status)
        signal = self._tmux("list-panes", "-t", "t", "-F", "#{pane_dead_signal}").strip()
        if signal:  # tmux reaped a program killed by a signal: its status is empty, its signal is here
            return -int(signal)
        try:
            fields = open(f"/proc/{self.pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            return None  # reaped by tmux a moment ago: the next call sees tmux's status
        if fields[0] != "Z":
            return None
        code = int(fields[49])  # field 52, counted from field 3 (state)
        return -(code & 0x7F) if code & 0x7F else code >> 8  # a signal as a negative number

    def wait_exit(self, timeout=90) -> int:
        self.wait_for(lambda s: self.exit_code() is not None, timeout, what="the program to exit")
        return self.exit_code()

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
        screen = t.wait_for(lambda s: "[stopped; /continue goes on]" in s, what="[stopped] after Ctrl+C")
        assert not t.dead(), "Ctrl+C stopped the reply, not the program"

        t.send("/search capital of", "Enter")
        t.wait_for(lambda s: "What is the capital of France" in s.split("/search capital of")[-1], what="search hit")
        t.send("/stats", "Enter")
        t.wait_for(lambda s: "stop: cancelled" in s, what="stats of the stopped reply")
        t.send("/bye", "Enter")
        assert t.wait_exit() == 0
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
        t.wait_for(lambda s: "new conversation (saved when you send its first message)" in s, what="/new")
        t.send("/list", "Enter")
        t.wait_for(lambda s: "crashed chat" in s, what="/list")
        t.send(f"/open {crashed.id}", "Enter")
        t.wait_for(lambda s: "Once upon a time (incomplete)" in s, what="the incomplete reply")
        t.send("/set temperature warm", "Enter")
        t.wait_for(lambda s: "error: setting 'temperature' needs a number" in s, what="a one-line error")
        t.send("/bye", "Enter")
        assert t.wait_exit() == 0
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


def flat(screen: str) -> str:
    """The screen's text with line breaks and runs of spaces as single spaces (output is wrapped)."""
    return " ".join(screen.split())


def _start(args, output_dir, width=150):
    env = {k: os.environ[k] for k in ("BELLE_HOME", "BELLE_MODELS_DIR", "PATH")}
    cmd = " ".join(shlex.quote(x) for x in [*BELLE, "chat", *args])
    return Tmux(f"sh -c 'cd {ROOT} && exec {cmd}'", env, output_dir, width)


def _exit(t):
    t.send("/bye", "Enter")
    assert t.wait_exit() == 0


def test_quitting_without_a_question_saves_nothing(default_model_path, belle_home, output_dir):
    for _ in range(2):
        t = _start(["--set", "max_tokens=8"], output_dir)
        try:
            t.wait_for(lambda s: "/help for commands" in s and t.prompts() == 1, what="the banner")
            banner = " ".join(t.screen().split())
            assert "· new conversation." in banner and "SmolLM2 135M Instruct (Q4_1)" in banner
            t.send("/set temperature 0.3", "Enter")
            t.wait_for(lambda s: "temperature = 0.3" in s, what="/set")
            _exit(t)
        finally:
            t.kill()
    assert not (belle_home / "belle.db").exists() or ChatStore(belle_home / "belle.db").list_conversations() == []


def test_repl_list_delete_continue_and_settings(default_model_path, belle_home, output_dir):
    store = ChatStore(belle_home / "belle.db")
    for title in ("alpha chat", "beta chat", "gamma chat"):
        c = store.create_conversation(title)
        store.add_message(c.id, None, "user", f"question of {title}")
    blank = store.create_conversation("stopped early")
    u = store.add_message(blank.id, None, "user", "Tell me a story")
    store.add_message(blank.id, u.id, "assistant", "", stats={"stop_reason": "cancelled"})  # as older versions saved
    store.close()

    t = _start(["--set", "max_tokens=12", "--set", "temperature=0"], output_dir, width=60)
    try:
        t.wait_for(lambda s: t.prompts() == 1, what="the banner")
        t.send("/list 2", "Enter")
        listing = t.wait_for(lambda s: "stopped early" in s, what="/list 2").split("/list 2")[-1]
        assert "gamma chat" in listing and "beta chat" not in listing and "alpha chat" not in listing
        t.send("/delete 2", "Enter")
        t.wait_for(lambda s: "deleted conversation 2: beta chat (/restore 2 brings it back)" in flat(s), what="/delete")
        t.send("/list", "Enter")
        t.wait_for(lambda s: "alpha chat" in s.split("/list")[-1], what="/list")
        assert "beta chat" not in t.screen().split("/list")[-1]
        t.send("/restore 2", "Enter")
        t.wait_for(lambda s: "restored conversation 2" in flat(s), what="/restore")

        t.send("/open 4", "Enter")
        t.wait_for(lambda s: "(no answer)" in s, what="the blank answer shown as such")
        t.send("/new", "Enter")  # a new conversation takes the settings of the one on screen (4: defaults)
        t.send("/set max_tokens 12", "Enter")
        t.send("Write a long essay about the history of the bicycle.", "Enter")
        t.wait_for(lambda s: "[cut off: max_tokens reached; /continue goes on]" in flat(s), what="the cut-off mark")
        t.send("/continue", "Enter")
        t.wait_for(lambda s: flat(s).count("[cut off: max_tokens reached") == 2 and t.prompts() >= 5, what="/continue")
        t.send("/stats", "Enter")
        t.wait_for(lambda s: "stop: length" in flat(s) and "24 generated" in flat(s), what="/stats after /continue")
        t.send("/undo", "Enter")
        t.wait_for(lambda s: "removed 2 message(s)" in s, what="/undo")
        t.send("/stats", "Enter")
        t.wait_for(lambda s: "no answer yet" in s, what="/stats forgets the removed answer")
        t.send("/set bogus 1", "Enter")
        t.wait_for(lambda s: "unknown setting 'bogus'" in s and "overflow, template, model)" in flat(s),
                   what="all settings listed")
        t.send("/set max_tokens 1.5", "Enter")
        t.wait_for(lambda s: "needs a whole number, got '1.5'" in flat(s), what="whole number")
        t.send("/set n_ctx 32768", "Enter")
        t.wait_for(lambda s: "trained on 8192 tokens" in flat(s), what="the n_ctx warning")
        _exit(t)
        screen = t.screen()
        (output_dir / "screen.txt").write_text(screen)
    finally:
        t.kill()
    # no line of the wrapped output breaks a word: every line is at most 60 columns and the answer's
    # words are whole
    assert all(len(line.rstrip()) <= 60 for line in screen.splitlines())
    store = ChatStore(belle_home / "belle.db")
    essay = [c for c in store.list_conversations() if c.title.startswith("Write a long essay")]
    assert len(essay) == 1 and store.path_to(essay[0].current_leaf) == []  # /undo took the exchange back


def test_ctrl_c_while_a_long_paste_is_read(default_model_path, belle_home, output_dir):
    """A ~6,000-token paste takes half a minute to read here; Ctrl+C 2 s in must stop it at once."""
    t = _start(["--n-ctx", "8192", "--set", "max_tokens=16", "--set", "temperature=0"], output_dir)
    lines = [f"Line {i}: the river runs past the old mill, under the bridge and into the sea." for i in range(330)]
    try:
        t.wait_for(lambda s: t.prompts() == 1, what="the banner")
        t.paste('"""\n' + "\n".join(lines) + '\nSummarize the text above.\n"""\n')
        t.wait_for(lambda s: "Summarize the text above." in s, what="the paste")
        time.sleep(2)
        t.send("C-c")
        stopped_at = time.time()
        t.wait_for(lambda s: "[stopped before the first word" in s, timeout=15, what="[stopped] soon after Ctrl+C")
        waited = time.time() - stopped_at
        t.send("/undo", "Enter")  # the unanswered paste stays in the conversation until taken back
        t.wait_for(lambda s: "removed 1 message(s)" in s, what="/undo of the unanswered paste")
        t.send("Say hi.", "Enter")
        # (the paste scrolled the first prompts out of the captured history: count from /undo on)
        t.wait_for(lambda s: t.prompts() and "\n>>> Say hi.\n" in s.split("removed 1 message(s)")[-1],
                   what="the next answer")
        _exit(t)
    finally:
        t.kill()
    assert waited < 10, f"Ctrl+C took {waited:.1f} s to stop the prompt reading"


def test_exit_code_is_read_even_when_tmux_misses_the_exit(output_dir):
    """The harness's own regression test: a program that closes its terminal a moment before it
    exits is left unreaped by tmux about half the time here (the libutempter race described in
    Tmux.exit_code); its exit code must still be seen."""
    # SIGHUP ignored: once the terminal is closed, tmux hangs up on the pane's process, and on a busy
    # machine that came before os._exit(3) now and then (the pane died of signal 1, seen in CI);
    # the race this test is about is the exit code of a program that does exit on its own.
    program = ("import os, signal; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
               "os.close(0); os.close(1); os.close(2); os._exit(3)")
    for _ in range(12):
        t = Tmux(f"python3 -c {shlex.quote(program)}", {"PATH": os.environ["PATH"]}, output_dir)
        try:
            assert t.wait_exit(timeout=20) == 3
        finally:
            t.kill()
