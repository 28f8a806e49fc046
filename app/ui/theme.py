"""Colours, the bundled fonts and the breakpoint for the phone layout.

The web client has no fonts of its own offline beyond Roboto, so the app brings three (under
assets/fonts/, each with its licence and the script that makes it): Noto Sans CJK SC for text
(its Latin is fine too), Noto Color Emoji as the fallback for emoji, and Noto Sans Mono for code."""

import dataclasses

import flet as ft

FONT = "BelleCJK"
FONT_ASSET = "/fonts/NotoSansCJKsc-belle.otf"  # under assets/, served by Flet; Flutter web has no CJK font offline
EMOJI_FONT = "BelleEmoji"
EMOJI_ASSET = "/fonts/NotoColorEmoji-belle.ttf"  # colour bitmaps (CBDT): CanvasKit draws them
MONO_FONT = "BelleMono"
MONO_ASSET = "/fonts/NotoSansMono-belle.ttf"
SEED = "#00897B"
NARROW = 600  # below this width the conversation list becomes a drawer (phones)
SIDEBAR_WIDTH = 280
BADGE_COLORS = {"fits": ft.Colors.GREEN_700, "tight": ft.Colors.AMBER_800, "wont_fit": ft.Colors.RED_700,
                "not_downloaded": ft.Colors.GREY_600}
MODES = {"light": ft.ThemeMode.LIGHT, "dark": ft.ThemeMode.DARK, "system": ft.ThemeMode.SYSTEM}


def text_style() -> ft.TextStyle:
    """Every text: the CJK font, and the emoji font for what it lacks. Flutter web only falls back
    to fonts named here (its own fallback fetches Noto fonts from the internet)."""
    # the colour too: a text theme style without one came out black in the dark theme
    return ft.TextStyle(font_family=FONT, font_family_fallback=[EMOJI_FONT], color=ft.Colors.ON_SURFACE)


def code_style() -> ft.TextStyle:
    return ft.TextStyle(font_family=MONO_FONT, font_family_fallback=[FONT, EMOJI_FONT])


def _theme() -> ft.Theme:
    # Theme.font_family alone has no fallback list: set it on every style of the text theme
    styles = {f.name: text_style() for f in dataclasses.fields(ft.TextTheme) if f.name.split("_")[0] in
              ("display", "headline", "title", "body", "label")}
    return ft.Theme(color_scheme_seed=SEED, font_family=FONT, text_theme=ft.TextTheme(**styles),
                    primary_text_theme=ft.TextTheme(**styles))


def apply(page: ft.Page, mode: str) -> None:
    page.fonts = {FONT: FONT_ASSET, EMOJI_FONT: EMOJI_ASSET, MONO_FONT: MONO_ASSET}
    page.theme = _theme()
    page.dark_theme = _theme()
    page.theme_mode = MODES.get(mode, ft.ThemeMode.SYSTEM)


def badge(text: str, verdict: str) -> ft.Control:
    return ft.Container(ft.Text(text, size=11, color=ft.Colors.WHITE), bgcolor=BADGE_COLORS.get(verdict, ft.Colors.GREY),
                        border_radius=8, padding=ft.Padding(8, 2, 8, 2))


def is_dark(page: ft.Page, mode: str) -> bool:
    return mode == "dark" or (mode not in MODES or mode == "system") and page.platform_brightness == ft.Brightness.DARK
