"""`belle train` as a real process on a tiny LLaMA: overfitting, kill and resume, merge, packing,
bad data and bad settings."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
from conftest import OVERFIT
from train_helpers import BELLE, ENV, belle, greedy_exact_match, losses, qa_pairs

# 32 pairs, 8 per step: 4 steps an epoch
OVERFIT_ARGS = ["--data", OVERFIT, "--batch-size", 8, "--warmup", 0, "--logging-steps", 10, "--save-steps", 1000,
                "--threads", 1]


@pytest.fixture(scope="module")
def full_run(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "out"
    belle("train", "--base", tiny_llama, "--method", "full", "-o", out, "--lr", 3e-3, "--max-steps", 160, *OVERFIT_ARGS)
    return out


@pytest.fixture(scope="module")
def lora_run(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "out"
    belle("train", "--base", tiny_llama, "--method", "lora", "-o", out, "--lr", 1e-2, "--max-steps", 160, *OVERFIT_ARGS)
    return out


def test_full_fine_tuning_overfits_32_chinese_pairs(full_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(full_run))
    tokenizer = AutoTokenizer.from_pretrained(str(full_run))
    from belle.app.template_data import BELLE_JINJA

    assert tokenizer.chat_template == BELLE_JINJA  # the tiny base has none: BELLE's, saved with the model
    curve = losses(full_run)
    assert curve[160] < curve[10] / 10
    assert greedy_exact_match(model, tokenizer, qa_pairs(OVERFIT)) >= 0.9


def test_lora_overfits_32_chinese_pairs_and_merges_exactly(lora_run, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from belle.training.merge import load_adapter

    assert (lora_run / "adapter_model.safetensors").is_file() and not (lora_run / "model.safetensors").exists()
    adapter, tokenizer = load_adapter(lora_run)
    assert greedy_exact_match(adapter, tokenizer, qa_pairs(OVERFIT)) >= 0.9

    proc = belle("train", "merge", lora_run, "-o", tmp_path / "merged")
    assert "belle convert" in proc.stdout
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    assert AutoTokenizer.from_pretrained(str(tmp_path / "merged")).chat_template == tokenizer.chat_template
    ids = torch.tensor([tokenizer("你好，世界。中国的首都是哪里？Hello", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        a, m = adapter(ids).logits, merged.eval()(ids).logits
    assert (a - m).abs().max().item() < 1e-4
    assert a.abs().max().item() > 1  # the adapter changed something worth comparing


def test_kill_and_resume_reproduce_the_loss_curve(tiny_llama, tmp_path):
    """A run killed with SIGKILL mid-training resumes from its last complete checkpoint and goes on
    exactly as an uninterrupted run: same data order, optimizer, schedule and dropout RNG."""
    args = ["--base", tiny_llama, "--method", "lora", "--data", OVERFIT, "--batch-size", 4, "--lr", 3e-3,
            "--max-steps", 200, "--save-steps", 4, "--logging-steps", 1, "--threads", 1]
    belle("train", *args, "-o", tmp_path / "whole")
    reference = losses(tmp_path / "whole")

    out = tmp_path / "killed"
    proc = subprocess.Popen([*BELLE, "train", *map(str, args), "-o", str(out)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoint-8" / "trainer_state.json").is_file():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (out / "adapter_model.safetensors").exists()
    done = len(losses(out))
    assert 8 <= done < 200

    belle("train", "-o", out, "--resume")
    resumed = losses(out)
    assert sorted(resumed) == list(range(1, 201))
    assert max(abs(resumed[s] - reference[s]) for s in resumed) < 1e-5


def test_packing_gives_the_loss_of_padded_batches(tiny_llama, tmp_path):
    """Rows packed into one sequence must not see each other: the first step's loss is the same."""
    args = ["--base", tiny_llama, "--method", "full", "--data", OVERFIT, "--batch-size", 8, "--max-steps", 1,
            "--logging-steps", 1, "--threads", 1]
    belle("train", *args, "-o", tmp_path / "padded")
    belle("train", *args, "--packing", "-o", tmp_path / "packed")
    assert abs(losses(tmp_path / "padded")[1] - losses(tmp_path / "packed")[1]) < 1e-5


def test_bad_rows_are_named_by_file_and_line(tiny_llama, tmp_path):
    data = tmp_path / "data.jsonl"
    rows = [{"instruction": "你好", "input": "", "output": "你好！"}] * 3
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    lines.insert(2, '{"instruction": "坏行", "input": ""')
    lines.insert(4, json.dumps({"instruction": "没有回答", "input": "", "output": ""}, ensure_ascii=False))
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    base = ["train", "--base", tiny_llama, "--data", data, "--max-steps", 1, "--threads", 1]

    proc = belle(*base, "-o", tmp_path / "a", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(f"belle: error: {data}:3: invalid JSON")
    assert "Traceback" not in proc.stderr

    proc = belle(*base, "-o", tmp_path / "b", "--on-error", "skip")
    assert f"{data}:3" in proc.stdout and f"{data}:5" in proc.stdout  # each reason, with where it first happened
    assert "trained 1 steps on 3 rows" in proc.stdout


def test_settings_from_yaml_flags_and_resume(tiny_llama, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"base: {tiny_llama}\ndata: [{OVERFIT}]\nmethod: full\nmax_steps: 2\nlr: 1.0e-3\n"
                      f"logging_steps: 1\nthreads: 1\neval_split: 0.25\neval_steps: 1\n", encoding="utf-8")
    out = tmp_path / "out"
    belle("train", "--config", config, "--lr", 2e-3, "-o", out)
    saved = json.loads((out / "belle-train.json").read_text())
    assert (saved["lr"], saved["max_steps"], saved["method"]) == (2e-3, 2, "full")  # the flag wins over YAML
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "eval_loss" in r][:2] == [1, 2]  # 8 of the 32 rows held out

    again = belle("train", "--config", config, "-o", out, check=False)
    assert again.returncode == 1 and "--resume" in again.stderr and "--force" in again.stderr
    differs = belle("train", "-o", out, "--resume", "--lr", 5e-3, check=False)
    assert differs.returncode == 1 and "--lr 0.005 differs from the run being resumed (0.002)" in differs.stderr
    belle("train", "-o", out, "--resume", "--max-steps", 4)  # a run may be extended
    assert sorted(losses(out)) == [1, 2, 3, 4]

    config.write_text("base: x\nlearning_rate: 1\n", encoding="utf-8")
    proc = belle("train", "--config", config, "-o", tmp_path / "o2", check=False)
    assert proc.returncode == 1 and f"{config}: unknown setting 'learning_rate'" in proc.stderr
    config.write_text("base: x\nmax_steps: many\n", encoding="utf-8")
    proc = belle("train", "--config", config, "-o", tmp_path / "o3", check=False)
    assert proc.returncode == 1 and "max_steps: 'many' is not a valid int" in proc.stderr
