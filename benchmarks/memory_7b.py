"""Peak memory of a LLaMA-7B-shaped Q4_0 model under llama.cpp, with and without mmap.

Writes (once) a 7B-shaped GGUF with random Q4_0 blocks and the default model's tokenizer into
.cache/, then loads it in a fresh process per setting and reports load time, prefill and decode
tok/s and peak RSS. This is why the engine loads with use_mmap=False on CPU.

    .venv/bin/python benchmarks/memory_7b.py [--threads 2] [--n-ctx 2048]
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / ".cache" / "llama-7b-shaped-q4_0.gguf"
N_EMBD, N_FF, N_LAYER, N_HEAD, N_CTX_TRAIN = 4096, 11008, 32, 32, 4096


def build(tokenizer_gguf: Path) -> Path:
    import gguf
    from tqdm import tqdm

    if OUT.exists():
        return OUT
    src = gguf.GGUFReader(tokenizer_gguf)
    tokens = [bytes(src.fields["tokenizer.ggml.tokens"].parts[i]) for i in src.fields["tokenizer.ggml.tokens"].data]
    merges = [bytes(src.fields["tokenizer.ggml.merges"].parts[i]).decode() for i in src.fields["tokenizer.ggml.merges"].data]
    types = [int(src.fields["tokenizer.ggml.token_type"].parts[i][0]) for i in src.fields["tokenizer.ggml.token_type"].data]
    n_vocab = len(tokens)
    part = OUT.with_suffix(".part")
    w = gguf.GGUFWriter(str(part), "llama")
    w.add_name("llama-7b-shaped random Q4_0")
    w.add_block_count(N_LAYER)
    w.add_context_length(N_CTX_TRAIN)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(src.fields["tokenizer.chat_template"].contents())

    q4 = gguf.GGMLQuantizationType.Q4_0
    block_bytes = gguf.GGML_QUANT_SIZES[q4][1]
    rng = np.random.default_rng(0)
    # A pool of valid Q4_0 blocks (scale 0.02, random nibbles), cycled through every matrix.
    pool = rng.integers(0, 256, size=(1 << 16, block_bytes), dtype=np.uint8)
    pool[:, :2] = np.frombuffer(np.float16(0.02).tobytes(), dtype=np.uint8)

    def q4_matrix(rows, cols):
        n = rows * cols // 32
        idx = rng.integers(0, len(pool), size=n)
        return pool[idx].reshape(rows, cols // 32 * block_bytes)

    plan = [("token_embd.weight", (n_vocab, N_EMBD)), ("output_norm.weight", (N_EMBD,)), ("output.weight", (n_vocab, N_EMBD))]
    for i in range(N_LAYER):
        plan += [(f"blk.{i}.attn_norm.weight", (N_EMBD,)), (f"blk.{i}.ffn_norm.weight", (N_EMBD,))]
        plan += [(f"blk.{i}.attn_{x}.weight", (N_EMBD, N_EMBD)) for x in ("q", "k", "v", "output")]
        plan += [(f"blk.{i}.ffn_gate.weight", (N_FF, N_EMBD)), (f"blk.{i}.ffn_up.weight", (N_FF, N_EMBD)),
                 (f"blk.{i}.ffn_down.weight", (N_EMBD, N_FF))]
    for name, shape in plan:
        if len(shape) == 1:
            w.add_tensor_info(name, shape, np.dtype(np.float32), shape[0] * 4)
        else:
            rows, cols = shape
            w.add_tensor_info(name, (rows, cols // 32 * block_bytes), np.dtype(np.uint8), rows * cols // 32 * block_bytes, raw_dtype=q4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, shape in tqdm(plan, desc="writing 7B-shaped Q4_0", unit="tensor"):
        w.write_tensor_data(np.ones(shape, np.float32) if len(shape) == 1 else q4_matrix(*shape))
    w.close()
    part.rename(OUT)
    return OUT


def worker(path: str, use_mmap: bool, n_ctx: int, threads: int) -> dict:
    import resource

    import llama_cpp

    t = time.perf_counter()
    llm = llama_cpp.Llama(path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, use_mmap=use_mmap, verbose=False)
    load_s = time.perf_counter() - t
    prompt = llm.tokenize(("The quick brown fox jumps over the lazy dog. " * 8).encode(), add_bos=False)[:64]
    t = time.perf_counter()
    llm.eval(prompt)
    prefill = len(prompt) / (time.perf_counter() - t)
    n, t = 0, None
    for _ in llm.generate(prompt, temp=0.0):  # the prompt is cached: sampling starts at once
        t = t or time.perf_counter()
        n += 1
        if n == 33:
            break
    decode = 32 / (time.perf_counter() - t)
    return {"use_mmap": use_mmap, "load_s": load_s, "prefill_tok_s": prefill, "decode_tok_s": decode,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--tokenizer", default=str(ROOT / ".cache" / "test-models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--worker", nargs=2, metavar=("PATH", "MMAP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1] == "1", args.n_ctx, args.threads)))
        return 0
    path = build(Path(args.tokenizer))
    size = path.stat().st_size
    kv = 2 * N_LAYER * args.n_ctx * N_EMBD * 2
    rows = []
    for use_mmap in (True, False):
        proc = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--n-ctx", str(args.n_ctx),
                               "--worker", str(path), "1" if use_mmap else "0"], capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr, file=sys.stderr)
            return 1
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"{path.name}: {size / 1e9:.2f} GB file, KV cache at n_ctx {args.n_ctx}: {kv / 1e9:.2f} GB, {args.threads} threads")
    print(f"{'use_mmap':<10}{'load s':>8}{'prefill tok/s':>15}{'decode tok/s':>14}{'peak RSS GB':>13}{'RSS/(file+KV)':>15}")
    for r in rows:
        print(f"{str(r['use_mmap']):<10}{r['load_s']:>8.1f}{r['prefill_tok_s']:>15.1f}{r['decode_tok_s']:>14.2f}"
              f"{r['peak_rss_bytes'] / 1e9:>13.2f}{r['peak_rss_bytes'] / (size + kv):>15.2f}")
    out = ROOT / "bench-results" / "memory_7b.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"file_bytes": size, "kv_bytes": kv, "runs": rows}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
