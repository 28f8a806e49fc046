"""recipes.tensor_types against the ground truth: the types llama.cpp's own quantizer writes.

Every case quantizes a small F32 GGUF with llama.cpp and compares the type of every tensor in its
output with what tensor_types predicts from the input's names and shapes. Besides the tiny
Hugging Face models of conftest.py, GGUFs are written here directly (random weights, no tokenizer:
llama.cpp's quantizer reads only the hyperparameters and tensors) to reach what the tiny models
cannot: enough layers for the layer-dependent promotions, 80 layers for the 70B rule, a row width
that fits no block.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from belle.app.errors import BelleError, ModelFileError
from belle.quantize.recipes import GPTQ_TYPES, recipe_ftype, recipe_pure, tensor_types


def _tensors(path):
    """(name, numpy shape) of every tensor; GGUFReader gives ggml's order (ne[0] = columns first)."""
    import gguf

    return [(t.name, tuple(int(d) for d in t.shape[::-1])) for t in gguf.GGUFReader(path).tensors]


def _written(path):
    import gguf

    reader = gguf.GGUFReader(path)
    return {t.name: t.tensor_type for t in reader.tensors}, reader.fields["general.file_type"].contents()


def _arch(path) -> tuple[str, int]:
    import gguf

    reader = gguf.GGUFReader(path)
    arch = reader.fields["general.architecture"].contents()
    return arch, reader.fields[f"{arch}.block_count"].contents()


def _llama_cpp(src, dst, recipe, *, imatrix=None, output_type=None, embd_type=None):
    """llama.cpp's quantizer on `src` with `recipe` (as llama-quantize [--pure] would run it)."""
    from belle.quantize.llama_quantize import _run

    if output_type is None and embd_type is None:
        _run(src, dst, int(recipe_ftype(recipe)), imatrix=imatrix, nthread=2, pure=recipe_pure(recipe), what=recipe)
        return
    import gguf
    import llama_cpp

    # the type overrides are not part of our wrapper: set them on llama.cpp's params directly
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = 2
    params.ftype = int(recipe_ftype(recipe))
    params.pure = recipe_pure(recipe)
    if output_type:
        params.output_tensor_type = int(gguf.GGMLQuantizationType[output_type])
    if embd_type:
        params.token_embedding_type = int(gguf.GGMLQuantizationType[embd_type])
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise ModelFileError(f"llama.cpp refused to quantize {src} to {recipe} with {output_type=} {embd_type=}")


def _assert_same_types(src, tmp_path, recipes, *, imatrix=None, **overrides):
    arch, n_layer = _arch(src)
    tensors = _tensors(src)
    for recipe in recipes:
        dst = tmp_path / f"{src.stem}.{recipe}.gguf"
        _llama_cpp(src, dst, recipe, imatrix=imatrix, **overrides)
        theirs, ftype = _written(dst)
        ours = tensor_types(tensors, arch, n_layer, recipe, imatrix=imatrix is not None, **overrides)
        assert list(ours) == [name for name, _ in tensors]
        diff = {n: (theirs[n].name, ours[n].name) for n in theirs if theirs[n] != ours[n]}
        assert not diff, f"{recipe} {overrides}: tensor: (llama.cpp, ours) {diff}"
        assert ftype == int(recipe_ftype(recipe)), recipe
        dst.unlink()


def write_gguf(path, arch: str, n_layer: int, n_embd: int, *, n_ff: int | None = None, n_head: int = 4,
               n_head_kv: int | None = None, n_vocab: int = 64, tied: bool = False):
    """A random F32 GGUF with the tensor names and shapes our converter writes for `arch`."""
    import gguf

    n_ff = n_ff or 2 * n_embd
    n_head_kv = n_head_kv or n_head
    n_kv = n_embd // n_head * n_head_kv
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(64)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    def add(name, *shape):
        w.add_tensor(name, (0.05 * rng.standard_normal(shape)).astype(np.float32))

    add("token_embd.weight", n_vocab, n_embd)
    if not tied:
        add("output.weight", n_vocab, n_embd)
    if arch == "bloom":
        w.add_layer_norm_eps(1e-5)
        for part in ("token_embd_norm", "output_norm"):
            add(f"{part}.weight", n_embd)
            add(f"{part}.bias", n_embd)
        for i in range(n_layer):
            for name, shape in (("attn_norm", (n_embd,)), ("attn_qkv", (3 * n_embd, n_embd)),
                                ("attn_output", (n_embd, n_embd)), ("ffn_norm", (n_embd,)),
                                ("ffn_up", (n_ff, n_embd)), ("ffn_down", (n_embd, n_ff))):
                add(f"blk.{i}.{name}.weight", *shape)
                add(f"blk.{i}.{name}.bias", shape[0])
    else:
        w.add_layer_norm_rms_eps(1e-5)
        add("output_norm.weight", n_embd)
        for i in range(n_layer):
            p = f"blk.{i}."
            add(p + "attn_norm.weight", n_embd)
            add(p + "attn_q.weight", n_embd, n_embd)
            add(p + "attn_k.weight", n_kv, n_embd)
            add(p + "attn_v.weight", n_kv, n_embd)
            if arch == "qwen2":
                for kind, n in (("q", n_embd), ("k", n_kv), ("v", n_kv)):
                    add(p + f"attn_{kind}.bias", n)
            add(p + "attn_output.weight", n_embd, n_embd)
            add(p + "ffn_norm.weight", n_embd)
            add(p + "ffn_gate.weight", n_ff, n_embd)
            add(p + "ffn_up.weight", n_ff, n_embd)
            add(p + "ffn_down.weight", n_embd, n_ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# --- every recipe, the tiny Hugging Face models ---------------------------------------------------

@pytest.mark.parametrize("kind", ["llama-wide", "llama-bpe", "qwen2", "bloom"])
def test_every_recipe_matches_llama_cpp_on_tiny_models(kind, tiny_gguf, tmp_path):
    # llama-wide: rows of 256 (K-quants fit); llama-bpe / qwen2 / bloom: rows of 64 (fallbacks),
    # qwen2 and bloom with tied embeddings, bloom with a fused attn_qkv and rows of 256 in ffn_down
    _assert_same_types(tiny_gguf(kind), tmp_path, GPTQ_TYPES)


# --- layer-dependent rules, written GGUFs ---------------------------------------------------------

@pytest.mark.parametrize("arch,n_layer,n_embd,kw", [
    # use_more_bits over 8 layers; Q4_K_S's first 4 attn_v and first eighth of ffn_down
    ("llama", 8, 256, {"n_head_kv": 2, "n_ff": 256}),
    ("qwen2", 17, 64, {"tied": True}),  # n_layer/8 = 2, tied token_embd as the output, fallbacks everywhere
    ("bloom", 9, 64, {}),  # attn_qkv counted as attn_v; ffn_down rows of 128
])
def test_layer_promotions_match_llama_cpp(arch, n_layer, n_embd, kw, tmp_path):
    src = write_gguf(tmp_path / f"{arch}-{n_layer}.gguf", arch, n_layer, n_embd, **kw)
    _assert_same_types(src, tmp_path, GPTQ_TYPES)


def test_promoted_layers_are_the_documented_ones(tmp_path):
    """Guards the comparison itself: over 8 layers the promotions must actually differ by layer."""
    src = write_gguf(tmp_path / "l8.gguf", "llama", 8, 256, n_head_kv=2)
    types = tensor_types(_tensors(src), "llama", 8, "Q4_K_M")
    promoted = [i for i in range(8) if types[f"blk.{i}.attn_v.weight"].name == "Q6_K"]
    assert promoted == [0, 3, 6, 7]
    assert [i for i in range(8) if types[f"blk.{i}.ffn_down.weight"].name == "Q6_K"] == [0, 3, 6, 7]
    q4ks = tensor_types(_tensors(src), "llama", 8, "Q4_K_S")
    assert [q4ks[f"blk.{i}.attn_v.weight"].name for i in range(8)] == ["Q5_K"] * 4 + ["Q4_K"] * 4
    assert [q4ks[f"blk.{i}.ffn_down.weight"].name for i in range(8)] == ["Q5_K"] + ["Q4_K"] * 7


@pytest.mark.parametrize("arch,n_head_kv", [("llama", 2), ("llama", 4), ("qwen2", 4)])
def test_70b_rule_matches_llama_cpp(arch, n_head_kv, tmp_path):
    # 80 layers: llama.cpp calls a model 70B (attn_v Q4_K -> Q5_K) for llama with grouped-query
    # attention and for any qwen2; rows of 32, so Q5_K shows as its fallback Q5_1 (Q4_K as Q5_0)
    src = write_gguf(tmp_path / f"{arch}-80.gguf", arch, 80, 32, n_head_kv=n_head_kv, n_vocab=32)
    _assert_same_types(src, tmp_path, ("Q4_K_M", "Q4_K_S"))
    types = tensor_types(_tensors(src), arch, 80, "Q4_K_M")
    is_70b = arch == "qwen2" or n_head_kv != 4
    assert types["blk.11.attn_v.weight"].name == ("Q5_1" if is_70b else "Q5_0")  # layer 11: not use_more_bits


def test_imatrix_rule_matches_llama_cpp(tmp_path):
    # with an importance matrix llama.cpp gives Q4_0 / Q5_0 ffn_down Q4_1 / Q5_1 in the first eighth
    src = write_gguf(tmp_path / "l16.gguf", "llama", 16, 64)
    _assert_same_types(src, tmp_path, ("Q4_0", "Q5_0", "Q4_K_M"),
                       imatrix={"blk.0.ffn_down.weight": np.ones(128, dtype=np.float32)})
    types = tensor_types(_tensors(src), "llama", 16, "Q4_0", imatrix=True)
    assert [types[f"blk.{i}.ffn_down.weight"].name for i in range(3)] == ["Q4_1", "Q4_1", "Q4_0"]


def test_rows_no_block_fits(tmp_path):
    """Rows of 48: K-quants fall back past Q5_0 / Q5_1, and the legacy types directly, to F16."""
    src = write_gguf(tmp_path / "w48.gguf", "llama", 2, 48, n_ff=96)
    _assert_same_types(src, tmp_path, GPTQ_TYPES)
    tensors = _tensors(src)
    for recipe, ffn_down in (("Q4_0", "Q4_0"), ("Q8_0", "Q8_0"), ("Q4_K", "Q5_0"), ("Q6_K", "Q8_0")):
        types = tensor_types(tensors, "llama", 2, recipe)
        assert types["output.weight"].name == types["blk.0.attn_q.weight"].name == "F16", recipe
        assert types["blk.1.ffn_down.weight"].name == ffn_down, recipe  # rows of 96 fit blocks of 32


def test_type_without_fallback_is_refused_like_llama_cpp(tmp_path):
    # tied embeddings: token_embd takes --output-tensor-type through the fallback; NVFP4 has none
    src = write_gguf(tmp_path / "t96.gguf", "qwen2", 1, 96, tied=True)
    with pytest.raises(ModelFileError):
        _llama_cpp(src, tmp_path / "refused.gguf", "Q8_0", output_type="NVFP4")
    with pytest.raises(BelleError, match="no fallback for NVFP4"):
        tensor_types(_tensors(src), "qwen2", 1, "Q8_0", output_type="NVFP4")
    assert not (tmp_path / "refused.gguf").exists()


# --- --output-tensor-type / --token-embedding-type ------------------------------------------------

@pytest.mark.parametrize("arch,n_embd,tied,recipe,overrides", [
    ("llama", 256, False, "Q4_K_M", {"output_type": "Q8_0", "embd_type": "Q6_K"}),
    ("llama", 256, False, "Q4_K", {"output_type": "Q5_0"}),  # pure keeps token_embd at Q4_K
    ("llama", 64, False, "Q5_K_M", {"embd_type": "F16"}),
    # tied: token_embd takes the output type through the output rule, fallback included (Q6_K -> Q8_0)
    ("qwen2", 64, True, "Q4_K_M", {"output_type": "Q6_K"}),
    ("qwen2", 64, True, "Q4_0", {"output_type": "Q4_1", "embd_type": "Q8_0"}),  # embd_type wins
    ("qwen2", 64, True, "Q5_K", {"output_type": "Q8_0"}),  # pure: the tied token_embd ignores it
])
def test_type_overrides_match_llama_cpp(arch, n_embd, tied, recipe, overrides, tmp_path):
    src = write_gguf(tmp_path / "m.gguf", arch, 2, n_embd, tied=tied)
    _assert_same_types(src, tmp_path, (recipe,), **overrides)


def test_overrides_and_bad_arguments_raise():
    tensors = [("token_embd.weight", (64, 64)), ("output.weight", (64, 64)), ("output_norm.weight", (64,)),
               ("blk.0.attn_v.weight", (64, 64))]
    # an explicit type whose block does not fit the row: llama.cpp would abort, we raise
    with pytest.raises(BelleError, match="row width 64"):
        tensor_types(tensors, "llama", 1, "Q4_K_M", output_type="Q6_K")
    with pytest.raises(BelleError, match="not a GGML type"):
        tensor_types(tensors, "llama", 1, "Q4_K_M", embd_type="Q9_9")
    with pytest.raises(BelleError, match="choose one of"):
        tensor_types(tensors, "llama", 1, "Q3_K_M")
    with pytest.raises(BelleError, match="ported for"):
        tensor_types(tensors, "falcon", 1, "Q4_K_M")
    with pytest.raises(BelleError, match="mixture-of-experts"):
        tensor_types(tensors + [("blk.0.ffn_down_exps.weight", (8, 64, 256))], "llama", 1, "Q4_K_M")
    # type names in any case; with one layer, that layer's attn_v is promoted (Q6_K, rows of 64: Q8_0)
    types = tensor_types(tensors, "llama", 1, "Q4_K_M", output_type="q8_0", embd_type="F32")
    assert {n: t.name for n, t in types.items()} == {"token_embd.weight": "F32", "output.weight": "Q8_0",
                                                   "output_norm.weight": "F32", "blk.0.attn_v.weight": "Q8_0"}


def test_recipe_ftypes():
    assert {r: recipe_ftype(r).name for r in GPTQ_TYPES} == {
        "Q4_0": "MOSTLY_Q4_0", "Q4_1": "MOSTLY_Q4_1", "Q5_0": "MOSTLY_Q5_0", "Q5_1": "MOSTLY_Q5_1",
        "Q8_0": "MOSTLY_Q8_0", "Q4_K": "MOSTLY_Q4_K_S", "Q5_K": "MOSTLY_Q5_K_S", "Q6_K": "MOSTLY_Q6_K",
        "Q4_K_S": "MOSTLY_Q4_K_S", "Q4_K_M": "MOSTLY_Q4_K_M", "Q5_K_M": "MOSTLY_Q5_K_M"}
    assert [r for r in GPTQ_TYPES if recipe_pure(r)] == ["Q4_K", "Q5_K"]
