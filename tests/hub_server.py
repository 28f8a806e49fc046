"""A local HTTP server that speaks the Hugging Face hub's download protocol, for download tests.

HEAD or GET {url}/{repo}/resolve/{revision}/{file} answers 302 with the hub's headers (ETag,
X-Linked-Etag = sha256, X-Linked-Size, X-Repo-Commit) and a Location on a "CDN" path of the same
server, which serves the bytes with Range support, as the real hub's CDN does. Faults to inject:
- cut_at: close the connection after sending the body up to this file offset (once: it is cleared);
- corrupt_at: send a wrong byte at this offset (every time, until cleared);
- delay_s: sleep between 64 KiB pieces (a slow line);
- hold_at: stop sending at this file offset until `release()` (a stalled line that a test controls,
  so "the download is still running" never depends on how fast the machine is);
- ignore_range: answer every Range request with the whole file (200);
- token: refuse (401) resolve requests without `Authorization: Bearer TOKEN`;
- hide_hash: leave out ETag and X-Linked-Etag (a mirror that does not pass them on).
It also works as an HTTP proxy for any host name: a request for an absolute URL is served as if
that host were this server.
Every request is recorded (method, path, Range, Authorization) for the tests to check.
"""

import hashlib
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Served:
    path: Path
    sha256: str
    size: int


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    authorization: str | None
    proxied: bool = False  # asked for as a proxy (an absolute URL in the request line)


@dataclass
class FakeHub:
    files: dict[str, Served] = field(default_factory=dict)  # "repo/file" -> file on disk
    renamed: dict[str, str] = field(default_factory=dict)  # old repo name -> new
    requests: list[Request] = field(default_factory=list)
    cut_at: int | None = None
    corrupt_at: int | None = None
    delay_s: float = 0.0
    ignore_range: bool = False
    token: str | None = None
    hide_hash: bool = False
    hold_at: int | None = None
    released: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    def add(self, repo: str, file: str, path: Path) -> Served:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        served = Served(Path(path), digest.hexdigest(), Path(path).stat().st_size)
        self.files[f"{repo}/{file}"] = served
        return served

    def release(self) -> None:
        """Let a download held at `hold_at` go on (and later ones pass it)."""
        self.hold_at = None
        self.released.set()

    def ranges(self) -> list[str | None]:
        """The Range header of every request for bytes (None: from the start)."""
        return [r.range for r in self.requests if r.method == "GET" and r.path.startswith("/cdn/")]


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _record(self):
            proxied = self.path.startswith("http://")
            if proxied:  # a proxy is asked for the absolute URL: serve it as if it were ours
                self.path = "/" + self.path.split("/", 3)[3]
            hub.requests.append(Request(self.command, self.path, self.headers.get("Range"),
                                        self.headers.get("Authorization"), proxied))

        def do_HEAD(self):
            self._record()
            self._resolve()

        def do_GET(self):
            self._record()
            if self.path.startswith("/cdn/"):
                self._bytes(unquote(self.path[len("/cdn/"):]))
            else:
                self._resolve()

        def _error(self, code: int, message: str):
            body = message.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _resolve(self):
            parts = self.path.lstrip("/").split("/")
            if len(parts) < 5 or parts[2] != "resolve":
                return self._error(404, "not found")
            repo, file = "/".join(parts[:2]), unquote("/".join(parts[4:]))
            if repo in hub.renamed:  # the hub redirects a renamed repo with a relative Location
                self.send_response(307)
                self.send_header("Location", "/" + "/".join([hub.renamed[repo], *parts[2:]]))
                self.send_header("Content-Length", "0")
                return self.end_headers()
            if hub.token and self.headers.get("Authorization") != f"Bearer {hub.token}":
                return self._error(401, "Access to this repo is restricted")
            served = hub.files.get(f"{repo}/{file}")
            if served is None:
                return self._error(404, "Entry not found")
            self.send_response(302)
            self.send_header("Location", f"{hub.url}/cdn/{repo}/{quote(file)}")
            self.send_header("X-Repo-Commit", COMMIT)
            if not hub.hide_hash:
                self.send_header("ETag", f'"{served.sha256}"')
                self.send_header("X-Linked-Etag", f'"{served.sha256}"')
            self.send_header("X-Linked-Size", str(served.size))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _bytes(self, key: str):
            served = hub.files.get(key)
            if served is None:
                return self._error(404, "not found")
            start = 0
            rng = self.headers.get("Range")
            if rng and not hub.ignore_range:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{served.size - 1}/{served.size}")
            else:
                self.send_response(200)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(served.size - start))
            self.end_headers()
            with open(served.path, "rb") as fh:
                fh.seek(start)
                pos = start
                while pos < served.size:
                    if hub.hold_at is not None and pos >= hub.hold_at:
                        hub.released.wait()
                    size = 64 * 1024 if hub.hold_at is None or pos >= hub.hold_at else min(64 * 1024, hub.hold_at - pos)
                    chunk = bytearray(fh.read(size))
                    if hub.corrupt_at is not None and pos <= hub.corrupt_at < pos + len(chunk):
                        chunk[hub.corrupt_at - pos] ^= 0xFF
                    if hub.cut_at is not None and pos + len(chunk) > hub.cut_at > pos:
                        chunk = chunk[: hub.cut_at - pos]
                        hub.cut_at = None
                        self.wfile.write(chunk)
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    try:
                        self.wfile.write(chunk)
                    except (BrokenPipeError, ConnectionResetError):
                        return  # the client went away (a cancelled download)
                    pos += len(chunk)
                    if hub.delay_s:
                        time.sleep(hub.delay_s)

    return Handler


def start_hub() -> tuple[FakeHub, ThreadingHTTPServer]:
    hub = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return hub, server
