"""`belle chat`: the offline chat REPL, and one-shot answers for scripts (`-p`, stdin, `--json`).

Every conversation is saved in the store, the same one the UI shows.
"""

import json
import signal
import sys
import threading
from contextlib import contextmanager
from datetime import datetime

from . import models, paths
from .chat_store import ChatStore
from .errors import BelleError
from .export import to_json, to_markdown
from .gguf_info import human_bytes, read_model_info
from .memory import check_fit
from .session import ChatSession, ConversationSettings, EngineCache
from .template_data import TEMPLATE_NAMES

HELP = """\
Commands:
  /help                 this list
  /new                  start a new conversation
  /list                 recent conversations
  /open ID              continue conversation ID
  /search TEXT          find conversations containing TEXT (Chinese works)
  /system [TEXT]        show or set the system prompt
  /set PARAM VALUE      temperature, top_p, top_k, min_p, repeat_penalty, seed, max_tokens,
                        n_ctx, overflow (truncate|refuse), template (auto|gguf|belle|chatml), model
  /show                 model, template, settings and context use
  /regen                another answer to the last message (the old one is kept)
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
    p.add_argument("-c", "--continue", dest="conversation", type=int, metavar="ID", help="continue conversation ID")
    p.add_argument("-s", "--system", help="system prompt for a new conversation")
    p.add_argument("-t", "--template", choices=("auto", *TEMPLATE_NAMES), default="auto")
    p.add_argument("--n-ctx", type=int, default=None, help="context size in tokens (default 4096)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--n-gpu-layers", type=int, default=0, help="layers to offload to a GPU (needs a GPU build)")
    p.add_argument("--set", action="append", default=[], metavar="PARAM=VALUE", help="sampling setting, repeatable")
    p.add_argument("--force", action="store_true", help="load even if the model may not fit in free memory")
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
    engines = EngineCache(n_threads=args.threads, n_gpu_layers=args.n_gpu_layers)
    try:
        session = _open_session(store, engines, args)
        _check_memory(session.conversation.model, session.settings.n_ctx, args.force)
        piped = None if sys.stdin.isatty() else sys.stdin.read()
        if args.prompt is not None or piped is not None:
            text = "\n\n".join(t for t in (args.prompt, piped) if t and t.strip())
            return _one_shot(session, text, args.json)
        return Repl(session).loop()
    finally:
        engines.close()
        store.close()


def _open_session(store: ChatStore, engines: EngineCache, args) -> ChatSession:
    if args.conversation is not None:
        session = ChatSession.open(store, engines, args.conversation)
        if args.model:
            session.set_model(args.model)
    else:
        settings = ConversationSettings()
        if args.n_ctx:
            settings.n_ctx = args.n_ctx
        session = ChatSession.new(store, engines, args.model, args.template, args.system or "", settings)
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            raise BelleError(f"--set {item!r}: expected PARAM=VALUE")
        session.set_param(name.strip(), value.strip())
    return session


def _one_shot(session: ChatSession, text: str, as_json: bool) -> int:
    turn = session.send(text)
    if as_json:
        message = turn.run()
        print(json.dumps({"answer": message.content, "conversation_id": session.id, "message_id": message.id,
                          "model": message.model, "dropped_messages": [m.id for m in turn.dropped],
                          "stats": message.stats}, ensure_ascii=False, indent=2))
    else:
        turn.run(lambda piece: print(piece, end="", flush=True))
        print()
    return 0


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
            "open": self.cmd_open, "search": self.cmd_search, "system": self.cmd_system, "set": self.cmd_set,
            "show": self.cmd_show, "regen": self.cmd_regen, "undo": self.cmd_undo, "stats": self.cmd_stats,
            "export": self.cmd_export,
        }

    def loop(self) -> int:
        self._setup_readline()
        path = models.resolve(self.session.conversation.model)
        print(f"loading {path.name} ({human_bytes(path.stat().st_size)})…", end="", flush=True)
        engine = self.session.engine()
        print("\r\033[K", end="")  # replace the loading line with the banner
        print(f"belle chat · {engine.info.name} ({engine.template.name} template, n_ctx {engine.n_ctx}) · "
              f"conversation {self.session.id}. /help for commands, /bye to quit.")
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
                    print(f"error: {err}")
                continue
            try:
                self._stream(lambda cancel: self.session.send(line, cancel))
            except BelleError as err:
                print(f"error: {err}")

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

    def _stream(self, start) -> None:
        cancel = threading.Event()
        turn = start(cancel)
        if turn.dropped:
            print(f"[{len(turn.dropped)} older messages left out to fit the {self.session.settings.n_ctx}-token "
                  "context; /set n_ctx N to keep more]")
        with _ctrl_c_cancels(cancel):
            message = turn.run(lambda piece: print(piece, end="", flush=True))
        print()
        self.last_stats = message.stats
        reason = (message.stats or {}).get("stop_reason")
        if reason == "cancelled":
            print("[stopped]")
        elif reason in ("length", "context"):
            print(f"[cut off: {'max_tokens reached' if reason == 'length' else 'context full'}]")
        siblings = self.session.store.siblings(message)
        if len(siblings) > 1:
            print(f"[answer {len(siblings)}/{len(siblings)}]")

    def _print_branch(self, last: int | None = None) -> None:
        path = self.session.path()
        for m in path[-last:] if last else path:
            mark = "" if m.complete else " (incomplete)"
            who = ">>> " if m.role == "user" else ""
            print(f"{who}{m.content}{mark}")

    # commands

    def cmd_help(self, _):
        print(HELP)

    def cmd_new(self, _):
        old = self.session
        self.session = ChatSession.new(old.store, old.engines, old.conversation.model, old.conversation.template,
                                       old.conversation.system_prompt, old.settings)
        print(f"new conversation {self.session.id}")

    def cmd_list(self, _):
        for c in self.session.store.list_conversations(limit=20):
            when = datetime.fromtimestamp(c.updated_at).strftime("%Y-%m-%d %H:%M")
            mark = "*" if c.id == self.session.id else " "
            print(f"{mark}{c.id:>5}  {when}  {'📌 ' if c.pinned else ''}{c.title or '(untitled)'}")

    def cmd_open(self, arg):
        if not arg.isdigit():
            raise BelleError("/open needs a conversation id (see /list)")
        self.session = ChatSession.open(self.session.store, self.session.engines, int(arg))
        print(f"conversation {self.session.id}: {self.session.conversation.title or '(untitled)'}")
        self._print_branch()

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
            print(f"{cid:>5}  {group[0].title or '(untitled)'}: {' '.join(group[0].snippet.split())}{more}")

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

    def cmd_show(self, _):
        engine = self.session.engine()
        s = self.session.settings
        used, n_ctx = self.session.context_usage()
        print(f"model:    {engine.info.name} ({engine.info.path}, {human_bytes(engine.info.file_size)})")
        print(f"template: {engine.template.name} (setting: {self.session.conversation.template})")
        print(f"system:   {self.session.conversation.system_prompt or '(none)'}")
        print("sampling: " + ", ".join(f"{k}={v}" for k, v in vars(s.sampling).items()))
        print(f"context:  {used}/{n_ctx} tokens used, overflow={s.overflow}")
        print(f"conversation: {self.session.id}")

    def cmd_regen(self, _):
        self._stream(lambda cancel: self.session.regenerate(cancel))

    def cmd_undo(self, _):
        removed = self.session.undo()
        print(f"removed {len(removed)} message(s)" if removed else "nothing to undo")

    def cmd_stats(self, _):
        if not self.last_stats:
            print("no answer yet")
            return
        s = self.last_stats
        print(f"prompt {s['prompt_tokens']} tokens ({s['cached_tokens']} cached) · {s['generated_tokens']} generated · "
              f"first token {s['ttft_s']:.2f} s · prefill {s['prefill_tok_s']:.1f} tok/s · decode "
              f"{s['decode_tok_s']:.1f} tok/s · stop: {s['stop_reason']}")

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
