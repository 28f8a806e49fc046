"""The Flet app: builds the page from the controls and wires them to one ChatState per browser tab.

Flet runs event handlers on its event loop; generation runs in a worker thread, so state events
from there are handed back to the loop (`loop.on_loop`) before any control is touched."""

import asyncio
import logging
import threading
from collections.abc import Callable

import flet as ft

from ..chat_store import ChatStore
from ..config import load_config, save_config
from ..errors import BelleError
from ..export import from_json, to_json, to_markdown
from ..gguf_info import human_bytes
from ..session import EngineCache
from . import state as events
from ..memory import available_memory
from . import downloads, first_run, theme, uploads
from .chat_view import ChatView
from .i18n import system_language, tr
from .loop import on_loop
from .message_view import MessageActions
from .model_panel import ModelPanel
from .settings_panel import SettingsPanel
from .sidebar import Sidebar, SidebarActions
from .state import ChatState, error_text

log = logging.getLogger(__name__)

# Page updates per second while a reply streams. Each one makes the browser lay out and paint a
# frame; on a 2-core machine without a GPU (Chromium software rendering) that CPU comes out of
# llama.cpp's: benchmarks/ui_throughput.py measured UI/engine tok/s 0.40 at 20 updates/s, ~0.7 at
# 10 and ~0.95 at 5. Plain Text instead of Markdown while streaming did not help (0.69 vs 0.68 at
# 10/s): the cost is painting the frame, not Markdown layout. This is a ceiling, not a pace: a
# model slower than 5 tok/s (7B on a laptop) still shows every token as it comes.
STREAM_UPDATES_PER_S = 5.0
# How often the sidebar asks the store whether another process (`belle chat`) changed it: one
# SQLite pragma, nothing else unless it did.
STORE_POLL_S = 2.0


class BelleApp:
    def __init__(self, page: ft.Page, store: ChatStore, engines: EngineCache):
        self.page = page
        self.store = store
        self.engines = engines
        self.config = load_config()
        self.lang = self.config.language or system_language()
        self.state = ChatState(store, engines, default_model=self.config.default_model,
                               max_updates_per_s=STREAM_UPDATES_PER_S)
        self.state.listen(self._on_state)
        self.clipboard = ft.Clipboard()
        self.narrow = None
        self.offered = False  # the phone's first-start offer is made once per tab, not on every rebuild
        self.state.store_changed()  # the reference point: before the sidebar first reads the list
        self.build()
        page.run_task(self.watch_store)

    def t(self, key: str, **values) -> str:
        return tr(self.lang, key, **values)

    # building

    def build(self) -> None:
        page, t = self.page, self.t
        page.title = "Belle"
        theme.apply(page, self.config.theme)
        page.padding = 0
        self.sidebar = Sidebar(self.state, t, SidebarActions(self.open, self.new_chat, self.rename, self.pin,
                                                              self.delete), footer=self.sidebar_footer())
        actions = MessageActions(copy=self.copy, edit=self.edit, regenerate=self.regenerate, switch=self.switch,
                                 continue_reply=self.continue_reply)
        self.chat = ChatView(self.state, t, actions, self.header_actions(), on_menu=self.open_drawer)
        self.models = ModelPanel(page, self.state, t, on_loaded=lambda: self._on_state(events.STATUS),
                                 on_listed=self._hide_offer_once_a_model_is_here)
        self.settings = SettingsPanel(page, self.state, self.config, t, on_app_change=self.rebuild)
        self.chat.dark = theme.is_dark(page, self.config.theme)
        page.on_platform_brightness_change = self.on_brightness
        page.on_resize = lambda e: self.layout()
        page.on_keyboard_event = self.on_key
        self.layout(force=True)
        self.sidebar.render()
        self.chat.render_messages()
        page.update()
        self.fetch_default_model()
        self.offer_starter_model()

    def fetch_default_model(self) -> None:
        entry = first_run.missing_default_model(self.config.default_model)
        if entry is None:
            return
        banner = self.chat.banner
        banner.visible = True
        self.chat.banner_text.value = self.t("fetching_default", name=entry.name,
                                             size=human_bytes(entry.size) if entry.size else "?")
        self.page.update()

        def progress(done: int, total: int) -> None:
            on_loop(self.page, self._banner_progress, done / total if total else None)

        def work() -> None:
            try:
                first_run.fetch(entry, progress)
                on_loop(self.page, self._banner_done, None)
            except BelleError as err:
                on_loop(self.page, self._banner_done, str(err))

        threading.Thread(target=work, daemon=True, name="belle-fetch-default").start()

    def _banner_progress(self, fraction: float | None) -> None:
        self.chat.banner_bar.value = fraction
        self.chat.banner.update()

    def _banner_done(self, error: str | None) -> None:
        self.chat.banner.visible = False
        if error:
            self.chat.show_error(self.t("fetch_failed", message=error))
        self.page.update()

    # a phone's first start (first_run.starter_offer)

    def offer_starter_model(self) -> None:
        """A phone with no model: the banner says so (a tap on it asks again), and once per tab a
        dialog offers the starter model. Nothing is downloaded until Download is tapped; without a
        model the app stays usable (conversations, settings, the model panel)."""
        entry = first_run.starter_offer(self.config.default_model)
        if entry is None:
            return
        chat = self.chat
        chat.banner_text.value = self.t("no_model", name=entry.name, size=downloads.short_bytes(entry.size or 0))
        chat.banner_bar.visible = False
        chat.banner.on_click = lambda e: self.show_offer(entry)
        chat.banner.visible = True
        self.page.update()
        if not self.offered:
            self.offered = True
            self.show_offer(entry)

    def _hide_offer_once_a_model_is_here(self) -> None:
        """The offer's banner (the only banner a tap acts on) goes once any model is here, however
        it came: the panel's own download or import, not only the offer's Download."""
        chat = self.chat
        if chat.banner.visible and chat.banner.on_click is not None and first_run.starter_offer(
                self.config.default_model) is None:
            chat.banner.visible = False
            chat.banner.on_click = None
            chat.banner.update()

    def show_offer(self, entry) -> None:
        t, short = self.t, downloads.short_bytes
        text = t("starter_text", name=entry.name, size=short(entry.size or 0),
                 ram=short(entry.min_ram_bytes or entry.size or 0), free=short(available_memory()))
        about = entry.description.get(self.lang) or entry.description.get("en", "")
        self.page.show_dialog(ft.AlertDialog(
            modal=True,  # a choice to make: a stray tap beside it must not dismiss it
            title=ft.Text(t("starter_title")),
            # scrollable: the dialog scrolls as a whole on a small screen; a scrolling Column inside
            # it stretched the dialog to the screen's full height
            scrollable=True,
            content=ft.Column([ft.Text(text), ft.Text(about, size=12, color=ft.Colors.ON_SURFACE_VARIANT)],
                              tight=True, spacing=8),
            actions=[ft.TextButton(t("not_now"), on_click=lambda e: self.page.pop_dialog()),
                     ft.FilledButton(t("download"), on_click=lambda e: self.download_starter(entry))]))

    def download_starter(self, entry) -> None:
        self.page.pop_dialog()
        self.models.download_offered(entry.id, entry.name, self._starter_ready)

    def _starter_ready(self, model_id: str) -> None:
        """The offered model arrived: it becomes the default when the default names nothing here,
        saved through the config object the settings panel also saves, so neither undoes the other."""
        if not first_run.default_present(self.config.default_model):
            self.config.default_model = model_id
            save_config(self.config)
            self.state.default_model = model_id
        self.chat.banner.visible = False
        self.chat.banner.on_click = None
        self.page.update()

    def sidebar_footer(self) -> list[ft.Control]:
        return []

    def header_actions(self) -> list[ft.Control]:
        t = self.t
        return [
            ft.IconButton(ft.Icons.MEMORY, tooltip=t("models"), on_click=lambda e: self.models.show()),
            ft.IconButton(ft.Icons.TUNE, tooltip=t("settings"), on_click=lambda e: self.guard(self.settings.show)),
            ft.PopupMenuButton(icon=ft.Icons.MORE_HORIZ, tooltip=t("more"), items=[
                ft.PopupMenuItem(t("export_md"), icon=ft.Icons.DESCRIPTION_OUTLINED, on_click=lambda e: self.export("md")),
                ft.PopupMenuItem(t("export_json"), icon=ft.Icons.DATA_OBJECT, on_click=lambda e: self.export("json")),
                ft.PopupMenuItem(t("import_json"), icon=ft.Icons.UPLOAD_FILE, on_click=self.import_json),
            ])]

    def rebuild(self) -> None:
        """Language or theme changed: draw everything again with the new strings."""
        self.lang = self.config.language or system_language()
        self.page.controls.clear()
        self.narrow = None
        self.build()

    def layout(self, force: bool = False) -> None:
        narrow = (self.page.width or 1024) < theme.NARROW
        if narrow == self.narrow and not force:
            return
        self.narrow = narrow
        self.chat.set_narrow(narrow)
        if narrow:
            self.page.drawer = ft.NavigationDrawer(controls=[self.sidebar.control])
            self.page.controls = [ft.SafeArea(self.chat.control, expand=True)]
        else:
            self.page.drawer = None
            self.page.controls = [ft.Row([ft.Container(self.sidebar.control, width=theme.SIDEBAR_WIDTH),
                                          ft.VerticalDivider(width=1), self.chat.control], expand=True, spacing=0)]
        self.page.update()

    # Handlers are called from sync lambdas: coroutines go through run_task, never a bare call.
    def open_drawer(self) -> None:
        self.page.run_task(self.page.show_drawer)

    def close_drawer(self) -> None:
        if self.narrow:
            self.page.run_task(self.page.close_drawer)

    # state -> controls

    def _on_state(self, event: str) -> None:
        on_loop(self.page, self._redraw, event)

    def _redraw(self, event: str) -> None:
        try:
            if event == events.STREAM:
                self.chat.render_stream()
                if self.chat.live is not None:
                    self.chat.live.update()
                return
            if event == events.MESSAGES:
                self.chat.render_messages()
            elif event == events.STATUS:
                self.chat.render_status()
            elif event == events.CONVERSATIONS:
                self.sidebar.render()
            self.page.update()
        except RuntimeError as err:  # the tab was closed while a reply streamed
            log.debug("redraw skipped: %s", err)

    # actions

    async def watch_store(self) -> None:
        """Redraw the conversation list when another process wrote to the store, so chats made in
        `belle chat` appear without pressing anything. Ends with the tab."""
        try:
            while True:
                await asyncio.sleep(STORE_POLL_S)
                if self.page.session.connection is None:  # the tab is reconnecting: check again later
                    continue
                if self.state.store_changed():
                    self.sidebar.render()
                    self.page.update()
        except RuntimeError as err:  # the tab's session is gone
            log.debug("store watch ended: %s", err)
        finally:
            self.state.close()

    def guard(self, fn: Callable, *args) -> None:
        try:
            fn(*args)
        except BelleError as err:
            self.toast(self.t("error", message=error_text(err, self.t)))

    def toast(self, text: str, action: str | None = None, on_action: Callable | None = None) -> None:
        # floating above the composer: a SnackBar at the bottom of the page covered the message box
        left = 12 if self.narrow else theme.SIDEBAR_WIDTH + 12
        self.page.show_dialog(ft.SnackBar(ft.Text(text), action=action, on_action=on_action,
                                          behavior=ft.SnackBarBehavior.FLOATING,
                                          margin=ft.Margin(left, 0, 12, self.chat.composer_height() + 8)))

    def open(self, conv_id: int) -> None:
        self.guard(self.state.open, conv_id)
        self.sidebar.render()
        self.close_drawer()
        self.page.update()

    def new_chat(self) -> None:
        self.guard(self.state.new_chat)
        self.sidebar.render()
        self.close_drawer()
        self.page.update()

    def rename(self, conv_id: int, title: str) -> None:
        self.guard(self.state.rename, conv_id, title)
        self.chat.render_messages()
        self.page.update()

    def pin(self, conv_id: int) -> None:
        self.guard(self.state.toggle_pin, conv_id)

    def delete(self, conv_id: int, title: str) -> None:
        self.guard(self.state.delete, conv_id)
        self.toast(self.t("deleted", title=title), self.t("undo"), lambda e: self.state.undo_delete())

    def regenerate(self) -> None:
        self.guard(self.state.regenerate)

    def continue_reply(self) -> None:
        self.guard(self.state.continue_reply)

    def switch(self, message_id: int, step: int) -> None:
        self.guard(self.state.switch, message_id, step)

    def edit(self, item) -> None:
        field = ft.TextField(value=item.message.content, multiline=True, min_lines=2, max_lines=10, autofocus=True)

        def save(e=None):
            self.page.pop_dialog()
            self.guard(self.state.edit, item.id, field.value or "")

        self.page.show_dialog(ft.AlertDialog(title=ft.Text(self.t("edit")), content=field, actions=[
            ft.TextButton(self.t("cancel"), on_click=lambda e: self.page.pop_dialog()),
            ft.FilledButton(self.t("send"), on_click=save)]))

    def copy(self, text: str) -> None:
        self.page.run_task(self.clipboard.set, text)
        self.toast(self.t("copied"))

    def export(self, kind: str) -> None:
        if not self.state.saved:  # a new chat is only in the store once something was sent
            self.toast(self.t("nothing_to_export"))
            return
        import json

        from .. import paths

        conv_id = self.state.session.id
        folder = paths.ensure(paths.home() / "exports")
        path = folder / f"conversation-{conv_id}.{kind}"
        if kind == "md":
            path.write_text(to_markdown(self.store, conv_id), encoding="utf-8")
        else:
            path.write_text(json.dumps(to_json(self.store, conv_id), ensure_ascii=False, indent=2), encoding="utf-8")
        self.toast(self.t("exported", path=str(path)))

    async def import_json(self, e=None) -> None:
        import json

        files = await self.models.picker.pick_files(dialog_title=self.t("import_json"), with_data=True,
                                                    file_type=ft.FilePickerFileType.CUSTOM, allowed_extensions=["json"])
        if not files:
            return
        f = files[0]
        try:
            data = json.loads(f.bytes.decode("utf-8") if f.bytes is not None else open(f.path, encoding="utf-8").read())
            conv_id = from_json(self.store, data, f.name)
        except (ValueError, OSError) as err:
            self.toast(self.t("error", message=f"{f.name}: {err}"))
            return
        except BelleError as err:
            self.toast(self.t("error", message=str(err)))
            return
        self.open(conv_id)

    def on_brightness(self, e=None) -> None:
        self.chat.dark = theme.is_dark(self.page, self.config.theme)
        self.chat.render_messages()
        self.page.update()

    def on_key(self, e: ft.KeyboardEvent) -> None:
        if e.key == "Escape":
            self.state.stop()
        elif e.ctrl and e.key.upper() == "N":
            self.new_chat()


def make_main(store: ChatStore, engines: EngineCache) -> Callable[[ft.Page], None]:
    """One store and one loaded model for the whole server: each browser tab gets its own ChatState."""

    uploads.enable()  # before ft.run starts the server: it reads the upload settings then

    def main(page: ft.Page) -> None:
        BelleApp(page, store, engines)

    return main
