"""The base model and tokenizer for training, from an HF folder or a GGUF file, and LoRA around it."""

from __future__ import annotations

import logging
from pathlib import Path

from belle.app.errors import ModelFileError, SettingsError

log = logging.getLogger(__name__)


def load_base(base: str, dtype: str = "float32"):
    """(model, tokenizer). A GGUF file is dequantized through transformers (quantize/gguf_to_hf.py),
    so the default model can be fine-tuned offline; its weights are then the dequantized ones."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(base)
    if path.is_file() and path.suffix == ".gguf":
        from belle.quantize.gguf_to_hf import load_gguf_for_training

        model, tokenizer = load_gguf_for_training(path, dtype)
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelFileError(f"{path}: not a Hugging Face model folder (no config.json)")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype))
        except (OSError, ValueError) as err:
            raise ModelFileError(f"{path}: transformers could not load it ({str(err).splitlines()[0]})") from None
    else:
        raise ModelFileError(f"{path}: no such model (give an HF model folder or a .gguf file)")
    # training never reuses a KV cache; without one, packed rows get a block-diagonal attention mask
    model.config.use_cache = False
    model.name_or_path = str(path.resolve())  # recorded in adapter_config.json for `belle train merge`
    return model, tokenizer


def add_lora(model, r: int, alpha: int, dropout: float, targets):
    """BELLE's LoRA: r=16, alpha=32, dropout 0.05 on every attention and MLP projection."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        bias="none", task_type="CAUSAL_LM")
    try:
        model = get_peft_model(model, config)
    except ValueError as err:
        raise SettingsError(f"lora_targets: {str(err).splitlines()[0]}") from None
    trainable, total = model.get_nb_trainable_parameters()
    log.info("LoRA r=%d alpha=%d: %d trainable parameters of %d (%.2f%%)", r, alpha, trainable, total,
             100 * trainable / total)
    return model
