"""ggml_pack: our GGUF block bytes read back through gguf-py, and llama.cpp's own blocks repacked."""

from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

from belle.quantize.ggml_pack import SUPPORTED, BlockCodes, check, dequantize, pack, unpack

LEGACY = (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0)
CODE_RANGE = {T.Q4_0: (0, 15), T.Q4_1: (0, 15), T.Q4_K: (0, 15), T.Q5_0: (0, 31), T.Q5_1: (0, 31),
              T.Q5_K: (0, 31), T.Q6_K: (0, 63), T.Q8_0: (-128, 127)}


def random_f16(rng, shape):
    """Both signs, zeros of both signs, normal and subnormal magnitudes; small enough that no
    product overflows (an inf - inf NaN would make the bitwise comparison meaningless)."""
    x = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-6, 1, shape)).astype(np.float16)
    flat = x.reshape(-1)
    flat[::7] = 0.0
    flat[3::11] = -0.0
    flat[5::13] = np.float16(6e-8)  # the smallest float16 subnormal
    return x


def random_ints(rng, shape, lo, hi, dtype=np.int64):
    """Uniform over lo..hi with both extremes present in every row."""
    a = rng.integers(lo, hi + 1, size=shape, dtype=dtype)
    a[:, 0], a[:, -1] = lo, hi
    return a


def random_block_codes(qtype, rows, cols, rng) -> BlockCodes:
    n32, n256 = cols // 32, cols // 256
    codes = random_ints(rng, (rows, cols), *CODE_RANGE[qtype])
    if qtype in LEGACY:
        m = random_f16(rng, (rows, n32)) if qtype in (T.Q4_1, T.Q5_1) else None
        return BlockCodes(qtype, codes, random_f16(rng, (rows, n32)), m=m)
    if qtype == T.Q6_K:
        return BlockCodes(qtype, codes, random_f16(rng, (rows, n256)),
                          scales=random_ints(rng, (rows, cols // 16), -128, 127).astype(np.int8))
    return BlockCodes(qtype, codes, random_f16(rng, (rows, n256)), dmin=random_f16(rng, (rows, n256)),
                      scales=random_ints(rng, (rows, n32), 0, 63).astype(np.uint8),
                      mins=random_ints(rng, (rows, n32), 0, 63).astype(np.uint8))


def assert_same_bits(a: np.ndarray, b: np.ndarray):
    # Bitwise, -0.0 and +0.0 kept apart: dequantize does gguf-py's operations in gguf-py's order,
    # so even the sign of a zero must agree; np.array_equal would hide a wrong order that only
    # shows up as a flipped zero sign.
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
    diff = np.flatnonzero(a.view(np.uint32) != b.view(np.uint32))
    assert diff.size == 0, f"{diff.size} differ, first at {diff[0]}: {a.flat[diff[0]]} vs {b.flat[diff[0]]}"


def assert_same_codes(x: BlockCodes, y: BlockCodes):
    assert x.qtype == y.qtype
    for name in ("codes", "d", "m", "dmin", "scales", "mins"):
        a, b = getattr(x, name), getattr(y, name)
        assert (a is None) == (b is None), name
        if a is not None:
            if a.dtype == np.float16:
                assert np.array_equal(a.view(np.uint16), b.view(np.uint16)), name
            else:
                assert np.array_equal(a, b), name


@pytest.mark.parametrize("shape", [(3, 512), (1, 256)])
@pytest.mark.parametrize("qtype", SUPPORTED, ids=lambda t: t.name)
def test_pack_reads_back_through_gguf(qtype, shape):
    rng = np.random.default_rng([int(qtype), *shape])
    bc = random_block_codes(qtype, *shape, rng)
    packed = pack(bc)
    assert packed.dtype == np.uint8
    assert packed.shape == gguf.quant_shape_to_byte_shape(shape, qtype)
    assert_same_bits(gguf.quants.dequantize(packed, qtype), dequantize(bc))
    assert_same_codes(unpack(packed, qtype, shape[1]), bc)


@pytest.mark.parametrize("qtype", SUPPORTED, ids=lambda t: t.name)
def test_every_byte_is_a_field(qtype):
    """Any bytes at all unpack and repack to themselves: no bit of a block is left out of BlockCodes."""
    raw = np.random.default_rng(int(qtype)).integers(0, 256, (2, 3 * GGML_QUANT_SIZES[qtype][1]), dtype=np.uint8)
    assert np.array_equal(pack(unpack(raw, qtype)), raw)


def weights(rng, rows, cols):
    # per-row offsets and scales so the min-carrying formats see blocks that are not centred on 0
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    return w * rng.uniform(0.01, 2.0, (rows, 1)).astype(np.float32) + rng.normal(0, 0.5, (rows, 1)).astype(np.float32)


@pytest.mark.parametrize("qtype", LEGACY, ids=lambda t: t.name)
def test_gguf_quantizer_blocks_repack(qtype):
    rng = np.random.default_rng(int(qtype))
    raw = gguf.quants.quantize(weights(rng, 4, 512), qtype)
    bc = unpack(raw, qtype, 512)
    assert np.array_equal(pack(bc), raw)
    assert_same_bits(dequantize(bc), gguf.quants.dequantize(raw, qtype))


def ggml_base():
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llama_cpp is not installed")
    found = sorted(Path(spec.submodule_search_locations[0], "lib").glob("*ggml-base.*"))
    if not found:
        pytest.skip("no ggml-base library inside llama_cpp")
    lib = ctypes.CDLL(str(found[0]))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    return lib


def llama_quantize(lib, w: np.ndarray, qtype, imatrix: np.ndarray | None = None) -> np.ndarray:
    rows, cols = w.shape
    w = np.ascontiguousarray(w, dtype=np.float32)
    out = np.zeros(gguf.quant_shape_to_byte_shape(w.shape, qtype), dtype=np.uint8)
    # a no-op for these types (only the IQ grids need it), kept so any type could be passed
    lib.ggml_quantize_init(int(qtype))
    im = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    written = lib.ggml_quantize_chunk(int(qtype), w.ctypes.data, out.ctypes.data, 0, rows, cols,
                                      None if im is None else im.ctypes.data)
    assert written == out.nbytes
    return out


@pytest.mark.parametrize("use_imatrix", [False, True], ids=["ref", "imatrix"])
@pytest.mark.parametrize("qtype", SUPPORTED, ids=lambda t: t.name)
def test_llama_cpp_blocks_repack(qtype, use_imatrix):
    """llama.cpp's own quantizer (the reference one, and the imatrix search that takes other paths
    through make_qkx3 / make_qx_quants) gives blocks that unpack and repack byte for byte."""
    lib = ggml_base()
    rng = np.random.default_rng(100 + int(qtype))
    w = weights(rng, 3, 512)
    imatrix = rng.uniform(0.1, 10.0, 512) if use_imatrix else None
    raw = llama_quantize(lib, w, qtype, imatrix)
    bc = unpack(raw, qtype, 512)
    # the top bit of the code (the separate bit plane of Q5_*, the sign of Q8_0) is both set and
    # clear somewhere, so a misplaced plane would show
    lo, hi = CODE_RANGE[qtype]
    mid = (lo + hi + 1) // 2
    assert bc.codes.min() < mid <= bc.codes.max()
    assert np.array_equal(pack(bc), raw)
    got = dequantize(bc)
    assert_same_bits(got, gguf.quants.dequantize(raw, qtype))
    # and the codes mean the weights: within a few quantization steps of the input
    assert np.abs(got - w).max() < 0.5 * np.abs(w).max()


class TypeTraits(ctypes.Structure):
    # struct ggml_type_traits of the pinned llama.cpp
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool),
                ("to_float", ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)),
                ("from_float_ref", ctypes.c_void_p)]


@pytest.mark.parametrize("qtype", SUPPORTED, ids=lambda t: t.name)
def test_llama_cpp_dequantizes_the_same(qtype):
    """llama.cpp's own C dequantize_row_* reads our blocks as the very same float32 bits.

    This holds because its C does the same float32 products in the same order; a build that fused
    d * q - m into one FMA would differ here in the last bit without any packing error."""
    lib = ggml_base()
    lib.ggml_get_type_traits.restype = ctypes.POINTER(TypeTraits)
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    traits = lib.ggml_get_type_traits(int(qtype)).contents
    assert (traits.blck_size, traits.type_size) == GGML_QUANT_SIZES[qtype]
    bc = random_block_codes(qtype, 3, 512, np.random.default_rng(200 + int(qtype)))
    raw = np.ascontiguousarray(pack(bc))
    out = np.empty(bc.codes.shape, dtype=np.float32)
    traits.to_float(raw.ctypes.data, out.ctypes.data, out.size)
    assert_same_bits(out, dequantize(bc))


def test_check_rejects_bad_fields():
    rng = np.random.default_rng(7)
    bc = random_block_codes(T.Q4_K, 2, 256, rng)
    check(bc)

    bad = random_block_codes(T.Q4_K, 2, 256, rng)
    bad.codes[1, 5] = 16
    with pytest.raises(ValueError, match="codes"):
        check(bad)
    with pytest.raises(ValueError, match="codes"):
        pack(bad)

    bad = random_block_codes(T.Q4_K, 2, 256, rng)
    bad.scales[0, 3] = 64  # needs 7 bits
    with pytest.raises(ValueError, match="scales"):
        pack(bad)

    bad = random_block_codes(T.Q5_K, 2, 256, rng)
    bad.mins[1, 0] = 100
    with pytest.raises(ValueError, match="mins"):
        check(bad)

    q8 = random_block_codes(T.Q8_0, 1, 64, rng)
    q8.codes[0, 0] = -129
    with pytest.raises(ValueError, match="codes"):
        check(q8)

    with pytest.raises(ValueError, match="cols"):
        check(BlockCodes(T.Q6_K, np.zeros((1, 288), np.uint8), np.zeros((1, 1), np.float16),
                         scales=np.zeros((1, 18), np.int8)))
    with pytest.raises(ValueError, match="^d:"):
        check(BlockCodes(T.Q4_0, np.zeros((1, 32), np.uint8), np.zeros((1, 1), np.float32)))
    with pytest.raises(ValueError, match="^m:"):
        check(BlockCodes(T.Q4_1, np.zeros((1, 32), np.uint8), np.zeros((1, 1), np.float16)))
    with pytest.raises(ValueError, match="^m:"):
        check(BlockCodes(T.Q4_0, np.zeros((1, 32), np.uint8), np.zeros((1, 1), np.float16),
                         m=np.zeros((1, 1), np.float16)))
    with pytest.raises(ValueError, match="^scales:"):
        check(BlockCodes(T.Q6_K, np.zeros((1, 256), np.uint8), np.zeros((1, 1), np.float16),
                         scales=np.zeros((1, 8), np.int8)))
    with pytest.raises(ValueError, match="qtype"):
        check(BlockCodes(T.Q2_K, np.zeros((1, 256), np.uint8), np.zeros((1, 1), np.float16)))
