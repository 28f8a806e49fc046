"""`belle models pull` from a hub that misbehaves: a local server (tests/hub_server.py) speaks the
Hugging Face download protocol and cuts connections, sends wrong bytes, ignores ranges or is slow."""

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from belle.app import hub, models
from belle.app.catalog import Catalog, CatalogEntry
from belle.app.config import load_config, save_config
from tests.conftest import BELLE, ROOT, run_belle
from tests.hub_server import COMMIT, start_hub

REPO = "belle-test/SmolLM2-GGUF"


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    hub_, server = start_hub()
    monkeypatch.setenv("HF_ENDPOINT", hub_.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("BELLE_MODELS_DIR", str(tmp_path / "models"))
    yield hub_
    hub_.release()  # a download a failed test left held must not keep a server thread waiting
    server.shutdown()
    server.server_close()


@pytest.fixture
def random_file(tmp_path) -> Path:
    """3 MB that stand for a model: the download code never parses what it fetches."""
    path = tmp_path / "blob.gguf"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 123))
    return path


def models_dir() -> Path:
    return Path(os.environ["BELLE_MODELS_DIR"])


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pull_verifies_the_hub_hash_and_the_model_works(fake_hub, default_model_path):
    served = fake_hub.add(REPO, "q4/SmolLM2-135M.Q4_1.gguf", default_model_path)
    result = run_belle("models", "pull", f"hf:{REPO}/q4/SmolLM2-135M.Q4_1.gguf")
    assert result.returncode == 0, result.stderr
    path = models_dir() / "SmolLM2-135M.Q4_1.gguf"
    assert path.stat().st_size == served.size and sha256(path) == served.sha256
    record = json.loads(path.with_name(path.name + ".verified").read_text())
    assert record["sha256"] == served.sha256
    assert not list(models_dir().glob("*.part*"))
    # HEAD on the resolve URL, then GET there, redirected to the bytes; no token was sent anywhere
    assert [(r.method, r.path.split("/")[1]) for r in fake_hub.requests] == [
        ("HEAD", "belle-test"), ("GET", "belle-test"), ("GET", "cdn")]
    assert all(r.authorization is None for r in fake_hub.requests)
    info = run_belle("models", "info", "SmolLM2-135M.Q4_1.gguf")
    assert info.returncode == 0 and "architecture:   llama" in info.stdout
    chat = run_belle("chat", "--model", "SmolLM2-135M.Q4_1.gguf", "-p", "Say hi.", "--set", "max_tokens=8")
    assert chat.returncode == 0 and chat.stdout.strip(), chat.stderr
    # a second pull finds it verified and asks the hub nothing
    n = len(fake_hub.requests)
    assert run_belle("models", "pull", f"hf:{REPO}/q4/SmolLM2-135M.Q4_1.gguf").returncode == 0
    assert len(fake_hub.requests) == n


def test_a_cut_connection_goes_on_from_the_byte_it_reached(fake_hub, random_file):
    served = fake_hub.add(REPO, "m.gguf", random_file)
    fake_hub.cut_at = 1_000_000
    path = models.pull(f"hf:{REPO}/m.gguf")
    assert sha256(path) == served.sha256
    assert fake_hub.ranges() == [None, "bytes=1000000-"]


def test_a_killed_pull_resumes_and_nothing_partial_is_listed(fake_hub, random_file):
    served = fake_hub.add(REPO, "m.gguf", random_file)
    fake_hub.hold_at = 1_000_000  # the download stalls there until released: still running at the SIGINT
    part = models_dir() / "m.gguf.part"
    proc = subprocess.Popen([*BELLE, "models", "pull", f"hf:{REPO}/m.gguf"], cwd=ROOT, env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (part.exists() and part.stat().st_size > 500_000):
        assert proc.poll() is None and time.monotonic() < deadline, "the download did not start"
        time.sleep(0.05)
    listed = run_belle("models", "list")
    second = run_belle("models", "pull", f"hf:{REPO}/m.gguf")  # would append to the same partial file
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "run `belle models pull" in err and "again to resume" in err
    assert "m.gguf" not in listed.stdout.replace(f"hf:{REPO}/m.gguf", "")  # not a model yet, only a partial row
    assert re.search(rf"hf:{REPO}/m\.gguf +3\.15 MB +partial \d+% \(pull again to resume\)", listed.stdout), listed.stdout
    assert second.returncode == 1 and "another belle process is downloading it now" in second.stderr
    assert not (models_dir() / "m.gguf").exists()
    kept = part.stat().st_size
    assert 500_000 < kept < served.size
    fake_hub.release()
    result = run_belle("models", "pull", f"hf:{REPO}/m.gguf")
    assert result.returncode == 0, result.stderr
    assert fake_hub.ranges()[-1] == f"bytes={kept}-"
    assert sha256(models_dir() / "m.gguf") == served.sha256
    assert "m.gguf" in run_belle("models", "list").stdout


def test_a_wrong_byte_is_caught_and_the_bad_file_deleted(fake_hub, random_file):
    served = fake_hub.add(REPO, "m.gguf", random_file)
    fake_hub.corrupt_at = 2_000_001
    result = run_belle("models", "pull", f"hf:{REPO}/m.gguf")
    assert result.returncode == 1
    [line] = [x for x in result.stderr.splitlines() if x.startswith("belle: error:")]
    assert result.stderr.strip().endswith(line)
    assert "sha256" in line and "corrupted" in line and "again" in line
    assert not list(models_dir().iterdir())  # neither the file nor its .part
    fake_hub.corrupt_at = None
    assert run_belle("models", "pull", f"hf:{REPO}/m.gguf").returncode == 0
    assert sha256(models_dir() / "m.gguf") == served.sha256


def test_a_server_that_ignores_ranges_makes_it_start_over(fake_hub, random_file):
    served = fake_hub.add(REPO, "m.gguf", random_file)
    fake_hub.cut_at, fake_hub.ignore_range = 1_500_000, True
    path = models.pull(f"hf:{REPO}/m.gguf")
    assert sha256(path) == served.sha256
    # it asked to go on from the cut, got the whole file (200), and started over from byte 0
    assert fake_hub.ranges()[:2] == [None, "bytes=1500000-"]


def test_cancel_keeps_the_partial_file_for_later_and_nothing_usable(fake_hub, random_file):
    served = fake_hub.add(REPO, "m.gguf", random_file)
    cancel = threading.Event()

    def progress(done, total):
        assert total == served.size
        if done > 1_000_000:
            cancel.set()

    with pytest.raises(hub.DownloadCancelled, match="cancelled"):
        models.pull(f"hf:{REPO}/m.gguf", progress=progress, cancel=cancel)
    assert not (models_dir() / "m.gguf").exists() and models.list_local() == []
    kept = hub.partial_bytes(models_dir() / "m.gguf.part")
    assert kept > 1_000_000
    [unfinished] = models.unfinished_downloads()
    assert (unfinished.ref, unfinished.have, unfinished.commit) == (f"hf:{REPO}/m.gguf", kept, COMMIT)
    plans = []
    path = models.pull(f"hf:{REPO}/m.gguf", on_plan=plans.append)
    assert plans[0].have == kept and plans[0].total == served.size
    # no revision asked for: it goes on at the commit it began at, not at whatever main is now
    heads = [r.path for r in fake_hub.requests if r.method == "HEAD"]
    assert heads == [f"/{REPO}/resolve/main/m.gguf", f"/{REPO}/resolve/{COMMIT}/m.gguf"]
    assert fake_hub.ranges()[-1] == f"bytes={kept}-" and sha256(path) == served.sha256


def test_a_gated_repo_needs_hf_token_which_never_goes_to_the_cdn(fake_hub, random_file, monkeypatch):
    fake_hub.add(REPO, "m.gguf", random_file)
    fake_hub.token = "hf_secret"
    result = run_belle("models", "pull", f"hf:{REPO}/m.gguf")
    assert result.returncode == 1 and "(401)" in result.stderr and "HF_TOKEN" in result.stderr
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    result = run_belle("models", "pull", f"hf:{REPO}/m.gguf")
    assert result.returncode == 0, result.stderr
    resolve = [r for r in fake_hub.requests if "/resolve/" in r.path and r.authorization]
    cdn = [r for r in fake_hub.requests if r.path.startswith("/cdn/")]
    assert resolve and cdn and all(r.authorization is None for r in cdn)


def test_mirror_flag_then_app_setting_then_hf_endpoint(fake_hub, random_file, monkeypatch):
    fake_hub.add(REPO, "m.gguf", random_file)
    dead = "http://127.0.0.1:9"  # nothing listens on the discard port
    monkeypatch.setenv("HF_ENDPOINT", dead)
    result = run_belle("models", "pull", f"hf:{REPO}/m.gguf")
    assert result.returncode == 1 and "cannot reach the hub" in result.stderr and "--mirror" in result.stderr
    assert run_belle("models", "pull", f"hf:{REPO}/m.gguf", "--mirror", fake_hub.url).returncode == 0
    (models_dir() / "m.gguf").unlink()
    config = load_config()
    config.hf_mirror = fake_hub.url
    save_config(config)
    assert run_belle("models", "pull", f"hf:{REPO}/m.gguf").returncode == 0  # the setting beats HF_ENDPOINT
    (models_dir() / "m.gguf").unlink()
    result = run_belle("models", "pull", f"hf:{REPO}/m.gguf", "--mirror", dead)
    assert result.returncode == 1 and dead in result.stderr  # and the flag beats the setting
    bad = run_belle("models", "pull", f"hf:{REPO}/m.gguf", "--mirror", "hf-mirror.com")
    assert bad.returncode == 1 and "not an http(s) URL" in bad.stderr


def test_a_renamed_repo_is_followed(fake_hub, random_file):
    served = fake_hub.add(REPO, "m.gguf", random_file)
    fake_hub.renamed["old-owner/old-name"] = REPO
    assert sha256(models.pull("hf:old-owner/old-name/m.gguf")) == served.sha256


def test_the_address_of_a_file_page_works_too(fake_hub, random_file):
    """People copy the file's address from the browser; its revision is the one asked for."""
    served = fake_hub.add(REPO, "sub dir/m.gguf", random_file)
    path = models.pull(f"https://huggingface.co/{REPO}/blob/v1.0/sub%20dir/m.gguf")
    assert sha256(path) == served.sha256 and path.name == "m.gguf"
    assert fake_hub.requests[0].path == f"/{REPO}/resolve/v1.0/sub%20dir/m.gguf"


def _catalog_with(entry: CatalogEntry) -> Catalog:
    return Catalog(default="x", entries=(entry,))


def _entry(file: str, size: int, sha: str, min_ram: int | None = None) -> CatalogEntry:
    return CatalogEntry(id="test-model", name="Test Model", source={"type": "huggingface", "repo": REPO,
                        "revision": COMMIT, "file": file}, file=file, size=size, sha256=sha, offline_checked=False, license="?",
                        languages=("zh",), architecture="llama", params="?", quant="?", context_length=0,
                        template="gguf", min_ram_bytes=min_ram)


def test_the_catalog_pin_wins_over_the_server(fake_hub, random_file, monkeypatch):
    served = fake_hub.add(REPO, "m.gguf", random_file)
    wrong = "0" * 64
    monkeypatch.setattr(models, "load_catalog", lambda: _catalog_with(_entry("m.gguf", served.size, wrong)))
    # the hub says which hash its file has: refused before a byte is fetched
    with pytest.raises(hub.DownloadError, match="catalog pins 000000000000"):
        models.pull("test-model")
    assert fake_hub.ranges() == []
    # a mirror that passes no hash on: the bytes are fetched, checked against the pin, refused
    fake_hub.hide_hash = True
    with pytest.raises(hub.DownloadError, match="expected 000000000000"):
        models.pull("test-model")
    assert not list(models_dir().iterdir())
    # the right pin, with the revision the catalog names
    monkeypatch.setattr(models, "load_catalog", lambda: _catalog_with(
        _entry("m.gguf", served.size, served.sha256, min_ram=10**15)))
    plans = []
    path = models.pull("test-model", on_plan=plans.append)
    assert sha256(path) == served.sha256
    assert f"/resolve/{COMMIT}/m.gguf" in fake_hub.requests[-2].path
    assert "Test Model needs about 1000.00 TB" in plans[0].ram_warning  # a warning; the pull went on


def test_not_enough_disk_space_stops_before_downloading(fake_hub, random_file, monkeypatch):
    fake_hub.add(REPO, "m.gguf", random_file)
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(models.shutil, "disk_usage", lambda p: real(p)._replace(free=1_000_000))
    with pytest.raises(hub.DownloadError, match=r"3\.15 MB more is needed .* only 1\.00 MB is free"):
        models.pull(f"hf:{REPO}/m.gguf")
    assert fake_hub.ranges() == []


def test_bad_references_get_one_line_errors(fake_hub, random_file):
    fake_hub.add(REPO, "m.gguf", random_file)
    for ref, words in [(f"hf:{REPO}", "expected hf:OWNER/REPO/FILE.gguf"),
                       (f"hf:{REPO}/missing.gguf", "no such file on the hub (404)"),
                       (f"hf:{REPO}/m-00002-of-00003.gguf", "ask for the first part")]:
        result = run_belle("models", "pull", ref)
        assert result.returncode == 1 and words in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def _split(model: Path, out: Path, max_tensors: int) -> list[Path]:
    """The model rewritten as a split GGUF, the way llama.cpp's gguf-split lays it out."""
    import gguf
    from gguf.scripts.gguf_new_metadata import copy_with_new_metadata

    reader = gguf.GGUFReader(model)
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    writer = gguf.GGUFWriter(out / "smol.gguf", arch=arch, split_max_tensors=max_tensors)
    copy_with_new_metadata(reader, writer, {}, remove_metadata=[])
    return sorted(out.glob("smol-*-of-*.gguf"))


def test_a_split_model_is_pulled_as_a_set_and_loads(fake_hub, default_model_path, tmp_path):
    (tmp_path / "split").mkdir()
    parts = _split(default_model_path, tmp_path / "split", 120)
    assert len(parts) == 3, parts
    for part in parts:
        fake_hub.add(REPO, part.name, part)
    first = parts[0].name
    assert first == "smol-00001-of-00003.gguf"
    fake_hub.cut_at = 200_000  # in the first part
    result = run_belle("models", "pull", f"hf:{REPO}/{first}")
    assert result.returncode == 0, result.stderr
    for part in parts:
        assert sha256(models_dir() / part.name) == sha256(part)
    [local] = models.list_local()  # one model, not three
    assert local.path.name == first and local.size == sum(p.stat().st_size for p in parts)
    chat = run_belle("chat", "--model", first, "-p", "Say hi.", "--set", "max_tokens=8")
    assert chat.returncode == 0 and chat.stdout.strip(), chat.stderr
    info = run_belle("models", "info", first)
    assert f"({local.size:,} bytes)" in info.stdout
    # with a part missing the model is refused by name, not handed to llama.cpp
    (models_dir() / parts[2].name).rename(tmp_path / "away.gguf")
    info = run_belle("models", "info", first)
    assert info.returncode == 1 and f"part {parts[2].name} of this split model is missing" in info.stderr
    (tmp_path / "away.gguf").rename(models_dir() / parts[2].name)
    models.remove(first)
    assert not list(models_dir().glob("*.gguf"))


def test_the_proxy_from_the_environment_is_used(fake_hub, random_file, monkeypatch):
    served = fake_hub.add(REPO, "m.gguf", random_file)
    # a hub name that does not resolve: only a proxy can reach it
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.belle-test.invalid")
    monkeypatch.setenv("HTTP_PROXY", fake_hub.url)
    monkeypatch.setenv("NO_PROXY", "")
    result = run_belle("models", "pull", f"hf:{REPO}/m.gguf")
    assert result.returncode == 0, result.stderr
    assert sha256(models_dir() / "m.gguf") == served.sha256
    assert fake_hub.requests and all(r.proxied for r in fake_hub.requests)


def test_the_terminal_shows_speed_and_time_left(fake_hub, random_file):
    import pexpect

    fake_hub.add(REPO, "m.gguf", random_file)
    fake_hub.delay_s = 0.03  # ~2 MB/s: a few seconds of progress bar
    child = pexpect.spawn(BELLE[0], [*BELLE[1:], "models", "pull", f"hf:{REPO}/m.gguf"], cwd=str(ROOT),
                          env=os.environ.copy(), dimensions=(24, 120), encoding="utf-8", timeout=60)
    # tqdm: "m.gguf:  37%|███▋      | 1.18M/3.15M [00:00<00:01, 2.05MB/s]"
    child.expect(r"m\.gguf: +\d+%\|.*\| [\d.]+M/3\.15M \[\d\d:\d\d<\d\d:\d\d, +[\d.]+[kM]B/s\]")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
