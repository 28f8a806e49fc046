"""Hub downloads in the model panel, in headless Chromium: `belle ui --web` fetches the default
model's file from the fake hub of tests/hub_server.py (slowed down to be watched), with progress,
Cancel, Resume from the byte it stopped at, the mirror setting, and a corrupt byte refused."""

import hashlib
import json
import re
import socket

import pytest

from belle.app import paths
from belle.app.ui.downloads import percent
from tests.hub_server import start_hub

from .browser import button, free_port, texts, type_into
from .test_e2e import send, visible, wait_reply_done, wait_until, last_reply

pytestmark = pytest.mark.slow

REPO = "belle-test/SmolLM2-GGUF"
FILE = "SmolLM2-135M-test.Q4_1.gguf"  # not the catalog's file name: a model known only by its hf: reference
REF = f"hf:{REPO}/{FILE}"
# The first start fetches a missing default model from its wheel; a hub entry as the default is
# left alone, so nothing but the test's own download runs (the machine has no network).
CONFIG = {"default_model": "qwen2.5-0.5b-instruct-q4_k_m"}
NO_PROXY = {var: "" for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")}
PROGRESS_RE = re.compile(r"(\d+) MB (?:of|/) (\d+) MB · ([\d.]+) (?:MB|KB)/s")


def until(page, predicate, timeout: float, what: str):
    """wait_until, and on a timeout a screenshot (failed.png) and what the page said."""
    try:
        return wait_until(predicate, timeout, what)
    except AssertionError as err:
        page.screenshot(path=page.output_dir / "failed.png")
        (page.output_dir / "failed.txt").write_text(texts(page) + "\n----\n" + page.evaluate(
            "() => document.querySelector('flt-semantics-host').outerHTML"))
        raise AssertionError(f"{err}; the page shows:\n{texts(page)}") from None


@pytest.fixture
def fake_hub(default_model_path):
    hub, server = start_hub()
    hub.served = hub.add(REPO, FILE, default_model_path)
    yield hub
    hub.release()  # a download a failed test left held must not keep a server thread waiting
    server.shutdown()
    server.server_close()


def dead_endpoint() -> str:
    """An address where nothing listens: the hub is unreachable unless the mirror setting says otherwise."""
    port = free_port()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    return f"http://127.0.0.1:{port}"


def open_panel(page, label: str = "Models") -> None:
    button(page, label).click()
    until(page, lambda: "Qwen2.5" in texts(page), 20, "the model panel's catalog")


def hub_download(page, ref: str, field: str = "Download from Hugging Face", click: bool = False,
                 button_text: str = "Download") -> None:
    """Type the reference and press Enter, or the Download button beside the field (the panel's
    last "Download": the catalog rows' come before it)."""
    box = page.locator(f'input[aria-label^="{field}"]')  # focused, the field's label has its hint too
    type_into(box, ref)
    if click:
        page.get_by_role("button", name=button_text, exact=True).last.click()
        page.mouse.move(1, 1)  # a tooltip left showing under the pointer would take the next click
    else:
        box.press("Enter")


def progress_line(page) -> tuple[int, int, float, str] | None:
    """(MB done, MB in all, speed, the whole text it was read from) from the progress line on
    screen, or None. Checks on the line use that same text: the page may have moved on since."""
    text = texts(page)
    m = PROGRESS_RE.search(text)
    return (int(m[1]), int(m[2]), float(m[3]), text) if m else None


def set_mirror(page, value: str, open_settings: bool = True, max_tokens: str | None = None) -> None:
    if open_settings:
        button(page, "Chat settings").click()
    fields = {"Hugging Face mirror": value, **({"Max tokens": max_tokens} if max_tokens else {})}
    for label, text in fields.items():
        type_into(page.locator(f'input[aria-label^="{label}"]'), text)  # focused, a label has its hint too
    page.get_by_role("button", name="Save", exact=True).click()


def config() -> dict:
    return json.loads(paths.config_path().read_text(encoding="utf-8"))


def test_download_cancel_mirror_resume_and_chat(app_page, fake_hub, tmp_path, output_dir):
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    page = app_page(models_dir=models_dir, config=CONFIG, env={"HF_ENDPOINT": dead_endpoint(), **NO_PROXY})
    page.output_dir = output_dir
    open_panel(page)
    page.screenshot(path=output_dir / "panel.png")

    # HF_ENDPOINT leads nowhere: a one-line error, and the panel stays usable
    hub_download(page, REF)
    until(page, lambda: "cannot reach the hub" in texts(page), 20, "the network error in the panel")
    page.wait_for_timeout(500)  # the next frame: the accessibility tree can be ahead of the paint
    page.screenshot(path=output_dir / "unreachable.png")
    assert not fake_hub.requests
    page.get_by_role("button", name="Close", exact=True).click()

    # the mirror setting: a bad URL is refused with its one-line error and not saved; a good one is
    set_mirror(page, "hf-mirror.com")
    until(page, lambda: "not an http(s) URL" in texts(page), 10, "the mirror setting's error")
    page.wait_for_timeout(500)
    page.screenshot(path=output_dir / "mirror_error.png")
    assert config().get("hf_mirror") is None
    # the dialog stayed open to fix it; a short reply budget too: the chat at the end only needs *a*
    # reply, and on a busy 2-core machine 512 tokens can take minutes
    set_mirror(page, fake_hub.url + "/", open_settings=False, max_tokens="24")
    until(page, lambda: config().get("hf_mirror") == fake_hub.url, 10, "the mirror to be saved (without the /)")

    # ~15 s for the whole file: long enough to watch the line move (the progress check is done by
    # 20 MB, ~3 s in)
    fake_hub.delay_s = 0.01
    fake_hub.hold_at = fake_hub.served.size * 6 // 10  # and it stalls there: Cancel always comes before the end
    open_panel(page)
    hub_download(page, REF, click=True)
    seen = []

    def moved():
        line = progress_line(page)
        if line and (not seen or line[:3] != seen[-1][:3]):
            seen.append(line)
        return len(seen) >= 2 and seen[-1][0] > seen[0][0] and seen[-1][0] >= 20

    until(page, moved, 30, "the progress line to move past 20 MB ('N MB of M MB · S MB/s')")
    page.screenshot(path=output_dir / "downloading.png")
    total_mb = round(fake_hub.served.size / 1e6)
    assert all(line[1] == total_mb and line[2] > 0 for line in seen), [line[:3] for line in seen]
    assert "left" in seen[-1][3]
    page.get_by_role("button", name="Cancel", exact=True).click()
    page.mouse.move(1, 1)

    part = models_dir / (FILE + ".part")
    until(page, lambda: "Resume (" in texts(page), 20, "the row to offer Resume after Cancel")
    kept = part.stat().st_size
    shown = percent(kept, fake_hub.served.size)
    assert 0 < kept < fake_hub.served.size
    assert f"Resume ({shown}%)" in texts(page), texts(page)
    page.wait_for_timeout(500)
    page.screenshot(path=output_dir / "paused.png")
    assert not (models_dir / FILE).exists() and not visible(page, "Use"), "nothing partial is a usable model"
    assert page.get_by_role("button", name="Use", exact=True).count() == 0

    fake_hub.delay_s = 0.001
    fake_hub.release()
    page.get_by_role("button", name=f"Resume ({shown}%)", exact=True).click()
    until(page, lambda: "Downloaded" in texts(page), 60, "the resumed download to finish")
    page.screenshot(path=output_dir / "downloaded.png")
    assert f"bytes={kept}-" in fake_hub.ranges(), fake_hub.ranges()
    final = models_dir / FILE
    assert hashlib.sha256(final.read_bytes()).hexdigest() == fake_hub.served.sha256
    assert not list(models_dir.glob("*.part*"))

    # the new model is in the list: choose it and chat with it
    page.get_by_role("button", name="Use", exact=True).click()
    until(page, lambda: page.get_by_role("button", name="In use", exact=True).count() > 0, 30, "the model in use")
    page.get_by_role("button", name="Close", exact=True).click()
    send(page, "Say hi.")
    wait_reply_done(page)
    assert last_reply()
    page.screenshot(path=output_dir / "reply.png")
    # the same panel on a phone, for a person to look at
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(1000)
    button(page, "Models").click()
    until(page, lambda: page.get_by_role("button", name="In use", exact=True).count() > 0, 20, "the panel on a phone")
    page.wait_for_timeout(800)
    page.screenshot(path=output_dir / "panel_phone.png")


def test_corrupt_byte_is_refused_on_a_phone_in_chinese(app_page, fake_hub, tmp_path, output_dir):
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    fake_hub.corrupt_at = fake_hub.served.size // 2
    fake_hub.delay_s = 0.004  # ~6 s: the progress is on screen long enough for a screenshot
    page = app_page(390, 844, language="zh", models_dir=models_dir, config=CONFIG,
                    env={"HF_ENDPOINT": fake_hub.url, **NO_PROXY})
    page.output_dir = output_dir
    open_panel(page, "模型")
    hub_download(page, f"{fake_hub.url}/{REPO}/blob/main/{FILE}", field="从 Hugging Face 下载")  # the page's address
    line = until(page, lambda: progress_line(page), 30, "the progress line ('N MB / M MB · S MB/s')")
    assert "剩余" in line[3]
    page.screenshot(path=output_dir / "downloading_zh_phone.png")
    until(page, lambda: "sha256" in texts(page), 60, "the sha256 error")
    page.wait_for_timeout(500)
    page.screenshot(path=output_dir / "corrupt_zh_phone.png")
    assert "corrupted on the way" in texts(page)
    assert not list(models_dir.iterdir()), "nothing of a corrupt download is kept"
    assert page.get_by_role("button", name="使用", exact=True).count() == 0
    page.get_by_role("button", name="关闭", exact=True).click()
    button(page, "对话设置").click()
    page.locator('input[aria-label^="Hugging Face 镜像"]').wait_for(timeout=10000)
    page.wait_for_timeout(800)
    page.screenshot(path=output_dir / "settings_zh_phone.png")
    # and on a desktop, for a person to look at: the settings, then the panel with its error line
    page.set_viewport_size({"width": 1280, "height": 800})
    page.wait_for_timeout(1000)
    page.screenshot(path=output_dir / "settings_zh_desktop.png")
    page.get_by_role("button", name="取消", exact=True).click()
    button(page, "模型").click()
    until(page, lambda: "sha256" in texts(page), 20, "the panel with its error")
    page.wait_for_timeout(800)
    page.screenshot(path=output_dir / "corrupt_zh_desktop.png")
