"""`belle quantize IN.gguf -o OUT.gguf --type T --method rtn|imatrix`: argument parsing only."""

from __future__ import annotations

from pathlib import Path

from .constants import PPL_CHUNK, QUANT_METHODS, QUANT_TYPES


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("quantize", help="quantize a GGUF with llama.cpp (round-to-nearest or importance matrix)",
                              description="Quantize an F32/F16/BF16 GGUF with llama.cpp's own quantizer. "
                                          "--method imatrix first computes llama.cpp's importance matrix on "
                                          "calibration text and saves it in llama.cpp's imatrix GGUF format.")
    p.add_argument("input", type=Path, metavar="IN.gguf")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.gguf")
    p.add_argument("--type", required=True, choices=list(QUANT_TYPES), help="llama.cpp quantization recipe")
    p.add_argument("--method", choices=QUANT_METHODS, default="rtn", help="rtn (default) or imatrix")
    p.add_argument("--calibration", type=Path, metavar="FILE",
                   help="calibration text or training data (default: the project's Chinese + English set)")
    p.add_argument("--imatrix", type=Path, metavar="FILE", help="use this imatrix GGUF instead of computing one")
    p.add_argument("--save-imatrix", type=Path, metavar="FILE",
                   help="where to save the computed imatrix (default: OUT.imatrix.gguf)")
    p.add_argument("--ctx", type=int, default=PPL_CHUNK, help=f"calibration chunk size (default {PPL_CHUNK})")
    p.add_argument("--chunks", type=int, help="use at most this many calibration chunks")
    p.add_argument("--threads", type=int, help="CPU threads (default: all)")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.set_defaults(func=run)


def run(args) -> int:
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
