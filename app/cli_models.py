"""`belle models`: list, inspect, pull, import, remove and choose the default model."""

import shlex
import sys

from tqdm import tqdm

from . import hub, kv_state, models
from .catalog import load_catalog
from .config import check_kv_settings, load_config, save_config
from .errors import BelleError
from .gguf_info import CARD_PREFIX, estimate_ram, human_bytes, read_model_info
from .memory import check_fit


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list, inspect, download and import models")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    msub.add_parser("list", help="catalog and local models").set_defaults(func=cmd_list)
    info = msub.add_parser("info", help="read a GGUF file's metadata and estimate its RAM")
    info.add_argument("model", nargs="?", help="path, catalog id or local file name (default: the default model)")
    info.add_argument("--ctx", type=int, default=4096, help="context size for the RAM estimate")
    info.add_argument("--recipe", action="store_true",
                      help="print only the recipe YAML that `belle build` stored in the file")
    info.set_defaults(func=cmd_info)
    pull = msub.add_parser("pull", help="download a catalog model or hf:OWNER/REPO/FILE.gguf, resumably, and verify it",
                           description="Download a model into the models folder. An interrupted download goes on "
                           "where it stopped when the same command runs again; nothing is usable until its sha256 "
                           "checks out. Hub mirror: --mirror, else the mirror set in the app, else HF_ENDPOINT. "
                           "HF_TOKEN is sent for gated repos; HTTPS_PROXY is honoured.")
    pull.add_argument("id", help="catalog id (`belle models list`), hf:OWNER/REPO/FILE.gguf, or the address of "
                      "the file's page on the hub (a split model: its -00001-of-0000N.gguf part; all parts are fetched)")
    pull.add_argument("--mirror", metavar="URL", help="a mirror of the Hugging Face hub, e.g. https://hf-mirror.com")
    pull.add_argument("--revision", metavar="REV", help="branch, tag or commit (default: the catalog's pinned "
                      "commit, or main for hf:)")
    pull.set_defaults(func=cmd_pull)
    imp = msub.add_parser("import", help="check a GGUF file and copy it into the models folder")
    imp.add_argument("path")
    imp.add_argument("--force", action="store_true", help="replace a model with the same file name")
    imp.set_defaults(func=cmd_import)
    rm = msub.add_parser("rm", help="delete a downloaded or imported model (catalog id or file name in the models folder)")
    rm.add_argument("model")
    rm.set_defaults(func=cmd_rm)
    default = msub.add_parser("default", help="show or set the model used when --model is not given")
    default.add_argument("model", nargs="?")
    default.set_defaults(func=cmd_default)
    states = msub.add_parser("states", help="disk used by saved conversation states (reopening a conversation "
                             "without reading it again); --clear deletes them")
    states.add_argument("--clear", action="store_true", help="delete every saved state (conversations are kept)")
    states.set_defaults(func=cmd_states)


def _bar(desc: str):
    bar = tqdm(total=0, unit="B", unit_scale=True, desc=desc, disable=not sys.stderr.isatty(), leave=False)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update


def cmd_list(args) -> int:
    catalog = load_catalog()
    local = {m.path.name: m for m in models.list_local()}
    default = models.default_model_id()
    rows = [("", "ID", "SIZE", "LANG", "LICENSE", "STATUS")]
    for e in catalog.entries:
        partial = models.partial_download(e) if e.file not in local else 0
        status = ("downloaded" if e.file in local else
                  f"partial {100 * partial // e.size}% (pull again to resume)" if partial and e.size else "-")
        rows.append(("*" if e.id == default else "", e.id, human_bytes(e.size) if e.size else "?", ",".join(e.languages),
                     e.license, status))
    for name, m in local.items():
        if m.entry is None:
            rows.append(("*" if name == default else "", name, human_bytes(m.size), "", "", "imported"))
    catalog_files = {e.file for e in catalog.entries}
    for u in models.unfinished_downloads():
        if u.part.name.removesuffix(".part") not in catalog_files:
            rows.append(("", u.ref, human_bytes(u.size), "", "", f"partial {100 * u.have // u.size}% (pull again to resume)"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


# How `belle models info` names the model card fields; a field a newer `belle build` adds is shown
# under its own key rather than dropped.
_CARD_LABELS = {"base": "base model", "data": "data", "template": "template", "training": "training",
                "quantization": "quantization", "fidelity": "fidelity (vs f16)", "built": "built"}


def _card_lines(card: dict[str, str], model: str | None) -> list[str]:
    """The "model card:" section: one line a field, a multi-line value (the fidelity table) on its
    own lines under its label; the recipe is many lines of YAML, so only a pointer to --recipe."""
    lines = ["model card:"]
    for key, value in card.items():
        if key == "recipe":
            continue
        label = f"  {_CARD_LABELS.get(key, key)}:"
        value = value.strip("\n")
        if "\n" in value:
            lines += [label, *(f"    {line}".rstrip() for line in value.splitlines())]
        else:
            lines.append(f"{label:<17} {value}")
    if "recipe" in card:
        command = " ".join(["belle models info", *([shlex.quote(model)] if model else []), "--recipe"])
        lines.append(f"{'  recipe:':<17} `{command}` prints it")
    return lines


def cmd_info(args) -> int:
    path = models.resolve(args.model)
    info = read_model_info(path)
    if args.recipe:
        return _print_recipe(info)
    est = estimate_ram(info, args.ctx)
    fit = check_fit(info, args.ctx)
    types = ", ".join(f"{k} x{v}" for k, v in sorted(info.tensor_types.items(), key=lambda kv: -kv[1]))
    print(f"file:           {info.path}")
    print(f"file size:      {human_bytes(info.file_size)} ({info.file_size:,} bytes)")
    print(f"name:           {info.name}")
    print(f"architecture:   {info.architecture}")
    print(f"parameters:     {info.n_params:,} ({info.n_params / 1e9:.2f} B)")
    print(f"layers:         {info.n_layers}")
    print(f"context length: {info.n_ctx_train} (trained)")
    print(f"heads:          {info.n_head} (KV {info.n_head_kv}), embedding {info.n_embd}, vocab {info.n_vocab}")
    print(f"tensor types:   {types}")
    print(f"chat template:  {'present' if info.chat_template else 'none (the BELLE template will be used)'}")
    print(f"RAM at n_ctx {args.ctx}: ~{human_bytes(est.total)} (weights {human_bytes(est.weights)} + KV cache "
          f"{human_bytes(est.kv_cache)} + compute {human_bytes(est.compute)}); "
          f"{human_bytes(fit.available)} free: {fit.verdict.replace('_', ' ')}")
    if info.card:
        print("\n".join(_card_lines(info.card, args.model)))
    return 0


def _print_recipe(info) -> int:
    recipe = info.card.get("recipe")
    if recipe is None:
        raise BelleError(f"{info.path}: this file has no recipe ({CARD_PREFIX}recipe); "
                         "only models made by `belle build` carry one")
    print(recipe.rstrip("\n"))
    return 0


def cmd_pull(args) -> int:
    if not hub.is_ref(args.id):
        load_catalog().get(args.id)  # an unknown id fails before anything else
    bar = tqdm(total=0, unit="B", unit_scale=True, desc=args.id.rsplit("/", 1)[-1], disable=not sys.stderr.isatty(),
               dynamic_ncols=True)

    def on_plan(plan: models.PullPlan) -> None:
        parts = f" in {len(plan.files)} parts" if len(plan.files) > 1 else ""
        resumed = f", resuming at {human_bytes(plan.have)}" if plan.have else ""
        print(f"{plan.id}: {human_bytes(plan.total)}{parts} from {plan.files[0].url.split('/resolve/')[0]}{resumed}",
              file=sys.stderr)
        if plan.ram_warning:
            print(f"warning: {plan.ram_warning}", file=sys.stderr)
        bar.reset(plan.total)
        # start at what an earlier run fetched, so speed and ETA count only this run's bytes
        bar.initial = bar.n = bar.last_print_n = plan.have
        bar.refresh()

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        path = models.pull(args.id, progress=update, mirror=args.mirror, revision=args.revision, on_plan=on_plan)
    except KeyboardInterrupt:
        bar.close()
        print(f"interrupted; what was downloaded is kept: run `belle models pull {args.id}` again to resume",
              file=sys.stderr)
        return 130
    finally:
        bar.close()
    print(f"{args.id}: {path}")
    return 0


def cmd_import(args) -> int:
    bar, update = _bar("import")
    try:
        path = models.import_model(args.path, progress=update, force=args.force)
    finally:
        bar.close()
    print(f"imported: {path}")
    return 0


def cmd_rm(args) -> int:
    removed = models.remove(args.model)
    print(f"removed: {removed.path}")
    if removed.old_default:
        print(f"'{removed.old_default}' was the default model; the default is now {models.default_model_id()} "
              "(choose another with `belle models default ID`)")
    return 0


def cmd_default(args) -> int:
    if not args.model:
        print(models.default_model_id())
        return 0
    models.resolve(args.model)  # must exist before it becomes the default
    config = load_config()
    config.default_model = args.model
    save_config(config)
    print(f"default model: {args.model}")
    return 0


def cmd_states(args) -> int:
    where = kv_state.folder()
    if args.clear:
        gone = kv_state.clear(where)
        print(f"deleted {gone.count} saved state{'s' if gone.count != 1 else ''} ({human_bytes(gone.total_bytes)}); "
              "conversations are kept and read again when reopened")
        return 0
    used = kv_state.disk_used(where)
    budget = check_kv_settings(load_config()).kv_state_budget_mb
    limit = f"budget {budget:,} MB" if budget else "saving is off (kv_state_budget_mb is 0)"
    print(f"saved states: {used.count} ({human_bytes(used.total_bytes)}) in {where}; {limit}")
    return 0
