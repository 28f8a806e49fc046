"""Tiny models with random weights and tokenizers trained here, for converter parity tests.

Each builder writes a complete Hugging Face directory (config.json, model.safetensors, tokenizer
files) the way `save_pretrained` does, so the converter sees what it would see for a real model.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

CORPUS_FILES = ("calibration/default.txt", "eval/heldout.txt")

# llama.cpp's pre-tokenizer regexes (src/llama-vocab.cpp) in tokenizers' Split form
from belle.quantize.constants import BLOOM_REGEX, LLAMA3_REGEX, QWEN2_REGEX  # noqa: E402

PRE_TOKENIZERS = {"llama-bpe": LLAMA3_REGEX, "qwen2": QWEN2_REGEX, "bloom": BLOOM_REGEX}


def corpus_lines(assets: Path) -> list[str]:
    lines = []
    for name in CORPUS_FILES:
        lines += [ln for ln in (assets / name).read_text(encoding="utf-8").splitlines() if ln.strip()]
    return lines


def train_bpe(lines: list[str], pre: str, vocab_size: int, specials: list[str]):
    """A byte-level BPE tokenizer whose pre-tokenizer is llama.cpp's `pre` regex."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRE_TOKENIZERS[pre]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(lines, trainer)
    return tok


def _save_fast_tokenizer(tok, out: Path, **special) -> None:
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=tok, **special).save_pretrained(str(out))


def _save_model(config, out: Path, seed: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # default init (std 0.02) gives almost flat logits; larger weights make the comparison meaningful
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
            elif "bias" in name:
                p.normal_(0.0, 0.02)
            else:
                p.uniform_(0.8, 1.2)
    model.save_pretrained(str(out))


def build_llama_bpe(assets: Path, out: Path) -> Path:
    from transformers import LlamaConfig

    tok = train_bpe(corpus_lines(assets), "llama-bpe", 600, ["<|begin_of_text|>", "<|end_of_text|>"])
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=160,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=1,
                         tie_word_embeddings=False)
    config.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
    _save_model(config, out, 0)
    _save_fast_tokenizer(tok, out, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
    return out


def build_llama_wide(assets: Path, out: Path) -> Path:
    """Rows of 256 and 512 columns, so every K-quant applies without fallback (llama-quant.cpp)."""
    from transformers import LlamaConfig

    tok = train_bpe(corpus_lines(assets), "llama-bpe", 512, ["<|begin_of_text|>", "<|end_of_text|>"])
    config = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=1, tie_word_embeddings=False)
    _save_model(config, out, 4)
    _save_fast_tokenizer(tok, out, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
    return out


def build_llama_spm(assets: Path, out: Path) -> Path:
    """LLaMA-1/2 style: a SentencePiece BPE model with byte fallback (Chinese-LLaMA-like vocabulary)."""
    import sentencepiece as spm
    from transformers import LlamaConfig

    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines(assets)), model_writer=buf, vocab_size=1000, model_type="bpe",
        byte_fallback=True, character_coverage=0.99, split_digits=True, allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", unk_id=0, bos_id=1, eos_id=2,
        minloglevel=2)
    (out / "tokenizer.model").write_bytes(buf.getvalue())
    config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                         rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    _save_model(config, out, 1)
    # what LLaMA-2's Hugging Face repos ship next to tokenizer.model (no tokenizer.json: transformers 5
    # needs protobuf to build one from a SentencePiece model)
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "legacy": False}, indent=2))
    return out


def build_qwen2(assets: Path, out: Path) -> Path:
    from transformers import Qwen2Config

    tok = train_bpe(corpus_lines(assets), "qwen2", 600, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    config = Qwen2Config(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=160,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=True,
                         bos_token_id=0, eos_token_id=2)
    _save_model(config, out, 2)
    _save_fast_tokenizer(tok, out, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    return out


def build_bloom(assets: Path, out: Path) -> Path:
    from transformers import BloomConfig

    tok = train_bpe(corpus_lines(assets), "bloom", 600, ["<unk>", "<s>", "</s>", "<pad>"])
    config = BloomConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, n_layer=2, n_head=4,
                         layer_norm_epsilon=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    _save_model(config, out, 3)
    _save_fast_tokenizer(tok, out, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    # a BELLE model directory: the converter must give it the BELLE chat template
    cfg = json.loads((out / "config.json").read_text())
    cfg["_name_or_path"] = "BelleGroup/BELLE-tiny-bloom"
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


def build_qwen2_wide(assets: Path, out: Path) -> Path:
    """Qwen2 (q/k/v biases, tied embeddings) with rows of 256: K-quants apply (GPTQ tests)."""
    from transformers import Qwen2Config

    tok = train_bpe(corpus_lines(assets), "qwen2", 512, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    config = Qwen2Config(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=0, eos_token_id=2)
    _save_model(config, out, 5)
    _save_fast_tokenizer(tok, out, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    return out


def build_bloom_wide(assets: Path, out: Path) -> Path:
    """BLOOM (fused QKV, biases, ALiBi) with rows of 256 and 1024 (GPTQ tests)."""
    from transformers import BloomConfig

    tok = train_bpe(corpus_lines(assets), "bloom", 512, ["<unk>", "<s>", "</s>", "<pad>"])
    config = BloomConfig(vocab_size=512, hidden_size=256, n_layer=2, n_head=4, layer_norm_epsilon=1e-5,
                         bos_token_id=1, eos_token_id=2, pad_token_id=3)
    _save_model(config, out, 6)
    _save_fast_tokenizer(tok, out, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    return out


BUILDERS = {"llama-bpe": build_llama_bpe, "llama-wide": build_llama_wide, "llama-spm": build_llama_spm,
            "qwen2": build_qwen2, "bloom": build_bloom, "qwen2-wide": build_qwen2_wide, "bloom-wide": build_bloom_wide}
