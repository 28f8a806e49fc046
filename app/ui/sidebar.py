"""The conversation list: new chat, search across all chats (Chinese substrings too), and per
conversation open / rename / pin / delete."""

from collections.abc import Callable
from dataclasses import dataclass

import flet as ft

from .state import ChatState


@dataclass
class SidebarActions:
    open: Callable[[int], None]
    new: Callable[[], None]
    rename: Callable[[int, str], None]
    pin: Callable[[int], None]
    delete: Callable[[int, str], None]


class Sidebar:
    def __init__(self, state: ChatState, t, actions: SidebarActions, footer: list[ft.Control]):
        self.state = state
        self.t = t
        self.actions = actions
        self.query = ""
        self.search = ft.TextField(hint_text=t("search"), prefix_icon=ft.Icons.SEARCH, dense=True,
                                   border_radius=12, on_change=self._on_search, on_submit=self._on_search)
        self.list = ft.ListView(expand=True, spacing=2)
        new = ft.FilledTonalButton(t("new_chat"), icon=ft.Icons.ADD, on_click=lambda e: actions.new(),
                                   tooltip=t("new_chat") + " (Ctrl+N)")
        self.control = ft.Container(ft.Column([new, self.search, self.list, ft.Row(footer, wrap=True)], spacing=8,
                                              expand=True),
                                    padding=12, expand=True)

    def _on_search(self, e) -> None:
        self.query = (self.search.value or "").strip()
        self.render()

    def render(self) -> None:
        current = self.state.conversation_id
        tiles = []
        if self.query:
            for hit in self.state.search(self.query):
                tiles.append(self._tile(hit.conversation_id, hit.title, False, current, snippet=hit.snippet))
            if not tiles:
                tiles.append(ft.Text(self.t("no_results"), size=12, color=ft.Colors.ON_SURFACE_VARIANT))
        else:
            for conv in self.state.conversations():
                tiles.append(self._tile(conv.id, conv.title, conv.pinned, current))
        self.list.controls = tiles

    def _tile(self, conv_id: int, title: str, pinned: bool, current: int | None, snippet: str = "") -> ft.Control:
        t, a = self.t, self.actions
        title = title or t("untitled")
        menu = ft.PopupMenuButton(icon=ft.Icons.MORE_VERT, tooltip=t("more"), items=[
            ft.PopupMenuItem(t("rename"), icon=ft.Icons.EDIT, on_click=lambda e: self._rename(conv_id, title)),
            ft.PopupMenuItem(t("unpin") if pinned else t("pin"), icon=ft.Icons.PUSH_PIN_OUTLINED,
                             on_click=lambda e: a.pin(conv_id)),
            ft.PopupMenuItem(t("delete"), icon=ft.Icons.DELETE_OUTLINE, on_click=lambda e: a.delete(conv_id, title)),
        ])
        return ft.ListTile(title=ft.Text(title, max_lines=1, overflow=ft.TextOverflow.ELLIPSIS, size=14),
                           subtitle=ft.Text(snippet, max_lines=2, size=11) if snippet else None,
                           leading=ft.Icon(ft.Icons.PUSH_PIN, size=14) if pinned else None,
                           trailing=menu, selected=conv_id == current, dense=True,
                           on_click=lambda e: a.open(conv_id))

    def _rename(self, conv_id: int, title: str) -> None:
        field = ft.TextField(value=title, autofocus=True, label=self.t("rename"))

        def save(e=None):
            self.control.page.pop_dialog()
            if (field.value or "").strip():
                self.actions.rename(conv_id, field.value)

        field.on_submit = save
        self.control.page.show_dialog(ft.AlertDialog(
            title=ft.Text(self.t("rename")), content=field,
            actions=[ft.TextButton(self.t("cancel"), on_click=lambda e: self.control.page.pop_dialog()),
                     ft.FilledButton(self.t("save"), on_click=save)]))
