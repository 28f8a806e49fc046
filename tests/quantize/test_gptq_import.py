"""GPTQ checkpoints (AutoGPTQ layout, packed here from tiny models) imported as GGUF blocks.

Exactness is checked against gguf-py's own dequantization of the written file: the imported
tensors must decode to GPTQ's weights bit for bit (Q4_0, Q8_0) or up to the fp16 rounding of the
block min (Q4_1), and llama.cpp's logits must follow a transformers forward with GPTQ's weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from quantize_helpers import llama_logits

from belle.app.errors import ModelFileError

# --- building GPTQ checkpoints --------------------------------------------------------------------


def _is_block_linear(name: str, w: np.ndarray) -> bool:
    return w.ndim == 2 and name.endswith(".weight") and (".layers." in name or ".h." in name)


def gptq_grid(W: np.ndarray, bits: int, g_idx: np.ndarray, sym: bool, zmin: int):
    """GPTQ's quantizer (min/max per group and row, as its Quantizer.find_params), rounding to nearest.
    -> codes [out, in], scales fp16 [G, out], zeros [G, out]."""
    maxq = 2 ** bits - 1
    n_groups = int(g_idx.max()) + 1
    scales = np.empty((n_groups, W.shape[0]), np.float16)
    zeros = np.empty((n_groups, W.shape[0]), np.int64)
    for g in range(n_groups):
        cols = W[:, g_idx == g]
        xmin, xmax = np.minimum(cols.min(1), 0), np.maximum(cols.max(1), 0)
        if sym:
            xmax = np.maximum(-xmin, xmax)
            xmin = -xmax
        s = np.maximum((xmax - xmin) / maxq, 1e-4).astype(np.float16)
        scales[g] = s
        zeros[g] = (maxq + 1) // 2 if sym else np.clip(np.round(-xmin / s.astype(np.float32)), zmin, maxq)
    s_i, z_i = scales[g_idx].T.astype(np.float32), zeros[g_idx].T
    codes = np.clip(np.round(W / s_i) + z_i, 0, maxq).astype(np.int64)
    return codes, scales, zeros


def _pack(values: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """AutoGPTQ's packing: 32 / bits values per int32 along `axis`, the first in the lowest bits."""
    per = 32 // bits
    v = values.astype(np.uint32)
    if axis == 0:
        v = v.reshape(v.shape[0] // per, per, v.shape[1])
        out = np.zeros((v.shape[0], v.shape[2]), np.uint32)
        for k in range(per):
            out |= v[:, k, :] << np.uint32(bits * k)
    else:
        v = v.reshape(v.shape[0], v.shape[1] // per, per)
        out = np.zeros(v.shape[:2], np.uint32)
        for k in range(per):
            out |= v[:, :, k] << np.uint32(bits * k)
    return out.view(np.int32)


def make_gptq(src: Path, dst: Path, *, bits=4, group_size=128, sym=True, fmt="gptq", act_order=False,
              zmin=1, seed=0, config_file="config.json"):
    """A GPTQ checkpoint of the tiny model `src` -> (dst, {linear.weight: GPTQ's dequantized float32})."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors"))
    rng = np.random.default_rng(seed)
    tensors, refs = {}, {}
    for name, w in load_file(str(src / "model.safetensors")).items():
        if not _is_block_linear(name, w):
            tensors[name] = w
            continue
        prefix, n_in = name[: -len(".weight")], w.shape[1]
        natural = np.arange(n_in) // (n_in if group_size == -1 else group_size)
        g_idx = natural[rng.permutation(n_in)] if act_order else natural
        codes, scales, zeros = gptq_grid(w.astype(np.float32), bits, g_idx, sym, zmin)
        stored = (zeros - 1) & (2 ** bits - 1) if fmt == "gptq" else zeros
        tensors[f"{prefix}.qweight"] = _pack(codes.T, bits, axis=0)
        tensors[f"{prefix}.qzeros"] = _pack(stored, bits, axis=1)
        tensors[f"{prefix}.scales"] = scales
        tensors[f"{prefix}.g_idx"] = g_idx.astype(np.int32)
        refs[name] = (scales[g_idx].T.astype(np.float32) * (codes - zeros[g_idx].T)).astype(np.float32)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    qc = {"quant_method": "gptq", "bits": bits, "group_size": group_size, "sym": sym, "desc_act": act_order,
          "checkpoint_format": fmt}
    if config_file == "config.json":
        cfg = json.loads((dst / "config.json").read_text())
        cfg["quantization_config"] = qc
        (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    else:
        (dst / "quantize_config.json").write_text(json.dumps(qc))
    return dst, refs


# --- reading the result ---------------------------------------------------------------------------


def gguf_tensors(path: Path) -> dict:
    import gguf

    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def gguf_fields(path: Path) -> dict:
    import gguf

    fields = gguf.GGUFReader(path).fields
    return {k: f.contents() for k, f in fields.items() if k.startswith(("quantize.", "general.file"))}


def expected_and_got(gptq_dir: Path, out: Path, refs: dict):
    """[(gguf name, GPTQ's weights in the GGUF's row order, the GGUF's decoding, qtype)] per imported linear."""
    import gguf

    from belle.quantize.arch import get_arch
    from belle.quantize.convert import plan_tensors
    from belle.quantize.gptq_import import GPTQCheckpoint

    tensors = gguf_tensors(out)
    with GPTQCheckpoint(gptq_dir) as ckpt:
        arch = get_arch(ckpt.config)
        plan = {t.hf_name: t for t in plan_tensors(ckpt, arch, "f32")}
        cfg = ckpt.config
    rows = []
    for hf_name, ref in refs.items():
        t = plan[hf_name]
        g = tensors[t.gguf_name]
        got = gguf.quants.dequantize(np.asarray(g.data), g.tensor_type).reshape(ref.shape)
        # the converter reorders LLaMA's q/k rows and BLOOM's fused qkv rows: so must the reference
        rows.append((t.gguf_name, arch.transform(t.kind, ref, cfg), got, g.tensor_type.name))
    return rows


def hf_logits_with(model_dir: Path, weights: dict, ids: list[int]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    missing = model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    assert not missing.unexpected_keys
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


TEXT = "我们家楼下有一家小面馆，老板姓陈，每天早上六点就开门。 Hello, world! def f(x):\n    return x * 2\n"


# --- tests ------------------------------------------------------------------------------------------


def test_4bit_sym_g128_is_q4_0_bit_exact_and_llama_cpp_follows(tiny_model, tmp_path, capsys):
    from transformers import AutoTokenizer

    from belle.app.cli import main
    from belle.quantize.convert import convert
    from belle.quantize.gptq_import import GPTQCheckpoint

    src = tiny_model("llama-wide")
    d, refs = make_gptq(src, tmp_path / "gptq", bits=4, group_size=128, sym=True, fmt="gptq")
    out = tmp_path / "m.gguf"
    capsys.readouterr()
    assert main(["convert", str(d), "-o", str(out), "--outtype", "f32"]) == 0
    printed = capsys.readouterr().out
    assert "exact: 14 tensors as Q4_0; re-quantized: 0;" in printed, printed

    rows = expected_and_got(d, out, refs)
    assert len(rows) == 14
    for name, want, got, qtype in rows:
        assert qtype == "Q4_0", name
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), name  # bit for bit, signs of zero too
    f = gguf_fields(out)
    assert f["quantize.method"] == "gptq-import" and f["quantize.gptq.bits"] == 4
    assert f["quantize.gptq.group_size"] == 128 and f["quantize.gptq.sym"] and not f["quantize.gptq.act_order"]
    assert f["quantize.gptq_import.added_error_max"] == 0.0
    assert f["general.file_type"] == 2  # MOSTLY_Q4_0

    ids = AutoTokenizer.from_pretrained(str(src)).encode(TEXT, add_special_tokens=False)[:48]
    ref = hf_logits_with(src, refs, ids)
    got = llama_logits(out, ids)
    scale = np.abs(ref).max()
    # The same weights as F32 (the checkpoint view's dequantization through the plain converter):
    # llama.cpp then computes what transformers computes, so what remains below is the kernels'.
    f32 = convert(d, tmp_path / "f32.gguf", "f32", checkpoint=GPTQCheckpoint)
    assert np.abs(llama_logits(f32, ids) - ref).max() / scale < 1e-4
    # llama.cpp's CPU kernels round the activations to 8 bits against Q4_0 weights (measured 3.3e-2
    # max, 2.7e-2 RMS relative; identical weights in F32 give 2e-6)
    rel = np.abs(got - ref).max() / scale
    assert rel < 6e-2, f"max relative logit error {rel:.2e}"
    assert (got.argmax(-1) == ref.argmax(-1)).mean() > 0.9


def test_4bit_asym_g32_is_q4_1_within_fp16_rounding_of_the_min(tiny_model, tmp_path):
    from gguf import GGMLQuantizationType as T

    from belle.quantize.ggml_pack import unpack
    from belle.quantize.gptq_import import import_gptq

    d, refs = make_gptq(tiny_model("llama-wide"), tmp_path / "gptq", bits=4, group_size=32, sym=False,
                        fmt="gptq_v2", zmin=0)
    report = import_gptq(d, tmp_path / "m.gguf", "f32")
    assert len(report.exact) == 14 and not report.requantized and {t.qtype for t in report.exact} == {"Q4_1"}
    worst = 0.0
    for name, want, got, qtype in expected_and_got(d, tmp_path / "m.gguf", refs):
        assert qtype == "Q4_1"
        # per 32-block the error is one constant: fp16(m) - m, with m = -scale * zero exact in float32
        diff = (got - want).reshape(got.shape[0], -1, 32)
        assert (diff == diff[..., :1]).all(), name
        m_err = diff[..., 0]
        # the block min as the file stores it
        g = gguf_tensors(tmp_path / "m.gguf")[name]
        m16 = unpack(np.asarray(g.data), T.Q4_1).m
        half_ulp = np.spacing(np.abs(m16)).astype(np.float32) / 2
        assert (np.abs(m_err) <= half_ulp).all(), name
        worst = max(worst, float(np.abs(m_err).max()))
    assert 0 < worst < 5e-4  # measured 1.2e-4 = 2**-13: half an fp16 ulp of mins in [0.25, 0.5)
    assert 0 < report.max_error < 1e-3
    print(f"Q4_1 min rounding: max |diff| {worst:.3g}, relative RMS max {report.max_error:.3g} "
          f"mean {report.mean_error:.3g}")


def test_v1_and_v2_zero_formats_give_the_same_file(tiny_model, tmp_path):
    from belle.quantize.gptq_import import import_gptq

    src = tiny_model("qwen2")
    outs = []
    for fmt in ("gptq", "gptq_v2"):
        d, refs = make_gptq(src, tmp_path / fmt, bits=4, group_size=32, sym=False, fmt=fmt, zmin=1)
        outs.append(tmp_path / f"{fmt}.gguf")
        report = import_gptq(d, outs[-1], "f32")
        assert len(report.exact) == 14 and {t.qtype for t in report.exact} == {"Q4_1"}
    a, b = gguf_tensors(outs[0]), gguf_tensors(outs[1])
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(np.asarray(a[name].data), np.asarray(b[name].data)), name
    # the biases of q/k/v and everything else came through the converter untouched
    assert "blk.0.attn_q.bias" in a
    for name, want, got, _ in expected_and_got(d, outs[1], refs):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-3, err_msg=name)


def test_8bit_sym_is_q8_0_bit_exact_bloom_fused_qkv(tiny_model, tmp_path):
    from belle.quantize.gptq_import import import_gptq

    d, refs = make_gptq(tiny_model("bloom"), tmp_path / "gptq", bits=8, group_size=64, sym=True,
                        config_file="quantize_config.json")
    # AutoGPTQ's own file name, which Hugging Face's loaders would not look for
    (d / "model.safetensors").rename(d / "gptq_model-8bit-64g.safetensors")
    report = import_gptq(d, tmp_path / "m.gguf", "f16")
    assert len(report.exact) == 8 and {t.qtype for t in report.exact} == {"Q8_0"}
    assert report.max_error == 0.0
    for name, want, got, qtype in expected_and_got(d, tmp_path / "m.gguf", refs):
        assert qtype == "Q8_0" and np.array_equal(got.view(np.uint32), want.view(np.uint32)), name
    assert gguf_fields(tmp_path / "m.gguf")["general.file_type"] == 7  # MOSTLY_Q8_0


def test_act_order_and_group_48_are_requantized_with_a_small_reported_error(tiny_model, tmp_path):
    from belle.quantize.gptq_import import import_gptq

    d, refs = make_gptq(tiny_model("llama-wide"), tmp_path / "act", bits=4, group_size=128, sym=False,
                        act_order=True, zmin=0)
    report = import_gptq(d, tmp_path / "act.gguf", "f32")
    assert report.act_order and not report.exact and len(report.requantized) == 14
    assert {t.qtype for t in report.requantized} == {"Q4_1"}
    assert 0 < report.max_error < 0.12 and 0 < report.mean_error <= report.max_error
    for t, (_, want, got, _) in zip(sorted(report.tensors, key=lambda t: t.name),
                                    sorted(expected_and_got(d, tmp_path / "act.gguf", refs))):
        # the reported figure is the file's: recompute it from what gguf-py reads back
        rel = np.linalg.norm(got.astype(np.float64) - want) / np.linalg.norm(want.astype(np.float64))
        assert rel == pytest.approx(t.rel_rms, rel=1e-6), t.name
    f = gguf_fields(tmp_path / "act.gguf")
    assert f["quantize.gptq.act_order"] and f["quantize.gptq_import.requantized_tensors"] == 14
    assert f["quantize.gptq_import.added_error_max"] == pytest.approx(report.max_error, rel=1e-6)

    d48, _ = make_gptq(tiny_model("qwen2"), tmp_path / "g48", bits=4, group_size=48, sym=True)
    r48 = import_gptq(d48, tmp_path / "g48.gguf", "f32")
    assert not r48.exact and len(r48.requantized) == 14 and {t.qtype for t in r48.requantized} == {"Q4_0"}
    assert 0 < r48.max_error < 0.15
    print(f"re-quantization: act-order Q4_1 max {report.max_error:.4f} mean {report.mean_error:.4f}; "
          f"group 48 Q4_0 max {r48.max_error:.4f} mean {r48.mean_error:.4f}")


def _cli_error(capsys, d: Path, out: Path) -> str:
    from belle.app.cli import main

    capsys.readouterr()
    assert main(["convert", str(d), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("belle: error: ") and "\n" not in err, err
    assert not out.exists()
    return err


def test_bad_gptq_checkpoints_fail_with_one_line(tiny_model, tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    from belle.quantize.gptq_import import GPTQCheckpoint

    d, _ = make_gptq(tiny_model("qwen2"), tmp_path / "gptq", bits=4, group_size=32)
    st = d / "model.safetensors"
    tensors = load_file(str(st))

    without = {k: v for k, v in tensors.items() if k != "model.layers.1.mlp.up_proj.scales"}
    save_file(without, str(st))
    err = _cli_error(capsys, d, tmp_path / "o.gguf")
    assert "model.safetensors" in err and "model.layers.1.mlp.up_proj.scales missing" in err

    bad = dict(tensors)
    bad["model.layers.0.self_attn.o_proj.scales"] = tensors["model.layers.0.self_attn.o_proj.scales"][:1]
    save_file(bad, str(st))
    with pytest.raises(ModelFileError, match=r"o_proj\.scales has 1 groups, but 64 inputs in groups of 32 make 2"):
        GPTQCheckpoint(d)

    save_file(tensors, str(st))
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"]["bits"] = 3
    (d / "config.json").write_text(json.dumps(cfg))
    err = _cli_error(capsys, d, tmp_path / "o.gguf")
    assert "config.json" in err and "bits=3 is not supported" in err


def test_each_path_of_one_tensor():
    """The choice per tensor, on synthetic GPTQ tensors: exact where GGUF blocks hold the codes,
    re-quantized where they cannot, float where no block fits the row."""
    from belle.quantize.gptq_import import GPTQTensor, import_tensor, unpack_codes

    rng = np.random.default_rng(1)

    def tensor(bits, n_in, zeros_fn, group):
        n_out, maxq = 8, 2 ** bits - 1
        g_idx = np.arange(n_in) // group
        n_groups = int(g_idx.max()) + 1
        scales = rng.uniform(0.01, 0.02, (n_groups, n_out)).astype(np.float16)
        return GPTQTensor(rng.integers(0, maxq + 1, (n_out, n_in)).astype(np.uint8),
                          zeros_fn((n_groups, n_out)).astype(np.int16), scales.astype(np.float32), True, g_idx)

    # 4-bit with zeros 8 everywhere but one: Q4_1 (exact up to the min), not Q4_0
    def almost_sym(shape):
        z = np.full(shape, 8)
        z[0, 0] = 5
        return z

    bc, rec = import_tensor(tensor(4, 64, almost_sym, 64), 4, "a", "f32")
    assert (rec.mode, rec.qtype) == ("exact", "Q4_1") and rec.rel_rms < 1e-3
    # group -1 (one group per row) with a row of 96: Q4_0, exact
    bc, rec = import_tensor(tensor(4, 96, lambda s: np.full(s, 8), 96), 4, "b", "f32")
    assert (rec.mode, rec.qtype, rec.rel_rms) == ("exact", "Q4_0", 0.0)
    # 8-bit asym: Q8_0 cannot hold a zero other than 128, so re-quantized
    bc, rec = import_tensor(tensor(8, 64, lambda s: rng.integers(100, 156, s), 32), 8, "c", "f32")
    assert (rec.mode, rec.qtype) == ("requantized", "Q8_0") and 0 < rec.rel_rms < 0.01
    # a row of 40 fits no 32-block: GPTQ's weights stay float, rounded only by --outtype
    bc, rec = import_tensor(tensor(4, 40, lambda s: np.full(s, 8), 40), 4, "d", "f16")
    assert bc is None and (rec.mode, rec.qtype) == ("float", "F16") and 0 <= rec.rel_rms < 1e-3

    # unpacking is the inverse of AutoGPTQ's packing, along either axis
    codes = rng.integers(0, 16, (64, 24))
    assert np.array_equal(unpack_codes(_pack(codes, 4, axis=0), 4, axis=0), codes)
    assert np.array_equal(unpack_codes(_pack(codes, 4, axis=1), 4, axis=1), codes)
    codes8 = rng.integers(0, 256, (16, 8))
    assert np.array_equal(unpack_codes(_pack(codes8, 8, axis=0), 8, axis=0), codes8)
