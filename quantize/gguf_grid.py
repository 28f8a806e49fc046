"""The GGUF block formats as quantization grids, in torch (the same code on CPU and CUDA).

A grid says which values a weight may take once its block's scales are fixed. Every format here
is, per *group* of weights along a row, `value = s * (code - zero) + o`:

| type  | block | group | code      | zero | s                   | o                 |
|-------|------:|------:|-----------|-----:|---------------------|-------------------|
| Q4_0  |    32 |    32 | 0..15     |    8 | d                   | -                 |
| Q5_0  |    32 |    32 | 0..31     |   16 | d                   | -                 |
| Q8_0  |    32 |    32 | -128..127 |    0 | d                   | -                 |
| Q4_1  |    32 |    32 | 0..15     |    0 | d                   | m                 |
| Q5_1  |    32 |    32 | 0..31     |    0 | d                   | m                 |
| Q4_K  |   256 |    32 | 0..15     |    0 | d * sc (sc 6-bit)   | -(dmin * mn) (6-bit mn) |
| Q5_K  |   256 |    32 | 0..31     |    0 | d * sc              | -(dmin * mn)      |
| Q6_K  |   256 |    16 | 0..63     |   32 | d * sc (sc int8)    | -                 |

d, m and dmin are fp16. The *block* is what GPTQ fixes at once when its column sweep enters it:
one 32-weight block, or for K-quants the whole 256-weight super-block, whose sub-block scales and
mins are quantized against the super-block's d and dmin. The float32 operations and their order
match gguf-py's dequantization (d is widened to float32, multiplied by sc, then by the code, then
the offset added), so the weights GPTQ computes with are bit for bit the weights llama.cpp's file
decodes to.

Scale searches are weighted by an importance per column (GPTQ passes diag(H)); they try a sweep
of candidate scales around max-abs, refit each by weighted least squares, round to the stored
precision, and keep the one with the least weighted error after rounding, as llama.cpp's
make_qx_quants / make_qkx3_quants do for its importance-matrix quants.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from gguf import GGMLQuantizationType as T


@dataclass(frozen=True)
class Grid:
    qtype: T
    block: int  # weights whose scales are fixed together
    group: int  # weights sharing one (s, o)
    cmin: int  # stored code range
    cmax: int
    zero: int  # value = s * (code - zero) + o
    asym: bool  # has an offset o
    kquant: bool  # 256 super-block with quantized sub-block scales

    @property
    def groups_per_block(self) -> int:
        return self.block // self.group


GRIDS: dict[T, Grid] = {g.qtype: g for g in (
    Grid(T.Q4_0, 32, 32, 0, 15, 8, False, False),
    Grid(T.Q5_0, 32, 32, 0, 31, 16, False, False),
    Grid(T.Q8_0, 32, 32, -128, 127, 0, False, False),
    Grid(T.Q4_1, 32, 32, 0, 15, 0, True, False),
    Grid(T.Q5_1, 32, 32, 0, 31, 0, True, False),
    Grid(T.Q4_K, 256, 32, 0, 15, 0, True, True),
    Grid(T.Q5_K, 256, 32, 0, 31, 0, True, True),
    Grid(T.Q6_K, 256, 16, 0, 63, 32, False, True),
)}


_MAGIC = 12582912.0  # 1.5 * 2**23: adding and subtracting it leaves x rounded to an integer


def rint(x: torch.Tensor) -> torch.Tensor:
    """Round half to even, as torch.round, but through two additions: torch's CPU rounding kernels
    (round, trunc, floor) ran ~200x slower than an addition on the 2-core test machine (1.8-7.9 ms
    against 0.025 ms per call on 8k floats, measured), which made the scale searches dominate.
    Exact for |x| < 2**22; callers clamp to code ranges far below that."""
    return (x.clamp(-4e6, 4e6) + _MAGIC) - _MAGIC


def fp16(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest fp16 value, kept as float32 (what the file stores, widened back)."""
    return x.to(torch.float16).to(torch.float32)


def round_codes(x: torch.Tensor, s: torch.Tensor, o: torch.Tensor | None, grid: Grid) -> torch.Tensor:
    """Nearest code of x on the grid (s, o broadcast against x); a zero scale gives the zero code."""
    y = x - o if o is not None else x
    q = torch.where(s == 0, torch.zeros_like(y), rint(y / torch.where(s == 0, torch.ones_like(s), s)))
    return torch.clamp(q + grid.zero, grid.cmin, grid.cmax)


def values(codes: torch.Tensor, s: torch.Tensor, o: torch.Tensor | None, grid: Grid) -> torch.Tensor:
    """Dequantized weights, in gguf-py's float32 operation order."""
    v = s * (codes - grid.zero)
    return v + o if o is not None else v


# --- scale searches (vectorised over rows and groups; x: [..., n], w: broadcastable importance) --

def _search_sym(x: torch.Tensor, w: torch.Tensor, nmax: int, lo: int, hi: int, to_stored) -> torch.Tensor:
    """Best signed scale for value = s * L, L in lo..hi (lo = -nmax); `to_stored` rounds s as stored.

    The extreme weight maps to -nmax (the side with one more level), as llama.cpp's Q4_0 does.
    """
    amax_i = x.abs().argmax(dim=-1, keepdim=True)
    mx = torch.gather(x, -1, amax_i)  # signed value of largest magnitude
    best_s = torch.zeros_like(mx)
    best_err = torch.full_like(mx, float("inf"))
    safe_mx = torch.where(mx == 0, torch.ones_like(mx), mx)
    for k in range(-9, 10):
        iscale = -(nmax + 0.1 * k) / safe_mx
        L = torch.clamp(rint(iscale * x), lo, hi)
        suml2 = (w * L * L).sum(-1, keepdim=True)
        sumlx = (w * L * x).sum(-1, keepdim=True)
        for s in (1 / iscale, sumlx / torch.where(suml2 == 0, torch.ones_like(suml2), suml2)):
            s = to_stored(s)
            L2 = torch.clamp(rint(x / torch.where(s == 0, torch.ones_like(s), s)), lo, hi)
            err = (w * (x - s * L2) ** 2).sum(-1, keepdim=True)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_s = torch.where(better, s, best_s)
    return torch.where(mx == 0, torch.zeros_like(best_s), best_s).squeeze(-1)


def _search_asym(x: torch.Tensor, w: torch.Tensor, nmax: int, to_stored, min_le_zero: bool):
    """Best (scale >= 0, offset) for value = scale * L + offset, L in 0..nmax.

    Candidates as llama.cpp's make_qkx3_quants: iscale = (nmax + r) / (max - min) for r in
    -0.9 .. +0.9, each refitted by weighted least squares in both scale and offset. K-quants store
    the offset as a non-negative min subtracted, so there the offset is kept <= 0.
    """
    mn = x.min(-1, keepdim=True).values
    if min_le_zero:
        mn = torch.clamp(mn, max=0)
    mx = x.max(-1, keepdim=True).values
    rng = mx - mn
    safe_rng = torch.where(rng == 0, torch.ones_like(rng), rng)
    best_s = torch.zeros_like(mn)
    best_o = mn.clone()
    best_err = (w * (x - mn) ** 2).sum(-1, keepdim=True)  # all codes 0
    sw = w.sum(-1, keepdim=True).expand_as(mn)
    for k in range(-9, 10):
        iscale = (nmax + 0.1 * k) / safe_rng
        L = torch.clamp(rint(iscale * (x - mn)), 0, nmax)
        swl = (w * L).sum(-1, keepdim=True)
        swl2 = (w * L * L).sum(-1, keepdim=True)
        swx = (w * x).sum(-1, keepdim=True)
        swlx = (w * L * x).sum(-1, keepdim=True)
        det = sw * swl2 - swl * swl
        ok = det > 0
        safe_det = torch.where(ok, det, torch.ones_like(det))
        s_ls = torch.where(ok, (sw * swlx - swl * swx) / safe_det, 1 / iscale)
        o_ls = torch.where(ok, (swl2 * swx - swl * swlx) / safe_det, mn)
        if min_le_zero:
            pos = o_ls > 0
            s_ls = torch.where(pos, swlx / torch.where(swl2 == 0, torch.ones_like(swl2), swl2), s_ls)
            o_ls = torch.where(pos, torch.zeros_like(o_ls), o_ls)
        for s, o in ((1 / iscale, mn), (s_ls, o_ls)):
            s, o = to_stored(torch.clamp(s, min=0)), to_stored(o)
            L2 = torch.clamp(rint((x - o) / torch.where(s == 0, torch.ones_like(s), s)), 0, nmax)
            err = (w * (x - s * L2 - o) ** 2).sum(-1, keepdim=True)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_s = torch.where(better, s, best_s)
            best_o = torch.where(better, o, best_o)
    return best_s.squeeze(-1), best_o.squeeze(-1)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _quantize_scales(v: torch.Tensor, sw: torch.Tensor, lo: int, hi: int, signed: bool):
    """Super-block scale d (fp16) and integer multipliers in lo..hi so that d * L ~ v, weighted by sw.

    v: [rows, n_sub] sub-block scales (or mins); sw: [n_sub] the importance each sub-block carries.
    """
    if signed:
        d = _search_sym(v, sw, -lo, lo, hi, fp16)
    else:
        d = _search_nonneg(v, sw, hi)
    L = torch.clamp(rint(v / torch.where(d == 0, torch.ones_like(d), d).unsqueeze(-1)), lo, hi)
    return d, torch.where(d.unsqueeze(-1) == 0, torch.zeros_like(L), L)


def _search_nonneg(v: torch.Tensor, sw: torch.Tensor, nmax: int):
    """d >= 0 (fp16) for v ~ d * L, L in 0..nmax, v >= 0 (K-quant sub-block scales and mins)."""
    mx = v.max(-1, keepdim=True).values
    safe = torch.where(mx == 0, torch.ones_like(mx), mx)
    best_d = torch.zeros_like(mx)
    best_err = (sw * v * v).sum(-1, keepdim=True)
    for k in range(-9, 10):
        iscale = (nmax + 0.1 * k) / safe
        L = torch.clamp(rint(iscale * v), 0, nmax)
        suml2 = (sw * L * L).sum(-1, keepdim=True)
        sumlv = (sw * L * v).sum(-1, keepdim=True)
        for d in (1 / iscale, sumlv / torch.where(suml2 == 0, torch.ones_like(suml2), suml2)):
            d = fp16(torch.clamp(d, min=0))
            L2 = torch.clamp(rint(v / torch.where(d == 0, torch.ones_like(d), d)), 0, nmax)
            err = (sw * (v - d * L2) ** 2).sum(-1, keepdim=True)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_d = torch.where(better, d, best_d)
    return torch.where(mx == 0, torch.zeros_like(best_d), best_d).squeeze(-1)


def fit_block(x: torch.Tensor, w: torch.Tensor, grid: Grid):
    """Fix one block's scales for the current weights x [rows, block], importance w [block].

    Returns (raw, s, o): raw = the stored fields for this block (names as ggml_pack.BlockCodes:
    d, m, dmin, scales, mins; each [rows, k]), and s, o = [rows, groups] float32 effective scale and
    offset (o None for symmetric types).
    """
    rows = x.shape[0]
    xg = x.reshape(rows, grid.groups_per_block, grid.group)
    wg = w.reshape(grid.groups_per_block, grid.group).clamp(min=0) + 1e-12  # no all-zero weights
    nlev = grid.cmax - grid.cmin  # 15, 31, 63 or 255
    if not grid.kquant:
        if grid.asym:
            d, m = _search_asym(xg, wg, nlev, fp16, min_le_zero=False)
            return {"d": d, "m": m}, d, m
        d = _search_sym(xg, wg, grid.zero or 128, grid.cmin - (grid.zero or 0), grid.cmax - (grid.zero or 0), fp16)
        return {"d": d}, d, None
    sw = wg.sum(-1)  # importance of each sub-block, for quantizing its scale
    if grid.asym:  # Q4_K, Q5_K: 6-bit scales and mins against d and dmin
        sub_s, sub_o = _search_asym(xg, wg, nlev, _identity, min_le_zero=True)
        d, sc = _quantize_scales(sub_s, sw, 0, 63, signed=False)
        dmin, mn = _quantize_scales(-sub_o, sw, 0, 63, signed=False)
        s = d.unsqueeze(-1) * sc
        o = -(dmin.unsqueeze(-1) * mn)
        raw = {"d": d.unsqueeze(-1), "dmin": dmin.unsqueeze(-1), "scales": sc, "mins": mn}
        return raw, s, o
    # Q6_K: signed sub-block scales of 16 weights, int8 against d
    sub_s = _search_sym(xg, wg, grid.zero, -grid.zero, grid.cmax - grid.zero, _identity)
    d, sc = _quantize_scales(sub_s, sw, -128, 127, signed=True)
    s = d.unsqueeze(-1) * sc
    return {"d": d.unsqueeze(-1), "scales": sc}, s, None


def rescaled(fields: dict, grid: Grid, factor: float):
    """The block's fields with the (super-)block scale d times `factor` (re-rounded to fp16), and the
    effective (s, o) that follow. One family of alternatives for the GPTQ-loss scale choice."""
    d = fp16(fields["d"] * factor)
    out = dict(fields, d=d)
    if not grid.kquant:
        return out, d, fields.get("m")
    s = d * fields["scales"]
    o = -(fields["dmin"] * fields["mins"]) if grid.asym else None
    return out, s, o
