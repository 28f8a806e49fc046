"""Fixtures for the quantize tests: tiny random models built here, and the SmolLM2 round trip."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import tiny_models  # noqa: E402
from quantize_helpers import ASSETS  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """tiny_model(kind) -> a Hugging Face directory with random weights and a tokenizer trained here."""
    built: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in built:
            out = tmp_path_factory.mktemp(f"tiny-{kind}")
            built[kind] = tiny_models.BUILDERS[kind](ASSETS, out)
        return built[kind]

    return get


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model, tmp_path_factory):
    """tiny_gguf(kind) -> its F32 GGUF, converted once per session."""
    from belle.quantize.convert import convert

    done: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in done:
            done[kind] = convert(tiny_model(kind), tmp_path_factory.mktemp("gguf") / f"{kind}.f32.gguf", "f32")
        return done[kind]

    return get


@pytest.fixture(scope="session")
def smollm2_hf(default_model_path, tmp_path_factory) -> Path:
    """The default model loaded into transformers (dequantized) and saved as a Hugging Face directory."""
    from belle.quantize.gguf_to_hf import gguf_to_hf_dir

    return gguf_to_hf_dir(default_model_path, tmp_path_factory.mktemp("smollm2-hf"))


@pytest.fixture(scope="session")
def smollm2_f32(smollm2_hf, tmp_path_factory) -> Path:
    """The default model's F32 round trip: GGUF -> transformers -> HF directory -> our converter."""
    from belle.quantize.convert import convert

    return convert(smollm2_hf, tmp_path_factory.mktemp("smollm2-gguf") / "smollm2.f32.gguf", "f32")
