"""`belle build RECIPE.yaml`: train -> merge -> convert -> quantize -> evaluate -> card -> install.

Each stage has a key: a hash of its settings, of its input files and of the keys of the stages it
reads from. A stage whose recorded key matches and whose outputs exist is skipped; once a stage
runs, every stage after it runs too (its input changed). A killed build is resumed by running the
same command: training continues from its last complete checkpoint, GPTQ from its finished blocks,
and the rest of the stages are short enough to start over. The layout of OUT:

    base/                   the base model as an HF folder (only when the recipe's base is a GGUF)
    train/                  `belle train`'s folder: checkpoints, log.jsonl, the adapter or model
    merged/                 LoRA folded into the base (full fine-tuning: train/ is the model)
    NAME.f16.gguf           the fine-tuned model in f16: the fidelity reference
    NAME.TYPE.gguf          the 4-bit files, with the model card in their metadata
    compare/                the same types by the recipe's `compare` methods, for the fidelity table
    fidelity.json, README.md, build.json (what finished, and with which key)
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from belle.app.errors import BelleError

from .card import Card, gguf_metadata, render_readme, write_gguf_card
from .recipe import Recipe
from .state import BuildState, key_of

log = logging.getLogger(__name__)

StageEvent = Callable[[int, int, str, str], None]  # (index, number of stages, stage name, "run" | "skip")
Step = Callable[[int, int, str], None]  # (done, total, what) inside the running stage


@dataclass
class Stage:
    name: str
    key: str
    outputs: list[Path]
    run: Callable[[bool], dict | None]  # run(resume) does the work; returns facts kept in build.json


@dataclass
class BuildResult:
    out: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    ggufs: list[Path] = field(default_factory=list)
    installed: list[Path] = field(default_factory=list)
    fidelity: str = ""
    readme: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def default_out(recipe: Recipe) -> Path:
    return recipe.out or Path("runs") / recipe.name


class _Build:
    """The paths and keys of one build; `stages()` lists the work in order."""

    def __init__(self, recipe: Recipe, out: Path, step: Step | None):
        self.r = recipe
        self.out = out.resolve()
        self.state = BuildState(self.out)
        self.step = step
        q = recipe.quantize
        self.base_path = self._base_path()
        self.base_is_gguf = self.base_path.suffix == ".gguf"
        self.base_dir = self.out / "base" if self.base_is_gguf else self.base_path
        self.train_dir = self.out / "train"
        self.model_dir = self.out / "merged" if recipe.method == "lora" else self.train_dir
        self.f16 = self.out / f"{recipe.name}.f16.gguf"
        self.primary = {t: self.out / f"{recipe.name}.{t}.gguf" for t in q.types}
        self.compare = {(m, t): self.out / "compare" / f"{recipe.name}.{t}.{m}.gguf" for m in q.compare for t in q.types}
        self.calibration = q.calibration or _asset("calibration/default.txt")
        self.eval_text = recipe.eval.text or _asset("eval/heldout.txt")

    def _base_path(self) -> Path:
        base = Path(self.r.base)
        if base.exists():
            return base.resolve()
        from belle.app import models

        return models.resolve(self.r.base).resolve()  # a catalog id or a file in the models folder

    # --- keys ---------------------------------------------------------------------------------

    def stages(self) -> list[Stage]:
        r, q, st = self.r, self.r.quantize, self.state
        base_hash = st.sha256(self.base_path) if self.base_is_gguf else st.tree_sha256(self.base_path)
        data_hashes = [st.sha256(p) for p in r.data]
        self.base_hash, self.data_hashes = base_hash, data_hashes
        stages = []
        if self.base_is_gguf:
            stages.append(Stage("base", key_of("base", base_hash), [self.base_dir / "config.json"], self._base))
        launch = [str(r.launch.config), st.sha256(r.launch.config), r.launch.args] if r.launch else None
        train_key = key_of("train", base_hash, data_hashes, r.template, r.format, r.train, launch)
        stages.append(Stage("train", train_key, [self.train_dir / "belle-train.json"], self._train))
        model_key = train_key
        if r.method == "lora":
            model_key = key_of("merge", train_key)
            stages.append(Stage("merge", model_key, [self.model_dir / "config.json"], self._merge))
        convert_key = key_of("convert", model_key)
        stages.append(Stage("convert", convert_key, [self.f16], self._convert))
        cal_hash = st.sha256(self.calibration)
        quant_keys = []
        for (method, qtype), path in [*(((q.method, t), p) for t, p in self.primary.items()),
                                      *self.compare.items()]:
            source = model_key if method == "gptq" else convert_key
            key = key_of("quantize", method, qtype, source, cal_hash, q.samples, q.ctx, q.device if method == "gptq" else "")
            quant_keys.append(key)
            stages.append(Stage(f"quantize {qtype} ({method})", key, [path], self._quantizer(method, qtype, path)))
        e = r.eval
        eval_key = key_of("eval", convert_key, quant_keys, st.sha256(self.eval_text), e.chunks, e.ctx)
        stages.append(Stage("evaluate", eval_key, [self.out / "fidelity.json"], self._evaluate))
        card_key = key_of("card", eval_key, r.text, r.name)
        stages.append(Stage("model card", card_key, [self.out / "README.md"], self._card))
        if r.install:
            from belle.app import paths

            installed = [paths.models_dir() / p.name for p in self.primary.values()]
            stages.append(Stage("install", key_of("install", card_key, str(paths.models_dir())), installed,
                                self._install))
        return stages

    # --- the stages -----------------------------------------------------------------------------

    def _base(self, resume: bool) -> dict:
        import os
        import shutil

        from belle.quantize.gguf_to_hf import gguf_to_hf_dir

        # transformers dequantizes a GGUF slowly (~35 s for 135M): once here, not in train and merge
        part = self.out / "base.part"
        shutil.rmtree(part, ignore_errors=True)
        shutil.rmtree(self.base_dir, ignore_errors=True)
        gguf_to_hf_dir(self.base_path, part)
        os.replace(part, self.base_dir)
        return {}

    def _train(self, resume: bool) -> dict:
        from belle.training.config import TrainConfig
        from belle.training.train import last_checkpoint, train

        r = self.r
        cfg = TrainConfig(**{**r.train, "base": str(self.base_dir), "data": [str(p) for p in r.data],
                             "output": str(self.train_dir), "template": r.template, "format": r.format}).check()
        # a build killed while training left checkpoints made with this very key: continue them
        resume = resume and last_checkpoint(self.train_dir) is not None
        if r.launch:
            return self._train_launched(cfg, resume)
        result = train(cfg, resume=resume, force=not resume)
        return {"steps": result.steps, "loss": result.train_loss, "rows": result.rows, "tokens": result.tokens,
                "seconds": result.seconds, "resumed": resume, "skipped": result.skipped, "truncated": result.truncated,
                "lr": cfg.learning_rate(), "batch": cfg.batch_size * cfg.grad_accum, "max_length": cfg.max_length,
                "method": cfg.method, "lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha, "packing": cfg.packing}

    def _train_launched(self, cfg, resume: bool) -> dict:
        """`belle train` as `accelerate launch ... -m belle.training`: the processes accelerate starts
        (GPUs, or gloo on CPUs) need a command line, not a function call."""
        import dataclasses
        import subprocess
        import sys

        import yaml

        settings = self.out / "train-settings.yaml"
        values = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "output" and v is not None}
        settings.write_text(yaml.safe_dump(values, allow_unicode=True, sort_keys=False), encoding="utf-8")
        how = ["--resume"] if resume else ["--config", str(settings), "--force"]
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(self.r.launch.config),
               *self.r.launch.args, "-m", "belle.training", "-o", str(self.train_dir), *how]
        log.info("running %s", " ".join(cmd))
        if subprocess.run(cmd).returncode != 0:
            raise BelleError(f"training under accelerate launch failed (its output is above; the command was: "
                             f"{' '.join(cmd)})")
        # what the in-process run returns, read back from the run's log
        records = [json.loads(line) for line in (self.train_dir / "log.jsonl").read_text(encoding="utf-8").splitlines()
                   if line.strip()]
        last = records[-1] if records else {}
        return {"steps": last.get("step"), "loss": last.get("train_loss"), "tokens": last.get("tokens"),
                "seconds": last.get("train_runtime"), "resumed": resume, "lr": cfg.learning_rate(),
                "batch": cfg.batch_size * cfg.grad_accum, "max_length": cfg.max_length, "method": cfg.method,
                "lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha, "packing": cfg.packing,
                "launch": f"{self.r.launch.config.name} {' '.join(self.r.launch.args)}".strip()}

    def _merge(self, resume: bool) -> dict:
        import os
        import shutil

        from belle.training.merge import merge

        part = self.out / "merged.part"  # renamed when complete: a killed merge leaves no folder that looks done
        shutil.rmtree(part, ignore_errors=True)
        merge(self.train_dir, part, force=True)
        shutil.rmtree(self.model_dir, ignore_errors=True)
        os.replace(part, self.model_dir)
        return {}

    def _convert(self, resume: bool) -> dict:
        from belle.quantize.convert import convert

        convert(self.model_dir, self.f16, "f16", force=True, progress=self.step)
        return {}

    def _quantizer(self, method: str, qtype: str, path: Path) -> Callable[[bool], dict]:
        # GPTQ resumes by itself: its work folder (OUT/NAME.TYPE.gguf.gptq) is keyed by its settings
        def run(resume: bool) -> dict:
            path.parent.mkdir(parents=True, exist_ok=True)
            q = self.r.quantize
            if method == "gptq":
                from belle.quantize.gptq_run import GPTQSettings, quantize_gptq

                settings = GPTQSettings(qtype, samples=q.samples, seqlen=q.ctx, device=q.device)
                report = quantize_gptq(self.model_dir, path, settings, self.calibration, force=True, progress=self.step)
                what = (f"{qtype} by GPTQ inside GGUF blocks ({report.samples} samples x {q.ctx} tokens of "
                        f"{self.calibration.name})")
                return {"quantization": what, "seconds": report.seconds}
            from belle.quantize.llama_quantize import quantize

            matrix = None
            what = f"{qtype} by llama.cpp's quantizer (round to nearest)"
            if method == "imatrix":
                from belle.quantize import imatrix as imx
                from belle.quantize.textdata import load_text

                im = imx.compute(self.f16, load_text(self.calibration), n_ctx=q.ctx, max_chunks=q.samples,
                                 dataset=str(self.calibration), progress=lambda d, t: self.step and self.step(d, t, "imatrix"))
                matrix = im.means()
                what = (f"{qtype} by llama.cpp's quantizer with an importance matrix ({im.chunk_count} chunks x "
                        f"{im.chunk_size} tokens of {self.calibration.name})")
            result = quantize(self.f16, path, qtype, imatrix=matrix, force=True)
            return {"quantization": what, "seconds": result.seconds}
        return run

    def _evaluate(self, resume: bool) -> dict:
        from belle.quantize.fidelity import evaluate, format_table
        from belle.quantize.textdata import load_text

        e = self.r.eval
        candidates = [*self.primary.values(), *self.compare.values()]
        progress = None
        if self.step:
            def progress(model: str, done: int, total: int) -> None:
                self.step(done, total, model)
        report = evaluate(self.f16, candidates, load_text(self.eval_text), n_ctx=e.ctx, max_chunks=e.chunks,
                          text_name=self.eval_text.name, progress=progress)
        (self.out / "fidelity.json").write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n",
                                                encoding="utf-8")
        return {"table": format_table(report)}

    def _card(self, resume: bool) -> dict:
        from importlib.metadata import version

        card = self.card(version("belle"))
        files = []
        for qtype, path in self.primary.items():
            quantization = self.state.info(f"quantize {qtype} ({self.r.quantize.method})").get("quantization", qtype)
            write_gguf_card(path, gguf_metadata(card, qtype, quantization), card.base_name, card.data_names)
            files.append((path.name, quantization, path.stat().st_size))
        installs = [p.name for p in self.primary.values()] if self.r.install else []
        (self.out / "README.md").write_text(render_readme(card, files, installs), encoding="utf-8")
        return {}

    def card(self, version: str) -> Card:
        r, t = self.r, self.state.info("train")
        base_name = self.base_path.name
        data_names = [p.name for p in r.data]
        data = "; ".join(f"{p.name} (sha256 {h[:12]})" for p, h in zip(r.data, self.data_hashes))
        if t.get("rows"):
            data += f"; {t['rows']} rows trained"
        how = "LoRA" if t.get("method") == "lora" else "full fine-tuning"
        if t.get("method") == "lora":
            how += f" r={t.get('lora_r')} alpha={t.get('lora_alpha')}"
        loss = f", final loss {t['loss']:.3f}" if t.get("loss") is not None else ""
        per = " per process" if t.get("launch") else ""
        training = (f"{how}, {t.get('steps')} steps of {t.get('batch')} rows{per}, lr {t.get('lr'):g}, max length "
                    f"{t.get('max_length')}{', packed' if t.get('packing') else ''}{loss}, {t.get('seconds') or 0:.0f} s")
        if t.get("launch"):
            training += f", accelerate launch {t['launch']}"
        built = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, belle {version}"
        facts = {"base": f"{base_name} (sha256 {self.base_hash[:12]})", "data": data,
                 "template": r.template or "the base model's own", "training": training,
                 "fidelity": self.state.info("evaluate").get("table", ""), "built": built, "recipe": r.text}
        return Card(r.name, facts, data_names, base_name, r.path.name)

    def _install(self, resume: bool) -> dict:
        from belle.app import models

        return {"installed": [str(models.import_model(p, force=True)) for p in self.primary.values()]}


def _asset(name: str) -> Path:
    from belle.quantize.textdata import asset_path

    return asset_path(name)


def build(recipe: Recipe, out: Path | None = None, *, force: bool = False, on_stage: StageEvent | None = None,
          step: Step | None = None) -> BuildResult:
    """Run the recipe's stages in OUT (default: the recipe's `out`, else runs/NAME), skipping the
    ones that are up to date. force: run every stage (training starts over)."""
    b = _Build(recipe, Path(out or default_out(recipe)), step)
    b.out.mkdir(parents=True, exist_ok=True)
    stages = b.stages()
    b.state.save()  # the input hashes just computed, so the next build does not re-read the files
    result = BuildResult(b.out)
    dirty = force
    for i, stage in enumerate(stages):
        fresh = b.state.is_done(stage.name, stage.key) and all(p.exists() for p in stage.outputs)
        if fresh and not dirty:
            result.skipped.append(stage.name)
            if on_stage:
                on_stage(i, len(stages), stage.name, "skip")
            continue
        dirty = True  # what comes after reads this stage's new output
        if on_stage:
            on_stage(i, len(stages), stage.name, "run")
        resume = b.state.started_with(stage.name, stage.key) and not force
        b.state.start(stage.name, stage.key)
        started = time.monotonic()
        info = stage.run(resume) or {}
        seconds = time.monotonic() - started
        b.state.finish(stage.name, stage.key, info, seconds)
        result.ran.append(stage.name)
        result.seconds[stage.name] = seconds
        log.info("%s: done in %.1f s", stage.name, seconds)
    result.ggufs = list(b.primary.values())
    result.installed = [Path(p) for p in b.state.info("install").get("installed", [])]
    result.fidelity = b.state.info("evaluate").get("table", "")
    result.readme = b.out / "README.md"
    return result
