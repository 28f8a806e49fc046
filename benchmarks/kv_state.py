"""Time to first token when a long conversation is reopened, with its saved KV state and without
(the whole conversation re-read), and how big the saved states are (issue 13).

For each model and conversation size it builds a conversation of alternating user / assistant
messages (English and Chinese) in a fresh BELLE_HOME's store, sends one message in a process of
its own (this reads the whole conversation and, with states on, saves its state; the script waits
for the save), then measures each reopening in a FRESH process, so nothing is warm in memory but
the OS's file cache: open the conversation, load the model (not timed), send a short question
(temperature 0, max_tokens 8), read the reply's stats, and take the question back out (/undo) so
the next round reopens the same conversation; before each round with states on, the state files
are put back as the first reply left them. "re-read" is the same conversation in a copy of that
BELLE_HOME with `kv_state_budget_mb` 0 (states off); the two alternate, round by round. States are
measured with `kv_cache_type` f16 (the baseline's cache type) at every size, and q8_0 (a
conversation prepared on its own, whose first reply reads it all once more) at the largest size
unless --all-kv-sizes: a state's size grows linearly with its tokens.

    .venv/bin/python benchmarks/kv_state.py [--models small|7b|both] [--sizes 500,1000,2000]
        [--kv-types f16,q8_0] [--rounds 3] [--rounds-7b 1] [--n-ctx 4096] [--threads N]
    .venv/bin/python benchmarks/kv_state.py --report-only   # the tables again, from the last run's JSON

"small" is the default model (`models.resolve(None)` with BELLE_MODELS_DIR at .cache/test-models,
as the tests do: SmolLM2-135M-Instruct Q4_1); "7b" is the LLaMA-7B-shaped Q4_0 that
benchmarks/memory_7b.py builds once into .cache/ (~3.8 GB, about a minute). Threads: the engine's
default. TTFT is the reply's `ttft_s` (from the reply's start to its first token; the model's load
is not in it); "wall" adds what `ChatSession.send` did before the reply started and the store
writes after it, as measured around the turn. Target: TTFT with the state <= 0.2 x TTFT
re-reading, at 2,000 tokens, on both models. The full run takes about 15 minutes on an idle
2-core machine, almost all of it the 7B model reading conversations (58 minutes with --threads 1
at a load average of 3-6 from other test runs, the 7B reading ~3.4 tok/s); figures are written to
bench-results/kv_state.json after every size, so an interrupted run keeps what it measured. Sizes
run largest first. Other work on the machine slows llama.cpp's threads a lot (they wait for each
other at every matrix): the load average is printed with every line, and every round's figure. On
a busy machine pass --threads 1: on the 2-core machine at a load average of ~6 (other test runs),
2 threads read a prompt at a quarter of 1 thread's speed (12-14 vs 29-48 tok/s on the default model),
and the default-threads run read 2,000 tokens of the default model in 260 s instead of ~12 s idle.
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_MODELS = ROOT / ".cache" / "test-models"
TARGET = 0.2
ON_BUDGET_MB = 16384  # states on: room for a 7B f16 state of 2,000 tokens (~1 GB) and more
PREPARE_QUESTION = "谢谢！Thanks, that helps. 最后一个问题：what should I read next about this?"
QUESTION = "我们刚才聊到哪儿了？Remind me in one sentence where we were."
GREEDY = {"temperature": 0.0, "max_tokens": 8, "seed": 0}

# Natural text to fill conversations with: questions and answer sentences, English and Chinese.
QUESTIONS = [
    "How do I keep sourdough starter alive when I travel for two weeks?",
    "我下个月去杭州出差，有什么值得顺路看看的地方？",
    "Can you explain why the sky looks red at sunset?",
    "帮我想想，周末带父母去郊区爬山要准备些什么？",
    "What is the difference between a loan with a fixed rate and one with a floating rate?",
    "孩子学钢琴总是坐不住，你有什么建议？",
    "Why does my bicycle chain keep slipping on the smallest gear?",
    "宋朝的科举考试和唐朝相比有哪些变化？",
    "How should I water tomato plants during a very hot summer?",
    "我想开始跑步，但是膝盖有点不舒服，应该怎么循序渐进？",
]
ANSWERS = [
    "A good first step is to look at what changed recently, because most problems start there.",
    "Keep it simple at the beginning and add one thing at a time, so you can see what helps.",
    "Many people find that writing down a short plan the evening before makes the day calmer.",
    "If the weather turns, an extra layer and a flask of hot tea make a big difference.",
    "It is worth asking someone who has done it before; a ten-minute talk can save a week.",
    "The reason is mostly physics: light with shorter wavelengths is scattered more on its way.",
    "Check the small parts first, since a loose screw or a worn spring is the usual culprit.",
    "Try it for two weeks and then decide, because the first days are always the hardest.",
    "首先要弄清楚自己真正想要的是什么，再决定花多少时间和钱。",
    "可以先从简单的开始，每次只改变一件事，这样更容易看出效果。",
    "天气变化快的时候，多带一件外套和一壶热水总是没错的。",
    "很多人发现，前一天晚上把计划写下来，第二天会轻松很多。",
    "不妨问问有经验的朋友，十分钟的交流可能省下一个星期的摸索。",
    "历史上的制度变化往往是一点一点发生的，很少是一夜之间完成的。",
    "如果出现疼痛，就应该先休息几天，必要时去看医生。",
    "坚持两个星期再做判断，因为刚开始的几天总是最难的。",
]


def natural_messages(seed: int = 13):
    """An endless, reproducible stream of (user, assistant) message pairs."""
    rng = random.Random(seed)
    while True:
        yield rng.choice(QUESTIONS), " ".join(rng.sample(ANSWERS, rng.randint(3, 6)))


# ---------------------------------------------------------------- workers (one process each)


def _flush_states() -> bool:
    """Wait for the background state saves to finish. False: the app has no saved states yet."""
    try:
        from belle.app import kv_state
    except ImportError:
        return False
    for name in ("flush", "wait", "wait_for_saves"):
        if callable(getattr(kv_state, name, None)):
            getattr(kv_state, name)()
            return True
    return False


class _StateLog:
    """kv_state's own timing lines ("restored N tokens (M usable) in S s", "saved N tokens, B bytes
    in S s"), kept instead of printed."""

    def __init__(self):
        import logging
        import re

        self.times = {}

        class Handler(logging.Handler):
            def emit(handler, record):
                found = re.search(r"(restored|saved) .* in ([0-9.]+) s", record.getMessage())
                if found:
                    self.times[found[1] + "_s"] = float(found[2])

        logger = logging.getLogger("belle.app.kv_state")
        logger.setLevel(logging.INFO)
        logger.propagate = False
        logger.addHandler(Handler())


def _open(model: str | None, n_ctx: int, threads: int | None):
    from belle.app import paths
    from belle.app.chat_store import ChatStore
    from belle.app.session import EngineCache

    store = ChatStore(paths.store_path())
    engines = EngineCache(n_threads=threads)
    engine = engines.get(model, n_ctx, "auto")  # load now: the model's load is not part of TTFT
    return store, engines, engine


def _send(session, text: str) -> dict:
    t0 = time.perf_counter()
    turn = session.send(text)
    for _ in turn:
        pass
    wall = time.perf_counter() - t0
    stats = turn.stats
    # Before the reply's clock started (send, fit, tokenizing) and after it stopped (the store).
    stats["wall_ttft_s"] = stats["ttft_s"] + max(0.0, wall - stats["total_s"])
    return stats


def worker_prepare(model: str | None, size: int, n_ctx: int, threads: int | None) -> dict:
    """Build a conversation of about `size` prompt tokens, then send one message (read it all)."""
    from belle.app.engine import Sampling
    from belle.app.session import ChatSession, ConversationSettings
    from belle.app.templates import ChatMessage

    state_log = _StateLog()
    store, engines, engine = _open(model, n_ctx, threads)
    settings = ConversationSettings(sampling=Sampling(**GREEDY), n_ctx=n_ctx)
    conv = store.create_conversation("kv_state benchmark", model, "auto", "", settings.as_dict())
    history, parent = [], None
    # Leave room for the two questions and the short reply that come after the built history.
    room = size - 2 * engine.count_tokens(QUESTION) - 20
    for user, assistant in natural_messages():
        if history and len(engine.prompt_tokens(history + [ChatMessage("user", user)])) > room:
            break
        for role, text in (("user", user), ("assistant", assistant)):
            parent = store.add_message(conv.id, parent, role, text).id
            history.append(ChatMessage(role, text))
    session = ChatSession.open(store, engines, conv.id)
    stats = _send(session, PREPARE_QUESTION)
    t = time.perf_counter()
    stats["states_module"] = _flush_states()
    stats["flush_s"] = time.perf_counter() - t
    stats["state_write_s"] = state_log.times.get("saved_s")
    stats["conversation_id"] = conv.id
    stats["messages"] = len(history) + 2
    engines.close()
    store.close()
    return stats


def worker_measure(model: str | None, conversation_id: int, n_ctx: int, threads: int | None) -> dict:
    """Reopen the conversation in this fresh process and ask a short question; then take the
    question and its reply back out, so the next round reopens the same conversation."""
    from belle.app.session import ChatSession

    state_log = _StateLog()
    store, engines, _ = _open(model, n_ctx, threads)
    session = ChatSession.open(store, engines, conversation_id)
    stats = _send(session, QUESTION)
    stats["state_load_s"] = state_log.times.get("restored_s")  # llama.cpp taking the state in (file read not included)
    _flush_states()  # the save this reply started: let it finish before the process ends
    session.undo()
    engines.close()
    store.close()
    return stats


# ---------------------------------------------------------------- the driver


def _write_config(home: Path, budget_mb: int, kv_type: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.json").write_text(json.dumps({"kv_state_budget_mb": budget_mb, "kv_cache_type": kv_type}))


def _states_bytes(home: Path) -> int:
    """Bytes of the saved states in BELLE_HOME's states folder."""
    return sum(p.stat().st_size for p in (home / "states").rglob("*") if p.is_file())


def _reset_states(home: Path) -> None:
    """Put back the states as the first reply left them: a later round must not reopen from the
    state of the previous round's question, which would leave only ~1 token to read."""
    shutil.rmtree(home / "states", ignore_errors=True)
    shutil.copytree(home / "states.saved", home / "states")


def _run_worker(kind: str, home: Path, args: list, timeout: float = 1200) -> dict:
    env = {**os.environ, "BELLE_HOME": str(home), "BELLE_MODELS_DIR": str(TEST_MODELS)}
    env.pop("BELLE_DEBUG", None)
    cmd = [sys.executable, __file__, "--worker", kind, json.dumps(args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(f"{kind} worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


class Log:
    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.t0:5.0f} s, load {os.getloadavg()[0]:4.1f}] {text}", flush=True)


def _median(runs: list[dict]) -> dict:
    """The run with the median TTFT (an upper median for an even count), and every run's TTFT."""
    runs = sorted(runs, key=lambda r: r["ttft_s"])
    out = dict(runs[len(runs) // 2])
    out["ttft_runs"] = [round(r["ttft_s"], 3) for r in runs]
    out["wall_ttft_s"] = sorted(r["wall_ttft_s"] for r in runs)[len(runs) // 2]
    return out


def run_size(log: Log, label: str, model: str | None, size: int, kv_types: list[str], rounds: int, args,
             work: Path) -> dict:
    row = {"model": label, "size": size}
    work_for = work / f"{label}-{size}"
    for kv in kv_types:
        home = work_for / f"on-{kv}"
        _write_config(home, ON_BUDGET_MB, kv)
        log(f"{label} {size}: building the conversation, first reply ({kv} KV, states on) ...")
        prep = _run_worker("prepare", home, [model, size, args.n_ctx, args.threads])
        state_tokens = prep["prompt_tokens"] + prep["generated_tokens"]
        state_bytes = _states_bytes(home)
        if (home / "states").exists():
            shutil.copytree(home / "states", home / "states.saved")
        log(f"{label} {size}: read {prep['prompt_tokens']} tokens in {prep['ttft_s']:.1f} s; "
            f"state {state_bytes / 1e6:.1f} MB for {state_tokens} tokens (saved in {prep['flush_s']:.1f} s more)")
        off = work_for / "off"
        if kv == kv_types[0]:
            off.mkdir(parents=True)
            for name in ("belle.db", "belle.db-wal", "belle.db-shm"):
                if (home / name).exists():
                    shutil.copy2(home / name, off / name)
            _write_config(off, 0, kv)
        on_runs, off_runs = [], []
        for i in range(rounds):
            n = f" (round {i + 1}/{rounds})" if rounds > 1 else ""
            if kv == kv_types[0]:  # alternate the two, so a busy spell on the machine hits both
                log(f"{label} {size}: reopening with states off (re-read, {kv} KV){n} ...")
                r = _run_worker("measure", off, [model, prep["conversation_id"], args.n_ctx, args.threads])
                off_runs.append(r)
                log(f"{label} {size}: re-read {r['prompt_tokens']} tokens: TTFT {r['ttft_s']:.2f} s "
                    f"(wall {r['wall_ttft_s']:.2f} s), restored {r.get('restored_tokens', 'n/a')}")
            if (home / "states.saved").exists():
                _reset_states(home)
            log(f"{label} {size}: reopening with the saved state ({kv} KV){n} ...")
            m = _run_worker("measure", home, [model, prep["conversation_id"], args.n_ctx, args.threads])
            on_runs.append(m)
            log(f"{label} {size}: with state: TTFT {m['ttft_s']:.2f} s (wall {m['wall_ttft_s']:.2f} s), "
                f"restored {m.get('restored_tokens', 'n/a')} of {m['prompt_tokens']} prompt tokens")
        if off_runs:
            row["reread"] = {**_median(off_runs), "kv": kv}
        row[kv] = {**_median(on_runs), "state_bytes": state_bytes, "state_tokens": state_tokens,
                   "states_module": prep["states_module"], "first_read_s": prep["ttft_s"]}
    if not args.keep:
        shutil.rmtree(work_for, ignore_errors=True)
    return row


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _restored_ok(m: dict) -> bool:
    restored = m.get("restored_tokens")
    return restored is not None and restored >= 0.9 * m["state_tokens"] - 16


def report(rows: list[dict], kv_types: list[str], args) -> bool:
    print()
    print(f"n_ctx {args.n_ctx}, threads {args.threads or 'engine default'}, max_tokens 8, temperature 0; TTFT from "
          f"the reply's start, median of the rounds (wall: from send()); ratio: state TTFT / re-read TTFT")
    head = f"{'model':<7}{'prompt':>7}{'rounds':>7}{'re-read s':>11}"
    for kv in kv_types:
        head += f"{kv + ' state s':>14}{'restored':>10}{'ratio':>7}{'wall ratio':>11}"
    print(head)
    warnings = []
    for row in rows:
        r = row["reread"]
        line = f"{row['model']:<7}{r['prompt_tokens']:>7}{len(r['ttft_runs']):>7}{r['ttft_s']:>11.2f}"
        for kv in kv_types:
            m = row.get(kv)
            if m is None:
                line += f"{'-':>14}{'-':>10}{'-':>7}{'-':>11}"
                continue
            restored = m.get("restored_tokens")
            line += (f"{m['ttft_s']:>14.2f}{'n/a' if restored is None else restored:>10}"
                     f"{m['ttft_s'] / r['ttft_s']:>7.3f}{m['wall_ttft_s'] / r['wall_ttft_s']:>11.3f}")
            if not _restored_ok(m):
                warnings.append(f"WARNING: {row['model']} {row['size']} {kv}: restored_tokens {restored} is not close "
                                f"to the {m['state_tokens']} tokens saved: the state was not used, so this TTFT is "
                                "a re-read and its ratio means nothing")
            if r.get("restored_tokens"):
                warnings.append(f"WARNING: {row['model']} {row['size']}: the states-off run restored "
                                f"{r['restored_tokens']} tokens: the baseline is not a re-read")
        print(line)
    print()
    print("every round's TTFT (s), sorted:")
    for row in rows:
        for key in ("reread", *kv_types):
            if key in row:
                print(f"  {row['model']:<6}{row['size']:>5} {key:<7}{row[key]['ttft_runs']}")
    print()
    print(f"{'model':<7}{'KV':>6}{'tokens':>8}{'state MB':>10}{'MB per 1,000 tokens':>21}{'first read s':>14}"
          f"{'state load s':>14}")
    for row in rows:
        for kv in kv_types:
            m = row.get(kv)
            if m is not None:
                print(f"{row['model']:<7}{kv:>6}{m['state_tokens']:>8}{m['state_bytes'] / 1e6:>10.1f}"
                      f"{m['state_bytes'] / 1e6 / m['state_tokens'] * 1000:>21.1f}{m['first_read_s']:>14.1f}"
                      f"{_fmt(m.get('state_load_s')):>14}")
    print("(first read: the reply that built the state, a full read of the conversation with that KV type; state load:\n"
          " llama.cpp taking the saved state in, in the median round, as kv_state logs it, inside the state TTFT)")
    for w in warnings:
        print(w)
    print()
    met_all = True
    for label in dict.fromkeys(row["model"] for row in rows):
        mine = [row for row in rows if row["model"] == label]
        big = max(mine, key=lambda row: row["size"])
        kv = kv_types[0]
        m, r = big[kv], big["reread"]
        ratio = max(m["ttft_s"] / r["ttft_s"], m["wall_ttft_s"] / r["wall_ttft_s"])
        ok = ratio <= TARGET and _restored_ok(m)
        met_all &= ok and big["size"] >= 2000
        where = f"{r['prompt_tokens']} tokens" + ("" if big["size"] >= 2000 else " (the target is at 2,000: not run)")
        print(f"target {label}: {kv} state TTFT / re-read TTFT at {where} = {ratio:.3f} "
              f"(the larger of the stat and wall ratios) <= {TARGET}: {'MET' if ok else 'NOT MET'}")
    print(f"target (<= {TARGET}x at 2,000 tokens on both models): "
          f"{'MET' if met_all and len({row['model'] for row in rows}) == 2 else 'NOT MET' if not met_all else 'MET for the models run'}")
    return met_all


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", choices=("small", "7b", "both"), default="both")
    ap.add_argument("--sizes", default="500,1000,2000", help="conversation sizes in prompt tokens, about")
    ap.add_argument("--kv-types", default="f16,q8_0", help="KV cache types with states on; the first is the baseline's")
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=None, help="default: the engine's default")
    ap.add_argument("--rounds", type=int, default=3, help="fresh-process measurements per setting, small model")
    ap.add_argument("--rounds-7b", type=int, default=1, help="the same for the 7B (a re-read of 2,000 takes minutes)")
    ap.add_argument("--all-kv-sizes", action="store_true",
                    help="measure the KV types after the first at every size (default: at the largest only)")
    ap.add_argument("--keep", action="store_true", help="keep the BELLE_HOME folders (printed)")
    ap.add_argument("--report-only", action="store_true", help="print the tables from bench-results/kv_state.json")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, worker_args = args.worker[0], json.loads(args.worker[1])
        stats = (worker_prepare if kind == "prepare" else worker_measure)(*worker_args)
        print(json.dumps(stats))
        return 0

    out = ROOT / "bench-results" / "kv_state.json"
    sizes = sorted((int(s) for s in args.sizes.split(",")), reverse=True)  # the target's size first
    kv_types = [k.strip() for k in args.kv_types.split(",") if k.strip()]
    if args.report_only:
        saved = json.loads(out.read_text())
        args.n_ctx, args.threads = saved["n_ctx"], saved["threads"]
        report(_in_order(saved["rows"]), saved.get("kv_types", ["f16", "q8_0"]), args)
        return 0
    targets = []
    if args.models in ("small", "both"):
        os.environ["BELLE_MODELS_DIR"] = str(TEST_MODELS)
        from belle.app import models

        targets.append(("small", str(models.resolve(None))))
    if args.models in ("7b", "both"):
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from memory_7b import build

        t = time.perf_counter()
        path = build(TEST_MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf")
        print(f"7B-shaped model: {path} ({time.perf_counter() - t:.0f} s to build or find)", flush=True)
        targets.append(("7b", str(path)))
    work = Path(tempfile.mkdtemp(prefix="belle-kv-state-"))
    print(f"models: {', '.join(f'{label} = {Path(p).name}' for label, p in targets)}; sizes {sizes}; "
          f"KV types with states {kv_types}; BELLE_HOMEs under {work}; load average {os.getloadavg()[0]:.2f}",
          flush=True)
    log = Log()
    rows = []
    try:
        for label, path in targets:
            rounds = args.rounds_7b if label == "7b" else args.rounds
            for size in sizes:
                types = kv_types if args.all_kv_sizes or size == max(sizes) else kv_types[:1]
                rows.append(run_size(log, label, path, size, types, rounds, args, work))
                out.parent.mkdir(exist_ok=True)
                out.write_text(json.dumps({"n_ctx": args.n_ctx, "threads": args.threads, "kv_types": kv_types,
                                           "rows": rows}, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (other work on the machine slows both columns)")
    report(_in_order(rows), kv_types, args)
    print(f"wrote {out}")
    return 0


def _in_order(rows: list[dict]) -> list[dict]:
    models = list(dict.fromkeys(row["model"] for row in rows))
    return sorted(rows, key=lambda row: (models.index(row["model"]), row["size"]))


if __name__ == "__main__":
    sys.exit(main())
