"""The rows of the model panel, without Flet: catalog entries and local files, each with its size
and a RAM-fit verdict for this machine's free memory."""

from dataclasses import dataclass, field
from pathlib import Path

from .. import models
from ..catalog import load_catalog
from ..errors import BelleError
from ..gguf_info import human_bytes, read_model_info
from ..memory import TIGHT_MARGIN, available_memory, check_fit


@dataclass
class ModelRow:
    id: str  # what session.set_model takes: a catalog id or a local file name
    name: str
    size: int | None
    verdict: str  # "fits" | "tight" | "wont_fit"
    local: bool
    path: Path | None = None
    downloadable: bool = False  # a catalog entry or a hub file `models.pull` can fetch
    partial: int = 0  # bytes an interrupted download left to resume from
    revision: str | None = None  # for a hub file's partial download: the commit it was started at
    detail: str = ""  # why the file cannot be used (English, from the GGUF reader)
    need: dict[str, int] | None = None  # RAM estimate: total, weights, kv, compute (bytes)
    available: int = 0
    card: dict[str, str] = field(default_factory=dict)  # the model card `belle build` wrote (gguf_info.CARD_FIELDS)

    def tooltip(self, t) -> str:
        """The badge's tooltip in the UI's language."""
        if self.detail:
            return self.detail
        if not self.need:
            return ""
        h = {k: human_bytes(v) for k, v in self.need.items()}
        free = human_bytes(self.available)
        if "weights" in self.need:
            return t("ram_detail", need=h["total"], weights=h["weights"], kv=h["kv"], compute=h["compute"], free=free)
        return t("ram_catalog", need=h["total"], free=free)


def _verdict(need: int, available: int) -> str:
    return "wont_fit" if need > available else "tight" if need > available * TIGHT_MARGIN else "fits"


def model_rows(n_ctx: int, available: int | None = None) -> list[ModelRow]:
    """Local files first (checked from their GGUF header), then catalog models not downloaded yet
    (checked from the catalog's RAM figure), then hub files whose download was interrupted."""
    available = available_memory() if available is None else available
    rows, local_files = [], set()
    for lm in models.list_local():
        local_files.add(lm.path.name)
        need, detail, card = None, "", {}
        try:
            info = read_model_info(lm.path)
            card = info.card
            fit = check_fit(info, n_ctx, available)
            verdict, est = fit.verdict, fit.estimate
            need = {"total": est.total, "weights": est.weights, "kv": est.kv_cache, "compute": est.compute}
        except BelleError as err:
            verdict, detail = "wont_fit", str(err)
        rows.append(ModelRow(lm.id, models.display_name(lm.path), lm.size, verdict, True, lm.path,
                             detail=detail, need=need, available=available, card=card))
    catalog_files = set()
    for entry in load_catalog().entries:
        kind = entry.source.get("type")
        if kind == "huggingface":
            catalog_files.add(entry.file)  # its partial download is this row's, not a row of its own
        if entry.file in local_files:
            continue
        need = entry.min_ram_bytes or entry.size or 0
        rows.append(ModelRow(entry.id, entry.name, entry.size, _verdict(need, available), False,
                             downloadable=kind in ("wheel", "huggingface"),
                             partial=models.partial_download(entry) if kind == "huggingface" else 0,
                             need={"total": need} if need else None, available=available))
    skip = catalog_files | local_files
    rows += [_partial_row(u, available) for u in models.unfinished_downloads()
             if u.part.name.removesuffix(".part") not in skip]
    return rows


def _partial_row(u, available: int) -> ModelRow:
    need = int(u.size * 1.1) + 300_000_000  # as models.plan_pull estimates a file the catalog lacks
    return ModelRow(u.ref, u.part.name.removesuffix(".part"), u.size, _verdict(need, available), False,
                    downloadable=True, partial=u.have, revision=u.commit, need={"total": need}, available=available)
