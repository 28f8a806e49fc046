"""`belle bench`: speed and memory of our chat path vs a bare llama-cpp-python loop."""

import json
import sys
import time
from pathlib import Path

from . import models, paths
from .errors import BelleError

DECODE_TARGET = 0.95  # ours/bare decode tok/s, median of per-round pairs
TTFT_TARGET = 1.5  # TTFT of the last turn over turn 2: the KV cache must be reused as history grows


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmark the chat engine against bare llama-cpp-python")
    p.add_argument("-m", "--model", help="path or catalog id (default: the default model)")
    p.add_argument("--n-ctx", type=int, default=2048)
    p.add_argument("--threads", type=int, default=None,
                   help="threads for both sides (default: belle's own default vs the bare loop's best count)")
    p.add_argument("--decode-tokens", type=int, default=256)
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3, help="alternating runs per side; the best of each is kept")
    p.add_argument("-o", "--out", default="bench-results/bench.json", help="where to write the JSON results")
    p.set_defaults(func=run)


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


def _progress():
    """Per-step lines on stderr with steps done/total and the time so far: a run takes minutes,
    many more on a busy machine."""
    start = time.monotonic()

    def show(done: int, total: int, message: str) -> None:
        print(f"  [{done}/{total} steps, {_clock(time.monotonic() - start)}] {message}", file=sys.stderr, flush=True)

    return show


def _verdict(name: str, value: float, op: str, target: float) -> str:
    met = value >= target if op == ">=" else value <= target
    return f"verdict: {name} = {value:.3f} (target {op} {target}: {'met' if met else 'NOT met'})"


def run(args) -> int:
    from .bench import run as bench

    path = models.resolve(args.model)
    out = Path(args.out)
    paths.ensure_writable(out.parent)  # now, not after minutes of benchmarking
    result = bench(str(path), args.n_ctx, args.threads, args.decode_tokens, args.turns, args.rounds,
                   progress=_progress())
    ours, bare, ratios = result["ours"], result["bare"], result["ratios"]
    rows = [
        ("load (s)", ours["load_s"], bare["load_s"]),
        (f"prefill tok/s ({ours['prompt_tokens']} tokens)", ours["prefill_tok_s"], bare["prefill_tok_s"]),
        (f"decode tok/s ({ours['decode_tokens']} tokens)", ours["decode_tok_s"], bare["decode_tok_s"]),
        *[(f"TTFT turn {i + 1} (s)", ours["ttft_s"][i], bare["ttft_s"][i]) for i in range(len(ours["ttft_s"]))],
        ("peak RSS (MB)", ours["peak_rss_bytes"] / 1e6, bare["peak_rss_bytes"] / 1e6),
    ]
    sweep = ", ".join(f"{n}: {rate:.1f}" for n, rate in result["bare_thread_sweep"].items())
    ours_threads = "belle's defaults" if args.threads is None else "--threads"
    print(f"model {path.name}, n_ctx {args.n_ctx}, best of {args.rounds} rounds")
    print(f"threads (decode/prompt): belle {ours['threads'][0]}/{ours['threads'][1]} ({ours_threads}), "
          f"bare {bare['threads'][0]}/{bare['threads'][1]}"
          + (f" (its best in a decode sweep, tok/s by threads: {sweep})" if sweep else ""))
    print(f"{'metric':<32}{'belle':>10}{'bare':>10}{'ratio':>8}")
    for name, a, b in rows:
        print(f"{name:<32}{a:>10.3f}{b:>10.3f}{(a / b if b else 0):>8.2f}")
    # The target is judged on the median of per-round pairs alone: each pair ran back to back, so it
    # cancels drifts in machine load; best-vs-best compares runs from different moments.
    print(f"decode ours/bare, best vs best (for information): {ratios['decode_ours_over_bare']:.3f}")
    print(_verdict("decode ours/bare, median of per-round pairs", ratios["decode_ours_over_bare_median_of_rounds"],
                   ">=", DECODE_TARGET))
    ttft = ratios["ttft_turn10_over_turn2"]
    if ttft is not None:
        print(_verdict(f"TTFT turn {len(ours['ttft_s'])} / turn 2", ttft, "<=", TTFT_TARGET))
    try:
        out.write_text(json.dumps(result, indent=2))
    except OSError as err:
        raise BelleError(f"{out}: cannot write the results ({paths.os_reason(err)})") from None
    print(f"wrote {out}")
    return 0
