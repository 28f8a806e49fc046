"""The phone build's behaviour, in headless Chromium at a phone's size with an Android browser's user
agent (Flet's page.platform is ANDROID), against a `belle ui --web` server started the way Flet's
embedded Python runs the app on a phone: FLET_PLATFORM=android, the app's data folder in
FLET_APP_STORAGE_DATA and no BELLE_HOME. FLET_FORCE_WEB_SERVER keeps Flet serving the web page: with
FLET_PLATFORM set it would otherwise wait for the phone's Flutter client on a socket."""

import json

import pytest

from belle.app import paths
from belle.app.chat_store import ChatStore

from .browser import UIServer, button, open_app, text_box, texts, tile, type_into
from .test_downloads import NO_PROXY, dead_endpoint
from .test_e2e import chat_settings, last_reply, send, visible, wait_reply_done, wait_until

pytestmark = pytest.mark.slow

ANDROID_UA = ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/126.0.0.0 Mobile Safari/537.36")
OFFER = "Download a model to start"
NO_MODEL = "No model on this phone yet"


@pytest.fixture
def phone(browser, monkeypatch, tmp_path, output_dir, request):
    """open(models_dir=None, env=None) -> a page on a phone-mode server. The test process looks at
    the same data folder (paths.home() follows FLET_APP_STORAGE_DATA here too); with no models_dir
    the models folder is the data folder's own, empty at first."""
    data = tmp_path / "app-data"
    data.mkdir()
    (data / "config.json").write_text(json.dumps({"language": "en"}), encoding="utf-8")
    monkeypatch.delenv("BELLE_HOME")
    monkeypatch.setenv("FLET_APP_STORAGE_DATA", str(data))
    servers, pages = [], []
    request.node.belle_pages = (pages, output_dir)  # the failure report of conftest.py

    def open_(models_dir=None, env: dict | None = None):
        if models_dir is None:
            monkeypatch.delenv("BELLE_MODELS_DIR")
        else:
            monkeypatch.setenv("BELLE_MODELS_DIR", str(models_dir))
        server = UIServer(output_dir / "server.log", env={"FLET_PLATFORM": "android", "FLET_FORCE_WEB_SERVER": "true",
                                                          **(env or {})})
        servers.append(server)
        page = open_app(browser, server.url, 390, 844, user_agent=ANDROID_UA, is_mobile=True, has_touch=True)
        pages.append(page)
        # the first start's offer is a modal dialog: the page behind it is out of the accessibility tree
        wait_until(lambda: visible(page, "Conversations") or OFFER in texts(page), 30,
                   "the menu button of the phone layout")
        return page

    open_.data = data
    yield open_
    for page in pages:
        page.context.close()
    for server in servers:
        server.close()


def open_drawer(page) -> None:
    button(page, "Conversations").click()
    wait_until(lambda: "Search all chats" in texts(page), 10, "the drawer with the conversation list")
    page.wait_for_timeout(500)  # the drawer slides in


def test_first_start_offers_a_model_and_downloads_only_when_asked(phone, default_model_path, output_dir):
    page = phone(env={"HF_ENDPOINT": dead_endpoint(), **NO_PROXY})
    data = phone.data
    wait_until(lambda: OFFER in texts(page), 20, "the offer of a model")
    shown = texts(page)
    assert "Qwen2.5 0.5B Instruct (Q4_K_M)" in shown and "a 491 MB download" in shown, shown
    assert "Chinese and English" in shown
    page.wait_for_timeout(500)
    page.screenshot(path=output_dir / "offer.png")
    # the app's files are in Flet's data folder, and nothing is fetched before the tap
    assert (data / "belle.db").exists() and not (data / "models").exists()

    page.get_by_role("button", name="Not now", exact=True).click()
    wait_until(lambda: OFFER not in texts(page) and NO_MODEL in texts(page), 10, "the offer to close")
    page.wait_for_timeout(500)
    page.screenshot(path=output_dir / "not_now.png")
    open_drawer(page)
    page.screenshot(path=output_dir / "drawer_without_model.png")
    page.mouse.click(370, 420)  # beside the drawer: it closes
    wait_until(lambda: "Search all chats" not in texts(page), 10, "the drawer to close")

    # the banner asks again; Download opens the model panel, which downloads with its progress,
    # Cancel and Resume (here the hub is unreachable: a one-line error, and nothing is kept)
    box = wait_until(lambda: text_box(page, next(line for line in texts(page).splitlines() if NO_MODEL in line)),
                     10, "the no-model banner")
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    wait_until(lambda: OFFER in texts(page), 10, "the offer again")
    page.get_by_role("button", name="Download", exact=True).click()
    wait_until(lambda: "cannot reach the hub" in texts(page), 20, "the model panel's download error")
    page.wait_for_timeout(500)
    page.screenshot(path=output_dir / "download_unreachable.png")
    assert not list((data / "models").glob("*.gguf")) if (data / "models").exists() else True
    # a model that comes another way (here imported from a path) ends the offer: the banner goes
    type_into(page.locator('input[aria-label="Path of a .gguf file on this device"]'), str(default_model_path))
    page.get_by_role("button", name="Import", exact=True).click()
    wait_until(lambda: (data / "models" / default_model_path.name).exists(), 60, "the imported model")
    page.get_by_role("button", name="Close", exact=True).click()
    wait_until(lambda: "Ask anything" in texts(page), 10, "the chat again")
    wait_until(lambda: NO_MODEL not in texts(page), 10, "the no-model banner to go")


def test_phone_chat_drawer_and_model_panel(phone, default_model_path, output_dir):
    page = phone(models_dir=default_model_path.parent)
    assert OFFER not in texts(page) and NO_MODEL not in texts(page)  # the default model is here
    chat_settings(page, **{"Max tokens": "24"})  # only *a* reply is needed
    send(page, "Say hi.")
    wait_reply_done(page)
    assert last_reply()
    assert "/ 2048" in texts(page)  # a new chat on a phone: the smaller context
    page.screenshot(path=output_dir / "answered.png")
    # written to Flet's data folder, not a BELLE_HOME
    assert paths.store_path() == phone.data / "belle.db"
    store = ChatStore(paths.store_path())
    try:
        [conv] = store.list_conversations()
    finally:
        store.close()

    open_drawer(page)
    assert tile(page, conv.title).count() == 1
    page.screenshot(path=output_dir / "drawer.png")
    tile(page, conv.title).click()  # opens the chat and closes the drawer
    wait_until(lambda: "Search all chats" not in texts(page), 10, "the drawer to close")

    button(page, "Models").click()
    wait_until(lambda: "SmolLM2" in texts(page) and "fits" in texts(page), 20, "the model panel with RAM badges")
    page.wait_for_timeout(800)
    page.screenshot(path=output_dir / "models.png")
    assert "Free memory" in texts(page)
