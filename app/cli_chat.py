"""`belle chat`: the offline chat REPL, and one-shot answers for scripts (`-p`, stdin, `--json`).

Every conversation is saved in the store, the same one the UI shows.
"""

import json
import os
import shutil
import signal
import sys
import threading
from contextlib import contextmanager
from datetime import datetime

from . import models, paths
from .chat_store import ChatStore
from .config import load_config
from .engine import KV_TYPES
from .errors import BelleError
from .export import to_json, to_markdown
from .gguf_info import human_bytes, read_model_info
from .memory import check_fit
from .session import ChatSession, ConversationSettings, EngineCache
from .template_data import TEMPLATE_NAMES
from .wrap import StreamWrap, wrap_text

HELP = """\
Commands:
  /help                 this list
  /new                  start a new conversation (saved once you send its first message)
  /list [N]             the N most recent conversations (default 20)
  /open ID              continue conversation ID
  /delete [ID]          delete conversation ID (default: this one); /restore ID brings it back
  /search TEXT          find conversations containing TEXT (Chinese works)
  /system [TEXT]        show or set the system prompt
  /set PARAM VALUE      temperature, top_p, top_k, min_p, repeat_penalty, seed, max_tokens,
                        n_ctx, overflow (truncate|refuse), template (auto|gguf|belle|chatml), model
                        (saved with the conversation)
  /show                 model, template, settings and context use
  /regen                another answer to the last message (the old one is kept)
  /continue             go on with an answer that was cut off
  /undo                 remove the last question and its answer
  /stats                numbers for the last answer
  /export PATH          save this conversation as .md or .json
  /bye                  quit (Ctrl+D works too)
Type \"\"\" on its own line to start and end a multi-line message.
Ctrl+C stops an answer; the part already written is kept."""


def add_parser(sub) -> None:
    p = sub.add_parser("chat", help="chat in the terminal (or answer one prompt with -p)")
    p.add_argument("-m", "--model", help="path, catalog id or local file name (default: the default model)")
    p.add_argument("-p", "--prompt", help="answer this and exit; stdin, if piped, is appended")
    p.add_argument("--json", action="store_true", help="with -p or stdin: print the answer and stats as JSON")
    p.add_argument("-c", "--continue", dest="conversation", type=int, metavar="ID",
                   help="continue conversation ID; -m, -t, -s, --n-ctx and --set then apply to this run only")
    p.add_argument("-s", "--system", help="system prompt")
    p.add_argument("-t", "--template", choices=("auto", *TEMPLATE_NAMES), default=None, help="chat template (default auto)")
    p.add_argument("--n-ctx", type=int, default=None, help="context size in tokens (default 4096)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: the physical cores)")
    p.add_argument("--n-gpu-layers", type=int, default=0, help="layers to offload to a GPU (needs a GPU build)")
    p.add_argument("--set", action="append", default=[], metavar="PARAM=VALUE", help="a setting, repeatable")
    p.add_argument("--force", action="store_true", help="load even if the model may not fit in free memory")
    p.add_argument("--kv-type", choices=KV_TYPES, default=None,
                   help="KV cache type for this run: f16, or q8_0 (half the memory and saved-state size); "
                   "default: kv_cache_type in config.json, else f16")
    p.set_defaults(func=run)


def _check_memory(model: str | None, n_ctx: int, force: bool) -> None:
    path = models.resolve(model)
    fit = check_fit(read_model_info(path), n_ctx)
    if fit.verdict == "wont_fit" and not force:
        raise BelleError(f"{path}: {fit.message('the model')}; close other programs, lower --n-ctx, or use --force")
    if fit.verdict == "tight":
        print(f"warning: {fit.message(path.name)}; it may be slow", file=sys.stderr)


def run(args) -> int:
    store = ChatStore(paths.store_path())
    engines = EngineCache(n_threads=args.threads or load_config().n_threads, n_gpu_layers=args.n_gpu_layers,
                          kv_type=args.kv_type)
    try:
        session = _open_session(store, engines, args)
        _check_memory(session.model, session.settings.n_ctx, args.force)
        piped = None if sys.stdin.isatty() else sys.stdin.read()
        if args.prompt is not None or piped is not None:
            text = "\n\n".join(t for t in (args.prompt, piped) if t and t.strip())
            return _one_shot(session, text, args.json)
        return Repl(session).loop()
    finally:
        engines.close()  # waits for the last reply's state to be saved: a one-shot -p leaves it on disk
        store.close()


def _flag_settings(args) -> list[tuple[str, str]]:
    """The settings given on the command line, as (name, value) pairs."""
    pairs = []
    if args.model:
        pairs.append(("model", args.model))
    if args.template:
        pairs.append(("template", args.template))
    if args.system is not None:
        pairs.append(("system_prompt", args.system))
    if args.n_ctx is not None:
        pairs.append(("n_ctx", str(args.n_ctx)))
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            raise BelleError(f"--set {item!r}: expected PARAM=VALUE")
        pairs.append((name.strip(), value.strip()))
    return pairs


def _open_session(store: ChatStore, engines: EngineCache, args) -> ChatSession:
    """A new conversation starts from the command line's settings and keeps them. With -c, the
    flags apply to this run only: a one-shot `-c ID --set overflow=refuse -p ...` must not change
    how the conversation behaves next time (`/set` in the chat, or the app's settings, save)."""
    if args.conversation is not None:
        session = ChatSession.open(store, engines, args.conversation)
        for name, value in _flag_settings(args):
            session.override(name, value)
        return session
    session = ChatSession.new(store, engines, settings=ConversationSettings())
    for name, value in _flag_settings(args):
        if name == "model":
            session.set_model(value)
        elif name == "template":
            session.set_template(value)
        elif name == "system_prompt":
            session.set_system_prompt(value)
        else:
            session.set_param(name, value)
    return session


def _one_shot(session: ChatSession, text: str, as_json: bool) -> int:
    turn = session.send(text)
    if as_json:
        message = turn.run()
        print(json.dumps({"answer": turn.text, "conversation_id": session.id,
                          "message_id": message.id if message else None, "model": session.model or models.default_model_id(),
                          "dropped_message_ids": [m.id for m in turn.dropped], "stats": turn.stats},
                         ensure_ascii=False, indent=2))
    else:
        turn.run(lambda piece: print(piece, end="", flush=True))
        print()
        if turn.stats.get("restored_tokens"):
            print(resumed_line(turn.stats), file=sys.stderr)  # stdout stays just the answer, for scripts
    return 0


def resumed_line(stats: dict) -> str:
    return f"[resumed instantly: {stats['restored_tokens']:,} tokens from the saved state]"


@contextmanager
def _ctrl_c_cancels(event: threading.Event):
    """While a reply streams, Ctrl+C sets `event` instead of raising KeyboardInterrupt in the middle
    of a llama.cpp call."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda *_: event.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class Repl:
    def __init__(self, session: ChatSession):
        self.session = session
        self.last_stats: dict | None = None
        self.commands = {
            "help": self.cmd_help, "?": self.cmd_help, "new": self.cmd_new, "list": self.cmd_list,
            "open": self.cmd_open, "delete": self.cmd_delete, "restore": self.cmd_restore,
            "search": self.cmd_search, "system": self.cmd_system, "set": self.cmd_set, "show": self.cmd_show,
            "regen": self.cmd_regen, "continue": self.cmd_continue, "undo": self.cmd_undo,
            "stats": self.cmd_stats, "export": self.cmd_export,
        }

    @staticmethod
    def width() -> int:
        """The terminal's width now (it may be resized between answers)."""
        try:
            return os.get_terminal_size(sys.stdout.fileno()).columns
        except (OSError, ValueError):  # not a terminal
            return shutil.get_terminal_size((100, 24)).columns

    def say(self, text: str = "") -> None:
        """Print a message or a stored answer, wrapped at word boundaries."""
        print(wrap_text(text, self.width()))

    def loop(self) -> int:
        self._setup_readline()
        path = models.resolve(self.session.model)
        print(f"loading {path.name} ({human_bytes(path.stat().st_size)})…", end="", flush=True)
        engine = self.session.engine()
        print("\r\033[K", end="")  # replace the loading line with the banner
        where = f"conversation {self.session.id}" if self.session.saved else "new conversation"
        self.say(f"belle chat · {models.display_name(path)} ({engine.template.name} template, n_ctx {engine.n_ctx}) · "
                 f"{where}. /help for commands, /bye to quit.")
        self._print_branch(last=4)
        while True:
            try:
                line = self._read()
            except EOFError:
                print()
                return 0
            except KeyboardInterrupt:
                print("\n(Ctrl+C: use /bye or Ctrl+D to quit)")
                continue
            if line is None or not line.strip():
                continue
            if line.strip().startswith("/"):
                name, _, rest = line.strip()[1:].partition(" ")
                if name in ("bye", "exit", "quit"):
                    return 0
                handler = self.commands.get(name)
                if handler is None:
                    print(f"unknown command /{name}; /help lists them")
                    continue
                try:
                    handler(rest.strip())
                except BelleError as err:
                    self.say(f"error: {err}")
                continue
            try:
                self._stream(lambda cancel: self.session.send(line, cancel))
            except BelleError as err:
                self.say(f"error: {err}")

    def _read(self) -> str | None:
        line = input(">>> ")
        if line.strip() != '"""':
            return line
        lines = []
        while True:
            more = input("... ")
            if more.strip() == '"""':
                return "\n".join(lines)
            lines.append(more)

    def _setup_readline(self) -> None:
        try:
            import readline
        except ImportError:  # Windows without pyreadline: plain input() still works
            return
        import atexit

        history = paths.history_path()
        paths.ensure(history.parent)
        try:
            readline.read_history_file(history)
        except OSError:
            pass
        readline.set_history_length(2000)
        atexit.register(lambda: readline.write_history_file(history))

    def _stream(self, start, continuing: bool = False) -> None:
        """Run a turn, printing its text as it comes (after "…" when it continues an answer)."""
        cancel = threading.Event()
        turn = start(cancel)
        if turn.dropped:
            self.say(f"[{len(turn.dropped)} older messages left out to fit the {self.session.settings.n_ctx}-token "
                     "context; /set n_ctx N to keep more]")
        wrap = StreamWrap(self.width(), lambda text: print(text, end="", flush=True))
        if continuing:
            wrap.write("…")
        with _ctrl_c_cancels(cancel):
            try:
                message = turn.run(wrap.write)
            finally:
                wrap.flush()
                print()
        self.last_stats = turn.stats
        if turn.stats.get("restored_tokens"):
            print(resumed_line(turn.stats))
        reason = turn.stats.get("stop_reason")
        if message is None:
            print("[stopped before the first word; /regen answers again]" if reason == "cancelled"
                  else "[no answer]")
            return
        if reason == "cancelled":
            print("[stopped; /continue goes on]")
        elif reason in ("length", "context"):
            print(f"[cut off: {'max_tokens reached; /continue goes on' if reason == 'length' else 'context full'}]")
        siblings = self.session.store.siblings(message)
        if len(siblings) > 1:
            print(f"[answer {len(siblings)}/{len(siblings)}]")

    def _print_branch(self, last: int | None = None) -> None:
        path = self.session.path()
        for m in path[-last:] if last else path:
            mark = "" if m.complete else " (incomplete)"
            who = ">>> " if m.role == "user" else ""
            # replies stopped before their first word were once saved empty
            self.say(f"{who}{m.content or '(no answer)'}{mark}")

    # commands

    def cmd_help(self, _):
        print(HELP)

    def cmd_new(self, _):
        old = self.session
        self.session = ChatSession.new(old.store, old.engines, old.model, old.template, old.system_prompt,
                                       old.settings)
        self.last_stats = None
        print("new conversation (saved when you send its first message)")

    def cmd_list(self, arg):
        if arg and not (arg.isdigit() and int(arg) > 0):
            raise BelleError(f"/list takes a number of conversations, got {arg!r}")
        limit = int(arg) if arg else 20
        conversations = self.session.store.list_conversations(limit=limit)
        if not conversations:
            print("no conversations yet")
        for c in conversations:
            when = datetime.fromtimestamp(c.updated_at).strftime("%Y-%m-%d %H:%M")
            mark = "*" if c.id == self.session.id else " "
            print(f"{mark}{c.id:>5}  {when}  {'📌 ' if c.pinned else ''}{c.title or '(untitled)'}")

    def _conversation_id(self, command: str, arg: str) -> int:
        if not arg.isdigit():
            raise BelleError(f"/{command} needs a conversation id (see /list), got {arg!r}")
        return self.session.store.get_conversation(int(arg)).id  # raises for an unknown id

    def cmd_open(self, arg):
        conv_id = self._conversation_id("open", arg)
        self.session = ChatSession.open(self.session.store, self.session.engines, conv_id)
        self.last_stats = None
        self.say(f"conversation {self.session.id}: {self.session.conversation.title or '(untitled)'}")
        self._print_branch()

    def cmd_delete(self, arg):
        if not arg and not self.session.saved:
            raise BelleError("this conversation is not saved yet; /delete ID deletes another one")
        conv_id = self._conversation_id("delete", arg) if arg else self.session.id
        title = self.session.store.get_conversation(conv_id).title or "(untitled)"
        self.session.store.delete_conversation(conv_id)
        self.say(f"deleted conversation {conv_id}: {title} (/restore {conv_id} brings it back)")
        if conv_id == self.session.id:
            self.cmd_new("")

    def cmd_restore(self, arg):
        conv_id = self._conversation_id("restore", arg)
        self.session.store.restore_conversation(conv_id)
        print(f"restored conversation {conv_id}; /open {conv_id} to continue it")

    def cmd_search(self, arg):
        if not arg:
            raise BelleError("/search needs some text")
        hits = self.session.store.search(arg)
        if not hits:
            print(f"no conversation contains {arg!r}")
        by_conversation: dict[int, list] = {}
        for h in hits:
            by_conversation.setdefault(h.conversation_id, []).append(h)
        for cid, group in by_conversation.items():
            more = f" (+{len(group) - 1} more)" if len(group) > 1 else ""
            self.say(f"{cid:>5}  {group[0].title or '(untitled)'}: {' '.join(group[0].snippet.split())}{more}")

    def cmd_system(self, arg):
        if arg:
            self.session.set_system_prompt(arg)
            print("system prompt set")
        else:
            print(self.session.conversation.system_prompt or "(no system prompt)")

    def cmd_set(self, arg):
        name, _, value = arg.partition(" ")
        value = value.strip()
        if not name or not value:
            raise BelleError("/set needs a parameter and a value, e.g. /set temperature 0.2")
        if name == "template":
            self.session.set_template(value)
        elif name == "model":
            self.session.set_model(value)
        else:
            self.session.set_param(name, value)
        print(f"{name} = {value}")
        if name == "n_ctx":
            trained = read_model_info(models.resolve(self.session.model)).n_ctx_train
            if trained and int(value) > trained:
                self.say(f"warning: the model was trained on {trained} tokens of context; past that its "
                         "answers usually fall apart")

    def cmd_show(self, _):
        engine = self.session.engine()
        s = self.session.settings
        used, n_ctx = self.session.context_usage()
        run_only = f" (this run only: {', '.join(sorted(self.session.overrides))})" if self.session.overrides else ""
        print(f"model:    {models.display_name(engine.info.path)} ({engine.info.path}, "
              f"{human_bytes(engine.info.file_size)})")
        print(f"template: {engine.template.name} (setting: {self.session.template})")
        self.say(f"system:   {self.session.system_prompt or '(none)'}")
        print("sampling: " + ", ".join(f"{k}={v}" for k, v in vars(s.sampling).items()))
        print(f"context:  {used}/{n_ctx} tokens used, overflow={s.overflow}")
        print(f"conversation: {self.session.id if self.session.saved else 'new (not saved yet)'}{run_only}")

    def cmd_regen(self, _):
        self._stream(lambda cancel: self.session.regenerate(cancel))

    def cmd_continue(self, _):
        self._stream(lambda cancel: self.session.continue_reply(cancel), continuing=True)

    def cmd_undo(self, _):
        removed = self.session.undo()
        self.last_stats = None  # they belonged to the answer just removed
        print(f"removed {len(removed)} message(s)" if removed else "nothing to undo")

    def cmd_stats(self, _):
        if not self.last_stats:
            print("no answer yet")
            return
        s = self.last_stats
        new = s["prompt_tokens"] - s["cached_tokens"]
        prefill = (f"prefill {s['prefill_tok_s']:.1f} tok/s" if s["prefill_tok_s"] else
                   f"prefill: {new} new token{'s' if new != 1 else ''}, the rest cached")
        restored = f", {s['restored_tokens']} from the saved state" if s.get("restored_tokens") else ""
        self.say(f"prompt {s['prompt_tokens']} tokens ({s['cached_tokens']} cached{restored}) · "
                 f"{s['generated_tokens']} generated · "
                 f"first token {s['ttft_s']:.2f} s · {prefill} · decode {s['decode_tok_s']:.1f} tok/s · "
                 f"stop: {s['stop_reason']}")

    def cmd_export(self, arg):
        if not arg:
            raise BelleError("/export needs a file name ending in .md or .json")
        if arg.endswith(".json"):
            text = json.dumps(to_json(self.session.store, self.session.id), ensure_ascii=False, indent=2)
        elif arg.endswith((".md", ".markdown")):
            text = to_markdown(self.session.store, self.session.id)
        else:
            raise BelleError(f"/export {arg}: the file name must end in .md or .json")
        try:
            with open(arg, "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as err:
            raise BelleError(f"{arg}: cannot write ({err.strerror})") from None
        print(f"saved {arg}")
