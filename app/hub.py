"""Fetching model files from the Hugging Face hub, or a mirror of it, with plain HTTP.

Why not huggingface_hub: the phone build resolves an older huggingface_hub and has no hf-xet wheel,
and the part of the hub's protocol a single-file download needs is small and stable. This is what
huggingface_hub itself does for one file:

- HEAD {endpoint}/{repo}/resolve/{revision}/{file} without following redirects. For a file kept in
  LFS (every GGUF is) the answer carries X-Linked-Etag, the sha256 of the bytes; X-Linked-Size;
  X-Repo-Commit, the commit the revision named; and a Location on the CDN that serves the bytes.
  A *relative* Location means the repo was renamed: ask again there.
- GET the resolve URL, following redirects, with `Range: bytes=N-` to go on from byte N. A 206 with
  a Content-Range starting at N continues the file; a 200 means the server ignored the range and
  sends everything, so the partial file is started over.
- HF_TOKEN goes in `Authorization: Bearer`, to the endpoint only: urllib would carry an ordinary
  header across the redirect to the CDN, an "unredirected" one it drops.

Proxies come from the environment (HTTPS_PROXY, HTTP_PROXY, NO_PROXY): urllib's default opener
reads them. A mirror (HF_ENDPOINT, or the app's own setting) is another endpoint with the same URLs.
"""

import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

from .errors import CatalogError

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
USER_AGENT = "belle (offline chat; plain-HTTP hub client)"
# A stalled connection is given up after this long and the download goes on with a new one.
READ_TIMEOUT_S = 30
# Connection failures in a row (no byte arrived in between) before a download gives up; a retry
# waits 1, 2, 4, ... seconds. Each retry goes on from the bytes already on disk.
MAX_FAILURES = 5
_CHUNK = 64 * 1024  # small enough that a cancel is seen quickly on a slow line
_SPLIT_RE = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


class DownloadError(CatalogError):
    """The hub or the network failed, or the bytes did not verify."""


class DownloadCancelled(DownloadError):
    """The user cancelled; the partial file stays for a later resume."""


@dataclass(frozen=True)
class RemoteFile:
    repo: str
    revision: str
    file: str  # path inside the repo
    url: str  # the resolve URL
    size: int
    sha256: str | None  # the hub's LFS hash; None when the server gave none
    commit: str | None  # X-Repo-Commit

    @property
    def name(self) -> str:
        """The file name in the models folder."""
        return self.file.rsplit("/", 1)[-1]


def endpoint(mirror: str | None = None) -> str:
    """Where the hub is: an explicit mirror (the --mirror flag or the app's setting), else
    HF_ENDPOINT, else huggingface.co."""
    url = (mirror or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).strip().rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise DownloadError(f"hub mirror '{url}': not an http(s) URL (e.g. https://hf-mirror.com)")
    return url


def resolve_url(base: str, repo: str, revision: str, file: str) -> str:
    return f"{base}/{repo}/resolve/{urllib.parse.quote(revision, safe='')}/{urllib.parse.quote(file)}"


def is_ref(model: str) -> bool:
    """A hub file named directly (not a catalog id): hf:OWNER/REPO/FILE.gguf or a file's web URL."""
    return model.startswith(("hf:", "https://", "http://"))


def parse_ref(ref: str) -> tuple[str, str, str | None]:
    """(repo, file, revision or None) from 'hf:OWNER/REPO/path/FILE.gguf', or from the address of a
    file's page on the hub or a mirror (https://huggingface.co/OWNER/REPO/blob/REV/FILE.gguf, or
    .../resolve/REV/...), which is what people copy from the browser."""
    if ref.startswith("hf:"):
        parts, revision = ref[3:].split("/"), None
    else:
        parts = urllib.parse.urlsplit(ref).path.strip("/").split("/")
        if len(parts) < 5 or parts[2] not in ("blob", "resolve"):
            raise DownloadError(f"'{ref}': not the address of a file on the hub (expected "
                                "https://HOST/OWNER/REPO/blob/REVISION/FILE.gguf)")
        parts, revision = parts[:2] + parts[4:], urllib.parse.unquote(parts[3])
    if len(parts) < 3 or not all(parts) or not parts[-1].endswith(".gguf"):
        raise DownloadError(f"'{ref}': expected hf:OWNER/REPO/FILE.gguf "
                            "(e.g. hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf)")
    return "/".join(parts[:2]), urllib.parse.unquote("/".join(parts[2:])), revision


def split_files(file: str) -> list[str]:
    """All files of a split GGUF named like its first part (NAME-00001-of-00003.gguf); llama.cpp
    loads the set from the first part. A file that is not split is a set of one."""
    folder, _, name = file.rpartition("/")
    m = _SPLIT_RE.match(name)
    if not m:
        return [file]
    count = int(m["count"])
    if int(m["no"]) != 1:
        raise DownloadError(f"{name}: part {int(m['no'])} of a split model; ask for the first part, "
                            f"{m['prefix']}-00001-of-{m['count']}.gguf, and all {count} parts are fetched")
    return [(folder + "/" if folder else "") + f"{m['prefix']}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def is_later_split_part(name: str) -> bool:
    """Parts 2..N of a split GGUF: not models of their own (the first part stands for the set)."""
    m = _SPLIT_RE.match(name)
    return bool(m) and int(m["no"]) > 1


def split_siblings(path: Path) -> list[Path]:
    """The files of the set a first part belongs to (itself only when the file is not split)."""
    m = _SPLIT_RE.match(path.name)
    if not m or int(m["no"]) != 1:
        return [path]
    count = int(m["count"])
    return [path.with_name(f"{m['prefix']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


# --- HTTP -----------------------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """HEAD must not follow the redirect: urllib would turn it into a GET of the whole file."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _request(url: str, method: str = "GET", token: str | None = None, start: int = 0) -> urllib.request.Request:
    req = urllib.request.Request(url, method=method)
    req.add_header("User-Agent", USER_AGENT)
    req.add_header("Accept-Encoding", "identity")  # sizes and ranges count the bytes as stored
    if start:
        req.add_header("Range", f"bytes={start}-")
    if token:
        req.add_unredirected_header("Authorization", f"Bearer {token}")
    return req


def _token() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def _http_error(err: urllib.error.HTTPError, repo: str, file: str, revision: str) -> DownloadError:
    where = f"{repo}/{file} at {revision}"
    code = err.code
    if code in (401, 403):
        hint = ("set HF_TOKEN to a token that has access (gated repos: accept the licence on the repo's page first)"
                if not _token() else "HF_TOKEN has no access to it (gated repos: accept the licence on the repo's page)")
        return DownloadError(f"{where}: the hub refused access ({code}); {hint}")
    if code == 404:
        return DownloadError(f"{where}: no such file on the hub (404); check the repo, file name and revision")
    return DownloadError(f"{where}: the hub answered HTTP {code} {err.reason}")


def _network_reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.URLError) and not isinstance(err, urllib.error.HTTPError):
        err = err.reason if isinstance(err.reason, BaseException) else err
    if isinstance(err, (socket.timeout, TimeoutError)):
        return f"no data for {READ_TIMEOUT_S} s"
    return str(err) or type(err).__name__


def stat(repo: str, file: str, revision: str = "main", mirror: str | None = None) -> RemoteFile:
    """Size, sha256 and commit of one file, from the hub's answer to HEAD."""
    base = endpoint(mirror)
    url = resolve_url(base, repo, revision, file)
    opener = urllib.request.build_opener(_NoRedirect)
    for _ in range(5):  # a renamed repo redirects to its new name
        try:
            with opener.open(_request(url, "HEAD", _token()), timeout=READ_TIMEOUT_S) as resp:
                headers, location = resp.headers, None
        except urllib.error.HTTPError as err:
            if err.code not in (301, 302, 303, 307, 308):
                raise _http_error(err, repo, file, revision) from None
            headers, location = err.headers, err.headers.get("Location")
        except (urllib.error.URLError, OSError, HTTPException) as err:
            raise DownloadError(f"{base}: cannot reach the hub ({_network_reason(err)}); check the network, a proxy "
                                "(HTTPS_PROXY) or use a mirror of the hub (the app's mirror setting, --mirror URL "
                                "or HF_ENDPOINT)") from None
        if location and not urllib.parse.urlsplit(location).netloc:
            url = urllib.parse.urljoin(url, location)
            continue
        break
    size = headers.get("X-Linked-Size") or headers.get("Content-Length")
    if size is None:
        raise DownloadError(f"{url}: the server did not say how large the file is (no X-Linked-Size or Content-Length)")
    etag = (headers.get("X-Linked-Etag") or headers.get("ETag") or "").removeprefix("W/").strip('"').lower()
    return RemoteFile(repo, revision, file, url, int(size), etag if _SHA256_RE.match(etag) else None,
                      headers.get("X-Repo-Commit"))


# --- one file, resumable --------------------------------------------------------------------------


def _state_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _matching_part(part: Path, remote: RemoteFile, sha256: str | None) -> int:
    """Bytes of `part` that can be kept: all of them when it was started for this same file (same
    hash, size and commit), none when the file on the hub changed since or nothing says what it was."""
    state = _state_path(part)
    if not part.exists():
        state.unlink(missing_ok=True)
        return 0
    try:
        saved = json.loads(state.read_text())
    except (OSError, json.JSONDecodeError):
        saved = None
    want = _state(remote, sha256)
    if saved != want or part.stat().st_size > remote.size:
        log.info("%s: starting over (it was started for another version of the file)", part)
        part.unlink()
        return 0
    return part.stat().st_size


def _state(remote: RemoteFile, sha256: str | None) -> dict:
    """What a partial file was started for. Not the URL: a download begun on huggingface.co may go
    on from a mirror."""
    return {"repo": remote.repo, "file": remote.file, "size": remote.size, "sha256": sha256, "commit": remote.commit}


@dataclass(frozen=True)
class Unfinished:
    """A download that stopped before its end: `have` of `size` bytes of `repo`/`file` at `commit`."""
    part: Path
    repo: str
    file: str
    size: int
    commit: str | None
    have: int

    @property
    def ref(self) -> str:
        return f"hf:{self.repo}/{self.file}"


def unfinished(folder: Path) -> list[Unfinished]:
    """The partial downloads in `folder`, read from the record kept beside each (NAME.part.json)."""
    found = []
    for record in sorted(folder.glob("*.part.json")) if folder.is_dir() else []:
        part = record.with_name(record.name.removesuffix(".json"))
        have = partial_bytes(part)
        try:
            state = json.loads(record.read_text(encoding="utf-8"))
            found.append(Unfinished(part, str(state["repo"]), str(state["file"]), int(state["size"]),
                                    state.get("commit"), have))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable: the next download of that file starts it over
    return [u for u in found if u.have]


def forget(part: Path) -> None:
    """Remove a partial download and its record (bytes that failed the check, or a file that has
    been put in place)."""
    part.unlink(missing_ok=True)
    _state_path(part).unlink(missing_ok=True)


def partial_bytes(part: Path) -> int:
    """Bytes already fetched into a partial download (0 when there is none)."""
    try:
        return part.stat().st_size if _state_path(part).exists() else 0
    except OSError:
        return 0


@dataclass
class _Partial:
    """The bytes on disk and the hash of exactly those bytes, advanced together."""
    have: int
    digest: "hashlib._Hash"


def download(remote: RemoteFile, part: Path, sha256: str | None, progress: Progress | None = None,
             cancel: threading.Event | None = None, done_before: int = 0, total: int | None = None) -> str:
    """Fetch `remote` into `part`, going on from what is already there, and return the sha256 of
    the whole file. Connection failures are retried from the bytes on disk. The caller checks the
    hash and renames `part`; on cancel or failure `part` stays for the next attempt.
    `done_before`/`total` place this file in a larger download (the other parts of a split model)."""
    total = remote.size if total is None else total
    state = _Partial(_matching_part(part, remote, sha256), hashlib.sha256())
    _state_path(part).write_text(json.dumps(_state(remote, sha256)))
    if state.have:
        with open(part, "rb") as fh:  # hash what is there, so the final hash covers every byte
            while chunk := fh.read(1 << 20):
                state.digest.update(chunk)
    failures = 0
    while state.have < remote.size:
        if cancel is not None and cancel.is_set():
            raise DownloadCancelled(f"{remote.name}: download cancelled; {state.have:,} of {remote.size:,} bytes "
                                    "kept for the next attempt")
        before = state.have
        try:
            _get(remote, part, state, progress, cancel, done_before, total)
        except _Restart:
            part.unlink(missing_ok=True)
            state, failures = _Partial(0, hashlib.sha256()), 0
        except (urllib.error.URLError, OSError, HTTPException) as err:
            if isinstance(err, urllib.error.HTTPError) and err.code not in (408, 429, 500, 502, 503, 504):
                raise _http_error(err, remote.repo, remote.file, remote.revision) from None
            if not isinstance(err, (urllib.error.URLError, ConnectionError, TimeoutError, HTTPException)):
                raise DownloadError(f"{part}: cannot write ({(getattr(err, 'strerror', None) or err)})") from None
            failures = 0 if state.have > before else failures + 1
            if failures >= MAX_FAILURES:
                raise DownloadError(f"{remote.name}: the connection keeps failing ({_network_reason(err)}); "
                                    f"{state.have:,} of {remote.size:,} bytes are kept: download it again to go on "
                                    "from there") from None
            wait = 2 ** (failures - 1) if failures else 0
            log.warning("%s: connection lost at %d of %d bytes (%s); resuming%s", remote.name, state.have,
                        remote.size, _network_reason(err), f" in {wait} s" if wait else "")
            _sleep(wait, cancel)
    return state.digest.hexdigest()


class _Restart(Exception):
    """The server sent the whole file instead of the range asked for."""


def _sleep(seconds: float, cancel: threading.Event | None) -> None:
    if cancel is not None:
        cancel.wait(seconds)
    else:
        time.sleep(seconds)


def _get(remote: RemoteFile, part: Path, state: _Partial, progress: Progress | None,
         cancel: threading.Event | None, done_before: int, total: int) -> None:
    """One GET from byte `state.have` on. On a broken connection the file is cut back to the bytes
    the hash has seen, so the next attempt goes on from a consistent point."""
    with urllib.request.urlopen(_request(remote.url, token=_token(), start=state.have),
                                timeout=READ_TIMEOUT_S) as resp:
        if state.have and (resp.status == 200 or _content_range_start(resp.headers.get("Content-Range")) != state.have):
            log.info("%s: the server did not go on from byte %d; starting over", remote.name, state.have)
            raise _Restart()
        with open(part, "ab") as out:
            try:
                while state.have < remote.size and not (cancel is not None and cancel.is_set()):
                    chunk = resp.read(min(_CHUNK, remote.size - state.have))
                    if not chunk:
                        raise ConnectionError("the server closed the connection early")
                    out.write(chunk)
                    state.digest.update(chunk)
                    state.have += len(chunk)
                    if progress:
                        progress(done_before + state.have, total)
            finally:
                out.flush()
                out.truncate(state.have)
                os.fsync(out.fileno())


def _content_range_start(value: str | None) -> int | None:
    m = re.match(r"bytes (\d+)-", value or "")
    return int(m.group(1)) if m else None

