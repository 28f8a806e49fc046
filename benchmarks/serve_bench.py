"""How much speed `belle serve` costs: decode tokens/s seen by an HTTP client streaming a reply,
divided by the engine's own decode tokens/s on the same model, prompt, token count and threads.

Engine: `Engine.reply` in a worker process of its own, its `stats.decode_tok_s`: (tokens - 1) /
(time after the first token). Server: `belle serve` in a subprocess, one streamed chat completion
through the `openai` client with `include_usage`; the rate is (completion tokens - 1) / (arrival of
the last text chunk - arrival of the first). Both sides build their sampling from the same request
body (app.server.sampling_from), greedy, so both generate the same tokens, and both run one short
warm-up reply first (the measured prompt then comes from the cache on both sides).

Both processes stay loaded and the measured replies alternate between them, one pair after another
(which side goes first alternates too), so both see the same load from the rest of the machine
within seconds; the verdict is on the median of the per-pair ratios. Target >= 0.9.

    .venv/bin/python benchmarks/serve_bench.py [--model ID] [--tokens 256] [--pairs 7] [--threads N]
"""

import argparse
import json
import re
import select
import signal
import statistics
import subprocess
import sys
import tempfile
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


def engine_worker(model: str, n_ctx: int, threads: int | None) -> None:
    """The engine side: load, warm up, then one measured reply per line on stdin (its token count),
    one JSON line back for each."""
    from belle.app.engine import Engine, LoadSettings
    from belle.app.server import messages_from, sampling_from

    engine = Engine.load(model, LoadSettings(n_ctx=n_ctx, n_threads=threads))
    try:
        list(engine.reply(messages_from(request_body(16)), sampling_from(request_body(16))))  # warm-up
        print(json.dumps({"threads": engine.llm.n_threads}), flush=True)
        for line in sys.stdin:
            body = request_body(int(line))
            reply = engine.reply(messages_from(body), sampling_from(body))
            list(reply)
            print(json.dumps({"decode_tok_s": reply.stats.decode_tok_s, "tokens": reply.stats.generated_tokens}),
                  flush=True)
    finally:
        engine.close()


class EngineSide:
    def __init__(self, args):
        cmd = [sys.executable, __file__, "--worker", "--model", args.model, "--n-ctx", str(args.n_ctx)]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.threads = self._read()["threads"]

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the engine worker exited with {self.proc.wait()}")
        return json.loads(line)

    def run(self, tokens: int) -> dict:
        self.proc.stdin.write(f"{tokens}\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(60)


class ServerSide:
    def __init__(self, args):
        from openai import OpenAI

        self.log = tempfile.NamedTemporaryFile("w+", prefix="serve-bench-", suffix=".log")  # noqa: SIM115
        cmd = [sys.executable, "-m", "belle.app.cli", "-v", "serve", "--model", args.model, "--port", "0",
               "--n-ctx", str(args.n_ctx)] + (["--threads", str(args.threads)] if args.threads else [])
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=ROOT)
        if not select.select([self.proc.stdout], [], [], 120)[0]:
            raise RuntimeError("belle serve did not start within 120 s")
        line = self.proc.stdout.readline()
        match = re.search(r"http://([\d.]+):(\d+)/v1", line)
        if not match:
            raise RuntimeError(f"belle serve did not start: {line!r} {Path(self.log.name).read_text()[-2000:]}")
        self.model = args.model
        self.client = OpenAI(base_url=f"http://{match.group(1)}:{match.group(2)}/v1", api_key="unused",
                             max_retries=0, timeout=600)
        self.run(16)  # warm-up

    def run(self, tokens: int) -> dict:
        body = request_body(tokens)
        extra = {"repeat_penalty": body.pop("repeat_penalty")}  # llama.cpp's name, not in the openai client
        first = last = usage = None
        for chunk in self.client.chat.completions.create(**body, model=self.model, extra_body=extra, stream=True,
                                                         stream_options={"include_usage": True}):
            now = time.perf_counter()
            if chunk.usage:
                usage = chunk.usage
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or now
                last = now
        n = usage.completion_tokens
        # the engine's own figure for this reply inside the server, from its log line
        inner = re.findall(r"after \d+ tokens \(.*?; ([\d.]+) tok/s\)", Path(self.log.name).read_text())
        return {"decode_tok_s": (n - 1) / (last - first) if n > 1 and last > first else 0.0, "tokens": n,
                "inside_server_tok_s": float(inner[-1]) if inner else float("nan")}

    def close(self) -> None:
        self.proc.send_signal(signal.SIGINT)  # the clean shutdown a user gets with Ctrl+C
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--pairs", type=int, default=7)
    p.add_argument("--n-ctx", type=int, default=2048)
    p.add_argument("--threads", type=int, default=None, help="both sides (default: belle's default threads)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        from belle.app import models

        engine_worker(str(models.resolve(args.model)), args.n_ctx, args.threads)
        return 0
    engine, server = EngineSide(args), None
    try:
        server = ServerSide(args)
        pairs = []
        for i in range(args.pairs):
            order = ("engine", "server") if i % 2 == 0 else ("server", "engine")
            got = {side: (engine if side == "engine" else server).run(args.tokens) for side in order}
            e, s = got["engine"], got["server"]
            pairs.append((e, s, s["decode_tok_s"] / e["decode_tok_s"]))
            note = "" if e["tokens"] == s["tokens"] else "  (different token counts!)"
            print(f"pair {i + 1}/{args.pairs} ({order[0]} first): engine {e['decode_tok_s']:.1f} tok/s, server "
                  f"{s['decode_tok_s']:.1f} tok/s (inside the server {s['inside_server_tok_s']:.1f}), "
                  f"ratio {pairs[-1][2]:.3f}, {e['tokens']} tokens{note}", flush=True)
    finally:
        engine.close()
        if server is not None:
            server.close()
    best_engine = max(e["decode_tok_s"] for e, _, _ in pairs)
    best_server = max(s["decode_tok_s"] for _, s, _ in pairs)
    median = statistics.median(r for _, _, r in pairs)
    print(f"model {args.model}, {args.tokens} tokens, greedy, n_ctx {args.n_ctx}, threads "
          f"{args.threads or 'belle default'} ({engine.threads}), {args.pairs} pairs")
    print(f"decode tok/s, best of {args.pairs}: engine {best_engine:.1f}, server {best_server:.1f} "
          f"(best vs best {best_server / best_engine:.3f})")
    met = "met" if median >= TARGET else "NOT met"
    print(f"verdict: server/engine decode, median of per-pair ratios = {median:.3f} (target >= {TARGET}: {met})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
