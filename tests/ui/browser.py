"""Drive `belle ui --web` in headless Chromium (Debian's /usr/bin/chromium) with Playwright.

Flutter web draws on a canvas; clicking the hidden `flt-semantics-placeholder` switches on its
accessibility tree, after which text fields are real <input>/<textarea> elements and buttons are
`flt-semantics` nodes labelled with the control's tooltip or semantics label. Chromium runs
with background networking off: this machine has no network, and its connection attempts fail."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import stop_process

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
        stop_process(self.proc)
        self.log.close()


# Clicks the accessibility placeholder the moment Flutter inserts it, in the page itself: the app
# focuses its message box as soon as it is built, and a text field that gets the focus before the
# accessibility tree is on is edited through a hidden <textarea> of Flutter's own for the rest of
# the page's life, so filling the field's accessible <textarea> would type into nothing. A click
# sent from the test arrives too late on a busy machine.
# A click at its centre, because on a phone (an Android or iOS user agent) Flutter covers the page
# with the placeholder and switches the tree on only for a tap inside it; on a desktop any click on
# it does.
SEMANTICS_AT_START = """
new MutationObserver((_, observer) => {
    const placeholder = document.querySelector('flt-semantics-placeholder');
    if (placeholder) {
        observer.disconnect();
        const r = placeholder.getBoundingClientRect();
        placeholder.dispatchEvent(new MouseEvent('click', {bubbles: true, cancelable: true,
            clientX: r.left + r.width / 2, clientY: r.top + r.height / 2}));
    }
}).observe(document, {childList: true, subtree: true});
"""


def open_app(browser, url: str, width: int = 1280, height: int = 800, new_session: bool = False,
             user_agent: str | None = None, is_mobile: bool = False, has_touch: bool = False):
    """A new page on the app with the accessibility tree switched on; `new_session`: in a browser
    context of its own (a fresh profile, so a new Flet session). `user_agent`, `is_mobile`,
    `has_touch`: a phone's browser (an Android user agent makes Flet's page.platform ANDROID)."""
    options = {"viewport": {"width": width, "height": height}, "is_mobile": is_mobile, "has_touch": has_touch}
    if user_agent:
        options["user_agent"] = user_agent
    page = browser.new_context(**options).new_page() if new_session else browser.new_page(**options)
    # on every load of this page, reloads too
    page.add_init_script(SEMANTICS_AT_START)
    page.goto(url)
    enable_semantics(page)
    return page


def enable_semantics(page, timeout_s: float = 60) -> None:
    """Wait for the accessibility tree (switched on by SEMANTICS_AT_START)."""
    page.wait_for_selector("flt-semantics", state="attached", timeout=timeout_s * 1000)


def button(page, label: str):
    """A button by its tooltip / semantics label."""
    return page.locator(f'flt-semantics[aria-label="{label}"]').first


def labelled(page, label: str):
    """A button with exactly this accessibility label of its own (the message buttons: copy,
    edit, regenerate, continue, ‹ ›), the last one on the page: the newest message's."""
    return page.locator(f'flt-semantics[role="button"][aria-label="{label}"]').last


def text_box(page, text: str) -> dict | None:
    """The on-screen box {x, y, width, height} of the smallest accessibility node whose text is
    exactly `text` (a label, a title), or None."""
    return page.evaluate("""(text) => {
        const host = document.querySelector('flt-semantics-host');
        if (!host) return null;
        let best = null;
        for (const e of host.querySelectorAll('flt-semantics, span')) {
            const own = (e.getAttribute('aria-label') || e.innerText || '').trim();
            if (own !== text) continue;
            const r = e.getBoundingClientRect();
            if (r.width > 0 && (!best || r.width * r.height < best.width * best.height))
                best = {x: r.x, y: r.y, width: r.width, height: r.height};
        }
        return best;
    }""", text)


def pixel_stats(page, clip: dict) -> dict:
    """Colours in a region of a screenshot, counted in the page itself (no image library needed):
    {"yellow": emoji-yellow pixels, "dark": near-black pixels, "rows": for each pixel row the x of
    its leftmost and rightmost dark pixel or null, "counts": dark pixels in each row}."""
    import base64

    png = base64.b64encode(page.screenshot(clip=clip)).decode()
    return page.evaluate("""async (png) => {
        const img = new Image();
        img.src = 'data:image/png;base64,' + png;
        await img.decode();
        const c = document.createElement('canvas');
        c.width = img.width; c.height = img.height;
        const g = c.getContext('2d');
        g.drawImage(img, 0, 0);
        const d = g.getImageData(0, 0, c.width, c.height).data;
        let yellow = 0, dark = 0;
        const rows = [], counts = [];
        for (let y = 0; y < c.height; y++) {
            let lo = null, hi = null, n = 0;
            for (let x = 0; x < c.width; x++) {
                const i = (y * c.width + x) * 4, r = d[i], gg = d[i + 1], b = d[i + 2];
                const mx = Math.max(r, gg, b);
                if (r > 200 && gg > 150 && b < 110) yellow++;
                if (mx < 110) { dark++; n++; if (lo === null) lo = x; hi = x; }
            }
            rows.push(lo === null ? null : [lo, hi]);
            counts.push(n);
        }
        return {yellow, dark, rows, counts, width: c.width, height: c.height};
    }""", png)


def tile(page, title: str):
    """A conversation in the sidebar (ListTile merges its title into the button's label)."""
    return page.locator(f'flt-semantics[role="button"][aria-label*="{title}"]').first


def composer(page):
    return page.locator("textarea").last


def type_into(field, text: str, timeout_s: float = 30) -> None:
    """Click a text field, wait until Flutter edits it, then fill it.

    The click focuses the <input> at once, but Flutter takes it over for editing a frame or more
    later: only then does it listen to the element, and it writes its own value into it. Text
    filled before that is lost or lands after the old value ("0.7" + "0.2" = "0.70.2"), which a
    busy machine makes likely. While Flutter edits an element it cancels the mouse events on it
    (so the browser does not move the caret itself): a cancelable mousemove dispatched on the
    element reports whether that handler is attached, whatever the field's history."""
    field.wait_for(timeout=timeout_s * 1000)
    field.click()
    deadline = time.monotonic() + timeout_s
    while not field.evaluate(
            "(e) => document.activeElement === e && !e.dispatchEvent(new MouseEvent('mousemove', {cancelable: true}))"):
        if time.monotonic() > deadline:
            focused = field.evaluate("() => document.activeElement && document.activeElement.outerHTML.slice(0, 200)")
            raise AssertionError(f"Flutter did not take over the text field within {timeout_s} s; focused: {focused}")
        time.sleep(0.05)
    field.fill(text)


def texts(page) -> str:
    """All text Flutter exposes to the accessibility tree."""
    return page.evaluate("""() => {
        const host = document.querySelector('flt-semantics-host');
        if (!host) return '';
        const labels = Array.from(host.querySelectorAll('[aria-label]')).map(e => e.getAttribute('aria-label'));
        return labels.join('\\n') + '\\n' + host.innerText;
    }""")
