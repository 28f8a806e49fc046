"""`belle serve`: the model behind an OpenAI-compatible HTTP API, for other programs on this machine
(or, with an API key, on the network). The API itself is in app/server.py."""

import ipaddress
import os
import signal
import socket

from . import models, paths
from .errors import BelleError
from .template_data import TEMPLATE_NAMES


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API (/v1)")
    p.add_argument("-m", "--model", help="path, catalog id or local file name (default: the default model)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; any other needs an API key)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on every request (default: $BELLE_API_KEY, "
                        "which keeps the key out of the process list)")
    p.add_argument("--n-ctx", type=int, default=4096, help="context size in tokens (default 4096)")
    p.add_argument("-t", "--template", choices=("auto", *TEMPLATE_NAMES), default="auto",
                   help="chat template (default auto: the model's own)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: the physical cores)")
    p.add_argument("--n-gpu-layers", type=int, default=0, help="layers to offload to a GPU (needs a GPU build)")
    p.add_argument("--save", action="store_true",
                   help="save each chat completion as a conversation (belle chat and the app show them)")
    p.set_defaults(func=run)


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port. Bound here, before the model
    loads, so a port in use is a one-line error at once rather than after the load."""
    if not 0 <= port <= 65535:
        raise BelleError(f"--port {port}: must be between 0 and 65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as err:
        raise BelleError(f"--host {host}: not an address this machine can listen on ({err.strerror})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        sock.close()
        raise BelleError(f"--host {host} --port {port}: cannot listen there ({paths.os_reason(err)}); "
                         "pick another --port") from None
    return sock


def check_exposure(host: str, api_key: str | None) -> None:
    """Anything but loopback can be reached by other machines: without a key anyone there could use
    the model (and with --save write into the user's conversations)."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM,
                                                                 flags=socket.AI_PASSIVE)}
    except socket.gaierror as err:
        raise BelleError(f"--host {host}: not an address this machine can listen on ({err.strerror})") from None
    if api_key is None and not all(ipaddress.ip_address(a).is_loopback for a in addresses):
        raise BelleError(f"--host {host} can be reached from other machines: give --api-key KEY (or set "
                         "BELLE_API_KEY), or keep the default --host 127.0.0.1")


def run(args) -> int:
    import logging

    try:
        import fastapi  # noqa: F401  (imported by .server; checked here for a clear message)
        import uvicorn
    except ImportError as err:
        raise BelleError(f"belle serve needs the 'serve' extra ({err.name} is not installed): "
                         "pip install 'belle[serve]'") from None

    from .catalog import load_catalog
    from .chat_store import ChatStore
    from .config import load_config
    from .engine import Engine, LoadSettings
    from .server import ServeOptions, build_app
    from .session import MAX_N_CTX, MIN_N_CTX

    if not MIN_N_CTX <= args.n_ctx <= MAX_N_CTX:
        raise BelleError(f"--n-ctx {args.n_ctx}: must be between {MIN_N_CTX} and {MAX_N_CTX}")
    if args.threads is not None and args.threads < 1:
        raise BelleError(f"--threads {args.threads}: must be at least 1")
    api_key = args.api_key or os.environ.get("BELLE_API_KEY") or None
    check_exposure(args.host, api_key)
    path = models.resolve(args.model)
    entry = load_catalog().by_file(path.name)
    sock = listen(args.host, args.port)
    engine = store = None
    try:
        settings = LoadSettings(n_ctx=args.n_ctx, n_threads=args.threads or load_config().n_threads,
                                n_gpu_layers=args.n_gpu_layers, template=args.template)
        engine = Engine.load(path, settings, entry.template if entry else None)
        store = ChatStore(paths.store_path()) if args.save else None
        options = ServeOptions(entry.id if entry else path.name, path.name, api_key, args.template)
        app = build_app(engine, options, store)
        verbose = logging.getLogger().isEnabledFor(logging.INFO)
        # log_config=None: uvicorn logs through belle's logging (quiet unless -v), never prints itself
        config = uvicorn.Config(app, log_config=None, access_log=verbose, lifespan="off", ws="none",
                                timeout_graceful_shutdown=5)

        class Server(uvicorn.Server):
            stopped_by_ctrl_c = False

            def handle_exit(self, sig, frame) -> None:
                self.stopped_by_ctrl_c |= sig == signal.SIGINT
                app.state.belle.shutdown()  # cancel the replies, or uvicorn waits for each to finish
                super().handle_exit(sig, frame)

        port = sock.getsockname()[1]
        shown = f"[{args.host}]" if ":" in args.host else args.host
        print(f"belle serve: serving {options.model_id} on http://{shown}:{port}/v1 (Ctrl+C stops)", flush=True)
        server = Server(config)
        server.run(sockets=[sock])
        if server.stopped_by_ctrl_c:
            # uvicorn raises the signal again once it has shut down, which normally ends belle with
            # KeyboardInterrupt (exit 130), but one full test run still saw exit 0 after a Ctrl+C
            # during a reply (cause not found); the exit status must not depend on it
            raise KeyboardInterrupt
    finally:
        sock.close()
        if engine is not None:
            engine.close()
        if store is not None:
            store.close()
    return 0
