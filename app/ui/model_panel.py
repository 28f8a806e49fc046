"""The model panel: local files and the catalog with size and a RAM-fit badge, import a GGUF (file
picker or a path), load with a progress bar, a clear message on a bad file."""

import logging
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import flet as ft

from .. import models
from ..errors import BelleError
from ..gguf_info import human_bytes
from ..memory import available_memory
from . import theme
from .loop import on_loop
from .model_list import ModelRow, model_rows
from .state import ChatState

log = logging.getLogger(__name__)
WEB_PICK_LIMIT = 512 << 20  # the browser sends a picked file over the websocket: larger files go by path


class ModelPanel:
    def __init__(self, page: ft.Page, state: ChatState, t, on_loaded: Callable[[], None]):
        self.page, self.state, self.t, self.on_loaded = page, state, t, on_loaded
        self.picker = ft.FilePicker()
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
        return ft.Row([ft.Column([ft.Text(row.name, size=13), ft.Text(size, size=11, color=ft.Colors.ON_SURFACE_VARIANT)],
                                 spacing=0, expand=True, tight=True),
                       ft.Container(theme.badge(t(row.verdict), row.verdict), tooltip=row.detail or None), action],
                      vertical_alignment=ft.CrossAxisAlignment.CENTER)

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
                on_loop(self.page, self._fail, str(err))
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
            self._fail(str(err))
            return
        self._busy(self.t("loading_model", model=row.name))

        def load():
            session.engine()
            on_loop(self.page, self._done, None)
            self.on_loaded()

        self._in_thread(load)

    def download(self, row: ModelRow) -> None:
        self._busy(self.t("download") + " " + row.name)

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
        self._busy(self.t("import") + f" {path.name}")

        def work():
            try:
                final = models.import_model(path)
            finally:
                if cleanup:
                    path.unlink(missing_ok=True)
            on_loop(self.page, self._done, self.t("imported", name=final.name))

        self._in_thread(work)

    async def pick(self, e=None) -> None:
        files = await self.picker.pick_files(dialog_title=self.t("import_gguf"), file_type=ft.FilePickerFileType.ANY,
                                             with_data=self.page.web)
        if not files:
            return
        f = files[0]
        if f.path:  # desktop: import in place
            self._import(Path(f.path))
        elif f.bytes is not None and f.size <= WEB_PICK_LIMIT:
            tmp = Path(tempfile.mkdtemp(prefix="belle-import-")) / f.name
            tmp.write_bytes(f.bytes)
            self._import(tmp, cleanup=True)
        else:
            self._fail(f"{f.name}: too large to send from the browser; type its path above instead")
