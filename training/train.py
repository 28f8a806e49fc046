"""One training run: data -> transformers Trainer (+ peft LoRA) -> OUT folder.

The same code runs on a CPU, one GPU, or many GPUs / processes under `accelerate launch` (DDP,
DeepSpeed, FSDP): Trainer takes the distributed setup from accelerate's environment, so there is
no distributed code here. OUT holds:
    belle-train.json        the resolved settings (what --resume and `belle train merge` read)
    log.jsonl               one JSON line per logged step: loss, lr, tokens, tokens/s, eval loss
    checkpoint-N/           every save_steps: weights, optimizer, scheduler, RNG, data position
    adapter_model.safetensors + adapter_config.json  (LoRA)  or  model.safetensors + config.json (full)
    tokenizer files         with the training chat template as `chat_template`
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from belle.app.errors import SettingsError

from .config import TrainConfig
from .data import index_files, split_rows
from .encode import IGNORE, Encoder, default_template

log = logging.getLogger(__name__)
LOG_FILE = "log.jsonl"
_CHECKPOINT_PREFIX = "checkpoint-"


@dataclass
class TrainResult:
    output: Path
    steps: int
    train_loss: float | None
    eval_loss: float | None
    tokens: int
    seconds: float
    rows: int
    skipped: str            # the data report, "" when nothing was skipped
    truncated: int          # rows cut at max_length


def last_checkpoint(out: Path) -> Path | None:
    """The newest checkpoint that was written to the end. Trainer writes trainer_state.json last,
    so a folder without it is what a killed run left behind: skipped (and overwritten later)."""
    found = []
    for path in Path(out).glob(f"{_CHECKPOINT_PREFIX}*"):
        step = path.name[len(_CHECKPOINT_PREFIX):]
        if path.is_dir() and step.isdigit():
            if (path / "trainer_state.json").is_file():
                found.append((int(step), path))
            else:
                log.warning("%s is incomplete (the run was stopped while saving it); not resuming from it", path)
    return max(found)[1] if found else None


def prepare_output(out: Path, resume: bool, force: bool, is_main: bool) -> Path | None:
    """The checkpoint to resume from, after checking that no earlier run is overwritten by mistake."""
    if out.exists() and not out.is_dir():
        raise SettingsError(f"{out}: exists and is not a folder")
    earlier = out.is_dir() and any(out.iterdir())
    if resume:
        checkpoint = last_checkpoint(out)
        if checkpoint is None:
            log.warning("%s has no complete checkpoint: starting from the beginning", out)
        return checkpoint
    if earlier:
        if not force:
            raise SettingsError(f"{out}: already holds files; --resume continues that run, --force starts over "
                                f"(deleting its checkpoints)")
        if is_main:
            shutil.rmtree(out)
    return None


def _drop_torn_line(path: Path) -> None:
    """A run killed while appending to the log may leave half a line; the resumed run appends after it."""
    if path.is_file():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            path.write_bytes(data[: data.rfind(b"\n") + 1])


class _Rows:
    """The training rows as a map-style dataset: each row is read from its file and tokenized when
    the DataLoader asks for it, so memory does not grow with the data."""

    def __init__(self, rows, encoder: Encoder):
        self.rows, self.encoder = rows, encoder
        self.truncated: set[int] = set()

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        enc = self.encoder.encode(self.rows[i])
        if enc.truncated:
            self.truncated.add(i)
        return {"input_ids": enc.input_ids, "labels": enc.labels}


def _precision(cfg: TrainConfig, cuda: bool) -> str:
    if cfg.precision != "auto":
        if cfg.precision in ("fp16",) and not cuda:
            raise SettingsError("precision: fp16 needs a GPU; on a CPU use fp32 or bf16")
        return cfg.precision
    if not cuda:
        return "fp32"
    import torch

    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _callbacks(out: Path):
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class ProgressLog(TrainerCallback):
        """A progress bar with loss and tokens/s, and the same figures as JSON lines in OUT/log.jsonl."""

        bar = None
        last = None  # (time, tokens) at the previous log

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.bar = tqdm(total=state.max_steps, initial=state.global_step, unit="step", desc="train",
                                dynamic_ncols=True)
            self.last = (time.monotonic(), state.num_input_tokens_seen)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            now, tokens = time.monotonic(), state.num_input_tokens_seen
            seconds = now - self.last[0]
            record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **logs, "tokens": tokens}
            if "loss" in logs and seconds > 0:
                record["tokens_per_s"] = round((tokens - self.last[1]) / seconds, 1)
                self.last = (now, tokens)
            with open(out / LOG_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            if self.bar is not None:
                shown = {k: f"{record[k]:.4g}" for k in ("loss", "eval_loss") if k in record}
                if "tokens_per_s" in record:
                    shown["tok/s"] = f"{record['tokens_per_s']:.0f}"
                self.bar.set_postfix(shown, refresh=False)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()

    return [ProgressLog()]


def train(cfg: TrainConfig, resume: bool = False, force: bool = False) -> TrainResult:
    import torch
    from accelerate import PartialState
    from transformers import (DataCollatorForSeq2Seq, DataCollatorWithFlattening, PrinterCallback, Trainer,
                              TrainingArguments, set_seed)

    from .model import add_lora, load_base

    started = time.monotonic()
    cuda = torch.cuda.is_available()
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not cuda:
        # accelerate only shards on GPUs; on CPUs it would quietly run plain DDP instead
        raise SettingsError("FSDP needs GPUs (accelerate runs CPU processes as plain DDP); drop --use_fsdp "
                            "or the FSDP config to train on CPUs")
    state = PartialState()
    out = Path(cfg.output)
    checkpoint = prepare_output(out, resume, force, state.is_main_process)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    precision = _precision(cfg, cuda)
    load_dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(precision) if cfg.method == "lora" else None

    # the data first: a bad row should stop the run before a large model has loaded
    rows, report = index_files(cfg.data, fmt=cfg.format, on_error=cfg.on_error, dedup=cfg.dedup,
                               progress=state.is_main_process)
    train_rows, eval_rows = split_rows(rows, eval_fraction=cfg.eval_split, shuffle=cfg.shuffle, seed=cfg.seed)
    model, tokenizer = load_base(cfg.base, load_dtype or "float32")
    encoder = Encoder(tokenizer, cfg.template or default_template(tokenizer), cfg.max_length)
    # saved with every checkpoint and the result, so `belle convert` writes it into the GGUF
    tokenizer.chat_template = encoder.source
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    log.info("template %s, %s fine-tuning of %s", encoder.template_name, cfg.method, cfg.base)

    train_set = _Rows(train_rows, encoder)
    eval_set = _Rows(eval_rows, encoder) if eval_rows is not None and len(eval_rows) else None

    # OUT is written only now that the model and the data have loaded: a run that fails to start
    # leaves nothing that a second try would have to --force away
    state.wait_for_everyone()
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out)
        _drop_torn_line(out / LOG_FILE)

    set_seed(cfg.seed)  # LoRA's initial A matrices
    if cfg.method == "lora":
        model = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)

    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate(),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup,  # a float below 1 is a fraction of the steps
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        data_seed=cfg.seed,
        train_sampling_strategy="random" if cfg.shuffle else "sequential",
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        eval_strategy="steps" if eval_set is not None else "no",
        eval_steps=cfg.eval_steps or cfg.save_steps,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not cuda,
        activation_checkpointing=cfg.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        include_num_input_tokens_seen="non_padding",
        ddp_find_unused_parameters=False,
        report_to="none",
        disable_tqdm=True,  # our own bar (ProgressLog) shows loss and tokens/s
    )
    if cfg.packing:
        # padding-free: a batch is one row of concatenated examples with position_ids restarting at
        # each example; transformers then masks attention between examples
        collator = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE)
    else:
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE)
    trainer = Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                      data_collator=collator, processing_class=tokenizer, callbacks=_callbacks(out))
    trainer.remove_callback(PrinterCallback)
    if checkpoint is not None:
        log.info("resuming from %s", checkpoint)
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    trainer.save_model(str(out))

    eval_loss = None
    if eval_set is not None:
        eval_loss = trainer.evaluate()["eval_loss"]
    if train_set.truncated:
        log.warning("%d rows were longer than max_length %d and were cut", len(train_set.truncated), cfg.max_length)
    return TrainResult(out, trainer.state.global_step, output.training_loss, eval_loss,
                       int(trainer.state.num_input_tokens_seen), time.monotonic() - started, len(train_rows),
                       report.summary(), len(train_set.truncated))
