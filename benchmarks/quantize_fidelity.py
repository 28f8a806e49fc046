"""Fidelity of llama.cpp's baselines on the default model (the closing-note table of issue 4).

Reference: the default model's F32 round trip (its GGUF -> transformers -> HF directory -> belle
convert). Candidates: Q8_0, Q4_K_M, Q4_0, each with llama.cpp's round-to-nearest and with an
importance matrix computed on the project's calibration text. Evaluated on the held-out text.

    python benchmarks/quantize_fidelity.py [--model SmolLM2.gguf] [--work DIR] [--chunks N]

Writes DIR/fidelity.json and prints a Markdown table with sizes and times.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

TYPES = ["Q8_0", "Q4_K_M", "Q4_0"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="the default model GGUF (default: belle's catalog copy)")
    ap.add_argument("--work", type=Path, default=Path("bench-results/quantize"))
    ap.add_argument("--chunks", type=int, help="evaluate at most N chunks of the held-out text")
    args = ap.parse_args()

    from belle.quantize import imatrix as imx
    from belle.quantize.convert import convert
    from belle.quantize.fidelity import evaluate, format_table
    from belle.quantize.gguf_to_hf import gguf_to_hf_dir
    from belle.quantize.llama_quantize import quantize
    from belle.quantize.textdata import DEFAULT_CALIBRATION, DEFAULT_EVAL, asset_path, load_text

    if args.model is None:
        from belle.app import models

        args.model = models.pull("smollm2-135m")
    args.work.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}

    ref = args.work / "smollm2.f32.gguf"
    if not ref.exists():
        t = time.perf_counter()
        hf = gguf_to_hf_dir(args.model, args.work / "hf")
        times["round trip: GGUF -> transformers -> HF dir"] = time.perf_counter() - t
        t = time.perf_counter()
        convert(hf, ref, "f32")
        times["belle convert (f32)"] = time.perf_counter() - t

    cal = asset_path(DEFAULT_CALIBRATION)
    t = time.perf_counter()
    im = imx.compute(ref, load_text(cal), dataset=str(cal))
    times[f"imatrix ({im.chunk_count} chunks x {im.chunk_size} tokens)"] = time.perf_counter() - t
    imx.save_gguf(im, args.work / "smollm2.imatrix.gguf")

    candidates = []
    for qtype in TYPES:
        for method, matrix in (("rtn", None), ("imatrix", im.means())):
            out = args.work / f"smollm2.{qtype}.{method}.gguf"
            result = quantize(ref, out, qtype, imatrix=matrix, force=True)
            times[f"quantize {qtype} {method}"] = result.seconds
            candidates.append(out)

    heldout = asset_path(DEFAULT_EVAL)
    report = evaluate(ref, candidates, load_text(heldout), max_chunks=args.chunks, text_name=str(heldout))
    data = report.to_json() | {"times_s": times, "machine": f"{platform.machine()}, {platform.processor()}",
                               "source_model": str(args.model)}
    (args.work / "fidelity.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    print(format_table(report))
    print()
    print("| quant | method | size MiB | bpw | PPL | mean KLD | KLD p99 | top-1 % | quantize s | eval s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    r = report.reference
    print(f"| F32 (reference) | round trip | {r.size_bytes / 2**20:.1f} | {r.bpw:.2f} | {r.ppl:.4f} | - | - | - | - | {r.seconds:.1f} |")
    for row in report.candidates:
        _, qtype, method, _ = row.model.split(".")
        print(f"| {qtype} | {method} | {row.size_bytes / 2**20:.1f} | {row.bpw:.2f} | {row.ppl:.4f} | "
              f"{row.mean_kld:.5f} | {row.kld_p99:.4f} | {row.top1_agree_pct:.2f} | "
              f"{times[f'quantize {qtype} {method}']:.1f} | {row.seconds:.1f} |")
    print()
    for what, seconds in times.items():
        print(f"- {what}: {seconds:.1f} s")


if __name__ == "__main__":
    main()
