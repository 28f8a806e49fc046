"""GPTQ at scale: seconds per block and peak memory on a 1B-class random-weight LLaMA.

Builds (once) a LLaMA of TinyLlama-1.1B's shape (hidden 2048, FFN 5632, 22 blocks, 32 heads, 4 KV
heads, vocabulary 32000) with random weights as a Hugging Face folder, then runs belle's GPTQ on it
for --blocks blocks on --device and stops: what a block costs, and the peak RSS (and GPU memory)
the block-by-block design needs, without waiting for the whole model.

    python benchmarks/gptq_scale.py [--device cpu|cuda] [--blocks 2] [--type Q4_K_M] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

SHAPE = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
             num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5,
             tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)


def build(out: Path) -> Path:
    """Random LLaMA of SHAPE with a byte-level tokenizer trained on the shipped text (ids < 32000)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    from belle.quantize.textdata import DEFAULT_CALIBRATION, asset_path

    if (out / "config.json").exists():
        return out
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(asset_path(DEFAULT_CALIBRATION).read_text(encoding="utf-8").splitlines(),
                            trainers.BpeTrainer(vocab_size=2000, special_tokens=["<unk>", "<s>", "</s>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                show_progress=False))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**SHAPE), dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02)
    model.save_pretrained(str(out))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>").save_pretrained(str(out))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--type", default="Q4_K_M")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--work", type=Path, default=Path("bench-results/gptq-scale"))
    args = ap.parse_args()

    import torch

    from belle.quantize.gptq_run import GPTQSettings, quantize_gptq
    from belle.quantize.textdata import DEFAULT_CALIBRATION, asset_path

    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    hf = build(args.work / "llama-1b-random")
    print(f"model folder ready in {time.perf_counter() - t:.0f} s: {hf}")
    out = args.work / f"llama-1b.{args.type}.gguf"
    shutil.rmtree(out.with_name(out.name + ".gptq"), ignore_errors=True)  # measure from scratch, no resume
    marks: list[float] = [time.perf_counter()]

    def progress(done: int, total: int, what: str) -> None:
        marks.append(time.perf_counter())
        print(f"{what}: {marks[-1] - marks[-2]:.1f} s", flush=True)
        if done >= args.blocks:
            raise KeyboardInterrupt

    settings = GPTQSettings(args.type, device=args.device)
    try:
        quantize_gptq(hf, out, settings, asset_path(DEFAULT_CALIBRATION), force=True, progress=progress)
    except KeyboardInterrupt:
        pass
    per_block = [b - a for a, b in zip(marks[1:], marks[2:])]
    result = {"device": args.device, "type": args.type, "blocks": args.blocks, "threads": torch.get_num_threads(),
              "first_block_s_incl_setup": marks[1] - marks[0], "later_blocks_s": per_block,
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if args.device == "cuda":
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result, indent=1))
    (args.work / f"scale-{args.device}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
