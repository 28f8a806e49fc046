"""Entry point for `flet build apk|ipa` ([tool.flet.app] module = "main"): the chat app alone.
On a desktop use `belle ui` instead."""

import flet as ft

from belle.app import paths
from belle.app.chat_store import ChatStore
from belle.app.session import EngineCache
from belle.app.ui.app import make_main

if __name__ == "__main__":
    ft.run(make_main(ChatStore(paths.store_path()), EngineCache()), assets_dir="assets")
