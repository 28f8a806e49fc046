"""The message box: Enter sends, Shift+Enter adds a line; Send turns into Stop while a reply is written."""

from collections.abc import Callable

import flet as ft


class Composer:
    def __init__(self, t, on_send: Callable[[str], None], on_stop: Callable[[], None]):
        self.on_send = on_send
        self.field = ft.TextField(hint_text=t("message_hint"), multiline=True, shift_enter=True, min_lines=1,
                                  max_lines=8, expand=True, autofocus=True, border_radius=16,
                                  on_submit=self._submit)
        self.send_button = ft.IconButton(ft.Icons.SEND_ROUNDED, tooltip=t("send"), on_click=self._submit)
        self.stop_button = ft.IconButton(ft.Icons.STOP_CIRCLE_OUTLINED, tooltip=t("stop"), visible=False,
                                         icon_color=ft.Colors.ERROR, on_click=lambda e: on_stop())
        self.control = ft.Container(ft.Row([self.field, self.send_button, self.stop_button],
                                           vertical_alignment=ft.CrossAxisAlignment.END),
                                    padding=ft.Padding(12, 4, 12, 12))

    def _submit(self, e=None) -> None:
        text = (self.field.value or "").strip()
        if not text or self.stop_button.visible:
            return
        self.field.value = ""
        self.on_send(text)
        self.field.update()

    def set_busy(self, busy: bool) -> None:
        self.send_button.visible = not busy
        self.stop_button.visible = busy
