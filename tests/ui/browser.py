"""Drive `belle ui --web` in headless Chromium (Debian's /usr/bin/chromium) with Playwright.

Flutter web draws on a canvas; clicking the hidden `flt-semantics-placeholder` switches on its
accessibility tree, after which text fields are real <input>/<textarea> elements and buttons are
`flt-semantics` nodes labelled with the control's tooltip (see shared/reference/environment.md)."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class UIServer:
    """`belle ui --web --no-browser` on a free port, with the caller's BELLE_HOME / BELLE_MODELS_DIR."""

    def __init__(self, log_path: Path, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "belle.app.cli", "ui", "--web", "--no-browser", "--port", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})},
            start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"belle ui exited with {self.proc.returncode}; see {log_path}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.2)
        self.close()
        raise RuntimeError(f"belle ui did not start listening within 60 s; see {log_path}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def open_app(browser, url: str, width: int = 1280, height: int = 800):
    """A new page on the app with the accessibility tree switched on."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(url)
    enable_semantics(page)
    return page


def enable_semantics(page, timeout_s: float = 60) -> None:
    page.wait_for_selector("flt-semantics-placeholder", state="attached", timeout=timeout_s * 1000)
    page.evaluate("document.querySelector('flt-semantics-placeholder').click()")
    page.wait_for_selector("flt-semantics", state="attached", timeout=timeout_s * 1000)


def button(page, label: str):
    """A button by its tooltip / semantics label."""
    return page.locator(f'flt-semantics[aria-label="{label}"]').first


def reply_buttons(page):
    """The icon buttons of the last reply, in order: [‹, ›,] copy, regenerate. Flutter merges the
    bubble's text and tooltips into one label, so the buttons are found by position."""
    bubble = page.locator('flt-semantics[role="group"][aria-label*="Assistant"]').last
    return bubble.locator('flt-semantics[role="button"]')


def tile(page, title: str):
    """A conversation in the sidebar (ListTile merges its title into the button's label)."""
    return page.locator(f'flt-semantics[role="button"][aria-label*="{title}"]').first


def composer(page):
    return page.locator("textarea").last


def texts(page) -> str:
    """All text Flutter exposes to the accessibility tree."""
    return page.evaluate("""() => {
        const host = document.querySelector('flt-semantics-host');
        if (!host) return '';
        const labels = Array.from(host.querySelectorAll('[aria-label]')).map(e => e.getAttribute('aria-label'));
        return labels.join('\\n') + '\\n' + host.innerText;
    }""")
