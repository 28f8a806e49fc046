"""Where belle keeps its files. BELLE_HOME overrides everything (tests give each test its own); a
Flet-built app (the phone build) keeps them in its own data folder."""

import errno
import os
import tempfile
from pathlib import Path

import platformdirs

from .errors import BelleError


def home() -> Path:
    """BELLE_HOME when set; else the durable data folder Flet gives a built app (a phone, a packaged
    desktop app: FLET_APP_STORAGE_DATA, kept and backed up by the OS, unlike its cache or temp
    folders); else the platform's user data folder."""
    for var in ("BELLE_HOME", "FLET_APP_STORAGE_DATA"):
        env = os.environ.get(var)
        if env:
            path = Path(env).expanduser()
            # Caught here once, or every command fails later with a confusing "Not a directory".
            if path.exists() and not path.is_dir():
                raise BelleError(f"{var}={env}: is a file, not a folder; point {var} at a folder")
            return path
    return Path(platformdirs.user_data_dir("belle", appauthor=False))


def models_dir() -> Path:
    env = os.environ.get("BELLE_MODELS_DIR")
    return Path(env).expanduser() if env else home() / "models"


def store_path() -> Path:
    return home() / "belle.db"


def config_path() -> Path:
    return home() / "config.json"


def history_path() -> Path:
    """Readline history of the CLI chat."""
    return home() / "chat_history"


def os_reason(err: OSError) -> str:
    """The cause of a failed file operation in words ("read-only file system", "permission denied")."""
    if err.errno == errno.EEXIST:
        return "a file of that name is in the way"
    if err.errno == errno.ENOTDIR:
        return "part of the path is a file, not a folder"
    return (err.strerror or str(err)).lower()


def ensure(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BelleError(f"{path}: cannot create this folder ({os_reason(err)})") from None
    return path


def ensure_writable(folder: Path) -> Path:
    """Create `folder` if needed and check that files can be written in it, before a long download
    or benchmark rather than after. Trying is the only reliable test: os.access ignores ACLs and
    network file systems, and root passes permission checks that a read-only mount still refuses."""
    ensure(folder)
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".belle-write-check-"):
            pass
    except OSError as err:
        raise BelleError(f"{folder}: cannot write to this folder ({os_reason(err)})") from None
    return folder
