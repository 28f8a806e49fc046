"""One message of the chat: Markdown with code blocks that have their own copy button, the
‹ n/m › switch between alternatives, copy / edit / regenerate / continue, and quiet per-message
stats. A user's message is shown as typed (plain text), an answer as Markdown."""

from collections.abc import Callable
from dataclasses import dataclass

import flet as ft

from . import theme
from .labelled_button import labelled_button
from .state import MessageItem, cut_off_reason, split_code_blocks


@dataclass
class MessageActions:
    copy: Callable[[str], None]
    edit: Callable[[MessageItem], None]
    regenerate: Callable[[], None]
    switch: Callable[[int, int], None]
    continue_reply: Callable[[], None]


def markdown(text: str, dark: bool = False) -> ft.Markdown:
    # GITHUB_WEB: fenced code blocks, tables and task lists (the default set shows code inline).
    # Code (blocks and `inline`) in the bundled monospace font: Flutter's "monospace" is not a font
    # the web client has offline, so it fell back to the proportional text font.
    return ft.Markdown(text, selectable=True, extension_set=ft.MarkdownExtensionSet.GITHUB_WEB,
                       code_theme=ft.MarkdownCodeTheme.ATOM_ONE_DARK if dark else ft.MarkdownCodeTheme.ATOM_ONE_LIGHT,
                       code_style_sheet=ft.MarkdownStyleSheet(code_text_style=theme.code_style()),
                       md_style_sheet=ft.MarkdownStyleSheet(code_text_style=theme.code_style()))


def plain(text: str) -> ft.Text:
    """A user's message exactly as typed: Markdown would join lines (a single newline is not a
    break there) and read * _ # as formatting. Not selectable: a selectable Text is an input field
    to screen readers, which then do not read the message (the Copy button copies it)."""
    return ft.Text(text)


def code_block(code: str, lang: str, t, copy: Callable[[str], None], dark: bool = False) -> ft.Control:
    header = ft.Row([ft.Text(lang or t("code"), size=11, color=ft.Colors.ON_SURFACE_VARIANT),
                     labelled_button(ft.Icons.COPY_ALL, t("copy_code"), lambda e: copy(code))],
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
    if stats.get("restored_tokens"):  # the history came from the conversation's saved state (kv_state.py)
        line += " · " + t("resumed", tokens=f"{stats['restored_tokens']:,}")
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
    elif user:
        content = [plain(msg.content)]
    else:
        content = body(msg.content, t, actions.copy, dark)
    if not msg.complete and streaming_text is None:
        content.append(ft.Text(t("incomplete"), size=11, italic=True, color=ft.Colors.ERROR))
    cut = cut_off_reason(msg) if streaming_text is None else None
    if cut:
        content.append(ft.Text(t(f"cut_off_{cut}"), size=11, italic=True, color=ft.Colors.TERTIARY))

    tools: list[ft.Control] = []
    if item.count > 1:
        tools += [labelled_button(ft.Icons.CHEVRON_LEFT, t("previous"), lambda e: actions.switch(msg.id, -1), busy),
                  ft.Text(f"{item.index}/{item.count}", size=12, semantics_label=f"{item.index}/{item.count}"),
                  labelled_button(ft.Icons.CHEVRON_RIGHT, t("next"), lambda e: actions.switch(msg.id, +1), busy)]
    if streaming_text is None:
        tools.append(labelled_button(ft.Icons.CONTENT_COPY, t("copy"), lambda e: actions.copy(msg.content)))
        if user:
            tools.append(labelled_button(ft.Icons.EDIT_OUTLINED, t("edit"), lambda e: actions.edit(item), busy))
        if is_last:  # on a question too: its answer was stopped before the first word (and removed)
            tools.append(labelled_button(ft.Icons.REFRESH, t("regenerate"), lambda e: actions.regenerate(), busy))
            if cut:
                tools.append(ft.TextButton(t("continue"), icon=ft.Icons.FAST_FORWARD, disabled=busy,
                                           on_click=lambda e: actions.continue_reply()))
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
