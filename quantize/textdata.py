"""Text for calibration and evaluation: plain text or training data, and llama.cpp-style chunking.

Training data formats recognised (JSON array or JSON Lines): BELLE / Alpaca
{"instruction", "input", "output"}, BELLE multi-turn {"conversations": [{"from", "value"}]},
chat {"messages": [{"role", "content"}]}, and {"text"}. Records are joined by blank lines.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

from belle.app.errors import InputError

DEFAULT_CALIBRATION = "calibration/default.txt"
DEFAULT_EVAL = "eval/heldout.txt"


def asset_path(name: str) -> Path:
    return Path(str(files("belle.assets") / name))


def _record_text(record, path: Path, line: int) -> str:
    if isinstance(record, str):
        return record
    if not isinstance(record, dict):
        raise InputError(f"{path}:{line}: expected a JSON object, got {type(record).__name__}")
    if "text" in record:
        return str(record["text"])
    if "instruction" in record:
        parts = [record.get("instruction", ""), record.get("input", ""), record.get("output", "")]
        return "\n".join(str(p) for p in parts if p)
    for key, text_key in (("conversations", "value"), ("messages", "content")):
        if key in record:
            return "\n".join(str(turn.get(text_key, "")) for turn in record[key])
    raise InputError(f"{path}:{line}: no text field (text, instruction/output, conversations or messages)")


def load_text(path: Path) -> str:
    """The text of a plain-text file or of a training data file (.json / .jsonl)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if path.suffix == ".jsonl":
        texts = []
        for i, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                try:
                    texts.append(_record_text(json.loads(line), path, i))
                except json.JSONDecodeError as err:
                    raise InputError(f"{path}:{i}: invalid JSON ({err.msg})") from None
        return "\n\n".join(texts)
    if path.suffix == ".json":
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
        records = data if isinstance(data, list) else [data]
        return "\n\n".join(_record_text(r, path, i) for i, r in enumerate(records, 1))
    return raw


def chunk_tokens(tokens: list[int], n_ctx: int, bos: int | None, max_chunks: int | None = None) -> list[list[int]]:
    """Split into whole chunks of n_ctx tokens; the first token of each becomes BOS when the model adds one.

    This is what tools/perplexity and tools/imatrix do (a trailing partial chunk is dropped).
    """
    n = len(tokens) // n_ctx
    if max_chunks is not None:
        n = min(n, max_chunks)
    chunks = []
    for i in range(n):
        chunk = list(tokens[i * n_ctx:(i + 1) * n_ctx])
        if bos is not None:
            chunk[0] = bos
        chunks.append(chunk)
    return chunks
