"""Saved conversation states in the app: a conversation reopened after a restart answers from its
saved llama.cpp state (the reply says "resumed instantly"), the context meter agrees with the
store, and the settings dialog shows the states' disk use and clears them."""

import re

import pytest

from belle.app import kv_state, paths
from belle.app.chat_store import ChatStore
from belle.app.session import ChatSession, EngineCache

from .browser import button, texts, tile
from .test_e2e import chat_settings, send, visible, wait_reply_done, wait_until

pytestmark = pytest.mark.slow

QUESTION = "My name is Lin. I live in Chengdu."  # under 40 characters: the whole title


def meter(page) -> tuple[int, int] | None:
    found = re.search(r"Context (\d+) / (\d+)", texts(page))
    return (int(found[1]), int(found[2])) if found else None


def test_a_reopened_conversation_resumes_from_its_saved_state(app_page, output_dir):
    page = app_page()
    chat_settings(page, **{"Max tokens": "32"})
    send(page, QUESTION)
    wait_reply_done(page)
    send(page, "What is the capital of France?")
    wait_reply_done(page)
    assert "resumed instantly" not in texts(page)  # the same process: its KV was still in memory
    # written in the background after each reply
    wait_until(lambda: kv_state.disk_used().count == 1, 30, "the conversation's saved state")
    page.server.close()

    page = app_page()  # a new `belle ui` process on the same data folder: nothing in memory
    wait_until(lambda: QUESTION in texts(page), 20, "the conversation in the sidebar")
    tile(page, QUESTION).click()
    wait_until(lambda: "capital of France" in texts(page), 20, "the conversation on screen")
    send(page, "Where do I live?")
    wait_reply_done(page)
    wait_until(lambda: "resumed instantly" in texts(page), 10, "'resumed instantly' under the new reply")
    page.screenshot(path=output_dir / "resumed.png")
    restored = int(re.search(r"resumed instantly: ([\d,]+) tokens", texts(page))[1].replace(",", ""))

    # the meter counts the branch on screen as a fresh session of the same conversation does
    store = ChatStore(paths.store_path())
    engines = EngineCache()
    try:
        [conv] = store.list_conversations()
        used, n_ctx = ChatSession.open(store, engines, conv.id).context_usage()
    finally:
        engines.close()
        store.close()
    assert restored < used
    wait_until(lambda: meter(page) == (used, n_ctx), 10, f"the context meter to show {used} / {n_ctx}")

    button(page, "Chat settings").click()
    wait_until(lambda: "Saved conversation states: 1," in texts(page), 10, "the saved states' disk use")
    page.wait_for_timeout(800)  # the dialog's opening animation
    page.screenshot(path=output_dir / "settings.png")
    page.get_by_role("button", name="Clear saved states", exact=True).click()
    wait_until(lambda: "Saved conversation states: 0, 0 B" in texts(page), 10, "the states cleared")
    assert kv_state.disk_used().count == 0
    page.get_by_role("button", name="Cancel", exact=True).click()
    wait_until(lambda: visible(page, "Send"), 10, "the chat again")
