"""The model panel's download logic without a browser: the progress line's numbers, the rows of
interrupted downloads, and the panel's reactions (RAM notice, Cancel, errors, one download at a
time) with models.pull replaced by a stand-in and a page that runs on_loop calls at once."""

import json
import threading
from types import SimpleNamespace

import pytest

from belle.app import hub, models
from belle.app.catalog import load_catalog
from belle.app.errors import CatalogError
from belle.app.ui import downloads
from belle.app.ui.i18n import tr
from belle.app.ui.model_list import model_rows
from belle.app.ui.model_panel import ModelPanel


def en(key, **values):
    return tr("en", key, **values)


def zh(key, **values):
    return tr("zh", key, **values)


def test_progress_line_in_both_languages():
    assert downloads.progress_text(en, 312_000_000, 491_000_000, 4.2e6) == "312 MB of 491 MB · 4.2 MB/s · 0:43 left"
    assert downloads.progress_text(zh, 312_000_000, 491_000_000, 4.2e6) == "312 MB / 491 MB · 4.2 MB/s · 剩余 0:43"
    assert downloads.progress_text(en, 5_000_000, 4_680_000_000, None) == "5 MB of 4.68 GB"  # no speed yet
    assert downloads.progress_text(en, 10, 10, 300.0) == "0 KB of 0 KB · 0 KB/s"  # done: no time left
    assert downloads.clock(3725) == "1:02:05" and downloads.percent(996, 1000) == 99


def test_speed_is_over_the_last_seconds_and_ignores_what_was_there():
    meter = downloads.Meter()
    meter.add(40_000_000, now=100.0)  # a resumed download: 40 MB were on disk already
    assert meter.rate() is None
    meter.add(41_000_000, now=101.0)
    assert meter.rate() == pytest.approx(1e6)
    for i in range(2, 12):  # then 5 MB/s: after the window only the new speed counts
        meter.add(41_000_000 + (i - 1) * 5_000_000, now=100.0 + i)
    assert meter.rate() == pytest.approx(5e6)
    assert meter.due(now=200.0) and not meter.due(now=200.1) and meter.due(now=200.3)


def partial(folder, name: str, have: int, state: dict) -> None:
    """What hub.download leaves behind when it is stopped: NAME.part and NAME.part.json."""
    (folder / f"{name}.part").write_bytes(b"x" * have)
    (folder / f"{name}.part.json").write_text(json.dumps(state))


def test_rows_of_interrupted_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("BELLE_MODELS_DIR", str(tmp_path))
    qwen = load_catalog().get("qwen2.5-0.5b-instruct-q4_k_m")
    partial(tmp_path, qwen.file, 1000, {"repo": qwen.source["repo"], "file": qwen.file, "size": qwen.size,
                                         "sha256": qwen.sha256, "commit": None})
    partial(tmp_path, "m.gguf", 250, {"repo": "o/r", "file": "q4/m.gguf", "size": 1000, "sha256": None, "commit": "c0ffee"})
    partial(tmp_path, "s-00002-of-00002.gguf", 5, {"repo": "o/r", "file": "s-00002-of-00002.gguf", "size": 9,
                                                     "sha256": None, "commit": None})  # the set's first part names it
    (tmp_path / "gone.gguf.part.json").write_text("{}")  # a record without its bytes
    rows = {r.id: r for r in model_rows(4096, available=64 << 30)}
    assert rows[qwen.id].partial == 1000 and rows[qwen.id].downloadable  # the catalog row, no second one
    assert rows["hf:o/r/q4/m.gguf"].partial == 250 and rows["hf:o/r/q4/m.gguf"].revision == "c0ffee"
    assert rows["hf:o/r/q4/m.gguf"].name == "m.gguf" and not rows["hf:o/r/q4/m.gguf"].local
    assert not [r for r in rows.values() if "s-0000" in r.id or "gone" in r.id]
    assert rows["smollm2-135m"].downloadable and rows["smollm2-135m"].partial == 0
    assert not [r for r in rows.values() if r.local], "nothing partial is a usable model"


class Page:
    """Enough of ft.Page for the panel: on_loop's calls run at once, in the worker's thread."""
    width, height, web = 1280, 800, False

    def __init__(self):
        self.session = SimpleNamespace(connection=SimpleNamespace(loop=SimpleNamespace(
            call_soon_threadsafe=lambda fn, *args: fn(*args))))

    def update(self, *controls):
        pass

    def show_dialog(self, dialog):
        pass


@pytest.fixture
def panel(tmp_path, monkeypatch):
    monkeypatch.setenv("BELLE_MODELS_DIR", str(tmp_path))
    p = ModelPanel(Page(), SimpleNamespace(session=None, default_model=None), en, on_loaded=lambda: None)
    p.rows.update = lambda: None
    return p


def finish(panel) -> None:
    """Wait for the download thread to end (it releases the lock last)."""
    for thread in threading.enumerate():
        if thread.name == "belle-download":
            thread.join(10)
    assert downloads.lock.acquire(timeout=1)
    downloads.lock.release()


def test_notice_progress_and_cancel(panel, monkeypatch):
    started, seen = threading.Event(), {}

    def pull(model, progress, cancel, revision, on_plan):
        on_plan(SimpleNamespace(ram_warning="m.gguf needs about 9 GB of memory to run (downloading anyway)"))
        progress(100_000_000, 400_000_000)
        seen.update(status=panel.status.value, notice=panel.notice.value, cancel=panel.cancel_button.visible,
                    revision=revision)
        started.set()
        cancel.wait(10)
        raise hub.DownloadCancelled("cancelled")

    monkeypatch.setattr(models, "pull", pull)
    panel.hub_ref.value = "hf:o/r/m.gguf"
    panel.download_ref()
    assert started.wait(10)
    assert seen["status"] == "100 MB of 400 MB" and seen["cancel"] and seen["revision"] is None
    assert "needs about 9 GB" in seen["notice"] and panel.notice.visible  # told, not blocked
    panel.cancel_download()
    finish(panel)
    assert panel.status.value == en("download_paused") and not panel.error.visible
    assert not panel.cancel_button.visible and panel.cancel is None


def test_an_error_is_one_line_and_the_panel_stays_usable(panel, monkeypatch):
    def pull(model, **kw):
        raise CatalogError("m.gguf: the downloaded bytes have sha256 abc…, expected def… (corrupted on the way)")

    monkeypatch.setattr(models, "pull", pull)
    panel.hub_ref.value = "hf:o/r/m.gguf"
    panel.download_ref()
    finish(panel)
    assert panel.error.visible and panel.error.value == "Error: m.gguf: the downloaded bytes have sha256 abc…, " \
                                                        "expected def… (corrupted on the way)"
    assert not panel.progress.visible and panel.cancel is None
    panel.hub_ref.value = "hf:not-a-file"
    panel.download_ref()  # a typo is told at once, no thread
    assert "expected hf:OWNER/REPO/FILE.gguf" in panel.error.value


def test_one_download_per_server(panel, monkeypatch):
    calls = []
    monkeypatch.setattr(models, "pull", lambda *a, **kw: calls.append(a))
    with downloads.lock:  # the first start's fetch, or another tab's download
        panel.hub_ref.value = "hf:o/r/m.gguf"
        panel.download_ref()
    assert panel.error.value == en("error", message=en("download_busy"))
    assert not calls and panel.cancel is None
