"""GGUF -> Hugging Face directory, through transformers' own GGUF loader.

Used for round-trip tests and to get a torch model for importance-matrix collection. This is
transformers' dequantizing loader, not ours, so a round trip GGUF -> HF -> GGUF checks our
converter against an independent implementation.

transformers 5 cannot `save_pretrained` a model loaded from GGUF, so we build a fresh model
from its config and load the state dict into it (checked with transformers 5 on SmolLM2:
`save_pretrained` on the GGUF-loaded model raises).
"""

from __future__ import annotations

import logging
from pathlib import Path

from belle.app.errors import ModelFileError

log = logging.getLogger(__name__)


def load_gguf_as_torch(gguf_path: Path, dtype: str = "float32"):
    """Return (model, tokenizer) from a GGUF file, dequantized to `dtype`, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise ModelFileError(f"{gguf_path}: no such GGUF file")
    log.info("loading %s through transformers (dequantizing)", gguf_path)
    kwargs = dict(gguf_file=gguf_path.name, dtype=getattr(torch, dtype))
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model.eval()
    return model, tokenizer


def load_gguf_for_training(gguf_path: Path, dtype: str = "float32"):
    """(model, tokenizer) from a GGUF file, the model rebuilt from its config so that it can be
    trained and saved like any Hugging Face model."""
    import torch
    from transformers import AutoModelForCausalLM

    loaded, tokenizer = load_gguf_as_torch(gguf_path, dtype)
    fresh = AutoModelForCausalLM.from_config(loaded.config, dtype=getattr(torch, dtype))
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # a tied lm_head is absent from the state dict of a tied model: not an error
    missing = [k for k in missing if not (k == "lm_head.weight" and loaded.config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelFileError(f"{gguf_path}: state dict mismatch (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if loaded.config.tie_word_embeddings:
        fresh.tie_weights()
    # the weights are plain floats now; a leftover {"quant_method": "gguf"} in config.json would make
    # Trainer refuse to train the saved folder ("quantized ... do not support training")
    if getattr(fresh.config, "quantization_config", None) is not None:
        del fresh.config.quantization_config
    return fresh, tokenizer


def gguf_to_hf_dir(gguf_path: Path, out_dir: Path, dtype: str = "float32") -> Path:
    """Save a GGUF model as a Hugging Face directory (config, safetensors, tokenizer)."""
    model, tokenizer = load_gguf_for_training(gguf_path, dtype)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir
