"""One message of the chat: Markdown with code blocks that have their own copy button, the
‹ n/m › switch between alternatives, copy / edit / regenerate, and quiet per-message stats."""

from collections.abc import Callable
from dataclasses import dataclass

import flet as ft

from .state import MessageItem, split_code_blocks


@dataclass
class MessageActions:
    copy: Callable[[str], None]
    edit: Callable[[MessageItem], None]
    regenerate: Callable[[], None]
    switch: Callable[[int, int], None]


def markdown(text: str, dark: bool = False) -> ft.Markdown:
    # GITHUB_WEB: fenced code blocks, tables and task lists (the default set shows code inline)
    return ft.Markdown(text, selectable=True, extension_set=ft.MarkdownExtensionSet.GITHUB_WEB,
                       code_theme=ft.MarkdownCodeTheme.ATOM_ONE_DARK if dark else ft.MarkdownCodeTheme.ATOM_ONE_LIGHT)


def code_block(code: str, lang: str, t, copy: Callable[[str], None], dark: bool = False) -> ft.Control:
    header = ft.Row([ft.Text(lang or "code", size=11, color=ft.Colors.ON_SURFACE_VARIANT),
                     ft.IconButton(ft.Icons.COPY_ALL, icon_size=16, tooltip=t("copy_code"),
                                   on_click=lambda e: copy(code))],
                    alignment=ft.MainAxisAlignment.SPACE_BETWEEN)
    return ft.Container(ft.Column([header, markdown(f"```{lang}\n{code}\n```", dark)], spacing=0),
                        border=ft.Border.all(1, ft.Colors.OUTLINE_VARIANT), border_radius=8,
                        padding=ft.Padding(8, 0, 8, 8))


def body(text: str, t, copy: Callable[[str], None], dark: bool = False) -> list[ft.Control]:
    return [markdown(s.text, dark) if s.kind == "text" else code_block(s.text, s.lang, t, copy, dark)
            for s in split_code_blocks(text)]


def stats_line(stats: dict | None, t) -> str:
    if not stats:
        return ""
    if not stats.get("generated_tokens"):
        return t("stopped") if stats.get("stop_reason") == "cancelled" else ""
    line = t("stats", tok_s=stats.get("decode_tok_s", 0.0), ttft=stats.get("ttft_s", 0.0),
             tokens=stats.get("generated_tokens", 0))
    if stats.get("stop_reason") == "cancelled":
        line += " · " + t("stopped")
    return line


def build(item: MessageItem, t, actions: MessageActions, is_last: bool, busy: bool,
          streaming_text: str | None = None, dark: bool = False) -> tuple[ft.Control, ft.Markdown | None]:
    """The control for one message; while it streams, also the Markdown to update in place."""
    msg = item.message
    user = msg.role == "user"
    live = None
    if streaming_text is not None:
        live = markdown(streaming_text or "…", dark)
        content: list[ft.Control] = [live]
    else:
        content = body(msg.content, t, actions.copy, dark)
    if not msg.complete and streaming_text is None:
        content.append(ft.Text(t("incomplete"), size=11, italic=True, color=ft.Colors.ERROR))

    tools: list[ft.Control] = []
    if item.count > 1:
        tools += [ft.IconButton(ft.Icons.CHEVRON_LEFT, icon_size=16, tooltip=t("previous"), disabled=busy,
                                on_click=lambda e: actions.switch(msg.id, -1)),
                  ft.Text(f"{item.index}/{item.count}", size=12, semantics_label=f"{item.index}/{item.count}"),
                  ft.IconButton(ft.Icons.CHEVRON_RIGHT, icon_size=16, tooltip=t("next"), disabled=busy,
                                on_click=lambda e: actions.switch(msg.id, +1))]
    if streaming_text is None:
        tools.append(ft.IconButton(ft.Icons.CONTENT_COPY, icon_size=16, tooltip=t("copy"),
                                   on_click=lambda e: actions.copy(msg.content)))
        if user:
            tools.append(ft.IconButton(ft.Icons.EDIT_OUTLINED, icon_size=16, tooltip=t("edit"), disabled=busy,
                                       on_click=lambda e: actions.edit(item)))
        elif is_last:
            tools.append(ft.IconButton(ft.Icons.REFRESH, icon_size=16, tooltip=t("regenerate"), disabled=busy,
                                       on_click=lambda e: actions.regenerate()))
        line = stats_line(msg.stats, t)
        if line:
            tools.append(ft.Text(line, size=11, color=ft.Colors.ON_SURFACE_VARIANT))

    label = ft.Text(t("you") if user else t("assistant"), size=12, weight=ft.FontWeight.BOLD,
                    color=ft.Colors.PRIMARY)
    column = ft.Column([label, *content, ft.Row(tools, spacing=0, wrap=True)], spacing=4, tight=True,
                       horizontal_alignment=ft.CrossAxisAlignment.END if user else ft.CrossAxisAlignment.START)
    bubble = ft.Container(column, padding=12, border_radius=12,
                          bgcolor=ft.Colors.PRIMARY_CONTAINER if user else ft.Colors.SURFACE_CONTAINER_LOW)
    row = ft.Row([bubble], alignment=ft.MainAxisAlignment.END if user else ft.MainAxisAlignment.START)
    # Flexible: long text wraps inside the bubble; a user's short question stays a small bubble
    bubble.expand, bubble.expand_loose = True, user
    if user:
        bubble.margin = ft.Margin(48, 0, 0, 0)
    return row, live
