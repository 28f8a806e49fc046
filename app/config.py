"""User settings that outlive a conversation (default model, UI language, theme), in config.json."""

import contextlib
import json
from dataclasses import asdict, dataclass, fields

from . import paths
from .errors import SettingsError


@dataclass
class AppConfig:
    default_model: str | None = None  # catalog id or path; None: the catalog's default
    language: str | None = None  # "zh" | "en"; None: from the system locale
    theme: str = "system"  # "light" | "dark" | "system"
    n_threads: int | None = None  # None: threads.default_threads()
    # Where models are downloaded from: a mirror of the Hugging Face hub (e.g. https://hf-mirror.com
    # in mainland China). None: HF_ENDPOINT from the environment, else huggingface.co.
    hf_mirror: str | None = None
    # Where `belle ui` downloads the Flet desktop client from at its first window: a mirror of
    # https://github.com/flet-dev/flet/releases/download (belle adds /vVERSION/FILE). None: GitHub,
    # or FLET_CLIENT_URL (the whole archive URL) when set.
    flet_client_url: str | None = None


def load_config() -> AppConfig:
    path = paths.config_path()
    if not path.exists():
        return AppConfig()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise SettingsError(f"{path}: unreadable settings file ({err}); fix or delete it") from None
    known = {f.name for f in fields(AppConfig)}
    return AppConfig(**{k: v for k, v in data.items() if k in known})


def save_config(config: AppConfig) -> None:
    path = paths.config_path()
    paths.ensure(path.parent)
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps(asdict(config), indent=2, ensure_ascii=False), encoding="utf-8")
        tmp.replace(path)  # atomic: a crash mid-write never leaves a half-written config.json
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise SettingsError(f"{path}: cannot save settings ({paths.os_reason(err)})") from None
