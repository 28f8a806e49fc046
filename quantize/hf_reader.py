"""Read a Hugging Face model directory one tensor at a time.

Supports `model.safetensors`, `pytorch_model.bin`, and their sharded forms (`*.index.json`).
Nothing is loaded until `tensor(name)` is called, and then only that tensor: safetensors files are
memory-mapped, .bin files are opened with `torch.load(mmap=True)`. So converting a 7B model needs
about one tensor of memory beyond the output buffer, not the whole model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from belle.app.errors import ModelFileError

log = logging.getLogger(__name__)

SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
PYTORCH_BIN = ("pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class TensorEntry:
    name: str
    shape: tuple[int, ...]  # HF (torch) order: [out, in] for linear weights
    file: Path


def load_config(model_dir: Path) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ModelFileError(f"{path}: missing (a Hugging Face model directory needs config.json)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFileError(f"{path}: not valid JSON ({err})") from None


def _weight_files(model_dir: Path) -> list[Path]:
    """The weight files of a model directory, safetensors preferred, in index order."""
    for single, index in (SAFETENSORS, PYTORCH_BIN):
        index_path = model_dir / index
        if index_path.is_file():
            try:
                weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ModelFileError(f"{index_path}: no valid weight_map ({err})") from None
            files = [model_dir / f for f in dict.fromkeys(weight_map.values())]
            missing = [f for f in files if not f.is_file()]
            if missing:
                raise ModelFileError(f"{missing[0]}: missing (listed in {index_path.name})")
            return files
        if (model_dir / single).is_file():
            return [model_dir / single]
    # sharded without an index, e.g. model-00001-of-00002.safetensors
    shards = sorted(model_dir.glob("model-*.safetensors")) or sorted(model_dir.glob("pytorch_model-*.bin"))
    if shards:
        return shards
    raise ModelFileError(f"{model_dir}: no model.safetensors or pytorch_model.bin (or shards) found")


class HFCheckpoint:
    """The tensors of a model directory, indexed by name; a reader with open files, so close it."""

    def __init__(self, model_dir: Path):
        self.model_dir = Path(model_dir)
        self.config = load_config(self.model_dir)
        self.entries: dict[str, TensorEntry] = {}
        self._handles: dict[Path, object] = {}
        for file in _weight_files(self.model_dir):
            for name, shape in self._index(file):
                self.entries[name] = TensorEntry(name, shape, file)

    def _open(self, file: Path):
        if file not in self._handles:
            if file.suffix == ".safetensors":
                from safetensors import safe_open

                try:
                    self._handles[file] = safe_open(str(file), framework="pt")
                except Exception as err:  # safetensors raises its own SafetensorError for bad files
                    raise ModelFileError(f"{file}: unreadable or truncated safetensors file ({err})") from None
            else:
                import torch

                try:
                    self._handles[file] = torch.load(str(file), map_location="cpu", mmap=True, weights_only=True)
                except Exception as err:  # a truncated zip or pickle: many exception types
                    raise ModelFileError(f"{file}: unreadable or truncated PyTorch file ({err})") from None
        return self._handles[file]

    def _index(self, file: Path):
        handle = self._open(file)
        if file.suffix == ".safetensors":
            for name in handle.keys():
                yield name, tuple(handle.get_slice(name).get_shape())
        else:
            for name, t in handle.items():
                yield name, tuple(t.shape)

    def tensor(self, name: str) -> np.ndarray:
        """One tensor as float32 numpy (bf16/f16 are widened; float32 conversion is exact for both)."""
        entry = self.entries[name]
        handle = self._open(entry.file)
        try:
            t = handle.get_tensor(name) if entry.file.suffix == ".safetensors" else handle[name]
            return t.float().numpy()
        except Exception as err:
            raise ModelFileError(f"{entry.file}: cannot read tensor {name} ({err})") from None

    def close(self) -> None:
        self._handles.clear()

    def __enter__(self) -> "HFCheckpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
