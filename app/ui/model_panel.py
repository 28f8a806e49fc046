"""The model panel: local files and the catalog with size and a RAM-fit badge, import a GGUF (file
picker or a path), load with a progress bar, a clear message on a bad file. A file made by
`belle build` carries a model card (base model, data, training, quantization, fidelity table); its
row opens it in place.

In the browser a picked file is uploaded over HTTP with a progress bar (see uploads.py), then
imported like a file on this computer."""

import logging
import shlex
import threading
from collections.abc import Callable
from pathlib import Path

import flet as ft

from .. import models
from ..errors import BelleError
from ..gguf_info import CARD_FIELDS, human_bytes
from ..memory import available_memory
from . import theme, uploads
from .labelled_button import labelled_button
from .loop import on_loop
from .model_list import ModelRow, model_rows
from .state import ChatState, error_text

log = logging.getLogger(__name__)
UPLOAD_URL_S = 24 * 3600  # how long a signed upload URL stays valid: a large model on a slow link takes a while


class ModelPanel:
    def __init__(self, page: ft.Page, state: ChatState, t, on_loaded: Callable[[], None]):
        self.page, self.state, self.t, self.on_loaded = page, state, t, on_loaded
        self.picker = ft.FilePicker(on_upload=self._on_upload)
        self.uploading: dict[str, Path] = {}  # picked file name -> where its upload lands
        self.open_cards: set[str] = set()  # ids of the rows whose model card is shown
        self.rows = ft.Column(spacing=4, scroll=ft.ScrollMode.AUTO, height=360)
        self.error = ft.Text("", color=ft.Colors.ERROR, visible=False)
        self.progress = ft.ProgressBar(visible=False)
        self.status = ft.Text("", size=12)
        self.path = ft.TextField(label=t("import_path"), dense=True, expand=True, on_submit=lambda e: self.import_path())
        self.dialog = ft.AlertDialog(
            title=ft.Text(t("models")),
            content=ft.Container(ft.Column([
                ft.Text(t("free_ram", free=human_bytes(available_memory())), size=12),
                self.rows,
                ft.Row([self.path, ft.FilledButton(t("import"), on_click=lambda e: self.import_path())]),
                ft.Row([ft.OutlinedButton(t("import_gguf"), icon=ft.Icons.FILE_OPEN, on_click=self.pick)]),
                self.progress, self.status, self.error], tight=True, spacing=8), width=620),
            actions=[ft.TextButton(t("close"), on_click=lambda e: page.pop_dialog())])

    def show(self) -> None:
        self.render()
        self.page.show_dialog(self.dialog)

    def current_model(self) -> str:
        conv = self.state.session.conversation if self.state.session else None
        return (conv.model if conv else None) or self.state.default_model or models.default_model_id()

    def render(self) -> None:
        t, current = self.t, self.current_model()
        n_ctx = self.state.session.settings.n_ctx if self.state.session else 4096
        controls: list[ft.Control] = [ft.Text(t("local_files"), weight=ft.FontWeight.BOLD)]
        rows = model_rows(n_ctx)
        for row in rows:
            if not row.local and controls[-1] is not None and not any(
                    isinstance(c, ft.Text) and c.value == t("catalog") for c in controls):
                controls.append(ft.Text(t("catalog"), weight=ft.FontWeight.BOLD))
            controls.append(self._row(row, current))
        self.rows.controls = controls

    def _row(self, row: ModelRow, current: str) -> ft.Control:
        t = self.t
        if row.local:
            in_use = current in (row.id, row.path.name if row.path else None)
            action = ft.FilledTonalButton(t("in_use") if in_use else t("use"), disabled=in_use,
                                          on_click=lambda e: self.use(row))
        elif row.downloadable:
            action = ft.OutlinedButton(t("download"), on_click=lambda e: self.download(row))
        else:
            action = ft.Text(t("not_downloaded"), size=11, color=ft.Colors.ON_SURFACE_VARIANT)
        size = human_bytes(row.size) if row.size else "?"
        if row.card:
            size += f" · {t('model_card')}"  # says there is one before anyone hovers the toggle
        line = ft.Row([ft.Column([ft.Text(row.name, size=13), ft.Text(size, size=11, color=ft.Colors.ON_SURFACE_VARIANT)],
                                 spacing=0, expand=True, tight=True),
                       *self._card_toggle(row),
                       ft.Container(theme.badge(t(row.verdict), row.verdict), tooltip=row.tooltip(t) or None), action],
                      vertical_alignment=ft.CrossAxisAlignment.CENTER)
        if row.id not in self.open_cards or not row.card:
            return line
        return ft.Column([line, self._card(row)], spacing=4, tight=True)

    # the model card

    def _card_toggle(self, row: ModelRow) -> list[ft.Control]:
        if not row.card:
            return []
        shown = row.id in self.open_cards
        return [labelled_button(ft.Icons.EXPAND_LESS if shown else ft.Icons.EXPAND_MORE,
                                self.t("model_card_of", name=row.name), lambda e: self.toggle_card(row.id),
                                icon_size=20, expanded=shown)]

    def toggle_card(self, row_id: str) -> None:
        self.open_cards ^= {row_id}
        self.render()
        self.rows.update()

    def _card(self, row: ModelRow) -> ft.Control:
        """The card's facts as label and value; the fidelity table (several lines) under its label in
        the monospace font, scrolling sideways rather than wrapping its columns. The recipe YAML is
        too long for the panel: a line says how to print it."""
        t, muted = self.t, ft.Colors.ON_SURFACE_VARIANT
        narrow = (self.page.width or 1024) < theme.NARROW  # a phone: labels above their values, not beside
        facts: list[ft.Control] = [ft.Text(t("model_card"), size=12, weight=ft.FontWeight.BOLD)]
        for key, value in row.card.items():
            if key == "recipe":
                continue
            label = t(f"card_{key}") if key in CARD_FIELDS else key  # a field newer than this app: its own name
            value = value.strip("\n")
            if "\n" in value:
                table = ft.Text(value, size=11, style=theme.code_style(), no_wrap=True)
                facts += [ft.Text(label, size=12, color=muted), ft.Row([table], scroll=ft.ScrollMode.AUTO)]
            elif narrow:
                facts.append(ft.Column([ft.Text(label, size=12, color=muted), ft.Text(value, size=12)], spacing=0))
            else:
                facts.append(ft.Row([ft.Text(label, size=12, color=muted, width=130),
                                     ft.Text(value, size=12, expand=True)],
                                    vertical_alignment=ft.CrossAxisAlignment.START))
        if "recipe" in row.card:
            command = f"belle models info {shlex.quote(row.id)} --recipe"
            facts.append(ft.Text(t("card_recipe", command=command), size=11, color=muted))
        return ft.Container(ft.Column(facts, spacing=4, tight=True), border=ft.Border.all(1, ft.Colors.OUTLINE_VARIANT),
                            border_radius=8, padding=ft.Padding(10, 6, 10, 8))

    # actions

    def _busy(self, text: str | None) -> None:
        self.progress.visible = text is not None
        self.status.value = text or ""
        if text:
            self.error.visible = False
        self.page.update()

    def _fail(self, message: str) -> None:
        self.progress.visible = False
        self.status.value = ""
        self.error.value = self.t("error", message=message)
        self.error.visible = True
        self.page.update()

    def _in_thread(self, work: Callable[[], None]) -> None:
        def run():
            try:
                work()
            except BelleError as err:
                on_loop(self.page, self._fail, error_text(err, self.t))
            except Exception as err:
                log.exception("model panel")
                on_loop(self.page, self._fail, f"{type(err).__name__}: {err}")

        threading.Thread(target=run, daemon=True).start()

    def use(self, row: ModelRow) -> None:
        """Switch the open chat to this model and load it now, so the first message is quick."""
        try:
            session = self.state.ensure_session()
            self.state._require_idle()
            session.set_model(row.id)
        except BelleError as err:
            self._fail(error_text(err, self.t))
            return
        self._busy(self.t("loading_model", model=row.name))

        def load():
            session.engine()
            on_loop(self.page, self._done, None)
            self.on_loaded()

        self._in_thread(load)

    def download(self, row: ModelRow) -> None:
        self._busy(f'{self.t("download")} {row.name}')

        def pull():
            models.pull(row.id, progress=lambda done, total: on_loop(self.page, self._progress, done, total))
            on_loop(self.page, self._done, None)

        self._in_thread(pull)

    def _progress(self, done: int, total: int) -> None:
        self.progress.value = done / total if total else None
        self.progress.update()

    def _done(self, status: str | None) -> None:
        self._busy(None)
        self.status.value = status or ""
        self.render()
        self.page.update()

    def import_path(self) -> None:
        path = (self.path.value or "").strip()
        if path:
            self._import(Path(path))

    def _import(self, path: Path, cleanup: bool = False) -> None:
        self.progress.value = None  # indeterminate until the copy reports progress
        self._busy(self.t("importing", name=path.name))

        def work():
            try:
                final = models.import_model(path, progress=lambda done, total: on_loop(
                    self.page, self._progress, done, total))
            finally:
                if cleanup:
                    uploads.discard(path)
            on_loop(self.page, self._done, self.t("imported", name=models.display_name(final)))

        self._in_thread(work)

    async def pick(self, e=None) -> None:
        web = self.page.web
        if web and not uploads.enabled():
            self._fail(self.t("web_upload_off"))
            return
        files = await self.picker.pick_files(dialog_title=self.t("import_gguf"), file_type=ft.FilePickerFileType.CUSTOM,
                                             allowed_extensions=["gguf"])
        if not files:
            return
        f = files[0]
        if f.path and not web:  # desktop: import in place
            self._import(Path(f.path))
            return
        # browser: the file goes to the server over HTTP first; _on_upload imports it when it is there
        name = uploads.new_name(f.name)
        self.uploading[f.name] = uploads.folder() / name
        self.progress.value = 0
        self._busy(self.t("uploading", name=f.name, percent=0))
        await self.picker.upload([ft.FilePickerUploadFile(self.page.get_upload_url(name, UPLOAD_URL_S), id=f.id)])

    def _on_upload(self, e: ft.FilePickerUploadEvent) -> None:
        target = self.uploading.get(e.file_name)
        if target is None:
            return
        if e.error:
            del self.uploading[e.file_name]
            uploads.discard(target)
            self._fail(self.t("upload_failed", name=e.file_name, message=e.error))
        elif e.progress is not None and e.progress >= 1.0:
            del self.uploading[e.file_name]
            self._import(target, cleanup=True)
        else:
            self.progress.value = e.progress or 0
            self.status.value = self.t("uploading", name=e.file_name, percent=round((e.progress or 0) * 100))
            self.page.update()
