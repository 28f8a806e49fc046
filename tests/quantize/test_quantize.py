"""llama.cpp's quantizer through the binding, and the importance matrix we compute for it."""

from __future__ import annotations

import numpy as np
import pytest

from quantize_helpers import ASSETS, llama_logits

from belle.quantize.constants import QUANT_TYPES, quant_ftype

# the type llama.cpp's recipes give blk.N.attn_q.weight (src/llama-quant.cpp, llama_tensor_get_type)
ATTN_Q_TYPE = {"Q8_0": "Q8_0", "Q6_K": "Q6_K", "Q5_K_M": "Q5_K", "Q4_K_M": "Q4_K", "Q4_K_S": "Q4_K",
               "Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0", "Q5_1": "Q5_1", "Q3_K_M": "Q3_K", "Q2_K": "Q2_K"}


def tensor_types(path):
    import gguf

    reader = gguf.GGUFReader(path)
    return {t.name: t.tensor_type.name for t in reader.tensors}, reader.fields["general.file_type"].contents()


def test_every_rtn_type(tiny_gguf, tmp_path):
    from belle.quantize.llama_quantize import quantize

    src = tiny_gguf("llama-wide")
    ids = list(range(3, 60))
    ref = llama_logits(src, ids)
    errors = {}
    for qtype in QUANT_TYPES:
        result = quantize(src, tmp_path / f"{qtype}.gguf", qtype)
        types, ftype = tensor_types(result.path)
        assert ftype == quant_ftype(qtype), qtype
        assert types["blk.0.attn_q.weight"] == ATTN_Q_TYPE[qtype], qtype
        assert types["blk.0.attn_norm.weight"] == "F32"
        assert result.size_bytes < src.stat().st_size
        got = llama_logits(result.path, ids)
        errors[qtype] = float(np.abs(got - ref).mean() / np.abs(ref).mean())
    # more bits, less error: the recipes are what they claim to be
    assert errors["Q8_0"] < errors["Q6_K"] < errors["Q4_K_M"] < errors["Q3_K_M"] < errors["Q2_K"], errors
    assert errors["Q8_0"] < 0.1 and errors["Q5_K_M"] < errors["Q4_0"] < errors["Q2_K"], errors


def test_quantize_refuses_existing_output_and_non_gguf(tiny_gguf, tmp_path):
    from belle.app.errors import BelleError, ModelFileError
    from belle.quantize.llama_quantize import quantize

    out = tmp_path / "q.gguf"
    out.write_bytes(b"keep me")
    with pytest.raises(BelleError, match="already exists"):
        quantize(tiny_gguf("llama-wide"), out, "Q4_0")
    assert out.read_bytes() == b"keep me"
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a model at all")
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        quantize(bogus, tmp_path / "x.gguf", "Q4_0")


def _calibration_chunks(model_dir, n_ctx, n):
    from transformers import AutoTokenizer

    from belle.quantize.textdata import chunk_tokens

    text = (ASSETS / "calibration" / "default.txt").read_text(encoding="utf-8")
    ids = AutoTokenizer.from_pretrained(str(model_dir)).encode(text, add_special_tokens=False)
    return chunk_tokens(ids, n_ctx, None, n)


@pytest.mark.parametrize("kind,arch,prefix", [("llama-bpe", "LLAMA", ""), ("qwen2", "QWEN2", ""),
                                              ("bloom", "BLOOM", "transformer.")])
def test_llama_cpp_imatrix_equals_torch_hooks(kind, arch, prefix, tiny_model, tiny_gguf):
    """Our in-llama.cpp collector (cb_eval) against an independent one: hooks on transformers' nn.Linear."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    from belle.quantize.imatrix import collect_llama_cpp, collect_torch

    chunks = _calibration_chunks(tiny_model(kind), 64, 3)
    assert len(chunks) == 3
    ours = collect_llama_cpp(tiny_gguf(kind), chunks)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model(kind)), dtype=torch.float32).eval()
    theirs = collect_torch(model, getattr(gguf.MODEL_ARCH, arch), 2, chunks, strip_prefix=prefix)
    assert set(ours.sums) == set(theirs.sums) and len(ours.sums) >= 8
    for name in ours.sums:
        assert ours.counts[name] == theirs.counts[name] == 3 * 64, name
        a, b = ours.means()[name], theirs.means()[name]
        assert np.abs(a - b).max() <= 1e-3 * np.abs(b).max(), name
    assert ours.chunk_count == 3


def test_imatrix_gguf_format_round_trip(tmp_path):
    import gguf

    from belle.quantize.imatrix import Imatrix, load_gguf, save_gguf

    im = Imatrix(chunk_count=2, chunk_size=512, datasets=["cal.txt"])
    rng = np.random.default_rng(0)
    im.add("blk.0.attn_q.weight", rng.normal(size=(512, 8)).astype(np.float32))
    im.add("blk.0.attn_q.weight", rng.normal(size=(512, 8)).astype(np.float32))
    im.add("blk.0.ffn_down.weight", rng.normal(size=(1024, 16)).astype(np.float32))
    path = save_gguf(im, tmp_path / "imatrix.gguf")
    reader = gguf.GGUFReader(path)
    # what tools/imatrix writes: general.type, three imatrix.* keys, <name>.in_sum2 [n_in, 1], <name>.counts [1, 1]
    assert reader.fields["general.type"].contents() == "imatrix"
    assert reader.fields["imatrix.chunk_count"].contents() == 2
    assert reader.fields["imatrix.chunk_size"].contents() == 512
    assert reader.fields["imatrix.datasets"].contents() == ["cal.txt"]
    assert "general.architecture" not in reader.fields
    shapes = {t.name: (t.shape.tolist(), t.tensor_type.name) for t in reader.tensors}
    assert shapes["blk.0.attn_q.weight.in_sum2"] == ([8, 1], "F32")
    assert shapes["blk.0.attn_q.weight.counts"] == ([1, 1], "F32")
    back = load_gguf(path)
    assert back.counts == {"blk.0.attn_q.weight": 1024, "blk.0.ffn_down.weight": 1024}
    for name in im.sums:
        np.testing.assert_allclose(back.means()[name], im.means()[name], rtol=1e-6)


def test_imatrix_reaches_the_quantizer(tiny_gguf, tmp_path):
    """An imatrix that weights one input column heavily must shrink that column's rounding error."""
    import gguf

    from belle.quantize.llama_quantize import quantize

    src = tiny_gguf("llama-wide")
    name = "blk.0.ffn_gate.weight"

    def column_errors(path):
        reader = gguf.GGUFReader(path)
        t = next(t for t in reader.tensors if t.name == name)
        w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(t.shape[::-1])  # [out, in]
        ref_t = next(t for t in gguf.GGUFReader(src).tensors if t.name == name)
        ref = np.array(ref_t.data).reshape(ref_t.shape[::-1])
        return np.abs(w - ref).mean(axis=0)

    n_in = 256
    weights = np.full(n_in, 1e-3, dtype=np.float32)
    weights[::32] = 1e3  # the first column of every Q4_0 block
    rtn = column_errors(quantize(src, tmp_path / "rtn.gguf", "Q4_0").path)
    imx = column_errors(quantize(src, tmp_path / "imx.gguf", "Q4_0", imatrix={name: weights}).path)
    assert imx[::32].mean() < 0.5 * rtn[::32].mean()


@pytest.mark.slow
def test_smollm2_imatrix_beats_rtn_on_heldout_text(smollm2_f32, tmp_path):
    from belle.quantize import imatrix as imx
    from belle.quantize.fidelity import evaluate
    from belle.quantize.llama_quantize import quantize
    from belle.quantize.textdata import load_text

    cal = ASSETS / "calibration" / "default.txt"
    im = imx.compute(smollm2_f32, load_text(cal), max_chunks=3, dataset=str(cal))
    assert im.chunk_count == 3 and len(im.sums) == 30 * 7  # q, k, v, o, gate, up, down per block
    assert all(c == 3 * 512 for c in im.counts.values())
    rtn = quantize(smollm2_f32, tmp_path / "rtn.gguf", "Q4_0")
    withim = quantize(smollm2_f32, tmp_path / "imatrix.gguf", "Q4_0", imatrix=im.means())
    report = evaluate(smollm2_f32, [rtn.path, withim.path], load_text(ASSETS / "eval" / "heldout.txt"), max_chunks=2)
    by_name = {row.model: row for row in report.candidates}
    assert by_name["imatrix.gguf"].mean_kld < by_name["rtn.gguf"].mean_kld
    assert by_name["imatrix.gguf"].ppl < by_name["rtn.gguf"].ppl


def test_cli_quantize_rtn_and_imatrix(tiny_gguf, tmp_path, capsys):
    """Through the real dispatcher: rtn, imatrix (computed and saved), then the saved imatrix reused."""
    from belle.app.cli import main
    from belle.quantize.imatrix import load_gguf

    src = str(tiny_gguf("llama-wide"))
    assert main(["quantize", src, "-o", str(tmp_path / "rtn.gguf"), "--type", "Q4_K_M"]) == 0
    assert main(["quantize", src, "-o", str(tmp_path / "im.gguf"), "--type", "Q4_K_M", "--method", "imatrix",
                 "--ctx", "64", "--chunks", "4"]) == 0
    out = capsys.readouterr().out
    assert "imatrix: 4 chunks of 64 tokens" in out and "im.imatrix.gguf" in out and "Q4_K_M, imatrix" in out
    saved = load_gguf(tmp_path / "im.imatrix.gguf")
    assert saved.chunk_count == 4 and all(c == 256 for c in saved.counts.values())
    assert main(["quantize", src, "-o", str(tmp_path / "again.gguf"), "--type", "Q4_K_M", "--method", "imatrix",
                 "--imatrix", str(tmp_path / "im.imatrix.gguf")]) == 0
    # same imatrix, same quantizer: identical files; and different from round-to-nearest
    assert (tmp_path / "again.gguf").read_bytes() == (tmp_path / "im.gguf").read_bytes()
    assert (tmp_path / "rtn.gguf").read_bytes() != (tmp_path / "im.gguf").read_bytes()
