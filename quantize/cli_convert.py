"""`belle convert HF_DIR -o model.gguf --outtype f32|f16|bf16`: argument parsing only."""

from __future__ import annotations

from pathlib import Path

from .constants import CHAT_TEMPLATES, OUTTYPES


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("convert", help="convert a Hugging Face model directory to GGUF",
                              description="Convert a Hugging Face model (llama, qwen2, bloom) to a GGUF file.")
    p.add_argument("model_dir", type=Path, metavar="HF_DIR", help="directory with config.json, weights and tokenizer")
    p.add_argument("-o", "--output", type=Path, required=True, help="output .gguf file")
    p.add_argument("--outtype", choices=list(OUTTYPES), default="f16", help="tensor type of 2-D weights (default f16)")
    p.add_argument("--chat-template", metavar="NAME|FILE",
                   help=f"replace the model's chat template: {', '.join(CHAT_TEMPLATES)} or a Jinja file")
    p.add_argument("--pre", metavar="NAME", help="llama.cpp pre-tokenizer name, if it cannot be detected")
    p.add_argument("--force", action="store_true", help="overwrite the output file")
    p.set_defaults(func=run)


def run(args) -> int:
    from tqdm import tqdm

    from .convert import convert

    bar = None

    def progress(done: int, total: int, name: str) -> None:
        nonlocal bar
        bar = bar or tqdm(total=total, unit="tensor", desc="convert", leave=False)  # only once checks passed
        bar.set_postfix_str(name, refresh=False)
        bar.update(done - bar.n)

    try:
        out = convert(args.model_dir, args.output, args.outtype, force=args.force,
                      chat_template=args.chat_template, pre=args.pre, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {args.outtype})")
    return 0
