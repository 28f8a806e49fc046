"""Training data files -> an index of good rows, read back one row at a time.

One pass over each file checks every row (parse + `formats.to_example`) and records, for each good
row, its file, byte offset and line number in numpy arrays: about 16 bytes a row, so BELLE's 2M-row,
multi-GB files are never held in memory. Rows are read back on demand with seek + readline.

Files: `.jsonl` (one JSON object a line, blank lines ignored), `.json` (a JSON array of objects, one
object, or objects one after another), `.tsv` / `.txt` (`query<TAB>answer` lines). A `.json` file
is decoded whole (once while indexing and once per reading process), because a JSON array cannot be
cut into rows without parsing it; use JSON Lines for big data. The format is detected per file from
its first record (`tsv` by suffix) unless `fmt` is given.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from belle.app.errors import InputError

from .formats import FORMATS, LINE_SUFFIXES, Example, RowError, detect_format, to_example

log = logging.getLogger(__name__)

ON_ERROR = ("fail", "skip")
JSON_SUFFIXES = (".jsonl", ".json")
_BOM = b"\xef\xbb\xbf"
# Built once: json.dumps with options builds a new encoder per call, a third of the indexing time.
_CANONICAL = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_DECODER = json.JSONDecoder()
_PROGRESS_STEP = 1 << 20  # bytes between progress-bar updates: per-line updates cost more than parsing


@dataclass
class SkipReport:
    counts: dict[str, int] = field(default_factory=dict)  # reason -> rows skipped
    first: dict[str, str] = field(default_factory=dict)  # reason -> first "path:line" where it happened
    duplicates: int = 0

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.first.setdefault(reason, where)

    def summary(self) -> str:
        """One line per reason (most frequent first), and one for duplicates; "" when nothing was dropped."""
        lines = [
            f"skipped {n} row{'s' * (n != 1)}: {reason} (first at {self.first[reason]})"
            for reason, n in sorted(self.counts.items(), key=lambda item: -item[1])
        ]
        if self.duplicates:
            lines.append(f"dropped {self.duplicates} duplicate row{'s' * (self.duplicates != 1)}")
        return "\n".join(lines)


@dataclass(eq=False)
class RowIndex:
    """The good rows of some files. offsets are byte offsets of lines, except in `.json` files,
    where they are character positions in the decoded text. Pickles without open files (DataLoader
    workers); each process opens the files again on first use."""

    paths: list[Path]
    formats: list[str]
    file_ids: np.ndarray  # int32, into paths / formats
    offsets: np.ndarray  # int64
    lines: np.ndarray  # int32, 1-based
    sizes: list[int] = field(default_factory=list)  # file sizes when indexed: a changed file is refused
    _open: dict = field(default_factory=dict, init=False, repr=False)  # file id -> file (or .json text)
    _pid: int = field(default=0, init=False, repr=False)  # the process that opened _open

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i) -> Example:
        n = len(self)
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"row {i} out of range ({n} rows)")
        i %= n
        file_id, offset, line = int(self.file_ids[i]), int(self.offsets[i]), int(self.lines[i])
        path, fmt = self.paths[file_id], self.formats[file_id]
        where = f"{path}:{line}"
        try:
            if path.suffix.lower() == ".json":
                record, _ = _DECODER.raw_decode(self._source(file_id), offset)
            else:
                source = self._source(file_id)
                source.seek(offset)
                record = _parse_line(source.readline(), offset, fmt == "tsv", path, line)
            example = to_example(record, fmt)
        except (RowError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"{where}: {err} (the file changed after it was indexed)") from None
        return Example(example.messages, example.text, where)

    def subset(self, positions: np.ndarray) -> RowIndex:
        """The rows at these positions (in this order), same files."""
        positions = np.asarray(positions, dtype=np.int64)
        return RowIndex(list(self.paths), list(self.formats), self.file_ids[positions],
                        self.offsets[positions], self.lines[positions], list(self.sizes))

    def _source(self, file_id: int):
        # A DataLoader may fork after this process opened files: a child must not share their offsets.
        if self._pid != os.getpid():
            self._open = {}
            self._pid = os.getpid()
        if file_id not in self._open:
            path = self.paths[file_id]
            if self.sizes and path.stat().st_size != self.sizes[file_id]:
                raise InputError(f"{path}: the file changed after it was indexed; index it again")
            if path.suffix.lower() == ".json":
                self._open[file_id] = path.read_bytes().decode("utf-8-sig")  # as indexed: without a BOM
            else:
                self._open[file_id] = open(path, "rb")
        return self._open[file_id]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_open"], state["_pid"] = {}, 0
        return state


def index_files(paths, fmt: str | None = None, on_error: str = "fail", dedup: bool = False,
                progress: bool = True) -> tuple[RowIndex, SkipReport]:
    """Check every row of these files and index the good ones.

    on_error="fail": the first bad row raises InputError("path:line: reason"); "skip": bad rows are
    counted per reason in the SkipReport and logged. Invalid JSON in a `.json` file and non-UTF-8
    bytes always fail (the rest of the file cannot be read). dedup drops rows whose example equals an
    earlier one (64-bit hashes: 8 bytes a row; a false match is about 1 in 10^7 at 2M rows).
    """
    if fmt is not None and fmt not in FORMATS:
        raise InputError(f"unknown data format '{fmt}' (expected one of {', '.join(FORMATS)})")
    if on_error not in ON_ERROR:
        raise InputError(f"unknown on_error '{on_error}' (expected one of {', '.join(ON_ERROR)})")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError("no data files given")
    report = SkipReport()
    offsets, lines = array("q"), array("i")
    hashes = array("Q") if dedup else None
    formats, counts, sizes = [], [], []
    for path in paths:
        size = _check_file(path)
        before, skipped_before = len(offsets), dict(report.counts)
        file_fmt = _index_file(path, fmt, on_error, report, offsets, lines, hashes, progress, size)
        rows = len(offsets) - before
        if rows == 0:
            skipped = {r: n - skipped_before.get(r, 0) for r, n in report.counts.items() if n > skipped_before.get(r, 0)}
            reasons = "; ".join(f"{n} {reason}" for reason, n in skipped.items())
            raise InputError(f"{path}: no usable rows" + (f" (skipped {reasons})" if reasons else " (empty file)"))
        log.info("%s: %d rows (%s)", path, rows, file_fmt)
        formats.append(file_fmt)
        counts.append(rows)
        sizes.append(size)
    file_ids = np.repeat(np.arange(len(paths), dtype=np.int32), counts)
    # frombuffer shares the arrays' memory: no copy of 2M offsets just to change the container.
    index = RowIndex(paths, formats, file_ids, np.frombuffer(offsets, dtype=np.int64),
                     np.frombuffer(lines, dtype=np.int32), sizes)
    if hashes is not None:
        _, first = np.unique(np.frombuffer(hashes, dtype=np.uint64), return_index=True)
        report.duplicates = len(index) - len(first)
        if report.duplicates:
            index = index.subset(np.sort(first))
    if report.counts or report.duplicates:
        log.warning("%s", report.summary())
    return index, report


def split_rows(index: RowIndex, eval_fraction: float = 0.0, eval_rows: int | None = None, shuffle: bool = True,
               seed: int = 0) -> tuple[RowIndex, RowIndex | None]:
    """Train and eval rows: shuffled (deterministic for a seed), eval taken off the end.

    eval_rows, if given, is the exact number of eval rows; else eval_fraction of the rows, at least 1
    when the fraction is above 0. shuffle=False keeps file order (eval is then the last rows).
    """
    n = len(index)
    if eval_rows is not None:
        if eval_rows < 0:
            raise InputError(f"eval rows must be 0 or more, got {eval_rows}")
        k = int(eval_rows)
    else:
        if not 0.0 <= eval_fraction < 1.0:
            raise InputError(f"eval fraction must be in [0, 1), got {eval_fraction}")
        k = max(1, round(n * eval_fraction)) if eval_fraction > 0 else 0
    if k >= n:
        raise InputError(f"{k} eval rows leave no training rows (the data has {n})")
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    train = index.subset(order[: n - k])
    return train, (index.subset(order[n - k:]) if k else None)


def _check_file(path: Path) -> int:
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a data file")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in JSON_SUFFIXES + LINE_SUFFIXES:
        raise InputError(f"{path}: unknown data file type (expected .jsonl, .json, .tsv or .txt)")
    return path.stat().st_size


def _decode(raw: bytes, offset: int, path: Path, line: int) -> str:
    if offset == 0 and raw.startswith(_BOM):  # files saved by Windows editors
        raw = raw[len(_BOM):]
        offset += len(_BOM)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}:{line}: not UTF-8 text at byte {offset + err.start}") from None


def _parse_line(raw: bytes, offset: int, tsv: bool, path: Path, line: int):
    """A line's record: the text without its line break for tsv, the parsed JSON otherwise."""
    text = _decode(raw, offset, path, line)
    if tsv:
        if text.endswith("\n"):
            text = text[:-1]
        return text[:-1] if text.endswith("\r") else text
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RowError(f"invalid JSON ({err.msg})") from None


def _index_file(path, fmt, on_error, report, offsets, lines, hashes, progress, size) -> str:
    """Append this file's good rows to offsets / lines (/ hashes); returns the file's format."""
    suffix = path.suffix.lower()
    if suffix in LINE_SUFFIXES:
        if fmt not in (None, "tsv"):
            raise InputError(f"{path}: a {suffix} file holds tsv rows, not '{fmt}'")
        fmt = "tsv"
    elif fmt == "tsv":
        raise InputError(f"{path}: tsv rows need a .tsv or .txt file")
    bar = tqdm(total=size, unit="B", unit_scale=True, desc=path.name, disable=None if progress else True, leave=False)
    if suffix == ".json":
        records = _json_records(path)
    else:
        records = _line_records(path, fmt == "tsv", bar)
    # The hot loop of a 2M-row file: nothing here allocates for a good row beyond parsing it.
    try:
        for record, offset, line in records:
            try:
                if isinstance(record, RowError):
                    raise record
                if fmt is None:
                    fmt = detect_format(record, path)
                    log.debug("%s: detected format %s", path, fmt)
                example = to_example(record, fmt)
            except RowError as err:
                where = f"{path}:{line}"
                if on_error == "fail":
                    raise InputError(f"{where}: {err}") from None
                report.add(str(err), where)
                log.debug("%s: skipped: %s", where, err)
                continue
            offsets.append(offset)
            lines.append(line)
            if hashes is not None:
                hashes.append(_example_hash(example))
        bar.update(bar.total - bar.n)
    finally:
        bar.close()
    return fmt or "unknown"


def _line_records(path: Path, tsv: bool, bar):
    """(record or RowError, byte offset, line) for each non-blank line, read in binary so that byte
    offsets are exact (offset += len(line): no tell(), which text mode makes slow and opaque)."""
    offset, line, pending = 0, 0, 0
    with open(path, "rb") as f:
        for raw in f:
            line += 1
            if not raw.isspace():
                try:
                    yield _parse_line(raw, offset, tsv, path, line), offset, line
                except RowError as err:
                    yield err, offset, line
            offset += len(raw)
            pending += len(raw)
            if pending >= _PROGRESS_STEP:
                bar.update(pending)
                pending = 0


def _json_records(path: Path):
    """(record, character offset, line) for each element of a JSON array, a single value, or values
    one after another. Invalid JSON raises InputError: the rest of the file cannot be found."""
    raw = path.read_bytes()
    if raw.startswith(_BOM):
        raw = raw[len(_BOM):]  # character offsets are then those of the text read back the same way
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise InputError(f"{path}:{line}: not UTF-8 text at byte {err.start}") from None
    pos, line, n = 0, 1, len(text)

    def skip_space(pos: int, line: int) -> tuple[int, int]:
        while pos < n and text[pos] in " \t\r\n":
            line += text[pos] == "\n"
            pos += 1
        return pos, line

    def decode(pos: int, line: int):
        try:
            record, end = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
        return record, end, line + text.count("\n", pos, end)

    pos, line = skip_space(pos, line)
    if pos < n and text[pos] == "[":
        pos, line = skip_space(pos + 1, line)
        if pos < n and text[pos] == "]":
            pos += 1
        else:
            while True:
                start, start_line = pos, line
                record, pos, line = decode(pos, line)
                yield record, start, start_line
                pos, line = skip_space(pos, line)
                if pos < n and text[pos] == ",":
                    pos, line = skip_space(pos + 1, line)
                elif pos < n and text[pos] == "]":
                    pos += 1
                    break
                else:
                    raise InputError(f"{path}:{line}: invalid JSON (expected ',' or ']' after an array element)")
        pos, line = skip_space(pos, line)
        if pos < n:
            raise InputError(f"{path}:{line}: invalid JSON (extra data after the array)")
        return
    while pos < n:
        start, start_line = pos, line
        record, pos, line = decode(pos, line)
        yield record, start, start_line
        pos, line = skip_space(pos, line)


def _example_hash(example: Example) -> int:
    if example.text is not None:
        canonical = ["text", example.text]
    else:
        canonical = [[m.role, m.content] for m in example.messages]
    data = _CANONICAL.encode(canonical).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")
