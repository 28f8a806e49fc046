"""`belle build` on a tiny LLaMA: every stage runs, a second build skips them all, a changed
recipe or data file re-runs exactly the stages downstream of it, and a killed build resumes its
training from the last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import FACTS, ROOT, SAMPLE, write_recipe

BELLE = [sys.executable, "-m", "belle.app.cli"]
STAGES = ["train", "merge", "convert", "quantize Q4_0 (gptq)", "quantize Q4_0 (rtn)", "evaluate", "model card",
          "install"]


def _env(home):
    # one torch thread (two on a shared 2-core machine are slower); installs go to this test's home,
    # not to the shared test-models folder the suite's BELLE_MODELS_DIR names
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "BELLE_MODELS_DIR": str(home / "models")}


def belle_build(*args, check=True, timeout=600, env=None):
    env = env or {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([*BELLE, "build", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"belle build exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def ran(proc) -> list[str]:
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("ran: ")][-1]
    if "nothing to do" in line:
        return []
    return [part.rsplit(" ", 2)[0] for part in line[len("ran: "):].split(", ")]


def tiny_recipe(tmp_path, base, data, **changes):
    recipe = dict(name="tiny", base=str(base), data=[str(p) for p in data], template="belle",
                  train=dict(method="lora", max_steps=4, batch_size=4, max_length=64, lr=1e-3, save_steps=2,
                             logging_steps=1, threads=1),
                  quantize=dict(method="gptq", types=["Q4_0"], samples=2, ctx=64, compare=["rtn"]),
                  eval=dict(chunks=2, ctx=64))
    for section, values in changes.items():
        recipe[section] = {**recipe[section], **values} if isinstance(values, dict) else values
    return write_recipe(tmp_path / "tiny.yaml", **recipe)


@pytest.fixture
def data(tmp_path):
    rows = SAMPLE.read_text(encoding="utf-8").splitlines()[:8]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_build_runs_every_stage_then_skips_what_is_up_to_date(tmp_path, tiny_base, data, belle_home):
    import gguf

    recipe = tiny_recipe(tmp_path, tiny_base, [data, FACTS])
    out = tmp_path / "out"
    first = belle_build(recipe, "--out", out, env=_env(belle_home))
    assert ran(first) == STAGES, first.stdout
    # both fidelity rows in the printed table, and the card in README.md and in the GGUF
    assert "tiny.Q4_0.gguf" in first.stdout and "tiny.Q4_0.rtn.gguf" in first.stdout
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "tiny.Q4_0.rtn.gguf" in readme and "belle build" in readme and "max_steps: 4" in readme
    reader = gguf.GGUFReader(out / "tiny.Q4_0.gguf")
    card = {f.name: f.contents() for f in reader.fields.values() if f.name.startswith("belle.card.")}
    assert card["belle.card.template"] == "belle"
    assert "tiny.Q4_0.rtn.gguf" in card["belle.card.fidelity"] and "LoRA r=16" in card["belle.card.training"]
    assert card["belle.card.quantization"].startswith("Q4_0 by GPTQ")
    assert reader.get_field("tokenizer.chat_template").contents().startswith("{%- for message in messages")
    installed = belle_home / "models" / "tiny.Q4_0.gguf"
    assert installed.is_file() and installed.stat().st_size == (out / "tiny.Q4_0.gguf").stat().st_size
    # the app reads the card back: `belle models info` shows it, --recipe gives back the recipe file
    info = subprocess.run([*BELLE, "models", "info", "tiny.Q4_0.gguf"], capture_output=True, text=True,
                          env=_env(belle_home), check=True).stdout
    assert "model card:" in info and "Q4_0 by GPTQ" in info and "tiny.Q4_0.rtn.gguf" in info
    stored = subprocess.run([*BELLE, "models", "info", "tiny.Q4_0.gguf", "--recipe"], capture_output=True,
                            text=True, env=_env(belle_home), check=True).stdout
    assert stored.strip() == recipe.read_text(encoding="utf-8").strip()

    again = belle_build(recipe, "--out", out, env=_env(belle_home))
    assert ran(again) == [] and again.stdout.count("up to date, skipped") == len(STAGES)

    # an eval setting: only the table and what carries it
    recipe = tiny_recipe(tmp_path, tiny_base, [data, FACTS], eval=dict(chunks=1))
    assert ran(belle_build(recipe, "--out", out, env=_env(belle_home))) == ["evaluate", "model card", "install"]

    # a changed data file: training and everything after it
    with open(data, "a", encoding="utf-8") as fh:
        fh.write(SAMPLE.read_text(encoding="utf-8").splitlines()[20] + "\n")
    assert ran(belle_build(recipe, "--out", out, env=_env(belle_home))) == STAGES

    # a deleted output is rebuilt, with what comes after it
    (out / "tiny.f16.gguf").unlink()
    assert ran(belle_build(recipe, "--out", out, env=_env(belle_home))) == STAGES[2:]


def test_a_killed_build_resumes_training_from_its_last_checkpoint(tmp_path, tiny_base, data, belle_home):
    recipe = tiny_recipe(tmp_path, tiny_base, [data, FACTS], train=dict(max_steps=60, save_steps=2),
                         quantize=dict(compare=[]), install=False)
    out = tmp_path / "out"
    proc = subprocess.Popen([*BELLE, "build", str(recipe), "--out", str(out)], env=_env(belle_home),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (out / "train" / "checkpoint-4" / "trainer_state.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the build ended before checkpoint-4"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert json.loads((out / "build.json").read_text())["stages"]["train"]["done"] is False

    done = belle_build(recipe, "--out", out, env=_env(belle_home))
    assert ran(done) == [s for s in STAGES if s not in ("quantize Q4_0 (rtn)", "install")]
    info = json.loads((out / "build.json").read_text())["stages"]["train"]["info"]
    assert info["resumed"] is True and info["steps"] == 60, info


@pytest.mark.parametrize("text, error", [
    ("name: x\nbase: {base}\ndata: [{data}]\nbogus: 1\n", "unknown key 'bogus'"),
    ("name: x\nbase: {base}\ndata: [nowhere.jsonl]\n", "data: nowhere.jsonl: no such file"),
    ("name: x\nbase: {base}\ndata: [{data}]\ntrain: {{lr: fast}}\n", "train: lr: 'fast' is not a valid float"),
    ("name: x\nbase: {base}\ndata: [{data}]\ntrain: {{base: y}}\n", "train: base: set it at the top level"),
    ("name: x\nbase: {base}\ndata: [{data}]\nquantize: {{method: rtn, types: [Q4_K]}}\n", "rtn has no type 'Q4_K'"),
    ("name: x y\nbase: {base}\ndata: [{data}]\n", "name: 'x y' must be"),
    ("name: x\nbase: nowhere/model\ndata: [{data}]\n", "base: nowhere/model: no such model"),
    ("name: x\nbase: {base}\ndata: [{data}\n", ": invalid YAML (expected"),
    ("name: x\nbase: {base}\ndata: [{data}]\nlaunch: nowhere.yaml\n", "launch: config: no such accelerate config"),
])
def test_recipe_mistakes_are_one_line_errors(tmp_path, tiny_base, data, text, error):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text.format(base=tiny_base, data=data), encoding="utf-8")
    proc = belle_build(recipe, "--out", tmp_path / "out", check=False)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("belle: error: ") and error in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_the_shipped_recipe_is_valid(default_model_path):
    """assets/recipes/smollm2-belle.yaml names files that ship and a base the app can resolve."""
    from belle.app import models
    from belle.pipeline.recipe import load_recipe

    recipe = load_recipe(ROOT / "assets" / "recipes" / "smollm2-belle.yaml")
    assert recipe.base == "smollm2-135m" and models.resolve(recipe.base) == default_model_path
    assert [p.name for p in recipe.data] == ["sample_zh_en.jsonl", "sample_multiturn.jsonl"]
    assert recipe.template == "chatml" and recipe.quantize.method == "gptq" and recipe.quantize.compare == ["rtn"]
    # enough calibration text for the samples it asks for (GPTQ would stop after training otherwise)
    from belle.quantize.llama_runner import LlamaRunner
    from belle.quantize.textdata import DEFAULT_CALIBRATION, asset_path, load_text

    with LlamaRunner(default_model_path, 512, 1) as runner:
        tokens = runner.tokenize(load_text(asset_path(DEFAULT_CALIBRATION)))
    assert len(tokens) // recipe.quantize.ctx >= recipe.quantize.samples, len(tokens)


def test_training_runs_under_accelerate_launch(tmp_path, tiny_base, data, belle_home):
    """The command the README gives for many GPUs, on two CPU processes joined over gloo (and
    imatrix as the comparison method)."""
    import socket

    import gguf

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    recipe = tiny_recipe(tmp_path, tiny_base, [data, FACTS], train=dict(save_steps=4),
                         quantize=dict(compare=["imatrix"]), install=False)
    out = tmp_path / "out"
    proc = belle_build(recipe, "--out", out, "--accelerate", ROOT / "training" / "accelerate" / "cpu_ddp.yaml",
                       "--accelerate-arg=--num_processes=2", "--accelerate-arg=--mixed_precision=no",
                       f"--accelerate-arg=--main_process_port={port}", env=_env(belle_home))
    assert ran(proc)[:2] == ["train", "merge"]
    assert (out / "train" / "checkpoint-4" / "rng_state_1.pth").is_file()  # the second rank really trained
    info = json.loads((out / "build.json").read_text())["stages"]["train"]["info"]
    assert info["steps"] == 4 and info["loss"] > 0
    training = gguf.GGUFReader(out / "tiny.Q4_0.gguf").get_field("belle.card.training").contents()
    assert "accelerate launch cpu_ddp.yaml --num_processes=2" in training and "rows per process" in training
    # llama.cpp's imatrix quantizer as the comparison method this time
    fidelity = json.loads((out / "fidelity.json").read_text())
    assert [row["model"] for row in fidelity["candidates"]] == ["tiny.Q4_0.gguf", "tiny.Q4_0.imatrix.gguf"]
