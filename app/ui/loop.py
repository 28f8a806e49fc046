"""Touch controls only on Flet's event loop: an update sent from a worker thread goes through an
asyncio queue that is not thread-safe and may sit there unsent."""

import asyncio
from collections.abc import Callable

import flet as ft


def on_loop(page: ft.Page, fn: Callable, *args) -> None:
    """Run fn(*args) on the page's event loop: now if already there, else as soon as the loop is free."""
    try:
        asyncio.get_running_loop()
        fn(*args)
    except RuntimeError:
        page.session.connection.loop.call_soon_threadsafe(fn, *args)
