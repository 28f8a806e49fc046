"""First start: when the default model is not on this device yet, get the app ready to chat with
nothing else to do (ChatBELLE made people download and rename the file by hand).

On a desktop the default model comes in a pip wheel, fetched at once. A phone has no pip, and a
model is hundreds of megabytes over a mobile connection, so a phone with no model at all is offered
a small Chinese-capable model from the hub instead: nothing is downloaded until the person taps
Download."""

from collections.abc import Callable

from .. import device, models
from ..catalog import CatalogEntry, load_catalog
from ..errors import CatalogError, ModelFileError
from . import downloads


def default_present(default_model: str | None) -> bool:
    """Whether the default model (the configured one, else the catalog's) is on this device."""
    try:
        models.resolve(default_model)
        return True
    except (ModelFileError, CatalogError):
        return False


def missing_default_model(default_model: str | None) -> CatalogEntry | None:
    """The catalog entry to fetch, or None when the default model is present (or is a path or
    a catalog entry we cannot fetch ourselves: then sending a message shows the next step). Never
    on a phone: it has no pip to install a wheel with."""
    if device.is_phone() or default_present(default_model):
        return None
    entry = load_catalog().find(default_model or models.default_model_id())
    return entry if entry and entry.source.get("type") == "wheel" else None


def starter_offer(default_model: str | None) -> CatalogEntry | None:
    """On a phone with no model at all: the model to offer (device.STARTER_MODEL), else None. A
    phone that has some model keeps it: the model panel switches between them."""
    if not device.is_phone() or default_present(default_model) or models.list_local():
        return None
    return load_catalog().find(device.STARTER_MODEL)


def fetch(entry: CatalogEntry, progress: Callable[[int, int], None]) -> None:
    with downloads.lock:  # shared with the model panel: one download per server, however many tabs are open
        models.pull(entry.id, progress=progress)  # returns at once if another tab already fetched it
