"""The Flet desktop client: the Flutter program that draws `belle ui`'s window. flet-desktop 1.0.x
ships without it and downloads it from GitHub at the first window; belle fetches it itself first, so
that the download shows a progress line and a failure (offline, 404) can fall back to the web
version instead of ending in a traceback. The archive is unpacked exactly where flet_desktop looks
(its own helpers say where), so Flet then finds it and downloads nothing."""

import contextlib
import http.client
import logging
import os
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

GITHUB_RELEASES = "https://github.com/flet-dev/flet/releases/download"
ATTEMPTS = 3  # a dropped or timed-out connection is tried again; an HTTP error answer is not
TIMEOUT_S = 30


class ClientFetchError(Exception):
    """The client could not be fetched; the message is one line saying why."""


def artifact() -> str:
    """The archive flet_desktop would download on this machine (OS, glibc, CPU, light/full)."""
    import flet_desktop

    return flet_desktop.get_artifact_filename()


def client_version() -> str:
    import flet_desktop.version

    return flet_desktop.version.version


def cache_dir() -> Path:
    """Where flet_desktop keeps the unpacked client (~/.flet/client/flet-desktop-FLAVOR-VERSION).
    Its private helper is used rather than a copy of its rule, so the two cannot disagree; belle
    pins flet-desktop to one version, and tests/app/test_desktop_client.py checks the helper is there."""
    import flet_desktop

    return getattr(flet_desktop, "__get_client_storage_dir")()


def _bundled() -> bool:
    """A client archive inside the flet_desktop package (a PyInstaller bundle, `flet pack`)."""
    import flet_desktop

    return Path(flet_desktop.get_package_bin_dir(), artifact()).exists()


def _view_path_ok() -> bool:
    """FLET_VIEW_PATH names an unpacked client folder (how Flet is pointed at a client built locally)."""
    folder = os.environ.get("FLET_VIEW_PATH")
    if not folder or not Path(folder).is_dir():
        return False
    return any(Path(folder, name).exists() for name in ("flet", "flet.exe")) or any(
        p.suffix == ".app" for p in Path(folder).iterdir())


def client_ready() -> bool:
    """Whether Flet can open a window without downloading anything."""
    return _view_path_ok() or _bundled() or cache_dir().exists()


def client_url(mirror: str | None = None) -> str:
    """FLET_CLIENT_URL (Flet's own setting: the whole archive URL) wins; else a mirror of GitHub's
    release downloads (config.json `flet_client_url`: the version folder and file name are added);
    else GitHub."""
    if os.environ.get("FLET_CLIENT_URL"):
        return os.environ["FLET_CLIENT_URL"]
    base = (mirror or GITHUB_RELEASES).rstrip("/")
    return f"{base}/v{client_version()}/{artifact()}"


def _download(url: str, dest: Path, progress: Callable[[int, int | None], None], backoff_s: float) -> None:
    """Fetch url into dest; progress(bytes_so_far, total) after every piece."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp, open(dest, "wb") as out:
                total = int(resp.headers["Content-Length"]) if resp.headers.get("Content-Length") else None
                done = 0
                progress(done, total)
                while chunk := resp.read(1 << 16):
                    out.write(chunk)
                    done += len(chunk)
                    progress(done, total)
            if total is not None and done != total:
                raise ConnectionError(f"the connection closed after {done} of {total} bytes")
            return
        except urllib.error.HTTPError as err:  # the server answered: asking again will not change it
            raise ClientFetchError(f"HTTP {err.code} from {url}") from None
        except ValueError as err:  # not a URL urllib can fetch (a typo in FLET_CLIENT_URL or the setting)
            raise ClientFetchError(f"{url!r} is not a download address ({err})") from None
        except (OSError, http.client.HTTPException) as err:  # refused, reset, timed out, DNS, cut short
            reason = getattr(err, "reason", None) or err
            log.info("client download attempt %d of %d failed: %s", attempt, ATTEMPTS, reason)
            if attempt == ATTEMPTS:
                raise ClientFetchError(f"{url}: {reason} ({ATTEMPTS} attempts)") from None
            time.sleep(backoff_s * attempt)


def _unpack(archive: Path, name: str, into: Path) -> None:
    from flet.utils import safe_tar_extractall, safe_zip_extractall  # Flet's own path-traversal guards

    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                safe_zip_extractall(zf, str(into))
        else:
            with tarfile.open(archive, "r:gz") as tf:
                safe_tar_extractall(tf, str(into))
    except (OSError, tarfile.TarError, zipfile.BadZipFile, RuntimeError, EOFError) as err:
        raise ClientFetchError(f"the downloaded client archive is unusable ({err})") from None
    # the executable flet_desktop starts from this folder (see its __locate_and_unpack_flet_view)
    if not ((into / "flet" / "flet").is_file() or (into / "flet" / "flet.exe").is_file()
            or any(p.suffix == ".app" for p in into.iterdir())):
        raise ClientFetchError(f"the downloaded client archive has no Flet program in it ({name})")


def fetch(url: str, progress: Callable[[int, int | None], None], backoff_s: float = 1.0) -> Path:
    """Download the client from url and unpack it into cache_dir(). Nothing is left behind on
    failure: the archive goes to a temporary file and is unpacked into a sibling folder that is
    renamed into place only when complete, as flet_desktop itself does."""
    target = cache_dir()
    name = artifact()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="belle-flet-client-", suffix=name)
        os.close(fd)
        staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=target.parent))
    except OSError as err:
        raise ClientFetchError(f"cannot write to {target.parent} ({err.strerror or err})") from None
    try:
        _download(url, Path(tmp), progress, backoff_s)
        _unpack(Path(tmp), name, staging)
        try:
            staging.rename(target)
        except OSError as err:
            if not target.exists():  # otherwise another start unpacked the same client first
                raise ClientFetchError(f"cannot move the client into {target} ({err.strerror or err})") from None
        with contextlib.suppress(OSError):
            (target / ".last-used").touch()
        return target
    finally:
        Path(tmp).unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
