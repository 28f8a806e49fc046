"""Touch controls only on Flet's event loop: an update sent from a worker thread goes through an
asyncio queue that is not thread-safe and may sit there unsent."""

import asyncio
from collections.abc import Callable

import flet as ft


def on_loop(page: ft.Page, fn: Callable, *args) -> None:
    """Run fn(*args) on the page's event loop: now if already there, else as soon as the loop is free."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        connection = page.session.connection if page.session else None
        if connection is not None:  # None: the tab is gone; the reply is still saved by the worker
            connection.loop.call_soon_threadsafe(fn, *args)
        return
    fn(*args)
