"""Colours, the bundled CJK font and the breakpoint for the phone layout."""

import flet as ft

FONT = "BelleCJK"
FONT_ASSET = "/fonts/NotoSansCJKsc-belle.otf"  # under assets/, served by Flet; Flutter web has no CJK font offline
SEED = "#00897B"
NARROW = 600  # below this width the conversation list becomes a drawer (phones)
SIDEBAR_WIDTH = 280
BADGE_COLORS = {"fits": ft.Colors.GREEN_700, "tight": ft.Colors.AMBER_800, "wont_fit": ft.Colors.RED_700,
                "not_downloaded": ft.Colors.GREY_600}
MODES = {"light": ft.ThemeMode.LIGHT, "dark": ft.ThemeMode.DARK, "system": ft.ThemeMode.SYSTEM}


def apply(page: ft.Page, mode: str) -> None:
    page.fonts = {FONT: FONT_ASSET}
    page.theme = ft.Theme(color_scheme_seed=SEED, font_family=FONT)
    page.dark_theme = ft.Theme(color_scheme_seed=SEED, font_family=FONT)
    page.theme_mode = MODES.get(mode, ft.ThemeMode.SYSTEM)


def badge(text: str, verdict: str) -> ft.Control:
    return ft.Container(ft.Text(text, size=11, color=ft.Colors.WHITE), bgcolor=BADGE_COLORS.get(verdict, ft.Colors.GREY),
                        border_radius=8, padding=ft.Padding(8, 2, 8, 2))


def is_dark(page: ft.Page, mode: str) -> bool:
    return mode == "dark" or (mode not in MODES or mode == "system") and page.platform_brightness == ft.Brightness.DARK
