"""The chat: header (title, token meter, model, settings, export), the dropped-turns notice, the
messages and the composer."""

from collections.abc import Callable

import flet as ft

from ..errors import BelleError
from . import message_view
from .composer import Composer
from .state import ChatState, error_text


class ChatView:
    def __init__(self, state: ChatState, t, actions: message_view.MessageActions, header_actions: list[ft.Control],
                 on_menu: Callable[[], None]):
        self.state = state
        self.t = t
        self.actions = actions
        self.menu_button = ft.IconButton(ft.Icons.MENU, tooltip=t("menu"), visible=False, on_click=lambda e: on_menu())
        self.title = ft.Text(t("untitled"), size=16, weight=ft.FontWeight.W_600, expand=True, max_lines=1,
                             overflow=ft.TextOverflow.ELLIPSIS)
        self.meter = ft.Text("", size=11, color=ft.Colors.ON_SURFACE_VARIANT, tooltip=t("n_ctx"), max_lines=1)
        self.progress = ft.ProgressBar(visible=False)
        self.notice = ft.Container(ft.Text("", size=12), visible=False, padding=8, border_radius=8,
                                   bgcolor=ft.Colors.TERTIARY_CONTAINER, margin=ft.Margin(12, 4, 12, 0))
        self.banner_text = ft.Text("", size=12)
        self.banner_bar = ft.ProgressBar(value=0)
        self.banner = ft.Container(ft.Column([self.banner_text, self.banner_bar], spacing=4, tight=True),
                                   visible=False, padding=8, border_radius=8, bgcolor=ft.Colors.SECONDARY_CONTAINER,
                                   margin=ft.Margin(12, 4, 12, 0))
        self.error = ft.Container(ft.Text("", size=12, color=ft.Colors.ON_ERROR_CONTAINER, selectable=True),
                                  visible=False, padding=8, border_radius=8, bgcolor=ft.Colors.ERROR_CONTAINER,
                                  margin=ft.Margin(12, 4, 12, 0))
        self.empty = ft.Container(ft.Text(t("empty"), color=ft.Colors.ON_SURFACE_VARIANT), alignment=ft.Alignment.CENTER,
                                  padding=ft.Padding(0, 120, 0, 0))
        self.list = ft.ListView(expand=True, spacing=12, padding=16, auto_scroll=True)
        self.composer = Composer(t, self.send, state.stop)
        self.live: ft.Markdown | None = None
        self.dark = False  # picks the code-block colours
        # the meter sits under the title, not beside it: on a phone (390 px) the title, the meter and
        # four buttons in one row left the title three characters
        self.title.expand = False
        heading = ft.Column([self.title, self.meter], spacing=0, tight=True, expand=True)
        header = ft.Container(ft.Row([self.menu_button, heading, *header_actions],
                                     vertical_alignment=ft.CrossAxisAlignment.CENTER),
                              padding=ft.Padding(8, 4, 8, 4))
        self.control = ft.Column([header, self.progress, self.banner, self.notice, self.error,
                                  self.list, self.composer.control],
                                 expand=True, spacing=0)

    def send(self, text: str) -> None:
        try:
            self.state.send(text)
        except BelleError as err:
            self.show_error(error_text(err, self.t))

    def show_error(self, message: str | None) -> None:
        self.error.visible = bool(message)
        self.error.content.value = self.t("error", message=message) if message else ""

    # redraws (called on the UI loop)

    def render_messages(self) -> None:
        s = self.state
        self.live = None
        controls = []
        for i, item in enumerate(s.items):
            streaming = s.streaming_text if item.id == s.streaming_id else None
            row, live = message_view.build(item, self.t, self.actions, i == len(s.items) - 1, s.busy, streaming,
                                           self.dark)
            self.live = live or self.live
            controls.append(row)
        self.list.controls = controls or [self.empty]
        conv = s.session.conversation if s.session else None
        self.title.value = (conv.title if conv and conv.title else self.t("untitled"))
        self.render_status()

    def render_stream(self) -> None:
        if self.live is not None:
            self.live.value = self.state.streaming_text or "…"

    def render_status(self) -> None:
        s = self.state
        self.composer.set_busy(s.busy)
        self.progress.visible = s.phase == "loading"
        used, n_ctx = s.context_usage()
        self.meter.value = self.t("context", used="–" if used is None else used, n_ctx=n_ctx)
        self.notice.visible = bool(s.dropped)
        if s.dropped:
            self.notice.content.value = self.t("dropped", n=len(s.dropped), n_ctx=n_ctx)
        self.show_error(s.error)

    def set_narrow(self, narrow: bool) -> None:
        self.menu_button.visible = narrow

    def composer_height(self) -> float:
        """About how tall the composer is now (it grows with the lines typed, up to 8): toasts
        float above it instead of covering it."""
        lines = min(8, (self.composer.field.value or "").count("\n") + 1)
        return 72 + 20 * (lines - 1)
