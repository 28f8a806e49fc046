"""`belle convert HF_DIR -o model.gguf --outtype f32|f16|bf16`: argument parsing only.

A GPTQ checkpoint (quantization_config with quant_method "gptq", or quantize_config.json) is
recognised and imported by gptq_import: its quantized linears become Q4_0 / Q4_1 / Q8_0 blocks.
"""

from __future__ import annotations

from pathlib import Path

from .constants import CHAT_TEMPLATES, OUTTYPES


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("convert", help="convert a Hugging Face model directory to GGUF",
                              description="Convert a Hugging Face model (llama, qwen2, bloom) to a GGUF file. "
                                          "A 4- or 8-bit GPTQ checkpoint is imported as Q4_0 / Q4_1 / Q8_0, "
                                          "its codes kept where GGUF blocks can hold them.")
    p.add_argument("model_dir", type=Path, metavar="HF_DIR", help="directory with config.json, weights and tokenizer")
    p.add_argument("-o", "--output", type=Path, required=True, help="output .gguf file")
    p.add_argument("--outtype", choices=list(OUTTYPES), default="f16",
                   help="tensor type of 2-D weights (default f16; for a GPTQ checkpoint, of those GPTQ left in float)")
    p.add_argument("--chat-template", metavar="NAME|FILE",
                   help=f"replace the model's chat template: {', '.join(CHAT_TEMPLATES)} or a Jinja file")
    p.add_argument("--pre", metavar="NAME", help="llama.cpp pre-tokenizer name, if it cannot be detected")
    p.add_argument("--force", action="store_true", help="overwrite the output file")
    p.set_defaults(func=run)


def run(args) -> int:
    from tqdm import tqdm

    from .convert import convert
    from .gptq_import import import_gptq, read_gptq_config

    bars: dict[str, object] = {}

    def bar_for(desc: str):
        def progress(done: int, total: int, name: str) -> None:
            if desc not in bars:  # created only once checks passed
                bars[desc] = tqdm(total=total, unit="tensor", desc=desc, leave=False)
            bar = bars[desc]
            bar.set_postfix_str(name, refresh=False)
            bar.update(done - bar.n)
            if done >= total:
                bar.close()  # so the next pass's bar replaces it on the terminal
        return progress

    report = None
    try:
        if read_gptq_config(args.model_dir) is not None:
            report = import_gptq(args.model_dir, args.output, args.outtype, force=args.force,
                                 chat_template=args.chat_template, pre=args.pre,
                                 import_progress=bar_for("import"), progress=bar_for("convert"))
            out = report.path
        else:
            out = convert(args.model_dir, args.output, args.outtype, force=args.force,
                          chat_template=args.chat_template, pre=args.pre, progress=bar_for("convert"))
    finally:
        for bar in bars.values():
            bar.close()
    kind = args.outtype
    if report is not None:
        print(report.summary())
        kind = f"GPTQ import, float tensors {args.outtype}"
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {kind})")
    return 0
