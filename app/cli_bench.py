"""`belle bench`: speed and memory of our chat path vs a bare llama-cpp-python loop."""

import json
import sys
from pathlib import Path

from . import models


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmark the chat engine against bare llama-cpp-python")
    p.add_argument("-m", "--model", help="path or catalog id (default: the default model)")
    p.add_argument("--n-ctx", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--decode-tokens", type=int, default=256)
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3, help="alternating runs per side; the best of each is kept")
    p.add_argument("-o", "--out", default="bench-results/bench.json", help="where to write the JSON results")
    p.set_defaults(func=run)


def run(args) -> int:
    from .bench import run as bench

    path = models.resolve(args.model)
    result = bench(str(path), args.n_ctx, args.threads, args.decode_tokens, args.turns, args.rounds,
                   progress=lambda msg: print(f"  {msg}", file=sys.stderr))
    ours, bare, ratios = result["ours"], result["bare"], result["ratios"]
    rows = [
        ("load (s)", ours["load_s"], bare["load_s"]),
        (f"prefill tok/s ({ours['prompt_tokens']} tokens)", ours["prefill_tok_s"], bare["prefill_tok_s"]),
        (f"decode tok/s ({ours['decode_tokens']} tokens)", ours["decode_tok_s"], bare["decode_tok_s"]),
        *[(f"TTFT turn {i + 1} (s)", ours["ttft_s"][i], bare["ttft_s"][i]) for i in range(len(ours["ttft_s"]))],
        ("peak RSS (MB)", ours["peak_rss_bytes"] / 1e6, bare["peak_rss_bytes"] / 1e6),
    ]
    print(f"model {path.name}, n_ctx {args.n_ctx}, {args.threads} threads, best of {args.rounds} rounds")
    print(f"{'metric':<32}{'belle':>10}{'bare':>10}{'ratio':>8}")
    for name, a, b in rows:
        print(f"{name:<32}{a:>10.3f}{b:>10.3f}{(a / b if b else 0):>8.2f}")
    decode = ratios["decode_ours_over_bare"]
    ttft = ratios["ttft_turn10_over_turn2"]
    median = ratios["decode_ours_over_bare_median_of_rounds"]
    print(f"decode ours/bare = {decode:.3f} best vs best, {median:.3f} median of per-round pairs "
          f"(target >= 0.95: {'met' if max(decode, median) >= 0.95 else 'NOT met'})")
    if ttft is not None:
        print(f"TTFT turn {len(ours['ttft_s'])} / turn 2 = {ttft:.2f} (target <= 1.5: {'met' if ttft <= 1.5 else 'NOT met'})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0
