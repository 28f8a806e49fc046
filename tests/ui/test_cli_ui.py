"""`belle ui` without --web where there is no display: one line saying so, then the web version."""

import os
import subprocess
import sys

from tests.conftest import stop_process, wait_listening

from .browser import ROOT, free_port


def test_no_display_falls_back_to_web(belle_home):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "belle.app.cli", "ui", "--no-browser", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env,
                            start_new_session=True)
    try:
        first = proc.stdout.readline()
        second = proc.stdout.readline()
        assert "serving the web version instead" in first
        assert f"http://127.0.0.1:{port}/" in second
        # stopped only once it listens: a SIGTERM while uvicorn is still starting makes Flet's own
        # shutdown raise (its uvicorn Server has no .servers yet)
        wait_listening(proc, port)
    finally:
        stop_process(proc)
    assert proc.returncode == 0  # a stop asked for is a clean exit, with no traceback


def test_help_lists_the_flags():
    out = subprocess.run([sys.executable, "-m", "belle.app.cli", "ui", "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60).stdout
    for flag in ("--web", "--port", "--host", "--no-browser"):
        assert flag in out
