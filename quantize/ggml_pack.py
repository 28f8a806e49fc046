"""Pack chosen integer codes and block scales into GGUF block bytes, and back.

A quantizer that picks its own codes and scales (GPTQ, for instance) needs them written exactly as
llama.cpp stores them. This module does only that: it packs a `BlockCodes` (one code per weight plus
the per-block float16 scales) into the bytes of a GGUF tensor, unpacks such bytes again, and
dequantizes with the same float32 operations, in the same order, as `gguf.quants.dequantize`, so the
result is bit-identical to what gguf-py reads back from the file.

Each row of a [rows, cols] matrix is a run of independent blocks along cols; a block is a fixed number
of bytes. All multi-byte numbers are little-endian. "q" is the stored code of one weight.

Blocks of 32 weights:

- Q4_0 (18 bytes): d (f16) | 16 bytes of nibbles. Byte j holds q[j] in its low nibble and q[j + 16]
  in its high nibble, so the first half of the block is all low nibbles. Weight = d * (q - 8).
- Q4_1 (20 bytes): d | m (f16) | nibbles as Q4_0. Weight = d * q + m.
- Q5_0 (22 bytes): d | qh (4 bytes) | nibbles. The low 4 bits of each code are laid out as Q4_0;
  bit j of qh, read as one little-endian uint32, is bit 4 of q[j]. Weight = d * (q - 16).
- Q5_1 (24 bytes): d | m | qh | nibbles. Weight = d * q + m.
- Q8_0 (34 bytes): d | 32 signed bytes. Weight = d * q.

Super-blocks of 256 weights (QK_K), made of sub-blocks with their own small integer scales:

- Q4_K (144 bytes): d | dmin (f16) | 12 bytes of scales | 128 bytes of nibbles. The eight 32-weight
  sub-blocks each have a 6-bit scale sc and a 6-bit min mn. Scale bytes 0-3 hold sc[0..3] in their
  low 6 bits, bytes 4-7 hold mn[0..3] likewise; bytes 8-11 hold the low 4 bits of sc[4..7] (low
  nibble) and of mn[4..7] (high nibble), and the top 2 bits of sc[4..7] / mn[4..7] sit in the
  otherwise unused top 2 bits of bytes 0-3 / 4-7. The nibbles come in four 32-byte groups, one per
  64 weights: byte l of group g has q[64g + l] low and q[64g + 32 + l] high, i.e. sub-block 2g uses
  the low nibbles and sub-block 2g + 1 the high ones (not the Q4_0 interleave of halves of 32).
  Weight = (d * sc) * q - (dmin * mn).
- Q5_K (176 bytes): d | dmin | 12 scale bytes as Q4_K | qh (32 bytes) | 128 bytes of nibbles as
  Q4_K. Bit i of qh byte l is bit 4 of q[32i + l]: one bit plane per sub-block.
- Q6_K (210 bytes): ql (128) | qh (64) | 16 signed scales | d (f16) - d is last here. Two halves of
  128 weights, each with 64 ql bytes and 32 qh bytes. In half h, ql byte l (0..63) holds the low 4
  bits of q[128h + l] (low nibble) and of q[128h + 64 + l] (high nibble); qh byte l (0..31) holds
  the top 2 bits of q[128h + 32k + l] at bit 2k, k = 0..3. Each 16 weights share one int8 scale.
  Weight = (d * sc) * (q - 32).

Every bit of every block is one of these fields, so `pack(unpack(b))` reproduces any bytes `b`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, QK_K
from gguf import GGMLQuantizationType as T

SUPPORTED = (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K)

# inclusive range of the stored code, per type
CODE_RANGE = {
    T.Q4_0: (0, 15), T.Q4_1: (0, 15), T.Q4_K: (0, 15),
    T.Q5_0: (0, 31), T.Q5_1: (0, 31), T.Q5_K: (0, 31),
    T.Q6_K: (0, 63), T.Q8_0: (-128, 127),
}

_WITH_MIN = (T.Q4_1, T.Q5_1)
_K_WITH_MIN = (T.Q4_K, T.Q5_K)


@dataclass
class BlockCodes:
    """One weight matrix on a GGUF grid: codes and scales exactly as stored."""
    qtype: T
    codes: np.ndarray            # [rows, cols] integer array; the stored number per weight:
                                 #   Q4_0, Q4_1, Q4_K: 0..15   Q5_0, Q5_1, Q5_K: 0..31   Q6_K: 0..63   Q8_0: -128..127
    d: np.ndarray                # float16. Q4_0/Q4_1/Q5_0/Q5_1/Q8_0: [rows, cols//32] (per 32-block);
                                 #          Q4_K/Q5_K/Q6_K: [rows, cols//256] (per super-block)
    m: np.ndarray | None = None  # float16 [rows, cols//32]: the block min of Q4_1 / Q5_1 (dequant = d*q + m)
    dmin: np.ndarray | None = None   # float16 [rows, cols//256]: Q4_K / Q5_K super-block min scale
    scales: np.ndarray | None = None  # Q4_K/Q5_K: uint8 [rows, cols//32] in 0..63 (6-bit sub-block scales)
                                      # Q6_K: int8 [rows, cols//16] (sub-blocks of 16)
    mins: np.ndarray | None = None   # Q4_K/Q5_K: uint8 [rows, cols//32] in 0..63 (6-bit sub-block mins)


# ----------------------------------------------------------------------------------------- check


def _expected_fields(qtype: T, rows: int, cols: int) -> dict[str, tuple[tuple[int, int], str]]:
    """field -> (shape, kind) where kind is 'f16', 'u6' (0..63) or 'i8' (-128..127)."""
    n32, n256 = cols // 32, cols // QK_K
    if qtype in (T.Q4_0, T.Q5_0, T.Q8_0):
        return {"d": ((rows, n32), "f16")}
    if qtype in _WITH_MIN:
        return {"d": ((rows, n32), "f16"), "m": ((rows, n32), "f16")}
    if qtype in _K_WITH_MIN:
        return {"d": ((rows, n256), "f16"), "dmin": ((rows, n256), "f16"),
                "scales": ((rows, n32), "u6"), "mins": ((rows, n32), "u6")}
    return {"d": ((rows, n256), "f16"), "scales": ((rows, cols // 16), "i8")}


def _check_int_range(name: str, a: np.ndarray, lo: int, hi: int) -> None:
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name}: expected an integer array, got dtype {a.dtype}")
    if a.size and (int(a.min()) < lo or int(a.max()) > hi):
        raise ValueError(f"{name}: values must lie in {lo}..{hi}, got {int(a.min())}..{int(a.max())}")


def check(bc: BlockCodes) -> None:
    """Raise ValueError, naming the field, if a shape, dtype or range does not fit bc.qtype."""
    if bc.qtype not in SUPPORTED:
        raise ValueError(f"qtype: {bc.qtype!r} is not one of {[t.name for t in SUPPORTED]}")
    codes = np.asarray(bc.codes)
    if codes.ndim != 2:
        raise ValueError(f"codes: expected a 2-D [rows, cols] array, got shape {codes.shape}")
    rows, cols = codes.shape
    block = GGML_QUANT_SIZES[bc.qtype][0]
    if cols % block:
        raise ValueError(f"codes: cols ({cols}) is not a multiple of the {bc.qtype.name} block ({block})")
    _check_int_range("codes", codes, *CODE_RANGE[bc.qtype])

    wanted = _expected_fields(bc.qtype, rows, cols)
    for name in ("d", "m", "dmin", "scales", "mins"):
        value = getattr(bc, name)
        if name not in wanted:
            if value is not None:
                raise ValueError(f"{name}: {bc.qtype.name} has no such field; leave it None")
            continue
        shape, kind = wanted[name]
        if value is None:
            raise ValueError(f"{name}: required for {bc.qtype.name}")
        value = np.asarray(value)
        if value.shape != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {value.shape}")
        if kind == "f16":
            # float16 exactly: a float32 scale would be rounded on packing and dequantize would lie
            if value.dtype != np.float16:
                raise ValueError(f"{name}: expected float16, got dtype {value.dtype}")
        elif kind == "u6":
            _check_int_range(name, value, 0, 63)
        else:
            _check_int_range(name, value, -128, 127)


# ------------------------------------------------------------------------------------------ pack


def _f16_bytes(a: np.ndarray, rows: int, nb: int) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float16).view(np.uint8).reshape(rows, nb, 2)


def _nibbles_halves(q: np.ndarray) -> np.ndarray:
    """[..., 32] codes -> [..., 16] bytes: q[j] low, q[j + 16] high (Q4_0 .. Q5_1)."""
    return (q[..., :16] & 0x0F) | ((q[..., 16:] & 0x0F) << 4)


def _nibbles_k(q: np.ndarray) -> np.ndarray:
    """[..., 256] codes -> [..., 128] bytes: per 64 weights, q[l] low and q[32 + l] high (Q4_K, Q5_K)."""
    q = q.reshape(*q.shape[:-1], 4, 2, 32)
    out = (q[..., 0, :] & 0x0F) | ((q[..., 1, :] & 0x0F) << 4)
    return out.reshape(*q.shape[:-3], 128)


def _bit4_plane_32(q: np.ndarray) -> np.ndarray:
    """[..., 32] codes -> [..., 4] bytes: bit j of the little-endian uint32 is bit 4 of q[j]."""
    return np.packbits((q >> 4) & 1, axis=-1, bitorder="little")


def _scales_k(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """[..., 8] 6-bit scales and mins -> [..., 12] bytes (Q4_K, Q5_K)."""
    out = np.empty((*sc.shape[:-1], 12), dtype=np.uint8)
    out[..., 0:4] = sc[..., :4] | ((sc[..., 4:] >> 4) << 6)
    out[..., 4:8] = mn[..., :4] | ((mn[..., 4:] >> 4) << 6)
    out[..., 8:12] = (sc[..., 4:] & 0x0F) | ((mn[..., 4:] & 0x0F) << 4)
    return out


def pack(bc: BlockCodes) -> np.ndarray:
    """uint8 [rows, cols // block_size * type_size]: the GGUF tensor bytes (what
    GGUFWriter.add_tensor(..., raw_dtype=qtype) takes)."""
    check(bc)
    qtype = bc.qtype
    rows, cols = np.shape(bc.codes)
    block, type_size = GGML_QUANT_SIZES[qtype]
    nb = cols // block
    out = np.empty((rows, nb, type_size), dtype=np.uint8)
    # at most one uint8 copy of the codes (none if they are uint8 already); Q8_0's signed codes
    # are stored as their two's-complement bytes
    if qtype == T.Q8_0:
        q = np.asarray(bc.codes).astype(np.int8, copy=False).view(np.uint8).reshape(rows, nb, block)
    else:
        q = np.asarray(bc.codes).astype(np.uint8, copy=False).reshape(rows, nb, block)

    if qtype in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0):
        out[..., 0:2] = _f16_bytes(bc.d, rows, nb)
        at = 2
        if qtype in _WITH_MIN:
            out[..., 2:4] = _f16_bytes(bc.m, rows, nb)
            at = 4
        if qtype == T.Q8_0:
            out[..., at:] = q
        else:
            if qtype in (T.Q5_0, T.Q5_1):
                out[..., at:at + 4] = _bit4_plane_32(q)
                at += 4
            out[..., at:] = _nibbles_halves(q)
    elif qtype in _K_WITH_MIN:
        out[..., 0:2] = _f16_bytes(bc.d, rows, nb)
        out[..., 2:4] = _f16_bytes(bc.dmin, rows, nb)
        sc = np.asarray(bc.scales).astype(np.uint8).reshape(rows, nb, 8)
        mn = np.asarray(bc.mins).astype(np.uint8).reshape(rows, nb, 8)
        out[..., 4:16] = _scales_k(sc, mn)
        at = 16
        if qtype == T.Q5_K:
            # [.., 8 sub-blocks, 32] -> [.., 32, 8]: byte l gathers bit 4 of q[32i + l] at bit i
            planes = ((q >> 4) & 1).reshape(rows, nb, 8, 32).transpose(0, 1, 3, 2)
            out[..., 16:48] = np.packbits(planes, axis=-1, bitorder="little")[..., 0]
            at = 48
        out[..., at:] = _nibbles_k(q)
    else:  # Q6_K
        h = q.reshape(rows, nb, 2, 2, 64)  # [half, low/high nibble, l]
        out[..., 0:128] = ((h[..., 0, :] & 0x0F) | ((h[..., 1, :] & 0x0F) << 4)).reshape(rows, nb, 128)
        top = (q >> 4).reshape(rows, nb, 2, 4, 32)  # [half, k, l]
        qh = top[..., 0, :] | (top[..., 1, :] << 2) | (top[..., 2, :] << 4) | (top[..., 3, :] << 6)
        out[..., 128:192] = qh.reshape(rows, nb, 64)
        out[..., 192:208] = np.asarray(bc.scales).astype(np.int8).view(np.uint8).reshape(rows, nb, 16)
        out[..., 208:210] = _f16_bytes(bc.d, rows, nb)
    return out.reshape(rows, nb * type_size)


# ---------------------------------------------------------------------------------------- unpack


def _f16_field(b: np.ndarray, rows: int, nb: int) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16).reshape(rows, nb)


def unpack(packed: np.ndarray, qtype: T, cols: int | None = None) -> BlockCodes:
    """The inverse of pack: uint8 [rows, nbytes] GGUF tensor bytes -> BlockCodes.

    cols is implied by the byte count; when given it is checked against it. Codes come back as uint8
    (int8 for Q8_0), scales and mins as the dtypes BlockCodes documents.
    """
    qtype = T(qtype)
    if qtype not in SUPPORTED:
        raise ValueError(f"qtype: {qtype!r} is not one of {[t.name for t in SUPPORTED]}")
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 2:
        raise ValueError(f"packed: expected uint8 [rows, nbytes], got {packed.dtype} {packed.shape}")
    block, type_size = GGML_QUANT_SIZES[qtype]
    rows, nbytes = packed.shape
    if nbytes % type_size:
        raise ValueError(f"packed: {nbytes} bytes per row is not a multiple of {qtype.name}'s {type_size}")
    nb = nbytes // type_size
    if cols is not None and cols != nb * block:
        raise ValueError(f"cols: {cols} does not match {nbytes} bytes per row of {qtype.name} ({nb * block})")
    b = packed.reshape(rows, nb, type_size)
    shifts = np.array([0, 4], dtype=np.uint8)

    if qtype in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0):
        d = _f16_field(b[..., 0:2], rows, nb)
        m = _f16_field(b[..., 2:4], rows, nb) if qtype in _WITH_MIN else None
        at = 4 if qtype in _WITH_MIN else 2
        if qtype == T.Q8_0:
            return BlockCodes(qtype, b[..., 2:].copy().view(np.int8).reshape(rows, -1), d)
        qh = None
        if qtype in (T.Q5_0, T.Q5_1):
            qh = b[..., at:at + 4]
            at += 4
        # [.., 16] -> [.., 2, 16]: low nibbles are weights 0..15, high nibbles 16..31
        q = (b[..., at:][..., None, :] >> shifts[:, None]) & 0x0F
        q = q.reshape(rows, nb, 32)
        if qh is not None:
            q |= np.unpackbits(qh, axis=-1, bitorder="little") << 4
        return BlockCodes(qtype, q.reshape(rows, -1), d, m=m)

    if qtype in _K_WITH_MIN:
        d = _f16_field(b[..., 0:2], rows, nb)
        dmin = _f16_field(b[..., 2:4], rows, nb)
        s = b[..., 4:16]
        sc = np.concatenate([s[..., 0:4] & 0x3F, (s[..., 8:12] & 0x0F) | ((s[..., 0:4] >> 6) << 4)], axis=-1)
        mn = np.concatenate([s[..., 4:8] & 0x3F, (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)], axis=-1)
        at = 48 if qtype == T.Q5_K else 16
        # [.., 4 groups, 32] -> [.., 4, 2, 32]: low nibbles first within each 64 weights
        q = (b[..., at:].reshape(rows, nb, 4, 1, 32) >> shifts[:, None]) & 0x0F
        q = q.reshape(rows, nb, 8, 32)
        if qtype == T.Q5_K:
            bits = np.unpackbits(b[..., 16:48, None], axis=-1, bitorder="little")  # [.., l, i]
            q |= bits.transpose(0, 1, 3, 2) << 4
        return BlockCodes(qtype, q.reshape(rows, -1), d, dmin=dmin,
                          scales=sc.reshape(rows, -1), mins=mn.reshape(rows, -1))

    # Q6_K
    ql = (b[..., 0:128].reshape(rows, nb, 2, 1, 64) >> shifts[:, None]) & 0x0F  # [half, nibble, l]
    qh = (b[..., 128:192].reshape(rows, nb, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8)[:, None]) & 0x03
    q = ql.reshape(rows, nb, 256) | (qh.reshape(rows, nb, 256) << 4)
    scales = b[..., 192:208].copy().view(np.int8).reshape(rows, -1)
    d = _f16_field(b[..., 208:210], rows, nb)
    return BlockCodes(qtype, q.reshape(rows, -1), d, scales=scales)


# ------------------------------------------------------------------------------------ dequantize


def dequantize(bc: BlockCodes) -> np.ndarray:
    """float32 [rows, cols], computed with the same float32 operations, in the same order, as
    gguf.quants.dequantize (so the two agree bit for bit, signs of zero included)."""
    check(bc)
    qtype = bc.qtype
    rows, cols = np.shape(bc.codes)
    # the codes as float32 are exact (|q| <= 128); the offset is subtracted on integers-as-floats,
    # which is exact too and equals gguf-py's integer subtraction before its float conversion
    w = np.asarray(bc.codes).astype(np.float32)

    if qtype in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0):
        w = w.reshape(rows, cols // 32, 32)
        d = np.asarray(bc.d).astype(np.float32)[..., None]
        if qtype in (T.Q4_0, T.Q5_0):
            w -= np.float32(8 if qtype == T.Q4_0 else 16)
        w *= d
        if qtype in _WITH_MIN:
            w += np.asarray(bc.m).astype(np.float32)[..., None]
        return w.reshape(rows, cols)

    if qtype in _K_WITH_MIN:
        w = w.reshape(rows, cols // QK_K, 8, 32)
        d = np.asarray(bc.d).astype(np.float32)[..., None]
        dmin = np.asarray(bc.dmin).astype(np.float32)[..., None]
        # d * sc and dmin * mn are rounded to float32 first, as gguf-py does
        dl = (d * np.asarray(bc.scales).astype(np.float32).reshape(rows, -1, 8))[..., None]
        ml = (dmin * np.asarray(bc.mins).astype(np.float32).reshape(rows, -1, 8))[..., None]
        w *= dl
        w -= ml
        return w.reshape(rows, cols)

    # Q6_K
    w = w.reshape(rows, cols // QK_K, 16, 16)
    w -= np.float32(32)
    d = np.asarray(bc.d).astype(np.float32)[..., None]
    dl = (d * np.asarray(bc.scales).astype(np.float32).reshape(rows, -1, 16))[..., None]
    w *= dl
    return w.reshape(rows, cols)
