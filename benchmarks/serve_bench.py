"""How much speed `belle serve` costs: decode tokens/s seen by an HTTP client streaming a reply,
divided by the engine's own decode tokens/s on the same model, prompt, token count and threads.

Engine: `Engine.reply` in a subprocess of its own (as `belle bench` measures "ours"), its
`stats.decode_tok_s`: (tokens - 1) / (time after the first token). Server: `belle serve` in a
subprocess, one streamed chat completion through the `openai` client with `include_usage`; the
rate is (completion tokens - 1) / (arrival of the last text chunk - arrival of the first). Both
sides build their sampling from the same request body (app.server.sampling_from), greedy, so both
generate the same tokens, and both run one short warm-up reply first (the measured prompt then
comes from the cache on both sides). Engine and server runs alternate, so both see the same load
from the rest of the machine; the verdict is on the median of the per-round ratios. Target >= 0.9.

    .venv/bin/python benchmarks/serve_bench.py [--model ID] [--tokens 256] [--rounds 3] [--threads N]
"""

import argparse
import json
import re
import select
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "Write a long story about a cat who travels the world."  # as `belle bench`'s decode run
TARGET = 0.9


def request_body(tokens: int) -> dict:
    # repeat_penalty 1.0 as in `belle bench`: plain greedy decoding on both sides
    return {"messages": [{"role": "user", "content": PROMPT}], "temperature": 0, "repeat_penalty": 1.0,
            "max_tokens": tokens}


def engine_worker(model: str, n_ctx: int, threads: int | None, tokens: int) -> dict:
    from belle.app.engine import Engine, LoadSettings
    from belle.app.server import messages_from, sampling_from

    body = request_body(tokens)
    engine = Engine.load(model, LoadSettings(n_ctx=n_ctx, n_threads=threads))
    try:
        list(engine.reply(messages_from(body), sampling_from({**body, "max_tokens": 16})))  # warm-up
        reply = engine.reply(messages_from(body), sampling_from(body))
        list(reply)
        return {"decode_tok_s": reply.stats.decode_tok_s, "tokens": reply.stats.generated_tokens,
                "threads": engine.llm.n_threads}
    finally:
        engine.close()


def server_run(model: str, n_ctx: int, threads: int | None, tokens: int) -> dict:
    from openai import OpenAI

    cmd = [sys.executable, "-m", "belle.app.cli", "-v", "serve", "--model", model, "--port", "0", "--n-ctx", str(n_ctx)]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        if not select.select([proc.stdout], [], [], 120)[0]:
            raise RuntimeError("belle serve did not start within 120 s")
        line = proc.stdout.readline()
        match = re.search(r"http://([\d.]+):(\d+)/v1", line)
        if not match:
            raise RuntimeError(f"belle serve did not start: {line!r} {proc.stderr.read()[-2000:]}")
        client = OpenAI(base_url=f"http://{match.group(1)}:{match.group(2)}/v1", api_key="unused", max_retries=0,
                        timeout=600)
        body = request_body(tokens)
        extra = {"repeat_penalty": body.pop("repeat_penalty")}
        client.chat.completions.create(**{**body, "max_tokens": 16}, model=model, extra_body=extra)  # warm-up
        first = last = None
        usage = None
        for chunk in client.chat.completions.create(**body, model=model, extra_body=extra, stream=True,
                                                    stream_options={"include_usage": True}):
            now = time.perf_counter()
            if chunk.usage:
                usage = chunk.usage
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or now
                last = now
    finally:
        proc.send_signal(signal.SIGINT)  # the clean shutdown a user gets with Ctrl+C
        try:
            _, log = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, log = proc.communicate()
    n = usage.completion_tokens
    # the engine's own figure for the measured reply inside the server, from its log line
    inner = re.findall(r"after \d+ tokens \(.*?; ([\d.]+) tok/s\)", log)
    return {"decode_tok_s": (n - 1) / (last - first) if n > 1 and last > first else 0.0, "tokens": n,
            "inside_server_tok_s": float(inner[-1]) if inner else float("nan")}


def run_side(side: str, args) -> dict:
    if side == "server":
        return server_run(args.model, args.n_ctx, args.threads, args.tokens)
    cmd = [sys.executable, __file__, "--worker", "--model", args.model, "--n-ctx", str(args.n_ctx),
           "--tokens", str(args.tokens)] + (["--threads", str(args.threads)] if args.threads else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"engine worker failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n-ctx", type=int, default=2048)
    p.add_argument("--threads", type=int, default=None, help="both sides (default: belle's default threads)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        from belle.app import models

        print(json.dumps(engine_worker(str(models.resolve(args.model)), args.n_ctx, args.threads, args.tokens)))
        return 0
    rounds = []
    for r in range(args.rounds):
        engine = run_side("engine", args)
        server = run_side("server", args)
        ratio = server["decode_tok_s"] / engine["decode_tok_s"]
        rounds.append((engine, server, ratio))
        inner = server["inside_server_tok_s"]
        print(f"round {r + 1}/{args.rounds}: engine {engine['decode_tok_s']:.1f} tok/s ({engine['tokens']} tokens), "
              f"server {server['decode_tok_s']:.1f} tok/s ({server['tokens']} tokens; inside the server "
              f"{inner:.1f}), ratio {ratio:.3f}", flush=True)
        if engine["tokens"] != server["tokens"]:
            print("  warning: the two sides generated different token counts", flush=True)
    best_engine = max(e["decode_tok_s"] for e, _, _ in rounds)
    best_server = max(s["decode_tok_s"] for _, s, _ in rounds)
    median = statistics.median(r for _, _, r in rounds)
    print(f"model {args.model}, {args.tokens} tokens, greedy, n_ctx {args.n_ctx}, threads "
          f"{args.threads or 'belle default'} ({rounds[0][0]['threads']}), {args.rounds} rounds")
    print(f"decode tok/s, best of {args.rounds}: engine {best_engine:.1f}, server {best_server:.1f} "
          f"(best vs best {best_server / best_engine:.3f})")
    met = "met" if median >= TARGET else "NOT met"
    print(f"verdict: server/engine decode, median of per-round ratios = {median:.3f} (target >= {TARGET}: {met})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
