"""`belle train`: fine-tune on instruction data; `belle train merge`: fold a LoRA adapter into its base.

Many GPUs or processes: the same command under `accelerate launch ... -m belle.training ...`.
"""

from __future__ import annotations

from .config import METHODS, PRECISIONS

# (flag, type, help): each flag sets the TrainConfig field of the same name (dashes -> underscores)
_FLAGS = [
    ("--format", str, "data format for every file (default: detected per file): alpaca, multiturn, "
                      "conversations, messages, tsv, text"),
    ("--template", str, "chat template: belle, chatml or base (the base model's own); default: base if "
                        "the model has one, else belle"),
    ("--epochs", float, "passes over the data (default 3)"),
    ("--max-steps", int, "stop after this many optimizer steps (overrides --epochs)"),
    ("--lr", float, "learning rate (default 3e-4 for LoRA, 8e-6 for full)"),
    ("--batch-size", int, "rows per device per step (default 4)"),
    ("--grad-accum", int, "gradient accumulation steps (default 1)"),
    ("--max-length", int, "tokens per row; longer rows are cut (default 1024)"),
    ("--warmup", float, "warm-up, as a fraction of the steps (default 0.05)"),
    ("--scheduler", str, "learning-rate schedule (default cosine)"),
    ("--weight-decay", float, "AdamW weight decay (default 0)"),
    ("--seed", int, "seed for shuffling, LoRA init and dropout (default 42)"),
    ("--on-error", str, "a bad data row: fail (default) or skip (counted per reason)"),
    ("--eval-split", float, "fraction of the rows held out for eval loss (default 0)"),
    ("--eval-steps", int, "evaluate every N steps (default: at each checkpoint)"),
    ("--save-steps", int, "checkpoint every N steps (default 200)"),
    ("--save-total-limit", int, "checkpoints kept (default 3)"),
    ("--logging-steps", int, "log loss every N steps (default 10)"),
    ("--lora-r", int, "LoRA rank (default 16)"),
    ("--lora-alpha", int, "LoRA alpha (default 32)"),
    ("--lora-dropout", float, "LoRA dropout (default 0.05)"),
    ("--threads", int, "torch threads on a CPU"),
]
_SWITCHES = [
    ("--gradient-checkpointing", "recompute activations in the backward pass (less memory, ~30%% slower)"),
    ("--packing", "concatenate the rows of a batch instead of padding them"),
    ("--dedup", "drop rows that repeat an earlier row exactly"),
]


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a model on instruction data (LoRA or full)",
                       description="Fine-tune a LLaMA-family model on BELLE-style instruction data. Flags "
                                   "override the --config YAML file, which overrides the defaults.")
    p.add_argument("--base", help="the model: a Hugging Face folder or a .gguf file (dequantized)")
    p.add_argument("--data", nargs="+", metavar="FILE", help=".jsonl / .json / .tsv files")
    p.add_argument("--method", choices=METHODS, help="lora (default) or full")
    p.add_argument("-o", "--output", metavar="OUT_DIR", help="folder for checkpoints, logs and the result")
    p.add_argument("--config", metavar="YAML", help="settings file (keys as the flags, with _ for -)")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT_DIR from its last checkpoint")
    p.add_argument("--force", action="store_true", help="start over in an OUT_DIR that holds an earlier run")
    p.add_argument("--precision", choices=PRECISIONS, help="auto (default): bf16 or fp16 on a GPU, fp32 on a CPU")
    p.add_argument("--lora-targets", nargs="+", metavar="MODULE",
                   help="modules to adapt (default all-linear: every attention and MLP projection)")
    p.add_argument("--no-shuffle", dest="shuffle", action="store_const", const=False, help="keep the files' order")
    for flag, kind, text in _FLAGS:
        p.add_argument(flag, type=kind, help=text)
    for flag, text in _SWITCHES:
        p.add_argument(flag, action="store_const", const=True, help=text)
    p.set_defaults(func=run_train)

    merge_sub = p.add_subparsers(dest="train_command", metavar="merge")
    m = merge_sub.add_parser("merge", help="merge a LoRA adapter into its base, saved as an HF folder",
                             description="Merge a LoRA adapter (a training OUT_DIR or one of its checkpoints) "
                                         "into its base model; the result is ready for `belle convert`.")
    m.add_argument("adapter", metavar="ADAPTER")
    m.add_argument("-o", "--output", required=True, metavar="DIR")
    m.add_argument("--base", help="the base model, if it moved since training")
    m.add_argument("--force", action="store_true", help="overwrite DIR")
    m.set_defaults(func=run_merge)


def _flags(args) -> dict:
    from .config import FIELDS

    values = {name: getattr(args, name, None) for name in FIELDS}
    if values.get("lora_targets") == ["all-linear"]:
        values["lora_targets"] = "all-linear"
    return values


def run_train(args) -> int:
    from pathlib import Path

    from belle.app.errors import SettingsError

    from .config import merge_for_resume, read_run, resolve

    flags = _flags(args)
    if args.resume:
        if not args.output:
            raise SettingsError("--resume: give the run's folder with -o OUT_DIR")
        if args.config:
            raise SettingsError("--resume takes its settings from OUT_DIR; drop --config")
        cfg = merge_for_resume(read_run(Path(args.output)), flags)
    else:
        cfg = resolve(flags, Path(args.config) if args.config else None)

    from .train import train  # torch, transformers

    result = train(cfg, resume=args.resume, force=args.force)
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return 0
    if result.skipped:
        print(result.skipped)
    if result.truncated:
        print(f"{result.truncated} rows were longer than --max-length {cfg.max_length} and were cut")
    tps = result.tokens / result.seconds if result.seconds else 0.0
    loss = f"{result.train_loss:.4f}" if result.train_loss is not None else "n/a"
    line = f"trained {result.steps} steps on {result.rows} rows in {result.seconds:.0f} s ({tps:.0f} tokens/s); loss {loss}"
    if result.eval_loss is not None:
        line += f", eval loss {result.eval_loss:.4f}"
    print(line)
    if cfg.method == "lora":
        print(f"saved the LoRA adapter in {result.output}; next: belle train merge {result.output} -o MERGED_DIR")
    else:
        print(f"saved the model in {result.output}; next: belle convert {result.output} -o model.gguf")
    return 0


def run_merge(args) -> int:
    from pathlib import Path

    from .merge import merge

    out = merge(Path(args.adapter), Path(args.output), base=args.base, force=args.force)
    print(f"saved {out}; next: belle convert {out} -o model.f16.gguf --outtype f16")
    return 0


def main_module(argv: list[str] | None = None) -> int:
    """`python -m belle.training ...` is `belle train ...` (what `accelerate launch -m` runs)."""
    import sys

    from belle.app.cli import main

    return main(["train", *(sys.argv[1:] if argv is None else argv)])
