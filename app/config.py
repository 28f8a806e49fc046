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
    # Saved conversation states (kv_state.py): disk budget in MB (10^6 bytes, as shown), least
    # recently used dropped first; 0 turns saving and restoring off. 2 GB holds ~40 states of a
    # 2,000-token chat on the default model, or ~2 of a 7B's (~0.5 GB per 1,000 tokens in f16).
    kv_state_budget_mb: int = 2000
    # llama.cpp's KV cache type when a model is loaded: "f16", or "q8_0" (half the memory and half
    # the saved state size; turns on flash attention, which llama.cpp needs for it).
    kv_cache_type: str = "f16"


KV_CACHE_TYPES = ("f16", "q8_0")


def check_kv_settings(config: AppConfig) -> AppConfig:
    """The KV settings checked where they are used, so a bad value stops only what needs them."""
    budget = config.kv_state_budget_mb
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise SettingsError(f"{paths.config_path()}: kv_state_budget_mb must be a whole number of MB, 0 or more "
                            f"(0: saved states off), got {budget!r}")
    if config.kv_cache_type not in KV_CACHE_TYPES:
        raise SettingsError(f"{paths.config_path()}: kv_cache_type must be one of {', '.join(KV_CACHE_TYPES)}, "
                            f"got {config.kv_cache_type!r}")
    return config


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
