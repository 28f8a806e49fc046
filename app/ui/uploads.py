"""Files picked in the browser reach the server by HTTP upload, not through the websocket.

`FilePicker.pick_files(with_data=True)` makes the web client read the whole file and send it as
one websocket message: for a 98 MB model that froze the tab for minutes while Python waited (the
dialog never answered). Flet's upload instead PUTs the file to a signed URL
(`page.get_upload_url`) and reports progress through `FilePicker.on_upload`; the server only
accepts such PUTs when it has an upload folder and a signing key, which Flet reads from
FLET_UPLOAD_DIR and FLET_SECRET_KEY when it starts. `enable()` sets both (unless already set)
and must run before `ft.run`."""

import os
import secrets
import shutil
import uuid
from pathlib import Path

from .. import paths


def folder() -> Path:
    return Path(os.environ.get("FLET_UPLOAD_DIR") or paths.home() / "uploads")


def enable() -> Path:
    """Point Flet's upload handler at BELLE_HOME/uploads, with a key made for this server run."""
    os.environ.setdefault("FLET_UPLOAD_DIR", str(paths.ensure(paths.home() / "uploads")))
    os.environ.setdefault("FLET_SECRET_KEY", secrets.token_hex(32))
    return folder()


def enabled() -> bool:
    return bool(os.environ.get("FLET_UPLOAD_DIR") and os.environ.get("FLET_SECRET_KEY"))


def new_name(file_name: str) -> str:
    """Where in the upload folder one picked file goes: a folder of its own, so two tabs importing
    files of the same name do not write into each other."""
    return f"{uuid.uuid4().hex}/{Path(file_name).name}"


def discard(path: Path) -> None:
    """Remove an uploaded file and its folder once imported (or failed)."""
    shutil.rmtree(path.parent, ignore_errors=True)
