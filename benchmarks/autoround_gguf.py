"""Intel auto-round's GGUF files for the quantizer comparison, made in auto-round's own environment.

auto-round (PyPI `auto-round`) is the nearest peer to belle's quantizer: it writes real llama.cpp
GGUF files (gguf:q4_0, gguf:q4_k_m, ...). This script runs it on an HF directory of the default
model, on CPU, once per format x mode, so that `belle eval fidelity` can score its files against the
same F32 reference as llama.cpp's own quantizer.

    python benchmarks/autoround_gguf.py --hf HF_DIR --calib TEXT_FILE --out DIR \\
        [--formats q4_0,q4_k_m] [--modes default,tuned] [--nsamples N] [--seqlen L]

Writes DIR/smollm2.<FORMAT>.autoround-<MODE>.gguf and DIR/autoround.json (one record per file:
file, format, mode, args, seconds, peak_rss_mib, autoround_version, size, tensor types, and whether
llama.cpp loads it and generates).

Modes (auto-round's CLI, `auto-round --format gguf:<fmt> ...`):
  default  --iters 0: "optimized RTN". For GGUF auto-round's API and CLI still default to
           iters=200, but they warn that iters=0 is the recommended setting for GGUF (except 3-bit)
           unless enable_alg_ext is set, so this is the mode auto-round itself recommends. It
           searches scales weighted by an importance matrix collected on the calibration text.
  tuned    --iters 50 --lr 5e-3 --enable_alg_ext: sign-gradient tuning (SignRound) of each block
           against the unquantized block's output, with the algorithm extension that auto-round's
           warning names as the better-accuracy route for GGUF, on the iteration budget of
           auto-round's "light" recipe (auto-round-light: 50 iterations, lr 5e-3). It costs far more
           than the default mode on CPU: on 2 shared cores without AVX2 or bf16, one SmolLM2 block
           (of 30) took 200-300 s at --batch-size 1-2, 50 iterations, 256 tokens, i.e. 2-2.5 h a
           file, against ~40 min for the default mode; the 200-iteration default would take ~4x that.
  tuned-full --iters 200 --enable_alg_ext, and signround --iters 200 (the plain SignRound that
           auto-round runs when nothing is said): only when asked for in --modes.

Environment: auto-round pulls transformers, datasets and friends and must never land in the project
venv, so a venv of its own is created once at .cache/bench-autoround-venv with CPU torch pinned to
the project's torch (torch==2.13.*, installed first and then held as a constraint, as
scripts/setup.sh does: anything torch 2.13 does not satisfy makes pip fetch the multi-GB CUDA
build). Each quantization runs as a child process in that venv, so its wall time and peak RSS are
its own (os.wait4). The load check runs in the project venv, whose llama.cpp is the one belle ships.

SmolLM2's width, 576, is a multiple of 32 but not of 256, so like llama.cpp auto-round cannot put
K-quants on tensors whose rows are 576 long: gguf:q4_k_m falls back to Q5_0 (Q8_0 where the mix
asks for Q6_K: attn_v in some layers, token_embd) and keeps K-quants only on ffn_down (rows of
1536), which makes its q4_k_m file mostly Q5_0. gguf:q4_0 is Q4_0 throughout, token_embd Q8_0.

Calibration: auto-round takes a local JSON list of {"text": ...}; it tokenizes each record, drops
records shorter than seqlen tokens and truncates the rest to seqlen. The project's calibration text
is far shorter than auto-round's defaults (128 x 2048 tokens), so it is cut into nsamples windows of
seqlen tokens (model tokenizer, no BOS) whose starts are evenly spaced over the whole text: disjoint
when the text is long enough, overlapping otherwise. Each window is decoded back to text with a few
extra tokens so that re-tokenizing it still gives at least seqlen tokens. Every mode and format gets
the same file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".cache" / "bench-autoround-venv"
PROJECT_PY = ROOT / ".venv" / "bin" / "python"
# The version the published numbers were made with; --autoround-spec changes it.
AUTOROUND_SPEC = "auto-round==0.16.1"
TORCH_SPEC = "torch==2.13.*"
# auto-round imports gguf-py and sentencepiece for GGUF export (its vocab step tries a SentencePiece
# model first) but declares neither; same floors as the project's.
EXTRA_SPECS = ["gguf>=0.17", "sentencepiece>=0.2"]
MODES = {
    "default": ["--iters", "0"],
    "tuned": ["--iters", "50", "--lr", "5e-3", "--enable_alg_ext"],
    "tuned-full": ["--iters", "200", "--enable_alg_ext"],
    "signround": ["--iters", "200"],
}
MARGIN_TOKENS = 8  # extra tokens per window; decode -> encode can merge a few at the edges


def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv(spec: str) -> None:
    """Create (once) the auto-round venv; a changed spec reinstalls."""
    stamp = VENV / ".bench-installed"
    want = "\n".join([TORCH_SPEC, spec, *EXTRA_SPECS]) + "\n"
    if stamp.exists() and stamp.read_text() == want and venv_python().exists():
        return
    print(f"==> creating {VENV.relative_to(ROOT)} with {TORCH_SPEC} (CPU) and {spec}", file=sys.stderr)
    if not venv_python().exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(venv_python()), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["--upgrade", "pip", "setuptools", "wheel"], check=True)
    subprocess.run(pip + [TORCH_SPEC], check=True)
    constraints = VENV / "torch-constraint.txt"
    constraints.write_text(TORCH_SPEC + "\n")
    subprocess.run(pip + ["-c", str(constraints), spec, *EXTRA_SPECS], check=True)
    stamp.write_text(want)


# ---------------------------------------------------------------- children (run in the auto-round venv)

def child_calib(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.hf)
    text = Path(args.calib).read_text(encoding="utf-8")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    n, L, k = len(ids), args.seqlen, args.nsamples
    span = L + MARGIN_TOKENS
    if n < span:
        raise SystemExit(f"{args.calib}: {n} tokens, fewer than one sample of {span}")
    last = n - span
    starts = [round(i * last / (k - 1)) for i in range(k)] if k > 1 else [0]
    records = []
    for s in starts:
        extra = MARGIN_TOKENS
        while True:
            piece = tok.decode(ids[s:s + L + extra])
            # auto-round strips trailing whitespace before it tokenizes
            if len(tok(piece.rstrip(), add_special_tokens=False)["input_ids"]) >= L or s + L + extra >= n:
                break
            extra += MARGIN_TOKENS
        records.append({"text": piece})
    # Atomic: another run of this script on the same DIR may be reading the file.
    tmp = Path(args.json + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(records, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    os.replace(tmp, args.json)
    stride = starts[1] - starts[0] if k > 1 else 0
    info = {"text_tokens": n, "samples": k, "seqlen": L, "stride_tokens": stride,
            "overlap": stride < L, "tokens_used": min(n, k * L)}
    tmp.write_text(json.dumps(info) + "\n")
    os.replace(tmp, args.json + ".info")
    print(json.dumps(info))


# ---------------------------------------------------------------- parent

def run_measured(cmd: list[str], log: Path, env: dict) -> tuple[int, dict]:
    """Run cmd; return its exit code and wall seconds, CPU seconds and peak RSS (MiB) of the child
    and the children it waited for. CPU seconds and the load average are kept because the machine is
    shared: wall time alone mixes in everyone else's work."""
    with open(log, "w") as fh:
        load0 = os.getloadavg()[0]
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=log.parent)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, {"seconds": round(seconds, 1), "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
                             "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # ru_maxrss is KiB on Linux
                             "loadavg_1min_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)]}


CHECK = r"""
import json, sys
from collections import Counter
import gguf, llama_cpp
f = sys.argv[1]
types = Counter(t.tensor_type.name for t in gguf.GGUFReader(f).tensors)
llm = llama_cpp.Llama(f, n_ctx=256, n_threads=2, verbose=False)
out = llm("The capital of France is", max_tokens=8, temperature=0.0)
print(json.dumps({"tensor_types": dict(sorted(types.items())), "loads": True,
                  "sample": out["choices"][0]["text"]}))
"""


def check_gguf(path: Path, python: Path) -> dict:
    """Does llama.cpp (the project's binding) load and run it; which tensor types does it hold."""
    r = subprocess.run([str(python), "-c", CHECK, str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        return {"loads": False, "error": r.stderr.strip().splitlines()[-1:] or ["?"]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hf", type=Path, required=True, help="HF model directory (the default model's round trip)")
    ap.add_argument("--calib", type=Path, required=True, help="calibration text (plain text)")
    ap.add_argument("--out", type=Path, required=True, help="where the GGUF files and autoround.json go")
    ap.add_argument("--formats", default="q4_0,q4_k_m", help="auto-round GGUF formats (default q4_0,q4_k_m)")
    ap.add_argument("--modes", default="default,tuned", help=f"of {', '.join(MODES)} (default default,tuned)")
    ap.add_argument("--nsamples", type=int, default=64, help="calibration samples (default 64)")
    ap.add_argument("--seqlen", type=int, default=256, help="tokens per calibration sample (default 256)")
    ap.add_argument("--batch-size", type=int, default=8, help="auto-round's batch size (its default 8)")
    ap.add_argument("--name", default="smollm2", help="file name prefix (default smollm2)")
    ap.add_argument("--autoround-spec", default=AUTOROUND_SPEC, help=f"pip spec (default {AUTOROUND_SPEC})")
    ap.add_argument("--check-python", type=Path, default=PROJECT_PY,
                    help="python with llama_cpp and gguf for the load check (default: the project venv)")
    ap.add_argument("--force", action="store_true", help="redo files that already exist")
    ap.add_argument("--child-calib", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child_calib:
        return child_calib(args)

    formats = [f.strip().lower() for f in args.formats.split(",") if f.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r}: one of {', '.join(MODES)}")
    hf, calib, out = args.hf.resolve(), args.calib.resolve(), args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    ensure_venv(args.autoround_spec)
    py = str(venv_python())
    version = subprocess.run([py, "-c", "import auto_round; print(auto_round.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # Offline and self-contained: a local model and a local JSON need no hub; keep caches in .cache/.
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                        "HF_HOME": str(ROOT / ".cache" / "bench-autoround-hf"), "TOKENIZERS_PARALLELISM": "false"}

    calib_json = out / f"autoround-calib.{args.nsamples}x{args.seqlen}.json"
    subprocess.run([py, __file__, "--child-calib", "--hf", str(hf), "--calib", str(calib), "--out", str(out),
                    "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen), "--json", str(calib_json)],
                   check=True, env=env)
    calib_info = json.loads(Path(str(calib_json) + ".info").read_text())

    report_path = out / "autoround.json"

    def load_records() -> list[dict]:
        return json.loads(report_path.read_text()) if report_path.exists() else []
    # Every format's cheap mode first: a long tuned run cut short still leaves them all.
    for mode in modes:
        for fmt in formats:
            dest = out / f"{args.name}.{fmt}.autoround-{mode}.gguf"
            if dest.exists() and not args.force:
                print(f"==> {dest.name} exists; --force to redo", file=sys.stderr)
                continue
            work = out / f"autoround-work.{fmt}.{mode}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            ar_args = ["--model", str(hf), "--format", f"gguf:{fmt}", *MODES[mode],
                       "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen),
                       "--batch_size", str(args.batch_size), "--dataset", str(calib_json),
                       "--device_map", "cpu", "--seed", "42", "--output_dir", str(work / "out")]
            cmd = [str(VENV / "bin" / "auto-round"), *ar_args]
            print(f"==> auto-round {fmt} {mode}: {' '.join(ar_args)}", file=sys.stderr)
            log = work / "auto-round.log"
            rc, measured = run_measured(cmd, log, env)
            if rc != 0:
                print(log.read_text()[-4000:], file=sys.stderr)
                raise SystemExit(f"auto-round {fmt} {mode} failed (exit {rc}); log: {log}")
            made = sorted((work / "out").rglob("*.gguf"))
            if len(made) != 1:
                raise SystemExit(f"expected one .gguf under {work / 'out'}, found {[str(p) for p in made]}")
            shutil.move(made[0], dest)
            shutil.copy(log, out / f"{dest.name}.log")
            shutil.rmtree(work)
            check = check_gguf(dest, args.check_python)
            rec = {"file": dest.name, "format": f"gguf:{fmt}", "mode": mode, "args": ar_args,
                   **measured, "autoround_version": version, "size_bytes": dest.stat().st_size, "calibration": calib_info | {"text": str(calib)},
                   "llama_cpp_check": check}
            # Re-read: several runs (say one per format) may share DIR.
            records = [r for r in load_records() if r.get("file") != dest.name] + [rec]
            report_path.write_text(json.dumps(records, indent=2, ensure_ascii=False) + "\n")
            print(f"==> {dest.name}: {measured['seconds']:.0f} s ({measured['cpu_seconds']:.0f} CPU s), "
                  f"peak RSS {measured['peak_rss_mib']:.0f} MiB, "
                  f"{dest.stat().st_size / 2**20:.1f} MiB, {check.get('tensor_types')}, "
                  f"loads={check.get('loads')} {check.get('sample', check.get('error'))!r}", file=sys.stderr)

    print("| file | wall s | CPU s | peak RSS MiB | size MiB | tensor types | loads |")
    print("|---|---:|---:|---:|---:|---|---|")
    for r in load_records():
        types = ", ".join(f"{k} {v}" for k, v in r["llama_cpp_check"].get("tensor_types", {}).items())
        print(f"| {r['file']} | {r['seconds']:.0f} | {r.get('cpu_seconds', 0):.0f} | {r['peak_rss_mib']:.0f} | "
              f"{r['size_bytes'] / 2**20:.1f} | {types} | {r['llama_cpp_check'].get('loads')} |")


if __name__ == "__main__":
    main()
