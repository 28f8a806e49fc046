"""Bad input gets one clear line naming the file, field or value; exit status 1; no traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from belle.app.cli import main


def run_cli(capsys, *argv) -> str:
    capsys.readouterr()  # drop what fixtures printed while building models
    assert main(list(argv)) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("belle: error: ") and "\n" not in err, err
    return err


@pytest.fixture
def model_copy(tiny_model, tmp_path):
    def copy(kind="llama-bpe"):
        dst = tmp_path / f"copy-{kind}"
        shutil.copytree(tiny_model(kind), dst)
        return dst
    return copy


def test_missing_config(model_copy, tmp_path, capsys):
    d = model_copy()
    (d / "config.json").unlink()
    err = run_cli(capsys, "convert", str(d), "-o", str(tmp_path / "o.gguf"))
    assert "config.json: missing" in err and str(d) in err
    assert not (tmp_path / "o.gguf").exists()


def test_missing_tokenizer(model_copy, tmp_path, capsys):
    d = model_copy()
    (d / "tokenizer.json").unlink()
    err = run_cli(capsys, "convert", str(d), "-o", str(tmp_path / "o.gguf"))
    assert "missing tokenizer" in err and "tokenizer.json" in err


def test_mismatched_shapes(model_copy, tmp_path, capsys):
    d = model_copy()
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 128
    (d / "config.json").write_text(json.dumps(cfg))
    err = run_cli(capsys, "convert", str(d), "-o", str(tmp_path / "o.gguf"))
    assert "model.safetensors" in err and "mlp" in err and "[64, 160]" in err and "[64, 128]" in err


def test_truncated_safetensors(model_copy, tmp_path, capsys):
    d = model_copy()
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    err = run_cli(capsys, "convert", str(d), "-o", str(tmp_path / "o.gguf"))
    assert "model.safetensors" in err and "truncated" in err
    assert not list(tmp_path.glob("o.gguf*"))


def test_missing_shard(model_copy, tmp_path, capsys):
    d = model_copy()
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}))
    err = run_cli(capsys, "convert", str(d), "-o", str(tmp_path / "o.gguf"))
    assert "model-00002-of-00002.safetensors: missing" in err


def test_unsupported_architecture(model_copy, tmp_path, capsys):
    d = model_copy()
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "gpt_neox"
    (d / "config.json").write_text(json.dumps(cfg))
    err = run_cli(capsys, "convert", str(d), "-o", str(tmp_path / "o.gguf"))
    assert "'gpt_neox' is not supported (supported: bloom, llama, qwen2)" in err


def test_existing_output_refused_unless_force(tiny_model, tmp_path, capsys):
    out = tmp_path / "o.gguf"
    out.write_bytes(b"precious")
    err = run_cli(capsys, "convert", str(tiny_model("llama-bpe")), "-o", str(out))
    assert str(out) in err and "--force" in err and out.read_bytes() == b"precious"
    assert main(["convert", str(tiny_model("llama-bpe")), "-o", str(out), "--outtype", "f16", "--force"]) == 0
    assert out.read_bytes()[:4] == b"GGUF"


def test_text_shorter_than_one_chunk(tiny_gguf, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("Only a sentence or two. 只有一两句话。", encoding="utf-8")
    model = str(tiny_gguf("llama-bpe"))
    err = run_cli(capsys, "eval", "fidelity", "--ref", model, model, "--text", str(short), "--json", str(tmp_path / "f.json"))
    assert "short.txt" in err and "shorter than one chunk of 512" in err
    err = run_cli(capsys, "quantize", model, "-o", str(tmp_path / "q.gguf"), "--type", "Q4_0", "--method", "imatrix",
                  "--calibration", str(short))
    assert "short.txt" in err and "shorter than one chunk" in err
    assert not (tmp_path / "q.gguf").exists()


def test_bad_training_data_line(tiny_gguf, tmp_path, capsys):
    bad = tmp_path / "data.jsonl"
    bad.write_text('{"instruction": "hi", "output": "ok"}\n{"instruction": broken\n', encoding="utf-8")
    model = str(tiny_gguf("llama-bpe"))
    err = run_cli(capsys, "eval", "fidelity", "--ref", model, model, "--text", str(bad), "--json", str(tmp_path / "f.json"))
    assert f"{bad}:2: invalid JSON" in err


def test_quantize_input_not_gguf(tmp_path, capsys):
    src = tmp_path / "model.gguf"
    src.write_text("hello")
    err = run_cli(capsys, "quantize", str(src), "-o", str(tmp_path / "q.gguf"), "--type", "Q8_0")
    assert f"{src}: not a GGUF file" in err


def test_one_line_through_the_real_entry_point(tmp_path):
    """The installed dispatcher: exit status 1, one line on stderr, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "belle.app.cli", "convert", str(tmp_path), "-o", str(tmp_path / "x.gguf")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"belle: error: {tmp_path}/config.json: missing (a Hugging Face model directory needs config.json)"
