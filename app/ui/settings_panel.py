"""Settings of the open conversation (system prompt, template, sampling, context size; saved with
the conversation) and of the app (language, theme, the Hugging Face mirror, the disk kept for saved
conversation states; saved in config.json), in one dialog, which also shows the states' disk use
with a button that clears them."""

from collections.abc import Callable

import flet as ft

from .. import hub, kv_state, paths
from ..config import AppConfig, save_config
from ..errors import BelleError
from ..gguf_info import human_bytes
from ..template_data import TEMPLATE_NAMES
from .i18n import LANGUAGES
from .state import ChatState, error_text, parse_setting


class SettingsPanel:
    def __init__(self, page: ft.Page, state: ChatState, config: AppConfig, t, on_app_change: Callable[[], None]):
        self.page, self.state, self.config, self.t, self.on_app_change = page, state, config, t, on_app_change

    def show(self) -> None:
        t = self.t
        session = self.state.ensure_session()
        conv, s = session.conversation, session.settings
        self.system = ft.TextField(label=t("system_prompt"), value=conv.system_prompt, multiline=True, min_lines=2,
                                   max_lines=6)
        self.template = ft.Dropdown(label=t("template"), value=conv.template,
                                    options=[ft.DropdownOption(n) for n in ("auto", *TEMPLATE_NAMES)])
        number = dict(dense=True, width=140, keyboard_type=ft.KeyboardType.NUMBER)
        self.fields = {
            "temperature": ft.TextField(label=t("temperature"), value=str(s.sampling.temperature), **number),
            "top_p": ft.TextField(label=t("top_p"), value=str(s.sampling.top_p), **number),
            "max_tokens": ft.TextField(label=t("max_tokens"), value=str(s.sampling.max_tokens), **number),
            "n_ctx": ft.TextField(label=t("n_ctx"), value=str(s.n_ctx), **number),
        }
        self.language = ft.Dropdown(label=t("language"), value=self.config.language or "",
                                    options=[ft.DropdownOption(k, v) for k, v in LANGUAGES.items()])
        self.theme = ft.Dropdown(label=t("theme"), value=self.config.theme, options=[
            ft.DropdownOption(k, t(f"theme_{k}")) for k in ("system", "light", "dark")])
        self.mirror = ft.TextField(label=t("hf_mirror"), value=self.config.hf_mirror or "", dense=True,
                                   helper=t("hf_mirror_hint"), helper_max_lines=3, keyboard_type=ft.KeyboardType.URL)
        self.budget = ft.TextField(label=t("kv_state_budget_mb"), value=str(self.config.kv_state_budget_mb),
                                   **{**number, "width": 280})
        self.states = ft.Text(self._states_line(), size=12)
        self.error = ft.Text("", color=ft.Colors.ERROR, visible=False)
        self.app_error = ft.Text("", color=ft.Colors.ERROR, visible=False)
        content = ft.Column([
            ft.Text(t("settings"), weight=ft.FontWeight.BOLD), self.system, self.template,
            ft.Row(list(self.fields.values()), wrap=True),
            self.error,  # next to the fields it is about
            ft.Divider(),
            ft.Text(t("app_settings"), weight=ft.FontWeight.BOLD), ft.Row([self.language, self.theme], wrap=True),
            self.mirror, self.budget, self.app_error,
            self.states, ft.Text(t("saved_states_hint"), size=12),
            ft.OutlinedButton(t("clear_states"), on_click=self.clear_states),
            ft.Text(t("data_folder"), size=12), ft.Text(str(paths.home()), size=12, selectable=True)], tight=True, scroll=ft.ScrollMode.AUTO, spacing=10)
        self.page.show_dialog(ft.AlertDialog(
            title=ft.Text(t("settings")), content=ft.Container(content, width=560),
            actions=[ft.TextButton(t("cancel"), on_click=lambda e: self.page.pop_dialog()),
                     ft.FilledButton(t("save"), on_click=self.save)]))

    def save(self, e=None) -> None:
        session = self.state.ensure_session()
        try:
            mirror = self._mirror()
            budget = parse_setting("kv_state_budget_mb", self.budget.value or "")
        except BelleError as err:
            self._show(self.app_error, error_text(err, self.t))
            return
        self.app_error.visible = False
        try:
            # every field checked before anything is changed: a wrong value changes nothing, and
            # the message names the field by its label, not by its internal name
            values = {name: parse_setting(name, field.value or "") for name, field in self.fields.items()}
            if (self.system.value or "") != session.conversation.system_prompt:
                session.set_system_prompt(self.system.value or "")
            if self.template.value and self.template.value != session.conversation.template:
                session.set_template(self.template.value)
            for name, value in values.items():
                session.set_param(name, value)
        except BelleError as err:
            self._show(self.error, error_text(err, self.t))
            return
        app_changed = (self.language.value or None) != self.config.language or self.theme.value != self.config.theme
        self.config.language = self.language.value or None
        self.config.theme = self.theme.value or "system"
        self.config.hf_mirror = mirror
        self.config.kv_state_budget_mb = budget
        save_config(self.config)
        self.state.engines.set_state_budget(budget)
        self.page.pop_dialog()
        self.state._set_branch()
        if app_changed:
            self.on_app_change()

    def _states_line(self) -> str:
        used = kv_state.disk_used()
        return self.t("saved_states", count=used.count, size=human_bytes(used.total_bytes),
                      budget=human_bytes(self.config.kv_state_budget_mb * 1_000_000))

    def clear_states(self, e=None) -> None:
        kv_state.clear()
        self.states.value = self._states_line()
        self.page.update()

    def _mirror(self) -> str | None:
        """The mirror as hub.endpoint() will use it (no trailing slash), None when the field is
        empty; a value that is not an http(s) URL raises before anything is saved."""
        value = (self.mirror.value or "").strip()
        return hub.endpoint(value) if value else None

    def _show(self, error: ft.Text, message: str) -> None:
        error.value = message
        error.visible = True
        self.page.update()
