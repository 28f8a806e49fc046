"""An icon button with an accessibility label of its own.

Flutter's Tooltip adds its text to the nearest enclosing semantics node, so inside a message
bubble the tooltips of copy / edit / regenerate all ended up in the bubble's label and the
buttons had none: screen readers (and the browser tests) could not tell them apart. A
`Semantics(container=True)` node gives the button its own node and label; the tooltip sits
outside it so the label is not said twice."""

from collections.abc import Callable

import flet as ft


def labelled_button(icon: ft.IconData, label: str, on_click: Callable, disabled: bool = False,
                    icon_size: float | None = 16, icon_color: str | None = None,
                    expanded: bool | None = None) -> ft.Control:
    """`expanded`: for a button that shows and hides a part, whether it is shown now (screen
    readers say "expanded" / "collapsed"); None for other buttons."""
    button = ft.IconButton(icon, icon_size=icon_size, icon_color=icon_color, disabled=disabled,
                           on_click=on_click)
    return ft.Container(ft.Semantics(content=button, label=label, button=True, container=True, expanded=expanded),
                        tooltip=label)
