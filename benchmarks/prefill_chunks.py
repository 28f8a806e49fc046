"""What reading the prompt in interruptible chunks costs, and how fast Stop works while a long
prompt is read.

The engine evaluates a prompt in chunks sized to take about PREFILL_CHUNK_S each, so a cancel is
seen between chunks. This compares, in one process and alternating, the engine's time to first
token on a long prompt with llama-cpp-python evaluating the same prompt in one call (n_batch 512),
then measures the delay between a cancel and the reply returning.

    .venv/bin/python benchmarks/prefill_chunks.py [--model PATH] [--tokens 2000] [--threads N] [--rounds 3]

With --model .cache/llama-7b-shaped-q4_0.gguf (made by benchmarks/memory_7b.py) it shows the same
for a 7B model, where a one-shot read of 2,000 tokens takes minutes on a laptop CPU.
"""

import argparse
import statistics
import threading
import time


def main() -> None:
    from belle.app import engine as engine_module
    from belle.app import models
    from belle.app.engine import Engine, LoadSettings, Sampling
    from belle.app.templates import ChatMessage

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="GGUF path or catalog id (default: the default model)")
    ap.add_argument("--tokens", type=int, default=2000, help="prompt length, about")
    ap.add_argument("--threads", type=int, default=None, help="default: the engine's default")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chunk-s", type=float, default=None, help="try another chunk target (seconds)")
    args = ap.parse_args()
    if args.chunk_s:
        engine_module.PREFILL_CHUNK_S = args.chunk_s

    path = models.resolve(args.model)
    engine = Engine.load(path, LoadSettings(n_ctx=args.tokens + 256, n_threads=args.threads))
    sentence = "The river runs past the old mill, under the stone bridge and on into the sea. "
    text = sentence * max(1, args.tokens // engine.count_tokens(sentence))
    messages = [ChatMessage("user", text + "\nSummarize.")]
    greedy = Sampling(max_tokens=1, temperature=0.0, repeat_penalty=1.0)
    llm = engine.llm
    tokens = engine.prompt_tokens(messages)
    print(f"model {path.name}, prompt {len(tokens)} tokens, n_batch {llm.n_batch}, "
          f"chunks of ~{engine_module.PREFILL_CHUNK_S} s")

    ours, bare = [], []
    for r in range(args.rounds):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(tokens)  # llama-cpp-python: one call, n_batch tokens per decode, not interruptible
        bare.append(len(tokens) / (time.perf_counter() - t0))
        llm.reset()
        reply = engine.reply(messages, greedy)
        list(reply)
        ours.append(reply.stats.prefill_tok_s)
        print(f"round {r + 1}: one call {bare[-1]:.1f} tok/s, chunked {ours[-1]:.1f} tok/s")
    ratio = statistics.median(o / b for o, b in zip(ours, bare))
    print(f"prefill chunked / one call: {ratio:.3f} (median of per-round ratios)")

    delays = []
    for _ in range(args.rounds):
        llm.reset()
        cancel = threading.Event()
        reply = engine.reply(messages, greedy, cancel)
        done = threading.Event()
        threading.Thread(target=lambda: (list(reply), done.set()), daemon=True).start()
        time.sleep(1.0)
        t0 = time.perf_counter()
        cancel.set()
        done.wait()
        delays.append(time.perf_counter() - t0)
    full = len(tokens) / statistics.median(bare)
    print(f"cancel 1 s into reading: stopped after {statistics.median(delays):.3f} s (median), "
          f"max {max(delays):.3f} s; reading the whole prompt takes {full:.1f} s")
    engine.close()


if __name__ == "__main__":
    main()
