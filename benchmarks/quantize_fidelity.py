"""Quantizers side by side on the default model: llama.cpp rtn / imatrix, our GPTQ, and auto-round.

Reference: the default model's F32 round trip (its GGUF -> transformers -> HF directory -> belle
convert). Candidates: each type in --types by llama.cpp's round-to-nearest, llama.cpp with an
importance matrix, and belle's GPTQ (act-order; optionally also in natural order), imatrix and GPTQ on the same
calibration text and the same 512-token chunks. auto-round's GGUF files are added when
benchmarks/autoround_gguf.py has made them in the same work folder (it needs its own environment).
Every quantization runs as its own `belle quantize` process, so its wall time and peak RSS are its
own. Evaluated on the held-out text with llama.cpp's perplexity protocol.

    python benchmarks/quantize_fidelity.py [--model SmolLM2.gguf] [--work DIR] [--chunks N]
                                            [--types Q4_0,Q4_1,Q4_K_M,Q5_K_M] [--methods rtn,imatrix,gptq]

Writes DIR/fidelity.json and prints a Markdown table, then the ratios the GPTQ targets are stated in.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

TYPES = "Q4_0,Q4_1,Q4_K_M,Q5_K_M"
METHODS = "rtn,imatrix,gptq"


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """Run a command; (wall seconds, peak RSS MiB) of that process alone (wait4's rusage)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="the default model GGUF (default: belle's catalog copy)")
    ap.add_argument("--work", type=Path, default=Path("bench-results/quantize"))
    ap.add_argument("--chunks", type=int, help="evaluate at most N chunks of the held-out text")
    ap.add_argument("--types", default=TYPES)
    ap.add_argument("--methods", default=METHODS, help="any of rtn, imatrix, gptq (act-order, the default), gptq-natural")
    ap.add_argument("--threads", type=int, help="threads for llama.cpp's quantizer (default: all)")
    ap.add_argument("--gptq-threads", type=int, default=1,
                    help="torch threads for GPTQ (default 1: on the shared 2-core machine two OpenMP threads "
                         "ran small matmuls up to 40x slower than one)")
    ap.add_argument("--redo", action="store_true", help="quantize again even where a file and its figures exist")
    args = ap.parse_args()

    from belle.quantize.convert import convert
    from belle.quantize.fidelity import evaluate
    from belle.quantize.gguf_to_hf import gguf_to_hf_dir
    from belle.quantize.textdata import DEFAULT_CALIBRATION, DEFAULT_EVAL, asset_path, load_text

    if args.model is None:
        from belle.app import models

        args.model = models.pull("smollm2-135m")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    hf, ref = work / "hf", work / "smollm2.f32.gguf"
    if not (hf / "config.json").exists():
        gguf_to_hf_dir(args.model, hf)
    if not ref.exists():
        convert(hf, ref, "f32")

    belle = [sys.executable, "-m", "belle.app.cli", "quantize"]
    threads = ["--threads", str(args.threads)] if args.threads else []
    gptq_threads = ["--threads", str(args.gptq_threads)]
    cal = asset_path(DEFAULT_CALIBRATION)
    imatrix = work / "smollm2.imatrix.gguf"
    measured: dict[str, dict] = {}  # file name -> {method, qtype, seconds, peak_rss_mib}
    for qtype in args.types.split(","):
        for method in args.methods.split(","):
            out = work / f"smollm2.{qtype}.{method}.gguf"
            if method == "rtn":
                cmd = belle + [str(ref), "-o", str(out), "--type", qtype, "--method", "rtn"]
            elif method == "imatrix":  # the first run computes and saves the imatrix; the time includes it
                cmd = belle + [str(ref), "-o", str(out), "--type", qtype, "--method", "imatrix",
                               "--calibration", str(cal)]
                cmd += ["--imatrix", str(imatrix)] if imatrix.exists() else ["--save-imatrix", str(imatrix)]
            else:  # gptq on the HF folder, on the same 512-token chunks of the same text
                cmd = belle + [str(hf), "-o", str(out), "--type", qtype, "--method", "gptq", "--calibration", str(cal)]
                cmd += ["--no-act-order"] if method == "gptq-natural" else []
            figures = out.with_name(out.name + ".json")  # kept beside the file, so a rerun can skip it
            if out.exists() and figures.exists() and not args.redo:
                measured[out.name] = json.loads(figures.read_text())
                continue
            print(f"== {qtype} {method}", flush=True)
            seconds, rss = run_measured(cmd + (gptq_threads if method.startswith("gptq") else threads) + ["--force"])
            measured[out.name] = {"qtype": qtype, "method": method, "seconds": seconds, "peak_rss_mib": rss}
            figures.write_text(json.dumps(measured[out.name]))

    autoround = work / "autoround" / "autoround.json"
    if autoround.exists():
        for entry in json.loads(autoround.read_text()):
            f = autoround.parent / entry["file"]  # names are relative to autoround.json's folder
            if f.exists():
                qtype = entry["format"].removeprefix("gguf:").upper()  # "gguf:q4_k_m" -> "Q4_K_M"
                measured[f.name] = {"qtype": qtype, "method": f"auto-round {entry['mode']}",
                                    "seconds": entry["seconds"], "peak_rss_mib": entry["peak_rss_mib"], "path": str(f)}
    candidates = [Path(m.get("path", work / name)) for name, m in measured.items()]

    heldout = asset_path(DEFAULT_EVAL)
    report = evaluate(ref, candidates, load_text(heldout), max_chunks=args.chunks, text_name=str(heldout))
    data = report.to_json() | {"quantizers": measured, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                               "source_model": str(args.model)}
    (work / "fidelity.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")

    print()
    print("| quant | method | size MiB | bpw | PPL | mean KLD | KLD p99 | top-1 % | quantize s | peak RSS MiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    r = report.reference
    print(f"| F32 (reference) | round trip | {r.size_bytes / 2**20:.1f} | {r.bpw:.2f} | {r.ppl:.4f} | - | - | - | - | - |")
    kld: dict[tuple[str, str], float] = {}
    for row in report.candidates:
        m = measured[row.model]
        kld[(m["qtype"].upper(), m["method"])] = row.mean_kld
        print(f"| {m['qtype']} | {m['method']} | {row.size_bytes / 2**20:.1f} | {row.bpw:.2f} | {row.ppl:.4f} | "
              f"{row.mean_kld:.5f} | {row.kld_p99:.4f} | {row.top1_agree_pct:.2f} | {m['seconds']:.1f} | "
              f"{m['peak_rss_mib']:.0f} |")
    print(f"\n{report.n_chunks} chunks of {report.n_ctx} tokens, {report.n_scored} tokens scored per model")
    print()
    for qtype in args.types.split(","):
        g = kld.get((qtype, "gptq"))
        for base in ("imatrix", "rtn", "auto-round default", "auto-round tuned"):
            b = kld.get((qtype, base))
            if g is not None and b:
                print(f"- {qtype}: gptq / {base} mean KLD = {g / b:.3f}")


if __name__ == "__main__":
    main()
