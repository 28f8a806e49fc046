"""End to end: `belle ui --web` in headless Chromium with the real default model (SmolLM2-135M)."""

import time

import pytest

from belle.app import paths
from belle.app.chat_store import ChatStore

from .browser import button, composer, enable_semantics, reply_buttons, texts, tile

pytestmark = pytest.mark.slow


def wait_until(predicate, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def visible(page, label: str) -> bool:
    return button(page, label).count() > 0 and button(page, label).is_visible()


def send(page, text: str) -> None:
    box = composer(page)
    box.click()
    box.fill(text)
    box.press("Enter")


def last_reply() -> str:
    """The newest assistant text of the only conversation, as saved (every 0.5 s while streaming)."""
    store = ChatStore(paths.store_path())
    try:
        convs = store.list_conversations()
        path = store.path_to(convs[0].current_leaf) if convs else []
        return path[-1].content if path and path[-1].role == "assistant" else ""
    finally:
        store.close()


def wait_reply_done(page, timeout: float = 90) -> None:
    wait_until(lambda: visible(page, "Stop"), 30, "the Stop button (generation started)")
    wait_until(lambda: visible(page, "Send"), timeout, "the Send button (generation ended)")
    page.wait_for_timeout(300)


def test_page_loads_offline(app_page, output_dir):
    """Every request that leaves 127.0.0.1 is refused, as on a machine with no network."""
    outside = []

    def refuse(route):
        outside.append(route.request.url)
        route.abort()

    page = app_page()
    page.context.route(lambda url: not url.startswith(page.server.url), refuse)
    page.reload()
    enable_semantics(page)
    wait_until(lambda: visible(page, "New chat (Ctrl+N)"), 30, "the sidebar")
    assert "Ask anything" in texts(page)
    page.screenshot(path=output_dir / "loaded.png")
    (output_dir / "outside_requests.txt").write_text("\n".join(outside))
    # flet-web 1.0.5 always asks a CDN for the Rive animation runtime (unused here); nothing else may leave
    assert all("@rive-app" in url for url in outside), outside


def test_chinese_question_streams_answer(app_page, output_dir):
    page = app_page()
    send(page, "你好！请用中文介绍一下长城。")
    wait_until(lambda: visible(page, "Stop"), 30, "generation to start")
    wait_until(lambda: len(last_reply()) > 20, 30, "the first streamed text")
    first = last_reply()
    assert first.split()[0][:3] in texts(page)  # shown while it streams
    page.screenshot(path=output_dir / "streaming.png")
    wait_until(lambda: visible(page, "Send"), 90, "the reply to finish")
    page.wait_for_timeout(300)
    final = texts(page)
    page.screenshot(path=output_dir / "answered.png")
    assert "你好！请用中文介绍一下长城。" in final
    assert "tok/s" in final  # per-message stats of the finished reply
    assert last_reply().startswith(first)
    store = ChatStore(paths.store_path())
    [conv] = store.list_conversations()
    msgs = store.path_to(conv.current_leaf)
    assert [m.role for m in msgs] == ["user", "assistant"] and msgs[1].complete and msgs[1].content


def test_stop_during_long_reply(app_page, output_dir):
    page = app_page()
    send(page, "Write a very long story about a dragon who learns to cook. Make it at least 2000 words.")
    wait_until(lambda: visible(page, "Stop"), 30, "generation to start")
    wait_until(lambda: len(last_reply()) > 80, 30, "some streamed text")
    button(page, "Stop").click()
    wait_until(lambda: visible(page, "Send"), 10, "Stop to take effect")
    page.wait_for_timeout(300)
    page.screenshot(path=output_dir / "stopped.png")
    assert "stopped" in texts(page)
    store = ChatStore(paths.store_path())
    [conv] = store.list_conversations()
    reply = store.path_to(conv.current_leaf)[-1]
    assert reply.stats["stop_reason"] == "cancelled" and reply.stats["generated_tokens"] < 512


def test_regenerate_and_switch_alternatives(app_page, output_dir):
    page = app_page()
    send(page, "Name three colours.")
    wait_reply_done(page)
    reply_buttons(page).last.click()  # regenerate
    wait_reply_done(page)
    assert "2/2" in texts(page)
    page.screenshot(path=output_dir / "second_answer.png")
    store = ChatStore(paths.store_path())
    [conv] = store.list_conversations()
    first, second = store.siblings(store.path_to(conv.current_leaf)[-1])
    reply_buttons(page).nth(0).click()  # ‹
    wait_until(lambda: "1/2" in texts(page), 10, "the first answer")
    assert first.content.split()[0] in texts(page)
    page.screenshot(path=output_dir / "first_answer.png")
    reply_buttons(page).nth(1).click()  # ›
    wait_until(lambda: "2/2" in texts(page), 10, "the second answer again")


def test_search_finds_chinese_substring(app_page, output_dir, belle_home):
    # a conversation saved by `belle chat` (same store) and an unrelated one
    store = ChatStore(paths.store_path())
    conv = store.create_conversation("旅行计划")
    user = store.add_message(conv.id, None, "user", "我想去北京看看万里长城，有什么建议？")
    store.add_message(conv.id, user.id, "assistant", "春秋两季最适合爬长城。")
    other = store.create_conversation("Python question")
    store.add_message(other.id, None, "user", "How do I read a file?")
    store.close()
    page = app_page()
    wait_until(lambda: "旅行计划" in texts(page) and "Python question" in texts(page), 20, "both conversations")
    field = page.locator('input[aria-label="Search all chats"]')
    field.click()
    field.fill("万里长城")
    wait_until(lambda: "Python question" not in texts(page), 10, "the search to filter the list")
    assert "旅行计划" in texts(page)
    page.screenshot(path=output_dir / "search.png")
    tile(page, "旅行计划").click()
    wait_until(lambda: "春秋两季最适合爬长城。" in texts(page), 10, "the conversation to open")
    page.screenshot(path=output_dir / "opened.png")


def test_reload_keeps_conversation(app_page, browser, output_dir):
    page = app_page()
    send(page, "Say hello in one word.")
    wait_reply_done(page)
    store = ChatStore(paths.store_path())
    [conv] = store.list_conversations()
    answer = store.path_to(conv.current_leaf)[-1].content
    page.reload()
    enable_semantics(page)
    wait_until(lambda: "Say hello in one word." in texts(page), 20, "the conversation after reload")
    page.screenshot(path=output_dir / "after_reload.png")
    # Flet keeps a tab's session across reloads; a new browser profile gets a new session, which
    # can only show the conversation if it came from the store
    fresh = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    fresh.goto(page.server.url)
    enable_semantics(fresh)
    wait_until(lambda: "Say hello in one word." in texts(fresh), 20, "the conversation in a new session")
    tile(fresh, "Say hello in one word.").click()
    wait_until(lambda: answer.split()[0] in texts(fresh).split("Assistant", 1)[-1], 10, "the saved answer")
    fresh.screenshot(path=output_dir / "new_session.png")
    fresh.context.close()


def test_phone_layout_has_drawer(app_page, output_dir):
    page = app_page(390, 844, language="zh")
    wait_until(lambda: visible(page, "对话列表"), 20, "the menu button of the phone layout")
    assert not visible(page, "新对话 (Ctrl+N)")  # the sidebar is not on screen
    page.screenshot(path=output_dir / "phone.png")
    button(page, "对话列表").click()
    page.wait_for_timeout(1000)
    page.screenshot(path=output_dir / "phone_drawer.png")
    assert "搜索全部对话" in texts(page), texts(page)
    page.screenshot(path=output_dir / "phone_drawer.png")


def test_bad_gguf_in_model_panel_shows_error(app_page, output_dir, tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)  # right magic, garbage header
    page = app_page()
    button(page, "Models").click()
    wait_until(lambda: "SmolLM2" in texts(page) and "fits" in texts(page), 20, "the model list with RAM badges")
    page.screenshot(path=output_dir / "model_panel.png")
    field = page.locator('input[aria-label="Path of a .gguf file on this computer"]')
    field.click()
    field.fill(str(bad))
    page.get_by_role("button", name="Import", exact=True).click()
    wait_until(lambda: "corrupt GGUF header" in texts(page), 20, "the error message")
    page.screenshot(path=output_dir / "bad_gguf.png")
    models_dir = paths.models_dir()
    assert not list(models_dir.glob("broken.gguf*")), "a bad file must not be installed, not even as .part"
    page.get_by_role("button", name="Close", exact=True).click()
    send(page, "Say hi.")
    wait_reply_done(page)
    assert last_reply()
    page.screenshot(path=output_dir / "still_working.png")


MARKDOWN_REPLY = """Here is a **table**, a list and code:

| 城市 | 人口 |
|---|---|
| 北京 | 2189 万 |
| 上海 | 2487 万 |

1. first
2. second

```python
print("你好")
```
"""


def test_markdown_code_block_and_incomplete_reply(app_page, output_dir):
    store = ChatStore(paths.store_path())
    conv = store.create_conversation("Markdown")
    user = store.add_message(conv.id, None, "user", "Show me Markdown")
    store.add_message(conv.id, user.id, "assistant", MARKDOWN_REPLY)
    crashed = store.create_conversation("Crashed")
    user = store.add_message(crashed.id, None, "user", "Tell me a story")
    store.add_message(crashed.id, user.id, "assistant", "Once upon a", complete=False)
    store.close()
    page = app_page()
    tile(page, "Markdown").click()
    wait_until(lambda: "2189" in texts(page), 10, "the table")
    assert "Copy code" in texts(page) and "python" in texts(page)
    page.wait_for_timeout(1500)  # the table and code block take a moment to paint in software
    page.screenshot(path=output_dir / "markdown.png")
    tile(page, "Crashed").click()
    wait_until(lambda: "incomplete" in texts(page), 10, "the incomplete mark")
    page.screenshot(path=output_dir / "incomplete.png")


def test_escape_stops_and_settings_persist(app_page, output_dir):
    page = app_page()
    send(page, "Write a very long story about a dragon who learns to cook. Make it at least 2000 words.")
    wait_until(lambda: len(last_reply()) > 40, 30, "some streamed text")
    page.keyboard.press("Escape")
    wait_until(lambda: visible(page, "Send"), 10, "Esc to stop the reply")
    store = ChatStore(paths.store_path())
    [conv] = store.list_conversations()
    assert store.path_to(conv.current_leaf)[-1].stats["stop_reason"] == "cancelled"
    button(page, "Chat settings").click()
    system = page.locator('textarea[aria-label="System prompt"]')
    system.wait_for(timeout=10000)
    system.click()
    system.fill("你是一个乐于助人的助手。")
    temp = page.locator('input[aria-label="Temperature"]')
    temp.click()
    temp.fill("0.2")
    page.wait_for_timeout(500)
    page.screenshot(path=output_dir / "settings.png")
    page.get_by_role("button", name="Save", exact=True).click()
    wait_until(lambda: store.get_conversation(conv.id).system_prompt == "你是一个乐于助人的助手。", 10,
               "the system prompt to be saved")
    assert store.get_conversation(conv.id).settings["sampling"]["temperature"] == 0.2
