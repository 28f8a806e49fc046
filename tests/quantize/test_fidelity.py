"""`belle eval fidelity`: llama.cpp perplexity-tool protocol, KL divergence, top-1 agreement."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from quantize_helpers import ASSETS


def test_reference_against_itself_is_perfect(tiny_gguf, tmp_path):
    from belle.quantize.fidelity import evaluate

    ref = tiny_gguf("llama-bpe")
    twin = tmp_path / "twin.gguf"
    shutil.copy(ref, twin)
    report = evaluate(ref, [twin], (ASSETS / "eval" / "heldout.txt").read_text(), n_ctx=64, max_chunks=4)
    row = report.candidates[0]
    assert report.n_chunks == 4 and report.n_scored == 4 * 31
    assert row.mean_kld < 1e-6 and row.kld_p99 < 1e-5 and row.top1_agree_pct == 100.0
    assert row.ppl == pytest.approx(report.reference.ppl, rel=1e-6)
    assert row.bpw == pytest.approx(report.reference.bpw) and 31.0 < row.bpw <= 32.0


def test_perplexity_follows_llama_cpp_protocol(tiny_model, tiny_gguf):
    """Same number from transformers with the protocol written out: 64-token chunks, second half scored."""
    import torch
    from transformers import AutoModelForCausalLM

    from belle.quantize.fidelity import evaluate, log_softmax
    from belle.quantize.llama_runner import LlamaRunner

    text = (ASSETS / "eval" / "heldout.txt").read_text()
    report = evaluate(tiny_gguf("llama-bpe"), [], text, n_ctx=64, max_chunks=3)
    with LlamaRunner(tiny_gguf("llama-bpe"), 64) as runner:
        ids = runner.tokenize(text)
        assert not runner.add_bos
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model("llama-bpe")), dtype=torch.float32).eval()
    nll = []
    for c in range(3):
        chunk = ids[c * 64:(c + 1) * 64]
        with torch.no_grad():
            lp = log_softmax(model(torch.tensor([chunk])).logits[0].numpy())
        nll += [-lp[j, chunk[j + 1]] for j in range(32, 63)]
    assert report.reference.ppl == pytest.approx(float(np.exp(np.mean(nll))), rel=2e-3)


def test_more_bits_stay_closer(tiny_gguf, tmp_path):
    from belle.quantize.fidelity import evaluate
    from belle.quantize.llama_quantize import quantize

    ref = tiny_gguf("llama-wide")
    q8 = quantize(ref, tmp_path / "q8.gguf", "Q8_0").path
    q2 = quantize(ref, tmp_path / "q2.gguf", "Q2_K").path
    report = evaluate(ref, [q8, q2], (ASSETS / "eval" / "heldout.txt").read_text(), n_ctx=64, max_chunks=4)
    r8, r2 = report.candidates
    assert r8.mean_kld < r2.mean_kld and r8.kld_p99 < r2.kld_p99
    assert r8.top1_agree_pct > r2.top1_agree_pct
    assert 8.4 < r8.bpw < 9.0 and r2.bpw < 4.0
    assert r8.kld_p99 >= r8.mean_kld * 0.99  # a 99th percentile above the mean for a skewed distribution


def test_cli_prints_table_and_writes_json(tiny_gguf, tmp_path, capsys):
    from belle.app.cli import main
    from belle.quantize.llama_quantize import quantize

    ref = tiny_gguf("llama-wide")
    q4 = quantize(ref, tmp_path / "q4.gguf", "Q4_0").path
    text = tmp_path / "held.jsonl"
    records = [{"instruction": line, "output": "好的。"} for line in
               (ASSETS / "eval" / "heldout.txt").read_text().splitlines() if line.strip()]
    text.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records), encoding="utf-8")
    out = tmp_path / "fid.json"
    assert main(["eval", "fidelity", "--ref", str(ref), str(q4), "--text", str(text), "--ctx", "64",
                 "--chunks", "3", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "q4.gguf" in printed and "mean KLD" in printed and "3 chunks of 64 tokens" in printed
    data = json.loads(out.read_text())
    assert data["n_chunks"] == 3 and data["candidates"][0]["model"] == "q4.gguf"
    assert data["candidates"][0]["mean_kld"] > 0 and data["reference"]["mean_kld"] is None
