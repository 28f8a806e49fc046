"""`belle build RECIPE.yaml [--out DIR]`: argument parsing and the progress display."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("build", help="fine-tune, quantize to 4 bits and install a model, from one recipe file",
                       description="Run a recipe: train -> merge -> convert -> quantize -> fidelity eval -> model "
                                   "card -> add to the app's models. Stages that are up to date are skipped; an "
                                   "interrupted build resumes when the same command is given again.")
    p.add_argument("recipe", type=Path, metavar="RECIPE.yaml")
    p.add_argument("--out", type=Path, metavar="DIR", help="build folder (default: the recipe's `out`, else runs/NAME)")
    p.add_argument("--force", action="store_true", help="run every stage again (training starts over)")
    p.add_argument("--accelerate", type=Path, metavar="CONFIG",
                   help="train under `accelerate launch --config_file CONFIG` (many GPUs; replaces the recipe's launch)")
    p.add_argument("--accelerate-arg", action="append", default=[], metavar="ARG",
                   help="one more `accelerate launch` argument, e.g. --accelerate-arg=--num_processes=8 (repeatable)")
    p.set_defaults(func=run)


def run(args) -> int:
    from tqdm import tqdm

    from belle.app.errors import BelleError

    from .build import build, default_out
    from .recipe import launch_from, load_recipe

    recipe = load_recipe(args.recipe)
    if args.accelerate:
        recipe.launch = launch_from("--accelerate", Path.cwd(), args.accelerate, args.accelerate_arg)
    elif args.accelerate_arg:
        raise BelleError("--accelerate-arg needs --accelerate CONFIG")
    bars: dict[str, tqdm] = {}
    current = {"name": ""}

    def on_stage(index: int, total: int, name: str, status: str) -> None:
        # one bar across the stages; each stage's own progress shows on the line below it
        if "stages" not in bars:
            bars["stages"] = tqdm(total=total, desc="build", unit="stage", position=0,
                                  bar_format="{desc}: {n_fmt}/{total_fmt} stages |{bar:20}| {elapsed}")
        _close_step(bars)
        outer = bars["stages"]
        outer.n = index
        outer.set_description_str(f"build: {name}")
        current["name"] = name
        tqdm.write(f"[{index + 1}/{total}] {name}{': up to date, skipped' if status == 'skip' else ''}")
        if status == "skip":
            outer.update(1)

    def step(done: int, total: int, what: str) -> None:
        bar = bars.get("step")
        if bar is None or bar.total != total:
            _close_step(bars)
            bar = bars["step"] = tqdm(total=total, desc=current["name"], position=1, leave=False)
        bar.set_postfix_str(str(what)[:30], refresh=False)
        bar.update(done - bar.n)

    out = args.out or default_out(recipe)
    try:
        result = build(recipe, out, force=args.force, on_stage=on_stage, step=step)
    except KeyboardInterrupt:
        raise BelleError(f"interrupted during '{current['name']}': finished stages are kept in {out}; "
                         "run the same command again to resume") from None
    finally:
        _close_all(bars)
    if result.fidelity:
        print(result.fidelity)
    for path in result.ggufs:
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    print(f"model card: {result.readme}")
    for path in result.installed:
        print(f"in the app's models: {path.name} (belle chat -m {path.name})")
    ran = ", ".join(f"{n} {result.seconds[n]:.0f} s" for n in result.ran) or "nothing to do, all up to date"
    print(f"ran: {ran}")
    return 0


def _close_step(bars: dict) -> None:
    bar = bars.pop("step", None)
    if bar is not None:
        bar.close()


def _close_all(bars: dict) -> None:
    _close_step(bars)
    if "stages" in bars:
        bars["stages"].close()
