"""A build recipe: one YAML file that names everything from the base model to the 4-bit GGUF.

    name: smollm2-belle                  # names the outputs: NAME.f16.gguf, NAME.Q4_K_M.gguf
    base: smollm2-135m                   # HF folder, GGUF file, or a model the app has (catalog id / file name)
    data: [../train/sample_zh_en.jsonl]  # instruction data, any format `belle train` reads
    format: null                         # null: detected per file
    template: chatml                     # belle | chatml | base; the GGUF carries it to the app
    out: null                            # null: runs/NAME under the current folder
    train: {method: lora, epochs: 1}     # any `belle train` setting, same names as its YAML config
    launch: {config: ../training/accelerate/deepspeed_zero2.yaml, args: [--num_processes, "8"]}
                                         # optional: train under `accelerate launch` (many GPUs)
    quantize: {method: gptq, types: [Q4_K_M], calibration: null, samples: 32, ctx: 512, compare: [rtn]}
    eval: {text: null, chunks: 8, ctx: 512}
    install: true                        # add the GGUFs to the app's model list

Paths inside a recipe are relative to the recipe file, so a recipe and its data travel together.
Every mistake is a one-line SettingsError naming the file and the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from belle.app.errors import SettingsError

TEMPLATES = ("belle", "chatml", "base")
METHODS = ("gptq", "rtn", "imatrix")  # gptq: ours; rtn / imatrix: llama.cpp's own quantizer
# set at the top level of the recipe, never inside `train:`
_TOP_LEVEL_TRAIN = ("base", "data", "output", "template", "format")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class QuantizeSpec:
    method: str = "gptq"
    types: list[str] = field(default_factory=lambda: ["Q4_K_M"])
    calibration: Path | None = None  # None: the project's Chinese + English calibration text
    samples: int | None = None  # GPTQ / imatrix calibration chunks (None: all, at most 128)
    ctx: int = 512  # tokens per calibration chunk
    compare: list[str] = field(default_factory=list)  # other methods, quantized only for the fidelity table
    device: str = "cpu"  # where GPTQ runs: cpu or cuda


@dataclass
class EvalSpec:
    text: Path | None = None  # None: the project's held-out text
    chunks: int | None = 8
    ctx: int = 512


@dataclass
class Launch:
    """Train under `accelerate launch --config_file CONFIG ARGS... -m belle.training` (many GPUs)."""
    config: Path
    args: list[str] = field(default_factory=list)


@dataclass
class Recipe:
    path: Path
    text: str  # the file as written, recorded in the model card
    name: str
    base: str  # a path (resolved against the recipe's folder) or an app model id / file name
    data: list[Path]
    format: str | None
    template: str | None
    out: Path | None
    train: dict  # TrainConfig fields, already type-checked
    quantize: QuantizeSpec
    eval: EvalSpec
    install: bool = True
    launch: "Launch | None" = None

    @property
    def method(self) -> str:
        return self.train.get("method", "lora")


def load_recipe(path: Path) -> Recipe:
    from belle.training.config import parse_yaml

    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"{path}: no such recipe file")
    text = path.read_text(encoding="utf-8")
    raw = parse_yaml(path, text, "recipe keys (name, base, data, ...)")
    return _parse(path, text, raw)


def _parse(path: Path, text: str, raw: dict) -> Recipe:
    where = str(path)
    known = ("name", "base", "data", "format", "template", "out", "train", "launch", "quantize", "eval", "install")
    for key in raw:
        if key not in known:
            raise SettingsError(f"{where}: unknown key '{key}' (known: {', '.join(known)})")
    for key in ("name", "base", "data"):
        if not raw.get(key):
            raise SettingsError(f"{where}: '{key}' is required")
    name = str(raw["name"])
    if not _NAME_RE.match(name):
        raise SettingsError(f"{where}: name: '{name}' must be letters, digits, '.', '_' or '-' (it names files)")
    folder = path.resolve().parent
    data = raw["data"] if isinstance(raw["data"], list) else [raw["data"]]
    data_paths = []
    for item in data:
        p = _rel(folder, item)
        if not p.is_file():
            raise SettingsError(f"{where}: data: {item}: no such file ({p})")
        data_paths.append(p)
    template = raw.get("template")
    if template is not None and template not in TEMPLATES:
        raise SettingsError(f"{where}: template: '{template}' is not one of {', '.join(TEMPLATES)}")
    base = str(raw["base"])
    as_path = _rel(folder, base)
    if as_path.exists() or "/" in base:
        if not as_path.exists():
            raise SettingsError(f"{where}: base: {base}: no such model file or folder ({as_path})")
        base = str(as_path)
    out = _rel(folder, raw["out"]) if raw.get("out") else None
    install = raw.get("install", True)
    if not isinstance(install, bool):
        raise SettingsError(f"{where}: install: expected true or false, got {install!r}")
    return Recipe(path=path, text=text, name=name, base=base, data=data_paths, format=raw.get("format"),
                  template=template, out=out, train=_train(where, raw.get("train") or {}),
                  quantize=_quantize(where, folder, raw.get("quantize") or {}),
                  eval=_eval(where, folder, raw.get("eval") or {}), install=install,
                  launch=_launch(where, folder, raw["launch"]) if raw.get("launch") else None)


def _rel(folder: Path, value) -> Path:
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else folder / p


def _section(where: str, name: str, raw) -> dict:
    if not isinstance(raw, dict):
        raise SettingsError(f"{where}: {name}: expected a mapping, got {type(raw).__name__}")
    return {str(k).replace("-", "_"): v for k, v in raw.items()}


def _train(where: str, raw) -> dict:
    from belle.training.config import FIELDS, coerce

    values = _section(where, "train", raw)
    for key in values:
        if key in _TOP_LEVEL_TRAIN:
            raise SettingsError(f"{where}: train: {key}: set it at the top level of the recipe")
        if key not in FIELDS:
            raise SettingsError(f"{where}: train: unknown setting '{key}' (known: {', '.join(FIELDS)})")
    return {k: coerce(k, v, f"{where}: train") for k, v in values.items()}


def _int(where: str, key: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SettingsError(f"{where}: {key}: expected a whole number of at least {low}, got {value!r}")
    return value


def launch_from(where: str, folder: Path, config, args=()) -> Launch:
    path = _rel(folder, config)
    if not path.is_file():
        raise SettingsError(f"{where}: launch: config: no such accelerate config ({path})")
    return Launch(path, [str(a) for a in args])


def _launch(where: str, folder: Path, raw) -> Launch:
    if isinstance(raw, str):
        raw = {"config": raw}
    values = _section(where, "launch", raw)
    for key in values:
        if key not in ("config", "args"):
            raise SettingsError(f"{where}: launch: unknown key '{key}' (known: config, args)")
    if not values.get("config"):
        raise SettingsError(f"{where}: launch: config: the accelerate config file to launch training with")
    args = values.get("args") or []
    if not isinstance(args, list):
        raise SettingsError(f"{where}: launch: args: expected a list of accelerate launch arguments")
    return launch_from(where, folder, values["config"], args)


def _quantize(where: str, folder: Path, raw) -> QuantizeSpec:
    from belle.quantize.constants import GPTQ_TYPES, QUANT_TYPES

    values = _section(where, "quantize", raw)
    spec = QuantizeSpec()
    for key, value in values.items():
        if key not in spec.__dataclass_fields__:
            raise SettingsError(f"{where}: quantize: unknown key '{key}' (known: {', '.join(spec.__dataclass_fields__)})")
    spec.method = str(values.get("method", spec.method))
    types = values.get("types", spec.types)
    spec.types = [str(t) for t in (types if isinstance(types, list) else [types])]
    compare = values.get("compare") or []
    spec.compare = [str(m) for m in (compare if isinstance(compare, list) else [compare])]
    for method in [spec.method, *spec.compare]:
        if method not in METHODS:
            raise SettingsError(f"{where}: quantize: method '{method}' is not one of {', '.join(METHODS)}")
        allowed = GPTQ_TYPES if method == "gptq" else QUANT_TYPES
        for t in spec.types:
            if t not in allowed:
                raise SettingsError(f"{where}: quantize: types: {method} has no type '{t}' "
                                    f"(choose from {', '.join(allowed)})")
    if spec.method in spec.compare:
        raise SettingsError(f"{where}: quantize: compare: '{spec.method}' is already the method")
    if not spec.types:
        raise SettingsError(f"{where}: quantize: types: name at least one type")
    if values.get("calibration"):
        spec.calibration = _rel(folder, values["calibration"])
        if not spec.calibration.is_file():
            raise SettingsError(f"{where}: quantize: calibration: no such file ({spec.calibration})")
    if values.get("samples") is not None:
        spec.samples = _int(where, "quantize: samples", values["samples"])
    spec.ctx = _int(where, "quantize: ctx", values.get("ctx", spec.ctx), 16)
    spec.device = str(values.get("device", spec.device))
    if spec.device not in ("cpu", "cuda"):
        raise SettingsError(f"{where}: quantize: device: '{spec.device}' is not cpu or cuda")
    return spec


def _eval(where: str, folder: Path, raw) -> EvalSpec:
    values = _section(where, "eval", raw)
    spec = EvalSpec()
    for key in values:
        if key not in spec.__dataclass_fields__:
            raise SettingsError(f"{where}: eval: unknown key '{key}' (known: {', '.join(spec.__dataclass_fields__)})")
    if values.get("text"):
        spec.text = _rel(folder, values["text"])
        if not spec.text.is_file():
            raise SettingsError(f"{where}: eval: text: no such file ({spec.text})")
    if "chunks" in values:
        spec.chunks = None if values["chunks"] is None else _int(where, "eval: chunks", values["chunks"])
    spec.ctx = _int(where, "eval: ctx", values.get("ctx", spec.ctx), 16)
    if spec.ctx % 2:
        raise SettingsError(f"{where}: eval: ctx: use an even number, got {spec.ctx}")
    return spec
