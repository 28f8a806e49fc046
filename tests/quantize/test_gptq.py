"""GPTQ on the GGUF grid: exact packing, better than llama.cpp's quantizer, right in llama.cpp, resumable."""

from __future__ import annotations

import numpy as np
import pytest

from quantize_helpers import ASSETS, llama_logits

from gguf import GGMLQuantizationType as T

ALL_TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]
CALIB = ASSETS / "calibration" / "default.txt"
HELDOUT = ASSETS / "eval" / "heldout.txt"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: two OpenMP threads cost more than they give (and stall when the machine is shared)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _hessian(cols: int, seed: int, draw: int = 0):
    """H from correlated inputs with uneven column scales, like a real layer's activations; `draw`
    gives fresh inputs from the same distribution."""
    import torch

    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) / cols ** 0.5 + 0.5 * torch.eye(cols)
    scale = torch.rand(cols, generator=g).mul(3).add(0.1)
    X = torch.randn(1024, cols, generator=torch.Generator().manual_seed(1000 + draw)) @ mix * scale
    from belle.quantize.gptq import Hessian

    h = Hessian(cols, "cpu")
    h.add(X)
    return h.H, X


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_packed_bytes_decode_to_exactly_the_weights_gptq_computed_with(qtype):
    """gguf-py's dequantization of our bytes equals GPTQ's own weights bit for bit (natural and act-order)."""
    import gguf
    import torch

    from belle.quantize.ggml_pack import pack
    from belle.quantize.gptq import gptq_quantize, rtn_quantize

    H, _ = _hessian(512, 1)
    W = torch.randn(12, 512, generator=torch.Generator().manual_seed(2)) * 0.05
    W[3, 40:72] = 0  # an all-zero block: a zero scale must still pack and decode
    for res in (gptq_quantize(W, H, qtype), gptq_quantize(W, H, qtype, act_order=True), rtn_quantize(W, qtype)):
        packed = pack(res.block_codes(qtype))
        decoded = gguf.quants.dequantize(packed, qtype)
        assert np.array_equal(_bits(decoded), _bits(res.weight.numpy())), qtype.name


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_gptq_output_error_is_below_weighted_round_to_nearest_on_held_apart_inputs(qtype):
    import torch

    from belle.quantize.gptq import gptq_quantize, rtn_quantize

    H, _ = _hessian(512, 3)
    _, X = _hessian(512, 3, draw=1)  # same input distribution, fresh draws: held apart from H's
    W = torch.randn(64, 512, generator=torch.Generator().manual_seed(5)) * 0.05
    ref = X @ W.T

    def err(Q):
        return float(((X @ Q.T - ref) ** 2).sum() / (ref ** 2).sum())

    rtn = err(rtn_quantize(W, qtype).weight)
    weighted = err(rtn_quantize(W, qtype, torch.diag(H)).weight)
    gptq = err(gptq_quantize(W, H, qtype).weight)
    act = err(gptq_quantize(W, H, qtype, act_order=True).weight)
    assert gptq < 0.9 * weighted and act < gptq and weighted <= rtn * 1.001, (rtn, weighted, gptq, act)


# --- whole models ------------------------------------------------------------------------------

def _gptq(tiny_model, tmp_path, kind, recipe, **kw):
    from belle.quantize.gptq_run import GPTQSettings, quantize_gptq

    settings = GPTQSettings(recipe, samples=16, seqlen=128, **kw.pop("settings", {}))
    return quantize_gptq(tiny_model(kind), tmp_path / f"{kind}.{recipe}.gptq.gguf", settings, CALIB, **kw)


def _tensors(path):
    """GGUF tensor name -> dequantized float32 [rows, cols] (gguf-py)."""
    import gguf

    reader = gguf.GGUFReader(path)
    out = {}
    for t in reader.tensors:
        a = gguf.quants.dequantize(np.array(t.data), t.tensor_type)
        out[t.name] = a.reshape(a.shape[0], -1) if a.ndim > 1 else a
    return out, {t.name: t.tensor_type.name for t in reader.tensors}


def _heldout_inputs(model_dir, n_ctx=64, n=6):
    """Inputs of every linear of the original model on held-out text, by GGUF weight name."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from belle.quantize.convert import plan_tensors
    from belle.quantize.arch import get_arch
    from belle.quantize.hf_reader import HFCheckpoint
    from belle.quantize.textdata import chunk_tokens

    with HFCheckpoint(model_dir) as ckpt:
        names = {t.hf_name: t.gguf_name for t in plan_tensors(ckpt, get_arch(ckpt.config), "f32")}
        strip = get_arch(ckpt.config).strip_prefix
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    ids = AutoTokenizer.from_pretrained(str(model_dir)).encode(HELDOUT.read_text(encoding="utf-8"),
                                                                  add_special_tokens=False)
    inputs: dict[str, list] = {}
    hooks = []
    for name, mod in model.named_modules():
        key = f"{name}.weight"
        key = key if key in names else key[len(strip):] if key.startswith(strip) else key
        if isinstance(mod, torch.nn.Linear) and key in names:
            hooks.append(mod.register_forward_pre_hook(
                lambda _m, a, g=names[key]: inputs.setdefault(g, []).append(a[0].reshape(-1, a[0].shape[-1]))))
    with torch.no_grad():
        for chunk in chunk_tokens(ids, n_ctx, None, n):
            model(torch.tensor([chunk]))
    for h in hooks:
        h.remove()
    return {k: torch.cat(v).numpy().astype(np.float64) for k, v in inputs.items()}


@pytest.mark.parametrize("kind", ["llama-wide", "qwen2-wide", "bloom-wide"])
def test_gptq_beats_imatrix_beats_rtn_on_layer_outputs(kind, tiny_model, tmp_path):
    """Per linear, on held-out text: ||X W^T - X Q^T||, GPTQ <= llama.cpp imatrix <= llama.cpp rtn (Q4_K_M)."""
    from belle.quantize import imatrix as imx
    from belle.quantize.convert import convert
    from belle.quantize.llama_quantize import quantize
    from belle.quantize.textdata import load_text

    src = tiny_model(kind)
    f32 = convert(src, tmp_path / "f32.gguf", "f32")
    im = imx.compute(f32, load_text(CALIB), n_ctx=128, max_chunks=16)  # what GPTQ sees
    rtn = quantize(f32, tmp_path / "rtn.gguf", "Q4_K_M").path
    imq = quantize(f32, tmp_path / "imatrix.gguf", "Q4_K_M", imatrix=im.means()).path
    gptq = _gptq(tiny_model, tmp_path, kind, "Q4_K_M").path

    ref, _ = _tensors(f32)
    files = {m: _tensors(p) for m, p in (("rtn", rtn), ("imatrix", imq), ("gptq", gptq))}
    assert files["gptq"][1] == files["imatrix"][1]  # the same type for every tensor: a fair comparison
    X = _heldout_inputs(src)
    total = {m: 0.0 for m in files}
    wins = 0
    for name, x in X.items():
        y = x @ ref[name].T
        errs = {m: float(((x @ w[name].T - y) ** 2).sum() / (y ** 2).sum()) for m, (w, _) in files.items()}
        for m in total:
            total[m] += errs[m]
        wins += errs["gptq"] <= errs["imatrix"]
    assert total["gptq"] < total["imatrix"] < total["rtn"], total
    assert wins >= 0.8 * len(X), (wins, len(X))
    assert "quantize.gptq.damp" in __import__("gguf").GGUFReader(gptq).fields


def test_llama_cpp_runs_exactly_the_gptq_weights(tiny_model, tmp_path):
    """llama.cpp's own dequantization of the GPTQ GGUF, run in F32, gives the logits of a torch forward
    with GPTQ's weights; and the quantized file itself runs close to them."""
    import torch
    from transformers import AutoModelForCausalLM

    from belle.quantize.ggml_pack import dequantize
    from belle.quantize.gptq_run import _load_codes
    from belle.quantize.llama_quantize import dequantize_to_f32

    report = _gptq(tiny_model, tmp_path, "llama-wide", "Q4_K_M", keep_work=True)
    work = report.path.with_name(report.path.name + ".gptq")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model("llama-wide")), dtype=torch.float32).eval()
    params = dict(model.named_parameters())
    loaded = 0
    for f in sorted(work.glob("*.npz")):
        for name, bc in _load_codes(f).items():
            with torch.no_grad():
                params[name].copy_(torch.from_numpy(dequantize(bc)))
            loaded += 1
    assert loaded == 16  # token embedding, 7 linears x 2 blocks, output head
    ids = list(range(3, 60))
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].numpy()
    f32 = dequantize_to_f32(report.path, tmp_path / "deq.f32.gguf")
    got = llama_logits(f32, ids)
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-4
    quant = llama_logits(report.path, ids)  # llama.cpp's quantized kernels (8-bit activations)
    assert np.abs(quant - want).mean() / np.abs(want).mean() < 0.05


def test_interrupted_run_resumes_to_the_same_file(tiny_model, tmp_path):
    from belle.quantize.gptq_run import GPTQSettings, quantize_gptq

    src = tiny_model("llama-wide")
    settings = GPTQSettings("Q4_0", samples=4, seqlen=64)
    whole = quantize_gptq(src, tmp_path / "whole.gguf", settings, CALIB)

    out = tmp_path / "resumed.gguf"

    def stop_after_first_block(done, total, what):
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        quantize_gptq(src, out, settings, CALIB, progress=stop_after_first_block)
    work = out.with_name(out.name + ".gptq")
    assert not out.exists() and not list(tmp_path.glob("resumed.gguf.part"))
    assert sorted(p.name for p in work.glob("*.npz")) == ["blk.0.npz", "embed.npz"]
    report = quantize_gptq(src, out, settings, CALIB)
    assert report.resumed_blocks == 1 and not work.exists()
    assert out.read_bytes() == whole.path.read_bytes()

    # a different setting never reuses another run's blocks
    with pytest.raises(KeyboardInterrupt):
        quantize_gptq(src, tmp_path / "other.gguf", settings, CALIB, progress=stop_after_first_block)
    other = GPTQSettings("Q4_0", samples=4, seqlen=64, damp=0.05)
    assert quantize_gptq(src, tmp_path / "other.gguf", other, CALIB).resumed_blocks == 0


# --- bad input: one line, exit 1, nothing left behind ------------------------------------------

def _cli_error(capsys, *argv) -> str:
    from belle.app.cli import main

    capsys.readouterr()
    assert main(list(argv)) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("belle: error: ") and "\n" not in err, err
    return err


def test_gptq_bad_input(tiny_model, default_model_path, tmp_path, capsys):
    import json
    import shutil

    src = tiny_model("llama-wide")
    out = tmp_path / "o.gguf"
    base = ["quantize", str(src), "-o", str(out), "--method", "gptq"]
    err = _cli_error(capsys, *base, "--type", "Q3_K_M")  # a llama.cpp recipe GPTQ has no grid for
    assert "Q3_K_M" in err and "choose one of" in err
    err = _cli_error(capsys, *base, "--type", "Q4_0", "--chunks", "500", "--ctx", "128")
    assert "default.txt" in err and "fewer than the 500 asked for" in err
    err = _cli_error(capsys, "quantize", str(default_model_path), "-o", str(out), "--method", "gptq", "--type", "Q4_0")
    assert "already quantized (Q4_1" in err and default_model_path.name in err
    odd = tmp_path / "gpt2"
    shutil.copytree(src, odd)
    cfg = json.loads((odd / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (odd / "config.json").write_text(json.dumps(cfg))
    err = _cli_error(capsys, "quantize", str(odd), "-o", str(out), "--method", "gptq", "--type", "Q4_0")
    assert "model_type 'gpt2' is not supported" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("too short", encoding="utf-8")
    err = _cli_error(capsys, *base, "--type", "Q4_0", "--calib", str(empty))
    assert "empty.txt" in err and "shorter than one sample" in err
    assert not out.exists() and not list(tmp_path.glob("o.gguf*"))  # no output, no .part, no work folder
