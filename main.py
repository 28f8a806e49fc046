"""Entry point for `flet build apk|ipa|linux|macos|windows` ([tool.flet.app] module = "main"): the
chat app alone. On a desktop with belle installed use `belle ui` instead."""

import importlib.util
import sys
import types
from pathlib import Path

# A `flet build` package holds this folder as it is in the repository, not an installed belle: the
# install maps belle.app -> app/, belle.assets -> assets/ ([tool.setuptools] package-dir). Without
# an install, a `belle` package whose path is this folder gives the same names, so the app's
# `from belle.app ...` / `belle.assets` imports work unchanged. An installed belle is left alone.
if importlib.util.find_spec("belle") is None:
    _belle = types.ModuleType("belle")
    _belle.__path__ = [str(Path(__file__).resolve().parent)]
    sys.modules["belle"] = _belle

import flet as ft  # noqa: E402

from belle.app import paths  # noqa: E402
from belle.app.chat_store import ChatStore  # noqa: E402
from belle.app.session import EngineCache  # noqa: E402
from belle.app.ui.app import make_main  # noqa: E402

if __name__ == "__main__":
    ft.run(make_main(ChatStore(paths.store_path()), EngineCache()), assets_dir="assets")
