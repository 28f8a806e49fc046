"""GPTQ (Frantar et al. 2022) for one weight matrix, with a GGUF block format as the grid.

The algorithm is the reference one (IST-DASLab gptq.py): H = 2 X^T X from the layer's inputs;
dead columns zeroed; optional act-order (columns by descending diag(H)); damping of
`damp * mean(diag(H))`; the upper Cholesky factor of H^-1; a sweep over columns in lazy batches,
each column rounded and its error spread over the columns not yet rounded.

What is ours is the grid. When the sweep enters a GGUF block (32 columns, or a 256-column
K-quant super-block) the block's scales are fixed from the weights *as updated so far*, with a
search weighted by diag(H) (gguf_grid.fit_block); then each column is rounded inside them. With
act-order the columns of one block are no longer swept together, so all scales are fixed before
the sweep from the original weights. Lazy batches are whole blocks, so a block's weights are
always read after every update that precedes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .gguf_grid import GRIDS, Grid, fit_block, rescaled, round_codes, values

# Alternatives to the weighted search's scale that the GPTQ-loss choice tries (see choose_by_loss)
# Measured on a synthetic layer (correlated inputs, 256x512): 2-4% lower output error than the
# weighted search alone for Q4_0/Q4_1/Q5_0/Q8_0, and no change for K-quants (whose 256-weight
# super-block has eight sub-block scales that one factor moves together), so K-quants skip it.
SCALE_FACTORS = (0.88, 0.92, 0.96, 1.0, 1.04, 1.08)


@dataclass
class GPTQResult:
    codes: torch.Tensor  # [rows, cols] stored codes
    raw: dict[str, torch.Tensor]  # stored scale fields (ggml_pack.BlockCodes names), [rows, k]
    weight: torch.Tensor  # [rows, cols] float32: the weights the file decodes to
    loss: float  # sum over columns of err^2 / Hinv_jj^2 (GPTQ's own objective, for logs)

    def block_codes(self, qtype):
        """The result as ggml_pack.BlockCodes (numpy, the dtypes the packer checks)."""
        from .ggml_pack import BlockCodes, check

        dtypes = {"d": np.float16, "m": np.float16, "dmin": np.float16, "mins": np.uint8,
                  "scales": np.uint8 if "mins" in self.raw else np.int8}  # Q6_K's scales are signed
        fields = {k: v.cpu().numpy().astype(dtypes[k]) for k, v in self.raw.items()}
        codes = self.codes.cpu().numpy()
        bc = BlockCodes(qtype=qtype, codes=codes.astype(np.int16 if codes.min() < 0 else np.uint8), **fields)
        check(bc)
        return bc


class Hessian:
    """Running H = 2/n sum x x^T over the rows fed to a linear layer (float32 on `device`)."""

    def __init__(self, n_in: int, device):
        self.H = torch.zeros(n_in, n_in, dtype=torch.float32, device=device)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(self.H.device, torch.float32)
        m = x.shape[0]
        # keep H the mean over all rows seen so far, as the reference does (scale-free for GPTQ)
        self.H *= self.n / (self.n + m)
        self.n += m
        x = math.sqrt(2 / self.n) * x
        self.H += x.T @ x


def choose_by_loss(x: torch.Tensor, hinv: torch.Tensor, grid: Grid, fields: dict, factors=SCALE_FACTORS):
    """Per row, the candidate scale whose GPTQ sweep over this block loses least.

    The weighted search guesses a good scale from the weights as they are when the sweep enters the
    block, but GPTQ then moves the later weights of the block (error feedback), so the best scale for
    the sweep is not the best scale for the weights. Each candidate (the searched scale times a
    factor) is run through the block's own sweep, all at once, and scored by GPTQ's own objective,
    sum err^2 / Hinv_jj^2; rows are independent in GPTQ, so each row keeps its own winner.
    x: [rows, block] current weights; hinv: [block, block] the block's part of the Cholesky factor.
    """
    cands = [rescaled(fields, grid, f) for f in factors]
    S = torch.stack([c[1] for c in cands])  # [C, rows, groups]
    O = torch.stack([c[2] for c in cands]) if grid.asym else None
    Wb = x.unsqueeze(0).repeat(len(cands), 1, 1)
    loss = torch.zeros(Wb.shape[:2], device=x.device)
    for k in range(x.shape[1]):
        g = k // grid.group
        s = S[:, :, g]
        o = O[:, :, g] if O is not None else None
        q = values(round_codes(Wb[:, :, k], s, o, grid), s, o, grid)
        err = (Wb[:, :, k] - q) / hinv[k, k]
        loss += err * err
        Wb[:, :, k + 1:] -= err.unsqueeze(-1) * hinv[k, k + 1:]
    best = loss.argmin(0)
    rows = torch.arange(x.shape[0], device=x.device)
    pick = {k: torch.stack([c[0][k] for c in cands])[best, rows] for k in fields}
    return pick, S[best, rows], (O[best, rows] if O is not None else None)


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, qtype, *, damp: float = 0.01, act_order: bool = False,
                  lazy: int = 128, loss_search: bool = True) -> GPTQResult:
    """GPTQ-round W [rows, cols] onto the GGUF grid of `qtype` given the Hessian H [cols, cols]."""
    grid = GRIDS[qtype]
    W = W.detach().to(torch.float32).clone()
    rows, cols = W.shape
    if cols % grid.block:
        raise ValueError(f"{cols} columns are not a multiple of {qtype.name}'s block of {grid.block}")
    H = H.to(W.device, torch.float32).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    importance = torch.diag(H).clone()

    raw: dict[str, list] = {}
    S = torch.empty_like(W)  # effective scale / offset of every column's group, filled as blocks are fixed
    O = torch.zeros_like(W) if grid.asym else None

    def fix(b0: int, x: torch.Tensor, hinv: torch.Tensor | None = None) -> None:
        fields, s, o = fit_block(x, importance[b0:b0 + grid.block], grid)
        if hinv is not None and not grid.kquant:
            fields, s, o = choose_by_loss(x, hinv, grid, fields)
        for k, v in fields.items():
            raw.setdefault(k, [None] * (cols // grid.block))[b0 // grid.block] = v
        S[:, b0:b0 + grid.block] = s.repeat_interleave(grid.group, dim=1)
        if O is not None:
            O[:, b0:b0 + grid.block] = o.repeat_interleave(grid.group, dim=1)

    perm = None
    if act_order:
        for b0 in range(0, cols, grid.block):
            fix(b0, W[:, b0:b0 + grid.block])
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H, S = W[:, perm], H[perm][:, perm], S[:, perm]
        O = O[:, perm] if O is not None else None

    H[range(cols), range(cols)] += damp * torch.mean(torch.diag(H))
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    del H

    Q = torch.empty_like(W)
    codes = torch.empty_like(W)
    lazy = max(lazy, grid.block) // grid.block * grid.block
    loss = 0.0
    for i1 in range(0, cols, lazy):
        i2 = min(i1 + lazy, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i
            if perm is None and j % grid.block == 0:
                fix(j, W1[:, i:i + grid.block], Hinv1[i:i + grid.block, i:i + grid.block] if loss_search else None)
            w = W1[:, i]
            s = S[:, j]
            o = O[:, j] if O is not None else None
            c = round_codes(w, s, o, grid)
            q = values(c, s, o, grid)
            codes[:, j], Q[:, j] = c, q
            err = (w - q) / Hinv1[i, i]
            loss += float((err * err).sum())
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    if perm is not None:
        inv = torch.argsort(perm)
        Q, codes = Q[:, inv], codes[:, inv]
    fields = {k: torch.cat(v, dim=1) for k, v in raw.items()}
    return GPTQResult(codes, fields, Q, loss / 2)


def rtn_quantize(W: torch.Tensor, qtype, importance: torch.Tensor | None = None) -> GPTQResult:
    """Round to nearest on the same grid, scales from the same weighted search (for tensors with no
    Hessian, such as token embeddings, and as a baseline)."""
    grid: Grid = GRIDS[qtype]
    W = W.detach().to(torch.float32)
    rows, cols = W.shape
    if cols % grid.block:
        raise ValueError(f"{cols} columns are not a multiple of {qtype.name}'s block of {grid.block}")
    w = torch.ones(cols, device=W.device) if importance is None else importance.to(W.device, torch.float32)
    codes, Q, raw = torch.empty_like(W), torch.empty_like(W), {}
    chunk = max(1, (1 << 22) // cols)  # rows at a time: a 250k-token embedding never needs a full copy
    for r0 in range(0, rows, chunk):
        Wr = W[r0:r0 + chunk]
        parts: dict[str, list] = {}
        for b0 in range(0, cols, grid.block):
            fields, s, o = fit_block(Wr[:, b0:b0 + grid.block], w[b0:b0 + grid.block], grid)
            for k, v in fields.items():
                parts.setdefault(k, []).append(v)
            x = Wr[:, b0:b0 + grid.block].reshape(Wr.shape[0], -1, grid.group)
            s3 = s.unsqueeze(-1)
            o3 = o.unsqueeze(-1) if o is not None else None
            c = round_codes(x, s3, o3, grid)
            codes[r0:r0 + chunk, b0:b0 + grid.block] = c.reshape(Wr.shape[0], -1)
            Q[r0:r0 + chunk, b0:b0 + grid.block] = values(c, s3, o3, grid).reshape(Wr.shape[0], -1)
        for k, v in parts.items():
            raw.setdefault(k, []).append(torch.cat(v, dim=1))
    return GPTQResult(codes, {k: torch.cat(v, dim=0) for k, v in raw.items()}, Q, 0.0)
