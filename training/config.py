"""The settings of one training run: defaults, then a YAML file, then command-line flags.

Every setting has one name, used as the YAML key and (with dashes) as the flag: `lr` / `--lr`,
`grad_accum` / `--grad-accum`. The resolved settings are saved as OUT/belle-train.json, which is
what `--resume` and `belle train merge` read back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from belle.app.errors import SettingsError

METHODS = ("lora", "full")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RUN_FILE = "belle-train.json"


@dataclass
class TrainConfig:
    base: str = ""                  # an HF model folder or a GGUF file
    data: list[str] = field(default_factory=list)
    output: str = ""
    method: str = "lora"
    template: str | None = None     # belle | chatml | base; None: the base's own template, else belle
    format: str | None = None       # data format for every file; None: detected per file
    epochs: float = 3.0
    max_steps: int = -1             # > 0 overrides epochs
    lr: float | None = None         # None: 3e-4 for LoRA, 8e-6 for full fine-tuning (BELLE's)
    batch_size: int = 4             # per device
    grad_accum: int = 1
    max_length: int = 1024
    warmup: float = 0.05            # fraction of the steps
    scheduler: str = "cosine"
    weight_decay: float = 0.0
    seed: int = 42
    shuffle: bool = True
    dedup: bool = False
    on_error: str = "fail"          # fail | skip
    eval_split: float = 0.0         # fraction of the rows held out for eval loss
    eval_steps: int | None = None   # None: at every checkpoint
    save_steps: int = 200
    save_total_limit: int = 3
    logging_steps: int = 10
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: list[str] | str = "all-linear"  # every attention and MLP projection, not the head
    gradient_checkpointing: bool = False
    packing: bool = False
    precision: str = "auto"         # auto: bf16 (else fp16) on a GPU, fp32 on a CPU
    threads: int | None = None      # torch threads on a CPU

    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 3e-4 if self.method == "lora" else 8e-6

    def check(self) -> "TrainConfig":
        if not self.base:
            raise SettingsError("--base: which model to fine-tune (an HF folder or a GGUF file)")
        if not self.data:
            raise SettingsError("--data: at least one data file")
        if not self.output:
            raise SettingsError("-o/--output: the folder for checkpoints and the result")
        if self.method not in METHODS:
            raise SettingsError(f"method: '{self.method}' is not one of {', '.join(METHODS)}")
        if self.precision not in PRECISIONS:
            raise SettingsError(f"precision: '{self.precision}' is not one of {', '.join(PRECISIONS)}")
        if self.on_error not in ("fail", "skip"):
            raise SettingsError(f"on_error: '{self.on_error}' is not fail or skip")
        for name in ("batch_size", "grad_accum", "max_length", "save_steps", "logging_steps", "lora_r"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.max_length < 16:
            raise SettingsError(f"max_length: must be at least 16, got {self.max_length}")
        if not 0 <= self.eval_split < 1:
            raise SettingsError(f"eval_split: a fraction in [0, 1), got {self.eval_split}")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise SettingsError("epochs or max_steps must be positive")
        if self.lr is not None and self.lr <= 0:
            raise SettingsError(f"lr: must be positive, got {self.lr}")
        return self

    def save(self, out_dir: Path) -> None:
        (Path(out_dir) / RUN_FILE).write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n",
                                               encoding="utf-8")


FIELDS = {f.name: f for f in fields(TrainConfig)}
# settings that may change when a run is resumed (how long, how often to save or log)
RESUMABLE_CHANGES = {"epochs", "max_steps", "save_steps", "save_total_limit", "logging_steps", "eval_steps", "threads"}


def coerce(name: str, value, where: str):
    """A YAML or JSON value checked against the field's type (also used by `belle build` recipes)."""
    kind = FIELDS[name].type
    if value is None:
        return None
    try:
        if kind in ("int", "int | None"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind in ("float", "float | None"):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind == "bool":
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind == "list[str]":
            return [str(v) for v in (value if isinstance(value, list) else [value])]
        if kind == "list[str] | str":
            return [str(v) for v in value] if isinstance(value, list) else str(value)
        if isinstance(value, (dict, list)):
            raise ValueError
        return str(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{where}: {name}: {value!r} is not a valid {kind}") from None


def parse_yaml(path: Path, text: str, what: str) -> dict:
    """A YAML mapping, or a one-line error naming the file and line (also reads `belle build` recipes)."""
    import yaml

    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise SettingsError(f"{path}{line}: invalid YAML ({getattr(err, 'problem', None) or err})") from None
    if not isinstance(raw, dict):
        raise SettingsError(f"{path}: expected a mapping of {what}, got {type(raw).__name__}")
    return raw


def read_yaml(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"{path}: no such config file")
    raw = parse_yaml(path, path.read_text(encoding="utf-8"), "settings")
    out = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in FIELDS:
            raise SettingsError(f"{path}: unknown setting '{key}' (known: {', '.join(FIELDS)})")
        out[name] = coerce(name, value, str(path))
    return out


def read_run(out_dir: Path) -> TrainConfig:
    path = Path(out_dir) / RUN_FILE
    if not path.is_file():
        raise SettingsError(f"{out_dir}: not a belle training folder (no {RUN_FILE})")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SettingsError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
    return TrainConfig(**{k: v for k, v in saved.items() if k in FIELDS})


def resolve(flags: dict, yaml_path: Path | None) -> TrainConfig:
    """Defaults, then the YAML file, then the flags that were given (not None)."""
    values = read_yaml(yaml_path) if yaml_path else {}
    values.update({k: v for k, v in flags.items() if v is not None})
    return TrainConfig(**values).check()


def merge_for_resume(saved: TrainConfig, flags: dict) -> TrainConfig:
    """A resumed run keeps its settings; flags may only extend or re-pace it."""
    for name, value in flags.items():
        if value is None or name in ("output",):
            continue
        if name in RESUMABLE_CHANGES:
            setattr(saved, name, value)
        elif getattr(saved, name) != value:
            raise SettingsError(f"--{name.replace('_', '-')} {value} differs from the run being resumed "
                                f"({getattr(saved, name)}); start a new run in another folder instead")
    return saved.check()
