"""The `belle` command: a thin dispatcher over one CLI module per command group.

Each module listed in COMMANDS exposes `add_parser(subparsers)`, which registers its
subcommand and sets `func`. Modules import their heavy dependencies inside `func`, so
`belle chat` never loads torch.
"""

import argparse
import importlib
import logging
import os
import sys

from .errors import BelleError

# subcommand -> module; the order is the order of `belle --help`.
COMMANDS = {
    "chat": "belle.app.cli_chat",
    "ui": "belle.app.cli_ui",
    "models": "belle.app.cli_models",
    "bench": "belle.app.cli_bench",
    "serve": "belle.app.cli_serve",
    "convert": "belle.quantize.cli_convert",
    "quantize": "belle.quantize.cli_quantize",
    "eval": "belle.quantize.cli_eval",
    "train": "belle.training.cli_train",
    "build": "belle.pipeline.cli_build",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="belle", description="Private, offline chat assistant (中文 / English).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (and llama.cpp's own log)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if not err.name or not err.name.startswith("belle."):
                raise
            continue  # a command group that is not written yet
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except BelleError as err:
        if os.environ.get("BELLE_DEBUG"):
            raise
        print(f"belle: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        # Last resort for a file operation that no module turned into a BelleError (those name the
        # file and say what to do); without a file name it is a bug, and the traceback is wanted.
        if os.environ.get("BELLE_DEBUG") or not err.filename:
            raise
        reason = (err.strerror or str(err)).lower()
        print(f"belle: error: {err.filename}: {reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
