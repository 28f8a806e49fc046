"""Saved llama.cpp KV states, one file per conversation, so reopening a long conversation does not
read its whole history again (a 7B model on a laptop CPU reads ~16 tokens/s: 2 minutes for 2,000).

- What is saved: llama.cpp's *sequence* state of seq 0 (the KV cells only, `llama_state_seq_*`),
  not `Llama.save_state()`, which also copies the n_batch x n_vocab float32 scores (~100 MB on
  SmolLM2) and the whole context. No logits are needed: Reply._read_prompt leaves the last prompt
  token for `generate` to evaluate.
- When it may be loaded: the file's header names the conversation, the model file (resolved path,
  size, mtime_ns), n_ctx, template, KV cache type, flash attention, llama_cpp.__version__ (the
  state format is not stable across llama.cpp versions) and the exact tokens in the KV. Any
  difference, a short file or a wrong crc32 means "read the conversation again", logged on one
  line, never an error for the user. Only the common prefix of the saved tokens and the new prompt
  is used, so an edited history restores what still matches.
- Writing: to a temporary file in the same folder, fsync, os.replace, so a crash leaves either the
  old state or the new one, never half of one. Saving runs in a background thread after the reply
  ended (`schedule_save`), takes the engine's lock only to copy the KV, and writes outside it.
- Disk budget: after each save the least recently used states (mtime: a save or a restore
  touches it) are deleted until the folder is under the budget.
"""

import ctypes
import itertools
import json
import logging
import os
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from . import paths

log = logging.getLogger(__name__)

MAGIC = b"BELLE-KV-STATE 1\n"  # then one line of JSON header, then the payload
FORMAT_VERSION = 1
# The header fields a state must share with the engine to be loaded.
IDENTITY_KEYS = ("format", "model_path", "model_size", "model_mtime_ns", "n_ctx", "template", "kv_type",
                 "flash_attn", "llama_cpp")
MAX_HEADER = 64 << 20  # a header is ~8 bytes a token; more than this is not a header of ours
# A temporary file this old is a crashed write's leftover (a write takes seconds); younger ones may
# belong to another belle process writing right now.
STALE_TMP_S = 3600


def folder() -> Path:
    return paths.home() / "states"


def state_path(where: Path, conversation: int) -> Path:
    return where / f"conv-{conversation}.state"


def model_identity(path) -> dict:
    """Taken when the model is loaded: a file replaced later must not match the loaded weights."""
    resolved = Path(path).resolve()
    st = resolved.stat()
    return {"model_path": str(resolved), "model_size": st.st_size, "model_mtime_ns": st.st_mtime_ns}


def identity(engine, template: str) -> dict:
    import llama_cpp

    return {"format": FORMAT_VERSION, **engine.model_identity, "n_ctx": engine.settings.n_ctx, "template": template,
            "kv_type": engine.settings.kv_type, "flash_attn": engine.flash_attn, "llama_cpp": llama_cpp.__version__}


@dataclass
class Snapshot:
    conversation: int
    header: dict  # identity + tokens
    payload: ctypes.Array
    seq: int  # order of snapshots in this process: an older one never replaces a newer file


@dataclass
class StatesUsage:
    count: int
    total_bytes: int


# reading and restoring

def read_header(path: Path) -> tuple[dict, int] | None:
    """(header, payload offset), or None when the file is missing or not one of ours."""
    try:
        with open(path, "rb") as fh:
            return _read_header(fh, path)
    except FileNotFoundError:
        return None
    except OSError as err:
        log.warning("%s: unreadable saved state (%s); reading the conversation again", path, paths.os_reason(err))
        return None


def _read_header(fh, path: Path) -> tuple[dict, int] | None:
    if fh.read(len(MAGIC)) != MAGIC:
        log.warning("%s: not a saved state (bad magic); ignoring it", path)
        return None
    line = fh.readline(MAX_HEADER)
    try:
        header = json.loads(line)
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
    except ValueError as err:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        log.warning("%s: unreadable saved state (%s); reading the conversation again", path, err)
        return None
    return header, len(MAGIC) + len(line)


def _mismatch(header: dict, want: dict) -> str | None:
    for key in IDENTITY_KEYS:
        if header.get(key) != want[key]:
            return f"{key} {header.get(key)!r} != {want[key]!r}"
    return None


def _load_payload(fh, path: Path, header: dict) -> ctypes.Array | None:
    """The payload that follows the header in `fh` (the same open file: a save by another process
    may replace the path in between), checked for size and crc32."""
    size = header.get("payload_size")
    if not isinstance(size, int) or size <= 0:
        log.warning("%s: saved state has no payload size; reading the conversation again", path)
        return None
    left = os.fstat(fh.fileno()).st_size - fh.tell()
    if left != size:  # checked before allocating: a damaged size field could ask for any amount
        log.warning("%s: saved state is truncated or too long (%d of %d payload bytes); reading the conversation "
                    "again", path, left, size)
        return None
    buf = (ctypes.c_uint8 * size)()
    got = fh.readinto(memoryview(buf).cast("B"))
    extra = fh.read(1)
    if got != size or extra:
        log.warning("%s: saved state is truncated or too long (%d of %d payload bytes); reading the conversation "
                    "again", path, got, size)
        return None
    if zlib.crc32(buf) != header.get("crc32"):
        log.warning("%s: saved state is corrupted (crc32 mismatch); reading the conversation again", path)
        return None
    return buf


def restore(engine, where: Path, conversation: int, template: str, tokens: list[int]) -> int:
    """Called under engine.lock before the prompt is read. Loads the conversation's saved state
    into seq 0 when it matches this engine and shares a longer prefix with `tokens` than what is in
    the KV now. Returns how many prompt tokens it provides (0: nothing restored)."""
    path = state_path(where, conversation)
    try:
        with open(path, "rb") as fh:
            return _restore_from(engine, fh, path, conversation, template, tokens)
    except FileNotFoundError:
        return 0
    except OSError as err:
        log.warning("%s: cannot read saved state (%s); reading the conversation again", path, paths.os_reason(err))
        return 0  # read before the KV was touched
    except Exception:  # a restore is an optimisation: whatever went wrong, the reply reads the prompt instead
        log.exception("%s: restoring the saved state failed; reading the conversation again", path)
    engine.llm._ctx.kv_cache_clear()  # the KV may hold part of the state: start from nothing
    engine.llm.n_tokens = 0
    return 0


def _restore_from(engine, fh, path: Path, conversation: int, template: str, tokens: list[int]) -> int:
    from .engine import _common_prefix
    import llama_cpp

    found = _read_header(fh, path)
    if found is None:
        return 0
    header = found[0]
    why = _mismatch(header, identity(engine, template))
    if why is None and header.get("conversation") != conversation:
        why = f"conversation {header.get('conversation')!r} != {conversation}"
    saved = header.get("tokens")
    if why is None and (not isinstance(saved, list) or len(saved) != header.get("n_tokens")):
        why = "token list does not match n_tokens"
    if why:
        log.info("%s: saved state does not fit (%s); reading the conversation again", path, why)
        return 0
    llm = engine.llm
    usable = min(_common_prefix(saved, tokens), len(tokens) - 1)
    in_memory = min(_common_prefix(llm._input_ids.tolist(), tokens), len(tokens) - 1) if llm.n_tokens else 0
    if usable <= in_memory:
        return 0  # the KV already holds as much (a conversation chatted in right now), or nothing matches
    if len(saved) > len(llm.input_ids):
        log.info("%s: saved state holds more tokens than the context; reading the conversation again", path)
        return 0
    payload = _load_payload(fh, path, header)
    if payload is None:
        return 0
    t0 = time.perf_counter()
    llm._ctx.kv_cache_clear()  # set_data adds cells; whatever was there belongs to another prompt
    llm.n_tokens = 0
    if not llama_cpp.llama_state_seq_set_data(llm._ctx.ctx, payload, len(payload), 0):
        llm._ctx.kv_cache_clear()
        log.warning("%s: llama.cpp refused the saved state; reading the conversation again", path)
        return 0
    llm.input_ids[: len(saved)] = saved
    llm.n_tokens = len(saved)  # Reply._read_prompt drops the cells past the common prefix
    try:
        os.utime(path)  # most recently used: the last to be evicted
    except OSError:
        pass
    log.info("%s: restored %d tokens (%d usable) in %.3f s", path, len(saved), usable, time.perf_counter() - t0)
    return usable


# snapshots and writing

_seq = itertools.count(1)  # next() on a count is atomic: engines snapshot under their own locks


def snapshot(engine) -> Snapshot | None:
    """Copy what the engine's KV holds now. The caller holds engine.lock."""
    import llama_cpp

    llm = engine.llm
    if engine.closed or engine.owner is None or not llm.n_tokens:
        return None
    n = llm.n_tokens
    # generate() stops before evaluating its last sampled token; cells past n_tokens (none are
    # expected) would be saved under tokens that do not describe them
    llm._ctx.kv_cache_seq_rm(0, n, -1)
    size = llama_cpp.llama_state_seq_get_size(llm._ctx.ctx, 0)
    payload = (ctypes.c_uint8 * size)()
    if llama_cpp.llama_state_seq_get_data(llm._ctx.ctx, payload, size, 0) != size:
        log.warning("llama.cpp could not copy the KV state of conversation %s; not saved", engine.owner)
        return None
    header = {**identity(engine, engine.owner_template), "conversation": engine.owner,
              "n_tokens": n, "tokens": llm.input_ids[:n].tolist()}
    return Snapshot(engine.owner, header, payload, next(_seq))


_write_lock = threading.Lock()
_written: dict[tuple[str, int], int] = {}  # (folder, conversation) -> seq of the snapshot on disk


def write(where: Path, snap: Snapshot, budget_bytes: int) -> Path | None:
    """Write a snapshot (temporary file, fsync, rename), then keep the folder under the budget."""
    path = state_path(where, snap.conversation)
    key = (str(where), snap.conversation)
    with _write_lock:  # one writer at a time in this process, and never an older snapshot over a newer one
        if _written.get(key, 0) > snap.seq:
            return None
        header = {**snap.header, "payload_size": len(snap.payload), "crc32": zlib.crc32(snap.payload)}
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: two belle processes may save at once
        t0 = time.perf_counter()
        try:
            where.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(MAGIC)
                fh.write(json.dumps(header, separators=(",", ":")).encode("utf-8") + b"\n")
                fh.write(memoryview(snap.payload).cast("B"))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as err:
            log.warning("%s: cannot save the conversation's state (%s)", path, paths.os_reason(err))
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            return None
        _written[key] = snap.seq
        log.info("%s: saved %d tokens, %d bytes in %.3f s", path, header["n_tokens"], len(snap.payload),
                 time.perf_counter() - t0)
        evict(where, budget_bytes)
        return path


def _files(where: Path) -> tuple[list[Path], list[Path]]:
    """(state files, temporary files) in the folder."""
    try:
        names = list(where.iterdir())
    except OSError:
        return [], []
    return ([p for p in names if p.name.startswith("conv-") and p.name.endswith(".state")],
            [p for p in names if p.name.startswith("conv-") and p.name.endswith(".tmp")])


def evict(where: Path, budget_bytes: int) -> None:
    """Delete crashed writes' leftovers, then the least recently used states until the folder is
    under the budget (a single state larger than the budget goes too: the budget is a cap)."""
    states, tmps = _files(where)
    now = time.time()
    for tmp in tmps:
        try:
            if now - tmp.stat().st_mtime > STALE_TMP_S:
                tmp.unlink()
                log.info("%s: removed a temporary file left by an interrupted save", tmp)
        except OSError:
            pass
    sized = []
    for p in states:
        try:
            st = p.stat()
        except OSError:
            continue
        sized.append((st.st_mtime_ns, p.name, p, st.st_size))
    sized.sort()  # oldest first; the name breaks ties on file systems with coarse times
    total = sum(s[3] for s in sized)
    for _, _, p, size in sized:
        if total <= budget_bytes:
            break
        try:
            p.unlink()
            total -= size
            log.info("%s: removed to stay under the saved states' disk budget", p)
        except OSError as err:
            log.warning("%s: cannot remove (%s)", p, paths.os_reason(err))


def disk_used(where: Path | None = None) -> StatesUsage:
    states, tmps = _files(where or folder())
    count, total = 0, 0
    for p in states + tmps:
        try:
            total += p.stat().st_size
            count += p in states
        except OSError:
            pass
    return StatesUsage(count, total)


def clear(where: Path | None = None) -> StatesUsage:
    """Delete every saved state (and temporary file); returns what was deleted."""
    states, tmps = _files(where or folder())
    count, total = 0, 0
    for p in states + tmps:
        try:
            size = p.stat().st_size
            p.unlink()
            total += size
            count += p in states
        except OSError as err:
            log.warning("%s: cannot remove (%s)", p, paths.os_reason(err))
    return StatesUsage(count, total)


# background saving

@dataclass
class _Job:
    engine: object
    where: Path
    budget_bytes: int
    snap: Snapshot | None = None
    taken: bool = False  # the snapshot was copied (by the job, or early by the next reply)
    thread: threading.Thread | None = field(default=None, repr=False)


_jobs_lock = threading.Lock()
_pending: dict[tuple[int, int], _Job] = {}  # (id(engine), conversation) -> job whose snapshot is not taken yet
_threads: list[threading.Thread] = []


def schedule_save(engine, conversation: int, where: Path, budget_bytes: int) -> None:
    """After a reply ended (the caller does not hold engine.lock): save the KV in the background.
    At most one pending save per conversation: a second one would copy the same KV."""
    key = (id(engine), conversation)
    with _jobs_lock:
        if key in _pending:
            return
        job = _Job(engine, where, budget_bytes)
        _pending[key] = job
        job.thread = threading.Thread(target=_run_job, args=(key, job), name=f"belle-kv-save-{conversation}",
                                      daemon=True)
        _threads[:] = [t for t in _threads if t.is_alive()]
        _threads.append(job.thread)
        job.thread.start()


def _run_job(key: tuple[int, int], job: _Job) -> None:
    try:
        with job.engine.lock:
            with _jobs_lock:
                if _pending.get(key) is job:
                    del _pending[key]
                taken = job.taken
                job.taken = True
            if not taken:
                # If another reply took the lock first, this copies what is in the KV now, under
                # its owner: still a correct state, just of that conversation.
                job.snap = snapshot(job.engine)
        if job.snap is not None:
            write(job.where, job.snap, job.budget_bytes)
    except Exception:  # a failed save must never reach the user; the next reply saves again
        log.exception("saving a conversation state failed")


def before_reply(engine, conversation: int | None) -> None:
    """Called under engine.lock when a reply starts: if the KV still holds another conversation
    whose save has not copied it yet, copy it now, before this reply overwrites it (the write
    itself still happens in the background). Costs a memory copy only when switching."""
    owner = engine.owner
    if owner is None or owner == conversation:
        return
    with _jobs_lock:
        job = _pending.pop((id(engine), owner), None)
        if job is None or job.taken:
            return
        job.taken = True
    job.snap = snapshot(engine)


def flush(timeout: float | None = None) -> bool:
    """Wait for the saves started so far (before exit, before a model is freed, in tests). Must
    not be called while holding an engine's lock. True if all finished."""
    with _jobs_lock:
        threads = [t for t in _threads if t.is_alive()]
    deadline = None if timeout is None else time.monotonic() + timeout
    for t in threads:
        t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
    return not any(t.is_alive() for t in threads)
