"""Fixtures for the `belle build` tests: the tiny LLaMA of the training tests, and recipe writing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
FACTS = Path(__file__).resolve().parent / "data" / "facts.jsonl"
SAMPLE = ROOT / "assets" / "train" / "sample_zh_en.jsonl"

# the training tests' builder, loaded by path: a second module named `conftest` would shadow it
_spec = importlib.util.spec_from_file_location("training_fixtures", ROOT / "tests" / "training" / "conftest.py")
_training = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_training)
build_tiny_llama = _training.build_tiny_llama


def write_recipe(path: Path, **recipe) -> Path:
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-base"))
