"""A LoRA adapter merged into its base model, saved as an HF folder ready for `belle convert`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from belle.app.errors import ModelFileError, SettingsError

from .config import RUN_FILE

log = logging.getLogger(__name__)


def adapter_base(adapter: Path) -> str:
    """The base the adapter was trained on: the run's settings if this is (a checkpoint in) a training
    folder, else what peft recorded."""
    for folder in (adapter, adapter.parent):
        run = folder / RUN_FILE
        if run.is_file():
            return json.loads(run.read_text(encoding="utf-8"))["base"]
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if not base:
        raise ModelFileError(f"{adapter}/adapter_config.json: no base_model_name_or_path")
    return base


def load_adapter(adapter: Path, base: str | None = None):
    """(peft model, tokenizer) with the adapter's tokenizer (it carries the training template)."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from .model import load_base

    adapter = Path(adapter)
    if not (adapter / "adapter_config.json").is_file():
        if (adapter / "config.json").is_file():
            raise SettingsError(f"{adapter}: a full model, not a LoRA adapter; it needs no merge "
                                f"(belle convert it directly)")
        raise ModelFileError(f"{adapter}: not a LoRA adapter folder (no adapter_config.json)")
    base = base or adapter_base(adapter)
    model, _ = load_base(base)
    model = PeftModel.from_pretrained(model, str(adapter))
    tokenizer = AutoTokenizer.from_pretrained(str(adapter))
    return model, tokenizer


def merge(adapter: Path, out: Path, base: str | None = None, force: bool = False) -> Path:
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise SettingsError(f"{out}: already holds files (--force to overwrite)")
    model, tokenizer = load_adapter(Path(adapter), base)
    merged = model.merge_and_unload()
    merged.config.use_cache = True  # back to inference
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    log.info("merged %s into its base, saved %s", adapter, out)
    return out
