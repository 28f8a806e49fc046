"""`belle ui`: the chat app. A desktop window where the Flet desktop client is available, otherwise
(no display, flet-desktop not installed, or its Flutter client could not be downloaded at the first
window) the web version on localhost. The web client is served with no_cdn=True: CanvasKit and fonts
come from the flet-web package, so it renders offline."""

import argparse
import errno
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
    p.add_argument("--port", type=port_number, default=None, help=f"web port (default {DEFAULT_PORT}, or a free one)")
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


def ensure_client() -> str | None:
    """Make sure the Flet desktop client is on this machine, downloading it with a progress line
    (bytes, speed) the first time. Returns why it is not there, or None."""
    from . import desktop_client
    from .config import load_config

    if desktop_client.client_ready():
        return None
    url = desktop_client.client_url(load_config().flet_client_url)
    from tqdm import tqdm

    bar = None

    def progress(done: int, total: int | None) -> None:
        nonlocal bar
        if bar is None:  # only once the server answers: a refused download leaves no empty bar
            bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                       desc=f"Flet desktop client {desktop_client.client_version()} (first window only)")
        if done < bar.n:  # a new attempt after a dropped connection starts over
            bar.reset(total=total)
        bar.update(done - bar.n)

    try:
        desktop_client.fetch(url, progress)
    except desktop_client.ClientFetchError as err:
        if bar is not None:
            bar.leave = False  # the one line saying why is what stays on screen
        return f"cannot download the Flet desktop client ({err})"
    finally:
        if bar is not None:
            bar.close()
    return None


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (1-65535)")
    return port


def _bind(host: str, port: int) -> int:
    """Bind a throwaway socket the way the web server will, and return the port it got."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    with socket.socket(family, kind, proto) as s:
        # The server (uvicorn) sets SO_REUSEADDR as well: a port left in TIME_WAIT is free for it.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(address)
        return s.getsockname()[1]


def pick_port(host: str, requested: int | None) -> int:
    """Check --host and --port before Flet starts: otherwise a busy port or a foreign address ends
    in a long traceback from deep inside the web server. Without --port: DEFAULT_PORT, or any free
    port when that one is taken. Only binds locally; nothing is sent anywhere."""
    port = requested or DEFAULT_PORT
    try:
        try:
            return _bind(host, port)
        except OSError as err:
            if requested or err.errno != errno.EADDRINUSE:
                raise
            return _bind(host, 0)
    except socket.gaierror as err:
        raise BelleError(f"--host {host}: not an address to listen on ({err.strerror})") from None
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise BelleError(f"--port {port}: port {port} on {host} is already in use; pick another port, or leave "
                             "--port out to get a free one") from None
        if err.errno == errno.EADDRNOTAVAIL:
            raise BelleError(f"--host {host}: this machine has no such address; use 127.0.0.1 (this machine only) "
                             "or one of its own addresses") from None
        raise BelleError(f"--host {host} --port {port}: cannot listen there "
                         f"({(err.strerror or str(err)).lower()})") from None


def run(args) -> int:
    web = args.web
    if not web:
        why = desktop_unavailable() or ensure_client()
        if why:
            print(f"belle ui: {why}; serving the web version instead.", flush=True)
            web = True
    port = pick_port(args.host, args.port) if web else None
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

    assets = str(resources.files("belle.assets"))
    store = ChatStore(paths.store_path())
    engines = EngineCache(n_threads=load_config().n_threads)
    main = make_main(store, engines)
    if not web:
        ft.run(main, name="Belle", view=ft.AppView.FLET_APP, assets_dir=assets)
        return 0
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
