"""Fixtures for the training tests: a tiny LLaMA built from a config, with a byte-level BPE tokenizer
trained here on the repository's own Chinese and English text."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "assets"
DATA = Path(__file__).resolve().parent / "data"
OVERFIT = DATA / "overfit_zh.jsonl"
SAMPLE = ASSETS / "train" / "sample_zh_en.jsonl"
MULTITURN = ASSETS / "train" / "sample_multiturn.jsonl"
sys.path.insert(0, str(ROOT / "tests" / "quantize"))

from tiny_models import _save_model, corpus_lines, train_bpe  # noqa: E402

SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]


def _data_texts() -> list[str]:
    texts = []
    for path in (SAMPLE, MULTITURN, OVERFIT):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if "conversations" in row:
                texts += [turn["value"] for turn in row["conversations"]]
            else:
                texts += [row["instruction"], row.get("input", ""), row["output"]]
    return [t for t in texts if t]


def build_tiny_llama(out: Path, chat_template: str | None = None, seed: int = 0) -> Path:
    """LLaMA with 2 layers of width 128 and a 2,000-token vocabulary (short Chinese answers are a
    handful of tokens, so the overfitting tests train in seconds). Weights are drawn with std 0.08,
    not the default 0.02: with frozen norms and head, as under LoRA, the default init caps every
    logit near 2.5 and no adapter could make the model sure of a token."""
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    tok = train_bpe(corpus_lines(ASSETS) + _data_texts(), "qwen2", 2000, SPECIALS)
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=128, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
                         tie_word_embeddings=False)
    _save_model(config, out, seed)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A tiny LLaMA whose tokenizer has no chat template (training defaults to BELLE's)."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_llama))
