"""`belle quantize MODEL -o OUT.gguf --type T --method rtn|imatrix|gptq`: argument parsing only."""

from __future__ import annotations

import argparse
from pathlib import Path

from .constants import GPTQ_TYPES, PPL_CHUNK, QUANT_METHODS, QUANT_TYPES


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("quantize", help="quantize a model to a GGUF (llama.cpp's rtn / imatrix, or GPTQ)",
                              description="rtn and imatrix run llama.cpp's own quantizer on an F32/F16/BF16 GGUF "
                                          "(imatrix first computes llama.cpp's importance matrix on calibration "
                                          "text). gptq runs GPTQ with the GGUF block itself as the grid, on a "
                                          "Hugging Face folder or a float GGUF, block by block; an interrupted run "
                                          "resumes when the same command is given again.")
    p.add_argument("input", type=Path, metavar="MODEL", help="F32/F16/BF16 GGUF, or (gptq) a Hugging Face folder")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.gguf")
    p.add_argument("--type", required=True, choices=sorted(set(QUANT_TYPES) | set(GPTQ_TYPES), key=_type_order),
                   help="quantization type or llama.cpp recipe")
    p.add_argument("--method", choices=QUANT_METHODS + ("gptq",), default="rtn", help="rtn (default), imatrix or gptq")
    p.add_argument("--calibration", "--calib", type=Path, metavar="FILE",
                   help="calibration text or training data (default: the project's Chinese + English set)")
    p.add_argument("--imatrix", type=Path, metavar="FILE", help="use this imatrix GGUF instead of computing one")
    p.add_argument("--save-imatrix", type=Path, metavar="FILE",
                   help="where to save the computed imatrix (default: OUT.imatrix.gguf)")
    p.add_argument("--ctx", type=int, default=PPL_CHUNK, help=f"calibration chunk size (default {PPL_CHUNK})")
    p.add_argument("--chunks", type=int, help="use at most this many calibration chunks")
    p.add_argument("--threads", type=int, help="CPU threads (default: all)")
    g = p.add_argument_group("gptq")
    g.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where GPTQ runs (default cpu)")
    g.add_argument("--damp", type=float, default=0.01, help="damping, as a fraction of mean diag(H) (default 0.01)")
    g.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=True,
                   help="sweep columns by descending diag(H), all block scales fixed before the sweep (default); "
                        "--no-act-order sweeps in file order, fixing each block's scales as the sweep enters it")
    g.add_argument("--output-tensor-type", metavar="TYPE", help="type of output.weight instead of the recipe's")
    g.add_argument("--token-embedding-type", metavar="TYPE", help="type of token_embd.weight instead of the recipe's")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.set_defaults(func=run)


def _type_order(name: str) -> tuple[int, str]:
    return (0 if name in GPTQ_TYPES else 1, name)


def run(args) -> int:
    from belle.app.errors import BelleError

    if args.method == "gptq":
        return _run_gptq(args)
    if args.type not in QUANT_TYPES:
        raise BelleError(f"--type {args.type}: llama.cpp's quantizer has no recipe of that name "
                         f"(choose one of {', '.join(QUANT_TYPES)}, or --method gptq)")
    if args.input.is_dir():
        raise BelleError(f"{args.input}: --method {args.method} needs a GGUF (run `belle convert` first, "
                         "or use --method gptq, which reads Hugging Face folders)")
    for flag in ("output_tensor_type", "token_embedding_type"):
        if getattr(args, flag):
            raise BelleError(f"--{flag.replace('_', '-')} is a --method gptq option")
    return _run_llama(args)


def _run_gptq(args) -> int:
    from tqdm import tqdm

    from belle.app.errors import BelleError

    from .gptq_run import GPTQSettings, quantize_gptq
    from .textdata import DEFAULT_CALIBRATION, asset_path

    if args.imatrix or args.save_imatrix:
        raise BelleError("--imatrix / --save-imatrix are --method imatrix options")
    cal = args.calibration or asset_path(DEFAULT_CALIBRATION)
    settings = GPTQSettings(args.type, damp=args.damp, act_order=args.act_order, samples=args.chunks,
                            seqlen=args.ctx, device=args.device, output_type=args.output_tensor_type,
                            embd_type=args.token_embedding_type)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    bars: list[tqdm] = []

    def progress(done: int, total: int, what: str) -> None:
        if not bars:  # created once checks have passed, so an early error prints alone
            bars.append(tqdm(total=total, desc="gptq", unit="block"))
        bars[0].set_postfix_str(what, refresh=False)
        bars[0].update(done - bars[0].n)

    work = args.output.with_name(args.output.name + ".gptq")
    try:
        report = quantize_gptq(args.input, args.output, settings, cal, force=args.force, progress=progress)
    except KeyboardInterrupt:
        for bar in bars:
            bar.close()
        if work.exists():
            raise BelleError(f"interrupted: finished blocks are kept in {work}; "
                             "run the same command again to resume") from None
        raise
    finally:
        for bar in bars:
            bar.close()
    counts: dict[str, int] = {}
    for t in report.types.values():
        counts[t] = counts.get(t, 0) + 1
    mix = ", ".join(f"{n} {t}" for t, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    resumed = f", {report.resumed_blocks} blocks resumed" if report.resumed_blocks else ""
    print(f"wrote {report.path} ({report.path.stat().st_size / 2**20:.1f} MiB, {args.type} by gptq: {mix}; "
          f"{report.samples} samples x {args.ctx} tokens from {cal}; {report.seconds:.1f} s{resumed})")
    return 0


def _run_llama(args) -> int:
    from tqdm import tqdm

    from belle.app.errors import BelleError

    from . import imatrix as imx
    from .llama_quantize import check_gguf, quantize
    from .textdata import DEFAULT_CALIBRATION, asset_path, load_text

    check_gguf(args.input)
    if args.output.exists() and not args.force:
        raise BelleError(f"{args.output}: already exists (use --force to overwrite)")
    matrix = None
    if args.method == "imatrix":
        if args.imatrix:
            im = imx.load_gguf(args.imatrix)
        else:
            cal = args.calibration or asset_path(DEFAULT_CALIBRATION)
            save = args.save_imatrix or args.output.with_name(args.output.stem + ".imatrix.gguf")
            if save.exists() and not args.force:
                raise BelleError(f"{save}: already exists (use --force to overwrite)")
            bars: list[tqdm] = []

            def progress(done: int, total: int) -> None:
                if not bars:  # created on the first chunk, so errors before it print alone
                    bars.append(tqdm(total=total, desc="imatrix", unit="chunk", leave=False))
                bars[0].update(done - bars[0].n)

            try:
                im = imx.compute(args.input, load_text(cal), n_ctx=args.ctx, max_chunks=args.chunks,
                                 n_threads=args.threads, dataset=str(cal), progress=progress)
            finally:
                for bar in bars:
                    bar.close()
            imx.save_gguf(im, save)
            print(f"imatrix: {im.chunk_count} chunks of {im.chunk_size} tokens from {cal} -> {save}")
        matrix = im.means()
    elif args.imatrix or args.calibration:
        raise BelleError("--imatrix and --calibration need --method imatrix")
    result = quantize(args.input, args.output, args.type, imatrix=matrix, nthread=args.threads or 0, force=args.force)
    print(f"wrote {result.path} ({result.size_bytes / 2**20:.1f} MiB, {result.qtype}, {result.method}, "
          f"{result.seconds:.1f} s)")
    return 0
