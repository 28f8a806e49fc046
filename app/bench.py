"""Benchmark: our chat path against a bare llama-cpp-python loop on the same model.

By default it compares what a user gets (belle with no thread count given, i.e. threads.default_threads())
with the bare loop at its best thread count, found by a short decode-only sweep over the plausible
counts; with an explicit thread count both sides use that. Each side runs in its own subprocess so
that peak RSS is its own. Decoding is greedy on both sides, so both generate the same tokens and the
tok/s figures compare like with like.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from .memory import peak_rss_bytes
from .threads import logical_cores, physical_cores

LONG_TEXT = ("The history of tea in China goes back thousands of years. 茶起源于中国，最早作为药用，后来成为日常饮品。 "
             "Tea traders carried it along mountain roads to Tibet and across the desert to Central Asia. ") * 6
QUESTIONS = ["What is tea?", "Where did tea come from?", "请介绍一下绿茶。", "How is black tea made?",
             "What is oolong?", "茶马古道是什么？", "Which tea has the most caffeine?", "How should I brew green tea?",
             "What is matcha?", "Summarize what we discussed."]


def _timed_generate(llm, tokens, max_tokens, is_eog):
    """Bare loop: time to first token and decode rate of llama-cpp-python's `generate`."""
    start = time.perf_counter()
    first = None
    n = 0
    for token in llm.generate(tokens, top_k=40, top_p=0.9, min_p=0.05, temp=0.0, repeat_penalty=1.0):
        if first is None:
            first = time.perf_counter()
        if is_eog(token):
            break
        llm.detokenize([token])
        n += 1
        if n >= max_tokens:
            break
    end = time.perf_counter()
    return first - start, n, (n - 1) / (end - first) if n > 1 else 0.0


def worker(side: str, model: str, n_ctx: int, threads: int | None, decode_tokens: int, turns: int) -> dict:
    """One measurement in this process. side: "bare", "ours", or "sweep" (bare decode only, to find
    the bare loop's best thread count). threads None: belle's defaults."""
    from .engine import Engine, LoadSettings, Sampling
    from .templates import ChatMessage

    t0 = time.perf_counter()
    engine = Engine.load(model, LoadSettings(n_ctx=n_ctx, n_threads=threads))
    load_s = time.perf_counter() - t0
    greedy = dict(temperature=0.0, repeat_penalty=1.0, top_k=40, top_p=0.9, min_p=0.05)
    prefill_msgs = [ChatMessage("user", LONG_TEXT + "\nSummarize this in one sentence.")]
    decode_msgs = [ChatMessage("user", "Write a long story about a cat who travels the world.")]
    llm = engine.llm
    out = {"side": side, "load_s": load_s, "threads": [llm.n_threads, llm.n_threads_batch]}
    if side == "sweep":
        llm.reset()
        _, n, rate = _timed_generate(llm, engine.prompt_tokens(decode_msgs), decode_tokens, engine.is_eog)
        out.update(decode_tok_s=rate, decode_tokens=n)
        engine.close()
    elif side == "bare":
        prompt = engine.prompt_tokens(prefill_msgs)
        llm.reset()
        t = time.perf_counter()
        llm.eval(prompt)
        out["prefill_tok_s"] = len(prompt) / (time.perf_counter() - t)
        out["prompt_tokens"] = len(prompt)
        llm.reset()
        _, n, rate = _timed_generate(llm, engine.prompt_tokens(decode_msgs), decode_tokens, engine.is_eog)
        out.update(decode_tok_s=rate, decode_tokens=n)
        messages, ttft = [], []
        for q in QUESTIONS[:turns]:
            messages.append({"role": "user", "content": q})
            start, first, text = time.perf_counter(), None, ""
            for chunk in llm.create_chat_completion(messages, stream=True, max_tokens=48, temperature=0.0,
                                                    repeat_penalty=1.0):
                delta = chunk["choices"][0]["delta"].get("content")
                if delta and first is None:
                    first = time.perf_counter()
                text += delta or ""
            ttft.append((first or time.perf_counter()) - start)
            messages.append({"role": "assistant", "content": text})
        out["ttft_s"] = ttft
        engine.close()
    else:
        from .chat_store import ChatStore
        from .session import ChatSession, ConversationSettings, EngineCache

        engine.llm.reset()
        reply = engine.reply(prefill_msgs, Sampling(max_tokens=1, **greedy))
        list(reply)
        out["prefill_tok_s"] = reply.stats.prefill_tok_s
        out["prompt_tokens"] = reply.stats.prompt_tokens
        engine.llm.reset()
        reply = engine.reply(decode_msgs, Sampling(max_tokens=decode_tokens, **greedy))
        list(reply)
        out.update(decode_tok_s=reply.stats.decode_tok_s, decode_tokens=reply.stats.generated_tokens)
        engine.close()  # the conversation below goes through the app's own engine cache, as in the UI
        with tempfile.TemporaryDirectory() as tmp:
            store = ChatStore(os.path.join(tmp, "bench.db"))
            engines = EngineCache(n_threads=threads)
            settings = ConversationSettings(n_ctx=n_ctx)
            settings.sampling = Sampling(max_tokens=48, **greedy)
            session = ChatSession.new(store, engines, model, settings=settings)
            ttft = [session.send(q).run().stats["ttft_s"] for q in QUESTIONS[:turns]]
            engines.close()
            store.close()
        out["ttft_s"] = ttft
    out["peak_rss_bytes"] = peak_rss_bytes()
    return out


def thread_candidates() -> list[int]:
    """Thread counts worth trying for the bare loop: 1, the physical and logical core counts, and
    the powers of two between (every count up to 8, which covers most laptops)."""
    logical = logical_cores()
    counts = {1, physical_cores(), logical, *range(1, min(logical, 8) + 1)}
    counts.update(2**k for k in range(logical.bit_length()) if 2**k <= logical)
    return sorted(counts)


def _run_worker(side: str, model: str, n_ctx: int, threads: int | None, decode_tokens: int, turns: int) -> dict:
    args = [sys.executable, "-m", "belle.app.bench", side, model, str(n_ctx), str(threads or 0), str(decode_tokens),
            str(turns)]
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker '{side}' failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(model: str, n_ctx: int = 2048, threads: int | None = None, decode_tokens: int = 256, turns: int = 10,
        rounds: int = 3, progress=None) -> dict:
    """Alternate bare/ours `rounds` times and keep each side's best figures (noise on a shared
    machine only ever makes things slower). threads None: ours runs with belle's defaults and the
    bare loop with its best thread count from a decode-only sweep run first.
    progress(steps done, steps total, message) is called before and after each step."""
    candidates = thread_candidates() if threads is None else []
    total = len(candidates) + 2 * rounds
    step = 0

    def measure(label: str, side: str, n_threads: int | None, tokens: int) -> dict:
        nonlocal step
        if progress:
            progress(step, total, f"{label} ...")
        result = _run_worker(side, model, n_ctx, n_threads, tokens, turns)
        step += 1
        if progress:
            progress(step, total, f"{label}: decode {result['decode_tok_s']:.1f} tok/s")
        return result

    sweep = {}
    for n in candidates:
        sweep[n] = measure(f"bare loop thread sweep, {n} threads", "sweep", n, decode_tokens)["decode_tok_s"]
    bare_threads = max(sweep, key=sweep.get) if sweep else threads
    results = {"bare": [], "ours": []}
    for r in range(rounds):
        results["bare"].append(measure(f"round {r + 1}/{rounds}: bare, {bare_threads} threads", "bare", bare_threads,
                                       decode_tokens))
        ours_label = f"{threads} threads" if threads else "default threads"
        results["ours"].append(measure(f"round {r + 1}/{rounds}: belle, {ours_label}", "ours", threads, decode_tokens))
    summary = {}
    for side, runs in results.items():
        summary[side] = {
            "load_s": min(x["load_s"] for x in runs),
            "prefill_tok_s": max(x["prefill_tok_s"] for x in runs),
            "decode_tok_s": max(x["decode_tok_s"] for x in runs),
            "decode_tokens": runs[0]["decode_tokens"],
            "prompt_tokens": runs[0]["prompt_tokens"],
            "ttft_s": [min(x["ttft_s"][i] for x in runs) for i in range(len(runs[0]["ttft_s"]))],
            "peak_rss_bytes": max(x["peak_rss_bytes"] for x in runs),
            "threads": runs[0]["threads"],  # [n_threads, n_threads_batch] as llama.cpp got them
        }
    ours, bare = summary["ours"], summary["bare"]
    ttft = ours["ttft_s"]
    # Each round ran bare and ours back to back, so per-round ratios cancel slow drifts in machine load.
    pairs = sorted(o["decode_tok_s"] / b["decode_tok_s"] for o, b in zip(results["ours"], results["bare"]))
    summary["ratios"] = {
        "decode_ours_over_bare": ours["decode_tok_s"] / bare["decode_tok_s"],
        "decode_ours_over_bare_median_of_rounds": pairs[len(pairs) // 2],
        "prefill_ours_over_bare": ours["prefill_tok_s"] / bare["prefill_tok_s"],
        "ttft_turn10_over_turn2": ttft[-1] / ttft[1] if len(ttft) > 1 else None,
    }
    summary["config"] = {"model": model, "n_ctx": n_ctx, "threads": threads, "decode_tokens": decode_tokens,
                         "turns": turns, "rounds": rounds}
    # decode tok/s of the bare loop per thread count (empty when --threads was given)
    summary["bare_thread_sweep"] = {str(n): rate for n, rate in sweep.items()}
    return summary


if __name__ == "__main__":
    side, model, n_ctx, threads, decode_tokens, turns = sys.argv[1:7]
    print(json.dumps(worker(side, model, int(n_ctx), int(threads) or None, int(decode_tokens), int(turns))))
