"""What a build folder already holds: OUT/build.json records, per stage, the key it was built
with and whether it finished, plus a cache of input file hashes.

A stage's key is a hash of its settings and of its inputs' keys, so a changed recipe line or a
changed data file changes exactly the keys downstream of it. The file is replaced atomically after
every change, so a killed build leaves a state that tells the truth about what finished.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

STATE_FILE = "build.json"
_VERSION = 1


def key_of(*parts) -> str:
    """A stable hash of JSON-able parts (settings dicts, other keys, file hashes)."""
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class BuildState:
    def __init__(self, out: Path):
        self.path = Path(out) / STATE_FILE
        self.stages: dict[str, dict] = {}
        self.hashes: dict[str, list] = {}  # absolute path -> [size, mtime_ns, sha256]
        if self.path.is_file():
            try:
                saved = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                saved = {}  # unreadable: every stage simply runs again
            if saved.get("version") == _VERSION:
                self.stages = saved.get("stages", {})
                self.hashes = saved.get("hashes", {})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"version": _VERSION, "stages": self.stages, "hashes": self.hashes}, indent=1,
                                  ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)

    # --- stages ---------------------------------------------------------------------------------

    def is_done(self, stage: str, key: str) -> bool:
        rec = self.stages.get(stage)
        return bool(rec and rec.get("key") == key and rec.get("done"))

    def started_with(self, stage: str, key: str) -> bool:
        """The stage was started with this key and not finished: what it left may be resumed."""
        rec = self.stages.get(stage)
        return bool(rec and rec.get("key") == key and not rec.get("done"))

    def start(self, stage: str, key: str) -> None:
        self.stages[stage] = {"key": key, "done": False}
        self.save()

    def finish(self, stage: str, key: str, info: dict | None = None, seconds: float | None = None) -> None:
        self.stages[stage] = {"key": key, "done": True, "info": info or {}, "seconds": seconds}
        self.save()

    def info(self, stage: str) -> dict:
        return (self.stages.get(stage) or {}).get("info") or {}

    # --- input hashes -----------------------------------------------------------------------------

    def sha256(self, path: Path) -> str:
        """sha256 of a file, re-read only when its size or mtime changed since the last build."""
        path = Path(path).resolve()
        st = path.stat()
        cached = self.hashes.get(str(path))
        if cached and cached[0] == st.st_size and cached[1] == st.st_mtime_ns:
            return cached[2]
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        self.hashes[str(path)] = [st.st_size, st.st_mtime_ns, h.hexdigest()]
        return h.hexdigest()

    def tree_sha256(self, folder: Path) -> str:
        """One hash over every file of a folder (an HF model): names and contents."""
        folder = Path(folder)
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        return key_of([(p.relative_to(folder).as_posix(), self.sha256(p)) for p in files])
