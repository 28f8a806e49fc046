"""LoRA training speed and memory on the default model: `belle train` against a bare transformers + peft loop.

What it measures: training tokens/s (non-padding input tokens per second of the training loop) and
the peak RSS of the whole process, for LoRA (r=16, alpha=32, dropout 0.05, every linear layer but
the head) on SmolLM2-135M-Instruct in float32, for
  ours: `belle train --method lora` (transformers Trainer + peft, with belle's data pipeline, log
        and progress bar), and
  bare: the least code that trains the same thing: AutoModelForCausalLM + get_peft_model, a
        DataLoader over the same rows, forward / backward / AdamW step / zero_grad (torch's AdamW as
        it comes, foreach; Trainer's default is the fused one).
It prints one Markdown row per run and the ratios ours / bare (tokens/s: the target is >= 0.95).

    python benchmarks/train_lora.py [--steps 20] [--batch-size 4] [--max-length 256] [--threads 2]
                                    [--rounds 2] [--skip-steps 2] [--device cpu|cuda] [--json PATH]

Why it is built this way:
- Same batches. The data is assets/train/sample_zh_en.jsonl. Ours runs with --no-shuffle, so
  Trainer's sampler is sequential; bare builds its rows with belle's own index_files +
  split_rows(shuffle=False) + Encoder (the base's own chat template, as ours picks) and pads them with
  the collator ours uses (DataCollatorForSeq2Seq, right padding, labels padded with -100). Both count
  the non-padding input tokens (the attention mask's sum, as Trainer's include_num_input_tokens_seen
  "non_padding" does), and the counts must be equal step by step, or the run stops. The first step's
  losses are printed (a warning when they differ): LoRA's B matrices start at zero, so step 1 is the
  base model on the same batch, and the two losses agree to 4 decimals.
- Same amount of work timed. Ours: `train_runtime`, Trainer's own timer around its training loop
  (first batch to last optimizer step, data loading and collation included; model loading,
  LoRA wrapping and saving outside it). Bare: the wall time from its first batch to its last
  optimizer step, data loading and collation included. Both sides also give per-step times (ours:
  from log.jsonl, which with --logging-steps 1 has one tokens/s per step; bare: a timestamp per step), so
  a second ratio leaves out the first --skip-steps steps (warm-up: allocator, thread pools) on both.
- A process per measured run, reaped with os.wait4: its rusage gives the peak RSS (ru_maxrss) and
  CPU time of that program alone, not of this script, and no model stays in memory between runs.
  Peak RSS includes the freed activation memory glibc's malloc keeps (its dynamic mmap threshold),
  which depends on each process's allocation history: 1 to 1.7 GiB here, and the cause of most of
  any gap between the two sides. With MALLOC_MMAP_THRESHOLD_=131072 in the environment (passed to
  both) the peaks are the real working sets and equal, but training is 40-55% slower (page faults).
  Runs alternate (bare, ours, bare, ours, ...) and the ratio is the median over rounds, because the
  machine is shared: the 1-minute load average is recorded before and after each run.
- The model is converted once from the default GGUF to an HF folder (cached in --work), so neither
  side pays the ~45 s GGUF dequantization, and both load the very same float32 weights.
- Precision is fp32 on both sides: ours gets --precision fp32 (its default, auto, would pick bf16 on a
  GPU). --device cpu hides GPUs from both processes (CUDA_VISIBLE_DEVICES=""); --device cuda lets
  Trainer pick the GPU and moves bare's model and batches there (its GPU peak is
  torch.cuda.max_memory_allocated; Trainer does not report one).

The default model is belle's catalog copy pulled into BELLE_MODELS_DIR (default here: .cache/test-models,
where the tests keep it). Results: --json PATH; the HF folder and ours' run folders stay in --work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "assets" / "train" / "sample_zh_en.jsonl"
WORK = ROOT / ".cache" / "bench-train"
SEED = 42  # belle train's default: LoRA init
LR = 3e-4  # belle's LoRA learning rate


# ---------------------------------------------------------------------------------------------
# bare: the plain transformers + peft loop (run as `train_lora.py --bare ...` in its own process)


class _EncodedRows:
    """The rows tokenized when the DataLoader asks for them, as belle's training dataset does."""

    def __init__(self, rows, encoder):
        self.rows, self.encoder = rows, encoder

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        enc = self.encoder.encode(self.rows[i])
        return {"input_ids": enc.input_ids, "labels": enc.labels}


def bare_main(args) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.utils.data import DataLoader
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, set_seed

    from belle.training.data import index_files, split_rows
    from belle.training.encode import IGNORE, Encoder, default_template

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tokenizer = AutoTokenizer.from_pretrained(str(args.hf))
    model = AutoModelForCausalLM.from_pretrained(str(args.hf), dtype=torch.float32)
    model.config.use_cache = False
    encoder = Encoder(tokenizer, default_template(tokenizer), args.max_length)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:  # as belle's train.py
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    rows, _ = index_files([args.data], progress=False)
    train_rows, _ = split_rows(rows, shuffle=False)

    set_seed(SEED)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    model.to(device)
    model.train()
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE)
    loader = DataLoader(_EncodedRows(train_rows, encoder), batch_size=args.batch_size, shuffle=False,
                        collate_fn=collator)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    step_tokens, losses, step_ends = [], [], []
    start = time.perf_counter()
    batches = iter(loader)
    for _ in range(args.steps):
        try:
            batch = next(batches)
        except StopIteration:  # next epoch, same order (as Trainer's sequential sampler)
            batches = iter(loader)
            batch = next(batches)
        step_tokens.append(int(batch["attention_mask"].sum()))  # Trainer's "non_padding" count
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.detach())
        if cuda:
            torch.cuda.synchronize()
        step_ends.append(time.perf_counter() - start)
    seconds = time.perf_counter() - start
    result = {"steps": args.steps, "tokens": sum(step_tokens), "seconds": seconds, "step_ends": step_ends,
              "step_tokens": step_tokens, "losses": [float(x) for x in losses]}
    if cuda:
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    Path(args.result).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# the benchmark


def run_measured(cmd: list[str], env: dict, log_path: Path) -> dict:
    """Run a command (output to log_path); wall seconds, peak RSS MiB, CPU seconds of that process
    alone (wait4's rusage), and the 1-minute load average before and after."""
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.stderr.write(log_path.read_text()[-4000:])
        sys.exit(f"failed: {' '.join(cmd)} (log: {log_path})")
    return {"process_s": seconds, "peak_rss_mib": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime,
            "load_before": load_before, "load_after": os.getloadavg()[0]}


def read_ours(out: Path) -> dict:
    """Steps, tokens, train_runtime and per-step times from a `belle train` run's log.jsonl."""
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if x.strip()]
    steps = [x for x in lines if "loss" in x]
    summary = next(x for x in lines if "train_loss" in x)
    ends, step_tokens, t, last_tokens = [], [], 0.0, 0
    for x in steps:  # tokens_per_s of a log = its new tokens / seconds since the previous log
        step_tokens.append(x["tokens"] - last_tokens)
        t += step_tokens[-1] / x["tokens_per_s"]
        last_tokens = x["tokens"]
        ends.append(t)
    return {"steps": steps[-1]["step"], "tokens": steps[-1]["tokens"], "seconds": summary["train_runtime"],
            "step_ends": ends, "step_tokens": step_tokens, "losses": [x["loss"] for x in steps]}


def steady(result: dict, skip: int) -> tuple[int, float] | None:
    """(tokens, seconds) of the steps after the first `skip`, or None when there are none."""
    ends = result["step_ends"]
    if not 0 < skip < len(ends):
        return None
    return sum(result["step_tokens"][skip:]), ends[-1] - ends[skip - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="the default model GGUF (default: belle's catalog copy)")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--work", type=Path, default=WORK, help="HF folder and run folders (default .cache/bench-train)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="bare, ours pairs (default 2)")
    ap.add_argument("--skip-steps", type=int, default=2, help="warm-up steps left out of the steady-state ratio")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--json", type=Path, help="save the results here")
    # the bare loop's own process
    ap.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--hf", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare:
        bare_main(args)
        return

    os.environ.setdefault("BELLE_MODELS_DIR", str(ROOT / ".cache" / "test-models"))
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    hf = work / "hf"
    if not (hf / "config.json").exists():
        from belle.quantize.gguf_to_hf import gguf_to_hf_dir

        if args.model is None:
            from belle.app import models

            args.model = models.pull("smollm2-135m")
        print(f"converting {args.model} to {hf} (once)", flush=True)
        gguf_to_hf_dir(args.model, hf)
    # gguf_to_hf_dir keeps the GGUF loader's quantization_config ({"quant_method": "gguf"}) in config.json,
    # though the weights are plain float32: Trainer then refuses the model ("quantized with
    # QuantizationMethod.GGUF ... do not support training") and a bare load gets an hf_quantizer. Dropped here.
    config_path = hf / "config.json"
    config = json.loads(config_path.read_text())
    if config.pop("quantization_config", None) is not None:
        config_path.write_text(json.dumps(config, indent=2) + "\n")

    env = dict(os.environ)
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    shape = ["--batch-size", str(args.batch_size), "--max-length", str(args.max_length), "--threads", str(args.threads)]
    runs: list[dict] = []
    for rnd in range(1, args.rounds + 1):
        for method in ("bare", "ours"):
            print(f"== round {rnd}: {method}", flush=True)
            log_path = work / f"{method}-{rnd}.log"
            if method == "bare":
                result_path = work / f"bare-{rnd}.json"
                cmd = [sys.executable, str(Path(__file__).resolve()), "--bare", "--hf", str(hf), "--data",
                       str(args.data.resolve()), "--result", str(result_path), "--steps", str(args.steps),
                       "--device", args.device, *shape]
                m = run_measured(cmd, env, log_path)
                r = json.loads(result_path.read_text())
            else:
                out = work / f"ours-{rnd}"
                cmd = [sys.executable, "-m", "belle.app.cli", "train", "--base", str(hf), "--data",
                       str(args.data.resolve()), "--method", "lora", "-o", str(out), "--max-steps", str(args.steps),
                       "--no-shuffle", "--logging-steps", "1", "--save-steps", "100000", "--warmup", "0",
                       "--precision", "fp32", "--force", *shape]
                m = run_measured(cmd, env, log_path)
                r = read_ours(out)
            runs.append({"round": rnd, "method": method, **r, **m})
            print(f"   {r['tokens']} tokens in {r['seconds']:.1f} s = {r['tokens'] / r['seconds']:.1f} tokens/s, "
                  f"peak RSS {m['peak_rss_mib']:.0f} MiB", flush=True)

    bare_runs = [r for r in runs if r["method"] == "bare"]
    ours_runs = [r for r in runs if r["method"] == "ours"]
    per_step = {tuple(r["step_tokens"]) for r in runs}
    if len(per_step) != 1:
        sys.exit(f"the runs saw different token counts per step {sorted(per_step)}: the batches are not the same")
    loss1 = [r["losses"][0] for r in runs]
    if max(loss1) - min(loss1) > 1e-3 * max(abs(x) for x in loss1):
        print(f"warning: first-step losses differ: {loss1}", file=sys.stderr)

    print()
    print("| method | steps | tokens | seconds | tokens/s | peak RSS MiB | CPU s | process s | load avg |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in runs:
        name = f"{r['method']} ({r['round']})"
        print(f"| {name} | {r['steps']} | {r['tokens']} | {r['seconds']:.1f} | {r['tokens'] / r['seconds']:.1f} | "
              f"{r['peak_rss_mib']:.0f} | {r['cpu_s']:.1f} | {r['process_s']:.1f} | "
              f"{r['load_before']:.2f} -> {r['load_after']:.2f} |")
    if args.device == "cuda":
        print("\nbare GPU peak (torch.cuda.max_memory_allocated): "
              + ", ".join(f"{r['cuda_peak_mib']:.0f} MiB" for r in bare_runs))
    print(f"\nthe same {runs[0]['tokens']} non-padding tokens, step by step, on every run; "
          f"first-step loss ours {ours_runs[0]['losses'][0]:.4f}, bare {bare_runs[0]['losses'][0]:.4f}")

    def tps(r):
        return r["tokens"] / r["seconds"]

    speed = [tps(o) / tps(b) for b, o in zip(bare_runs, ours_runs)]
    rss = [o["peak_rss_mib"] / b["peak_rss_mib"] for b, o in zip(bare_runs, ours_runs)]
    ratios = {"tokens_per_s": statistics.median(speed), "peak_rss": statistics.median(rss)}
    print()
    print(f"ratio ours/bare tokens/s = {ratios['tokens_per_s']:.3f} (target >= 0.95; per round: "
          f"{', '.join(f'{x:.3f}' for x in speed)})")
    print(f"ratio ours/bare peak RSS = {ratios['peak_rss']:.3f} (per round: {', '.join(f'{x:.3f}' for x in rss)})")
    k = args.skip_steps
    steady_pairs = [(steady(b, k), steady(o, k)) for b, o in zip(bare_runs, ours_runs)]
    if all(b and o for b, o in steady_pairs):
        st = [(o[0] / o[1]) / (b[0] / b[1]) for b, o in steady_pairs]
        ratios["tokens_per_s_steady"] = statistics.median(st)
        print(f"ratio ours/bare tokens/s, steps {k + 1}..{args.steps} only = {ratios['tokens_per_s_steady']:.3f} "
              f"(per round: {', '.join(f'{x:.3f}' for x in st)})")
        for b, o in zip(bare_runs, ours_runs):
            first_b, first_o = b["step_ends"][k - 1], o["step_ends"][k - 1]
            print(f"  round {b['round']}: first {k} steps bare {first_b:.1f} s, ours {first_o:.1f} s; "
                  f"per step after: bare {(b['step_ends'][-1] - first_b) / (len(b['step_ends']) - k):.2f} s, "
                  f"ours {(o['step_ends'][-1] - first_o) / (len(o['step_ends']) - k):.2f} s")

    if args.json:
        data = {"settings": {"steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length,
                             "threads": args.threads, "device": args.device, "data": str(args.data), "model": str(hf)},
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "runs": runs, "ratios": ratios}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
