"""`belle ui`'s first desktop window: fetching the Flet desktop client (app/desktop_client.py).

The real client (a Flutter program on GitHub releases) cannot be downloaded on the offline test
machines, so a local HTTP server serves a tiny fake archive with the real layout (flet/flet). These
tests check OUR fetch and unpack code and that flet_desktop then finds the client where we put it;
they do not open a window or start the real client."""

import io
import os
import socket
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("flet_desktop")

from belle.app import cli_ui, desktop_client  # noqa: E402
from belle.app.config import AppConfig, save_config  # noqa: E402
from tests.conftest import ROOT, stop_process, wait_listening  # noqa: E402


def fake_client_archive() -> bytes:
    """A .tar.gz laid out like Flet's Linux client: flet/flet (the program) and flet/lib/."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data, mode in (("flet/flet", b"#!/bin/sh\nexit 0\n", 0o755),
                                 ("flet/lib/libapp.so", os.urandom(300_000), 0o644)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class ClientServer:
    """Serves `files` (path -> bytes); everything else is 404. Records the paths asked for."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests, self.cut_at = files, [], None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:server.cut_at])  # cut_at: the connection drops after so many bytes

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A HOME of its own: flet_desktop keeps the client in ~/.flet/client."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("FLET_CLIENT_URL", "FLET_VIEW_PATH", "FLET_DESKTOP_FLAVOR"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def server():
    srv = ClientServer({})
    yield srv
    srv.close()


def test_the_cache_folder_is_flet_desktops_own(home):
    import flet_desktop

    assert callable(getattr(flet_desktop, "__get_client_storage_dir", None)), "flet_desktop moved its cache helper"
    assert desktop_client.cache_dir() == home / ".flet" / "client" / f"flet-desktop-light-{desktop_client.client_version()}"
    assert desktop_client.client_url() == (f"https://github.com/flet-dev/flet/releases/download/"
                                           f"v{desktop_client.client_version()}/{desktop_client.artifact()}")
    assert not desktop_client.client_ready()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fake archive has the Linux layout")
def test_download_shows_progress_and_flet_finds_the_client(home, server, monkeypatch, capsys):
    server.files["/client.tar.gz"] = archive = fake_client_archive()
    monkeypatch.setenv("FLET_CLIENT_URL", server.url + "/client.tar.gz")

    assert cli_ui.ensure_client() is None
    err = capsys.readouterr().err
    assert "Flet desktop client" in err and "B/s" in err, err  # tqdm: bytes and speed
    assert f"{len(archive) / 1024:.0f}" in err or "k/" in err or "kB" in err, err
    program = desktop_client.cache_dir() / "flet" / "flet"
    assert program.is_file() and os.access(program, os.X_OK)
    assert [p.name for p in program.parents[1].parent.iterdir()] == [desktop_client.cache_dir().name]  # no leftovers

    # Flet itself now uses this client and downloads nothing (its own download would hit the server again)
    import flet_desktop

    assert flet_desktop.ensure_client_cached() == desktop_client.cache_dir()
    monkeypatch.chdir(home)  # flet_desktop prefers a build/linux client in the current folder
    args, _, pid_file = getattr(flet_desktop, "__locate_and_unpack_flet_view")("http://127.0.0.1:1/", None, False)
    assert args[0] == str(program)
    assert cli_ui.ensure_client() is None
    assert server.requests == ["/client.tar.gz"]


def test_the_mirror_setting_names_the_server(home, server):
    name = desktop_client.artifact()
    server.files[f"/releases/v{desktop_client.client_version()}/{name}"] = fake_client_archive()
    save_config(AppConfig(flet_client_url=server.url + "/releases/"))
    if sys.platform.startswith("linux"):
        assert cli_ui.ensure_client() is None
        assert (desktop_client.cache_dir() / "flet" / "flet").is_file()
    else:
        cli_ui.ensure_client()
    assert server.requests == [f"/releases/v{desktop_client.client_version()}/{name}"]


def test_a_broken_archive_is_refused_and_leaves_nothing(home, server, monkeypatch):
    server.files["/client.tar.gz"] = b"not a tar archive" * 100
    monkeypatch.setenv("FLET_CLIENT_URL", server.url + "/client.tar.gz")
    why = cli_ui.ensure_client()
    assert why.startswith("cannot download the Flet desktop client (the downloaded client archive is unusable"), why
    assert list((home / ".flet" / "client").iterdir()) == []


def test_a_dropped_connection_is_tried_again_then_given_up(home, server, monkeypatch):
    server.files["/client.tar.gz"] = fake_client_archive()
    server.cut_at = 1000
    monkeypatch.setenv("FLET_CLIENT_URL", server.url + "/client.tar.gz")
    monkeypatch.setattr(desktop_client, "fetch", lambda url, progress, backoff_s=0.0,
                        _fetch=desktop_client.fetch: _fetch(url, progress, backoff_s))
    why = cli_ui.ensure_client()
    assert why.startswith(f"cannot download the Flet desktop client ({server.url}/client.tar.gz: "), why
    assert why.endswith("(3 attempts))"), why
    assert server.requests == ["/client.tar.gz"] * 3
    assert list((home / ".flet" / "client").iterdir()) == []


def test_an_address_that_is_no_url_is_one_reason(home, monkeypatch):
    monkeypatch.setenv("FLET_CLIENT_URL", "github.com/flet-client.tar.gz")
    assert cli_ui.ensure_client() == ("cannot download the Flet desktop client ('github.com/flet-client.tar.gz' is "
                                      "not a download address (unknown url type: 'github.com/flet-client.tar.gz'))")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", ["404", "refused"])
def test_no_client_falls_back_to_web_in_one_line(case, home, server, tmp_path):
    """The real `belle ui` process with a display set (a dummy one: the decision is made before any
    window would open) and a client URL that answers 404 or refuses the connection."""
    url = server.url + "/missing.tar.gz" if case == "404" else f"http://127.0.0.1:{_closed_port()}/client.tar.gz"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HOME": str(home), "DISPLAY": ":99", "FLET_CLIENT_URL": url}
    env.pop("WAYLAND_DISPLAY", None)
    proc = subprocess.Popen([sys.executable, "-m", "belle.app.cli", "ui", "--no-browser", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
                            start_new_session=True)
    try:
        first = proc.stdout.readline()
        second = proc.stdout.readline()
        # stop it only once it listens: a SIGTERM while uvicorn is still starting makes Flet's own
        # shutdown raise (uvicorn's Server has no .servers yet), whatever belle did before
        wait_listening(proc, port)
    finally:
        stop_process(proc)
    reason = f"HTTP 404 from {url}" if case == "404" else f"{url}: [Errno 111] Connection refused (3 attempts)"
    assert first == f"belle ui: cannot download the Flet desktop client ({reason}); serving the web version instead.\n"
    assert second == f"belle ui: serving on http://127.0.0.1:{port}/ (Ctrl+C stops)\n"
    assert "Traceback" not in proc.stderr.read()
    assert list((home / ".flet" / "client").iterdir()) == []  # no half-unpacked client left
