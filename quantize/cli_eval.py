"""`belle eval fidelity --ref REF.gguf CAND.gguf ... --text FILE`: argument parsing and the table."""

from __future__ import annotations

import json
from pathlib import Path

from .constants import PPL_CHUNK


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("eval", help="measure models (fidelity of quantized models to a reference)")
    sub = p.add_subparsers(dest="eval_command", metavar="WHAT", required=True)
    f = sub.add_parser("fidelity", help="perplexity, KL divergence and top-1 agreement against a reference",
                       description="Evaluate candidates against a reference GGUF on held-out text, in chunks "
                                   "as llama.cpp's perplexity tool does (second half of each chunk scored).")
    f.add_argument("--ref", type=Path, required=True, metavar="REF.gguf", help="reference model (e.g. F32 or F16)")
    f.add_argument("candidates", type=Path, nargs="+", metavar="CAND.gguf", help="quantized models to compare")
    f.add_argument("--text", type=Path, metavar="FILE",
                   help="held-out text: plain text or training data (default: the project's held-out text)")
    f.add_argument("--ctx", type=int, default=PPL_CHUNK, help=f"chunk size in tokens (default {PPL_CHUNK})")
    f.add_argument("--chunks", type=int, help="evaluate at most this many chunks")
    f.add_argument("--threads", type=int, help="CPU threads (default: all)")
    f.add_argument("--json", type=Path, default=Path("fidelity.json"), metavar="FILE",
                   help="write the results here (default fidelity.json)")
    f.set_defaults(func=run)


def run(args) -> int:
    from tqdm import tqdm

    from belle.app.errors import InputError

    from .fidelity import evaluate, format_table
    from .textdata import DEFAULT_EVAL, asset_path, load_text

    text_path = args.text or asset_path(DEFAULT_EVAL)
    for path in [args.ref, *args.candidates]:
        if not path.is_file():
            raise InputError(f"{path}: no such model file")
    if args.ctx < 16 or args.ctx % 2:
        raise InputError(f"--ctx {args.ctx}: use an even number of at least 16")
    bars: dict[str, tqdm] = {}

    def progress(model: str, done: int, total: int) -> None:
        bar = bars.get(model) or bars.setdefault(model, tqdm(total=total, desc=model[:30], unit="chunk", leave=False))
        bar.update(done - bar.n)
        if done == total:
            bar.close()

    report = evaluate(args.ref, args.candidates, load_text(text_path), n_ctx=args.ctx, max_chunks=args.chunks,
                      n_threads=args.threads, text_name=str(text_path), progress=progress)
    print(format_table(report))
    args.json.write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")
    return 0
