"""`belle ui`: the chat app. A desktop window where the Flet desktop client is available, otherwise
(no display, or flet-desktop not installed: it downloads the Flutter client at first run) the web
version on localhost. The web client is served with no_cdn=True: CanvasKit and fonts come from the
flet-web package, so it renders offline."""

import importlib.util
import os
import socket
import sys
from importlib import resources

from .errors import BelleError

DEFAULT_PORT = 8550


def add_parser(sub) -> None:
    p = sub.add_parser("ui", help="open the chat app (desktop window, or --web for a browser tab)")
    p.add_argument("--web", action="store_true", help="serve the app to a browser on this machine")
    p.add_argument("--port", type=int, default=None, help=f"web port (default {DEFAULT_PORT}, or a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--no-browser", action="store_true", help="serve without opening a browser")
    p.set_defaults(func=run)


def desktop_unavailable() -> str | None:
    """Why the desktop window cannot open here, or None if it can."""
    if importlib.util.find_spec("flet_desktop") is None:
        return "the Flet desktop client (flet-desktop) is not installed"
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "there is no display"
    return None


def free_port(host: str, preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind((host, preferred))
            return preferred
        except OSError:
            s.bind((host, 0))
            return s.getsockname()[1]


def run(args) -> int:
    try:
        import flet as ft
    except ModuleNotFoundError:
        raise BelleError("the UI needs Flet: pip install 'belle[ui]'") from None
    import flet.app as flet_app

    from . import paths
    from .chat_store import ChatStore
    from .config import load_config
    from .session import EngineCache
    from .ui.app import make_main

    web = args.web
    if not web:
        why = desktop_unavailable()
        if why:
            print(f"belle ui: {why}; serving the web version instead.", flush=True)
            web = True
    assets = str(resources.files("belle.assets"))
    store = ChatStore(paths.store_path())
    engines = EngineCache(n_threads=load_config().n_threads)
    main = make_main(store, engines)
    if not web:
        ft.run(main, name="Belle", view=ft.AppView.FLET_APP, assets_dir=assets)
        return 0
    port = args.port or free_port(args.host, DEFAULT_PORT)
    url = f"http://{args.host}:{port}/"
    if args.no_browser:
        # Flet opens the system browser itself when it starts a web server; tests and servers need it not to.
        flet_app.open_in_browser = lambda page_url: None
    print(f"belle ui: serving on {url} (Ctrl+C stops)", flush=True)
    try:
        ft.run(main, name="", host=args.host, port=port, view=ft.AppView.WEB_BROWSER, assets_dir=assets,
               no_cdn=True)
    finally:
        engines.close()
        store.close()
    return 0
