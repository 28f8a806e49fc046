"""Where belle keeps its files. BELLE_HOME overrides everything (tests give each test its own)."""

import os
from pathlib import Path

import platformdirs


def home() -> Path:
    env = os.environ.get("BELLE_HOME")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("belle", appauthor=False))


def models_dir() -> Path:
    env = os.environ.get("BELLE_MODELS_DIR")
    return Path(env).expanduser() if env else home() / "models"


def store_path() -> Path:
    return home() / "belle.db"


def config_path() -> Path:
    return home() / "config.json"


def history_path() -> Path:
    """Readline history of the CLI chat."""
    return home() / "chat_history"


def ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
