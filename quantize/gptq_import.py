"""Import an existing GPTQ checkpoint (AutoGPTQ, GPTQModel, GPTQ-for-LLaMa layout) as a GGUF.

`belle convert GPTQ_DIR -o OUT.gguf` recognises such a directory by config.json's
`quantization_config` (quant_method "gptq") or by a `quantize_config.json` beside it, and comes here.

The layout, per quantized linear X with `in` inputs and `out` outputs (AutoGPTQ's QuantLinear.pack):

- `X.qweight`: int32 [in * bits / 32, out]. Each int32 holds 32 / bits codes of consecutive inputs,
  the first input in the lowest bits.
- `X.qzeros`: int32 [n_groups, out * bits / 32], packed the same way but along the outputs.
  Checkpoint format "gptq" (v1, AutoGPTQ's, and the default when none is named) stores zero - 1,
  and AutoGPTQ's kernels add the 1 back to each unpacked field; "gptq_v2" (GPTQModel) stores the zero.
- `X.scales`: fp16 [n_groups, out]; `X.g_idx`: int32 [in], the group of each input (absent: in //
  group_size; group_size -1 means one group per row); `X.bias` as in the float model.

The weight GPTQ means is W[o, i] = scales[g, o] * (q[i, o] - zero[g, o]) with g = g_idx[i]. We
compute it in float32, where it is exact (an fp16 scale times an integer below 2**9 needs at most
20 significant bits).

Where every run of 32 consecutive inputs shares one group (group size a multiple of 32, and no
act-order, or act-order with static groups) the GPTQ codes are written as GGUF blocks unchanged:

- 4-bit, every zero 8 (sym): Q4_0 with d = scale. Exact: Q4_0 decodes d * (q - 8).
- 4-bit, any other zeros: Q4_1 with d = scale and m = fp16(-scale * zero). Q4_1 decodes d * q + m, so
  the only change is the fp16 rounding of m: at most half an fp16 ulp of m per 32-block, the same
  for every weight of the block (the float32 sum itself is exact).
- 8-bit, every zero 128: Q8_0 with d = scale and code q - 128. Exact.

Everything else (act-order groups, group sizes that split a 32-block, 8-bit with other zeros, scales
that are not fp16) is re-quantized from GPTQ's own dequantized weights onto the nearest GGUF type
(Q4_0 for 4-bit sym, Q4_1 for 4-bit asym, Q8_0 for 8-bit) by gptq.rtn_quantize. Rows whose length is
not a multiple of 32 fit no GGUF block: those keep GPTQ's dequantized weights in --outtype.
Every imported tensor's added error, the relative RMS ||W_gguf - W_gptq|| / ||W_gptq||, is measured
on the GGUF's own decoding, logged, returned, and its max and mean written to the file's metadata.

Embeddings, norms, biases and an unquantized output head go through the converter as usual
(--outtype), as do vocabulary, chat template and hyperparameters: the converter reads the directory
through GPTQCheckpoint, which shows each quantized linear as a plain `X.weight` and hides its GPTQ
tensors. Imported tensors are packed in a first pass (one at a time, spooled to a temporary folder
beside the output) because the metadata, written before any tensor data, carries their errors.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from belle.app.errors import ModelFileError

from .hf_reader import HFCheckpoint, TensorEntry, load_config

log = logging.getLogger(__name__)

SUPPORTED_BITS = (4, 8)
FORMATS = ("gptq", "gptq_v2")
GPTQ_PARTS = (".qweight", ".qzeros", ".scales", ".g_idx")
BLOCK = 32  # weights per Q4_0 / Q4_1 / Q8_0 block

Progress = Callable[[int, int, str], None]  # (tensors done, total, current name)


# --- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class GPTQConfig:
    bits: int
    group_size: int  # -1: one group per row
    sym: bool
    desc_act: bool
    checkpoint_format: str  # "gptq" (v1: zeros stored minus one) or "gptq_v2"
    source: Path  # the file it was read from
    model_file_base_name: str | None = None

    @property
    def zero_offset(self) -> int:
        return 1 if self.checkpoint_format == "gptq" else 0


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # the converter reports a broken config.json in its own words
    return data if isinstance(data, dict) else None


def read_gptq_config(model_dir: Path) -> GPTQConfig | None:
    """The GPTQ settings of a model directory, or None when it is not a GPTQ checkpoint."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return None
    qc, source = None, None
    cfg = _read_json(model_dir / "config.json") or {}
    q = cfg.get("quantization_config")
    if isinstance(q, dict) and str(q.get("quant_method", "")).lower() == "gptq":
        qc, source = q, model_dir / "config.json"
    elif not isinstance(q, dict) and (model_dir / "quantize_config.json").is_file():
        # AutoGPTQ before transformers' integration wrote its settings only here
        q = _read_json(model_dir / "quantize_config.json")
        if q is None:
            raise ModelFileError(f"{model_dir / 'quantize_config.json'}: not valid JSON")
        if str(q.get("quant_method", "gptq")).lower() == "gptq":
            qc, source = q, model_dir / "quantize_config.json"
    if qc is None:
        return None

    bits = qc.get("bits")
    if not isinstance(bits, int) or isinstance(bits, bool):
        raise ModelFileError(f"{source}: GPTQ settings have no integer 'bits' (got {bits!r})")
    if bits not in SUPPORTED_BITS:
        raise ModelFileError(f"{source}: GPTQ bits={bits} is not supported (only 4- and 8-bit GPTQ maps onto "
                             f"GGUF's Q4_0 / Q4_1 / Q8_0 blocks)")
    group_size = qc.get("group_size", 128)
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size == 0 or group_size < -1:
        raise ModelFileError(f"{source}: GPTQ group_size={group_size!r} must be a positive integer or -1")
    # GPTQModel's earlier releases named the field "format"
    fmt = str(qc.get("checkpoint_format") or qc.get("format") or "gptq").lower()
    if qc.get("is_marlin_format") or fmt not in FORMATS:
        shown = "marlin" if qc.get("is_marlin_format") else fmt
        raise ModelFileError(f"{source}: GPTQ checkpoint_format {shown!r} is not supported "
                             f"(choose one of {', '.join(FORMATS)})")
    return GPTQConfig(bits=bits, group_size=group_size, sym=bool(qc.get("sym", True)),
                      desc_act=bool(qc.get("desc_act", False)), checkpoint_format=fmt, source=source,
                      model_file_base_name=qc.get("model_file_base_name"))


# --- the checkpoint, seen as float weights -------------------------------------------------------


class _FileList(HFCheckpoint):
    """HFCheckpoint over weight files named by the GPTQ settings rather than by Hugging Face's rules
    (AutoGPTQ saves `gptq_model-4bit-128g.safetensors` unless told otherwise)."""

    def __init__(self, model_dir: Path, files: list[Path]):
        self.model_dir = Path(model_dir)
        self.config = load_config(self.model_dir)
        self.entries = {}
        self._handles = {}
        for file in files:
            for name, shape in self._index(file):
                self.entries[name] = TensorEntry(name, shape, file)


def _open_checkpoint(model_dir: Path, qcfg: GPTQConfig) -> HFCheckpoint:
    try:
        return HFCheckpoint(model_dir)
    except ModelFileError:
        candidates = []
        if qcfg.model_file_base_name:
            candidates += [model_dir / f"{qcfg.model_file_base_name}{ext}" for ext in (".safetensors", ".bin")]
        candidates += sorted(model_dir.glob("gptq_model-*.safetensors")) + sorted(model_dir.glob("gptq_model-*.bin"))
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise
        return _FileList(model_dir, found[:1])


@dataclass(frozen=True)
class GPTQLinear:
    prefix: str  # "model.layers.0.self_attn.q_proj"
    file: Path
    n_in: int
    n_out: int
    n_groups: int
    has_g_idx: bool


@dataclass
class GPTQTensor:
    """One quantized linear, unpacked: codes [out, in], zeros and scales [n_groups, out], g_idx [in]."""
    codes: np.ndarray  # uint8
    zeros: np.ndarray  # int16, the decoded zero (v1's offset added back)
    scales: np.ndarray  # float32 (exact widening of the stored fp16)
    scales_fp16: bool  # every scale is an fp16 value (GGUF's d is fp16)
    g_idx: np.ndarray  # int64

    def dequantize(self) -> np.ndarray:
        """float32 [out, in]: scales[g, o] * (q[o, i] - zero[g, o]), exact in float32."""
        w = self.codes.astype(np.int16)
        w -= self.zeros[self.g_idx].T
        out = w.astype(np.float32)
        out *= self.scales[self.g_idx].T
        return out


def _bits_of(dtype_name: str) -> int | None:
    return {"I8": 8, "I16": 16, "I32": 32, "I64": 64, "U8": 8, "U16": 16, "U32": 32, "U64": 64}.get(dtype_name)


def unpack_codes(a: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """An integer array holding width/bits codes per element along `axis`, the first in the lowest
    bits -> uint8 codes, that axis made width/bits times longer."""
    width = a.dtype.itemsize * 8
    u = np.ascontiguousarray(a).view(np.dtype(f"u{a.dtype.itemsize}"))
    per = width // bits
    shifts = (np.arange(per) * bits).astype(u.dtype)
    mask = u.dtype.type((1 << bits) - 1)
    if axis == 0:
        codes = (u[:, None, :] >> shifts[None, :, None]) & mask
        return codes.astype(np.uint8).reshape(u.shape[0] * per, u.shape[1])
    codes = (u[:, :, None] >> shifts[None, None, :]) & mask
    return codes.astype(np.uint8).reshape(u.shape[0], u.shape[1] * per)


class GPTQCheckpoint:
    """A GPTQ model directory as the converter reads it: every quantized linear X appears as
    `X.weight` (shape [out, in]; `tensor()` gives GPTQ's dequantized float32 weights) and its
    qweight / qzeros / scales / g_idx are hidden. Other tensors pass through. Close it (or use `with`)."""

    def __init__(self, model_dir: Path, qcfg: GPTQConfig | None = None):
        self.model_dir = Path(model_dir)
        qcfg = qcfg or read_gptq_config(self.model_dir)
        if qcfg is None:
            raise ModelFileError(f"{self.model_dir}: not a GPTQ checkpoint (no quantization_config with "
                                 f"quant_method 'gptq' in config.json, and no quantize_config.json)")
        self.qcfg = qcfg
        self.inner = _open_checkpoint(self.model_dir, qcfg)
        self.config = self.inner.config
        self.entries: dict[str, TensorEntry] = {}
        self.linears: dict[str, GPTQLinear] = {}  # by the "X.weight" name it is shown as
        try:
            self._index()
        except BaseException:
            self.inner.close()
            raise

    # -- index ------------------------------------------------------------------------------

    def _index(self) -> None:
        raw = self.inner.entries
        for name, entry in raw.items():
            if not name.endswith(GPTQ_PARTS):
                if name.endswith(".weight") and name[: -len(".weight")] + ".qweight" in raw:
                    raise ModelFileError(f"{entry.file}: tensor {name} and {name[:-7]}.qweight both present "
                                         f"(a linear is either float or GPTQ)")
                self.entries[name] = entry
                continue
            prefix, part = name.rsplit(".", 1)
            if part == "qweight":
                lin = self._check(prefix)
                self.linears[f"{prefix}.weight"] = lin
                self.entries[f"{prefix}.weight"] = TensorEntry(f"{prefix}.weight", (lin.n_out, lin.n_in), entry.file)
            elif f"{prefix}.qweight" not in raw:
                raise ModelFileError(f"{entry.file}: tensor {name} has no {prefix}.qweight beside it")
        if not self.linears:
            raise ModelFileError(f"{self.qcfg.source}: says GPTQ, but no tensor in the checkpoint ends in .qweight")

    def _dtype(self, name: str) -> str:
        entry = self.inner.entries[name]
        handle = self.inner._open(entry.file)
        if entry.file.suffix == ".safetensors":
            return handle.get_slice(name).get_dtype()
        return {"torch.int8": "I8", "torch.int16": "I16", "torch.int32": "I32", "torch.int64": "I64",
                "torch.uint8": "U8", "torch.float16": "F16", "torch.bfloat16": "BF16",
                "torch.float32": "F32"}.get(str(handle[name].dtype), str(handle[name].dtype))

    def _check(self, prefix: str) -> GPTQLinear:
        """Shapes and dtypes of one linear's GPTQ tensors, from the index alone."""
        raw, bits = self.inner.entries, self.qcfg.bits
        qw = raw[f"{prefix}.qweight"]
        for part in ("qzeros", "scales"):
            if f"{prefix}.{part}" not in raw:
                raise ModelFileError(f"{qw.file}: tensor {prefix}.{part} missing (a GPTQ linear needs qweight, "
                                     f"qzeros and scales)")
        qz, sc = raw[f"{prefix}.qzeros"], raw[f"{prefix}.scales"]
        width = {}
        for part, entry in (("qweight", qw), ("qzeros", qz)):
            dt = self._dtype(entry.name)
            width[part] = _bits_of(dt)
            if width[part] is None or width[part] < bits:
                raise ModelFileError(f"{entry.file}: tensor {entry.name} has dtype {dt}, expected packed integers "
                                     f"(int32)")
            if len(entry.shape) != 2:
                raise ModelFileError(f"{entry.file}: tensor {entry.name} has shape {list(entry.shape)}, expected 2-D")
        dt = self._dtype(sc.name)
        if dt not in ("F16", "BF16", "F32"):
            raise ModelFileError(f"{sc.file}: tensor {sc.name} has dtype {dt}, expected float16 scales")
        n_in = qw.shape[0] * (width["qweight"] // bits)
        n_out = qw.shape[1]
        if len(sc.shape) != 2 or sc.shape[1] != n_out:
            raise ModelFileError(f"{sc.file}: tensor {sc.name} has shape {list(sc.shape)}, expected "
                                 f"[n_groups, {n_out}] for qweight {list(qw.shape)}")
        n_groups = sc.shape[0]
        gs = self.qcfg.group_size if self.qcfg.group_size != -1 else n_in
        if n_groups != -(-n_in // gs):
            raise ModelFileError(f"{sc.file}: tensor {sc.name} has {n_groups} groups, but {n_in} inputs in groups "
                                 f"of {self.qcfg.group_size} make {-(-n_in // gs)} ({self.qcfg.source.name})")
        per_z = width["qzeros"] // bits
        if tuple(qz.shape) != (n_groups, -(-n_out // per_z)):
            raise ModelFileError(f"{qz.file}: tensor {qz.name} has shape {list(qz.shape)}, expected "
                                 f"[{n_groups}, {-(-n_out // per_z)}] for {bits}-bit zeros of {n_out} outputs")
        gi = raw.get(f"{prefix}.g_idx")
        if gi is not None and tuple(gi.shape) != (n_in,):
            raise ModelFileError(f"{gi.file}: tensor {gi.name} has shape {list(gi.shape)}, expected [{n_in}]")
        return GPTQLinear(prefix, qw.file, n_in, n_out, n_groups, gi is not None)

    # -- data -------------------------------------------------------------------------------

    def _raw(self, name: str) -> np.ndarray:
        # not HFCheckpoint.tensor: that widens to float32, and packed codes must stay integers
        entry = self.inner.entries[name]
        handle = self.inner._open(entry.file)
        try:
            t = handle.get_tensor(name) if entry.file.suffix == ".safetensors" else handle[name]
            if str(t.dtype) == "torch.bfloat16":
                t = t.float()
            return t.numpy()
        except Exception as err:
            raise ModelFileError(f"{entry.file}: cannot read tensor {name} ({err})") from None

    def gptq(self, name: str) -> GPTQTensor:
        """The unpacked GPTQ parts of the linear shown as `name` ("X.weight")."""
        lin = self.linears[name]
        bits, p = self.qcfg.bits, lin.prefix
        qweight = self._raw(f"{p}.qweight")
        codes = unpack_codes(qweight, bits, axis=0).T  # [out, in]
        del qweight
        # v1 zeros are decoded as AutoGPTQ's kernels do: the stored field plus one, without wrapping
        zeros = unpack_codes(self._raw(f"{p}.qzeros"), bits, axis=1)[:, : lin.n_out].astype(np.int16)
        zeros += self.qcfg.zero_offset
        stored = self._raw(f"{p}.scales")
        scales = stored.astype(np.float32)
        if not np.isfinite(scales).all():
            raise ModelFileError(f"{lin.file}: tensor {p}.scales has non-finite values")
        scales_fp16 = stored.dtype == np.float16 or bool(
            np.array_equal(scales.astype(np.float16).astype(np.float32), scales))
        if lin.has_g_idx:
            g_idx = self._raw(f"{p}.g_idx").astype(np.int64)
            if g_idx.size and (g_idx.min() < 0 or g_idx.max() >= lin.n_groups):
                raise ModelFileError(f"{lin.file}: tensor {p}.g_idx has groups {g_idx.min()}..{g_idx.max()}, "
                                     f"outside the {lin.n_groups} groups of {p}.scales")
        else:
            g_idx = self.natural_g_idx(lin)
        return GPTQTensor(codes, zeros, scales, scales_fp16, g_idx)

    def natural_g_idx(self, lin: GPTQLinear) -> np.ndarray:
        gs = self.qcfg.group_size if self.qcfg.group_size != -1 else lin.n_in
        return np.arange(lin.n_in, dtype=np.int64) // gs

    def tensor(self, name: str) -> np.ndarray:
        """float32, as HFCheckpoint.tensor; a quantized linear comes back dequantized."""
        if name in self.linears:
            return self.gptq(name).dequantize()
        return self.inner.tensor(name)

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> "GPTQCheckpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- GPTQ -> GGUF blocks -------------------------------------------------------------------------


def exact_block_codes(t: GPTQTensor, bits: int):
    """The GGUF BlockCodes that decode to GPTQ's weights with the codes unchanged, or None where
    GGUF blocks cannot hold them (see the module docstring for when, and how exact)."""
    from gguf import GGMLQuantizationType as T

    from .ggml_pack import BlockCodes

    n_out, n_in = t.codes.shape
    if n_in % BLOCK or not t.scales_fp16:
        return None
    starts = t.g_idx[::BLOCK]
    if not (t.g_idx.reshape(-1, BLOCK) == starts[:, None]).all():
        return None  # some 32-block would need two groups' scales
    d = np.ascontiguousarray(t.scales[starts].T.astype(np.float16))  # [out, n_in // 32]
    z = np.ascontiguousarray(t.zeros[starts].T)
    if bits == 4:
        if (z == 8).all():
            return BlockCodes(T.Q4_0, t.codes, d)
        # -scale * zero is exact in float32; fp16 rounds it (0 - x keeps a zero min +0)
        m32 = np.float32(0) - d.astype(np.float32) * z.astype(np.float32)
        with np.errstate(over="ignore"):
            m = m32.astype(np.float16)
        if not np.isfinite(m).all():
            return None
        return BlockCodes(T.Q4_1, t.codes, d, m=m)
    if (z == 128).all():
        return BlockCodes(T.Q8_0, (t.codes.astype(np.int16) - 128).astype(np.int8), d)
    return None


def requant_type(t: GPTQTensor, bits: int):
    from gguf import GGMLQuantizationType as T

    if bits == 8:
        return T.Q8_0
    return T.Q4_0 if (t.zeros == 8).all() else T.Q4_1


@dataclass
class TensorImport:
    name: str  # GGUF tensor name
    mode: str  # "exact", "requantized" or "float" (no GGUF block fits: written in --outtype)
    qtype: str
    rel_rms: float  # ||W_gguf - W_gptq|| / ||W_gptq||
    max_abs: float  # max |W_gguf - W_gptq|
    sq_err: float = 0.0  # sums of squares, for the pooled figure
    sq_ref: float = 0.0


@dataclass
class GPTQImportReport:
    path: Path
    config: GPTQConfig
    act_order: bool  # some g_idx is not in // group_size
    tensors: list[TensorImport] = field(default_factory=list)

    def _of(self, mode: str) -> list[TensorImport]:
        return [t for t in self.tensors if t.mode == mode]

    @property
    def exact(self) -> list[TensorImport]:
        return self._of("exact")

    @property
    def requantized(self) -> list[TensorImport]:
        return self._of("requantized")

    @property
    def kept_float(self) -> list[TensorImport]:
        return self._of("float")

    @property
    def max_error(self) -> float:
        return max((t.rel_rms for t in self.tensors), default=0.0)

    @property
    def mean_error(self) -> float:
        return float(np.mean([t.rel_rms for t in self.tensors])) if self.tensors else 0.0

    @property
    def overall_error(self) -> float:
        """Pooled over every imported weight: sqrt(sum err^2 / sum w^2)."""
        ref = sum(t.sq_ref for t in self.tensors)
        return math.sqrt(sum(t.sq_err for t in self.tensors) / ref) if ref else 0.0

    def summary(self) -> str:
        def part(ts: list[TensorImport]) -> str:
            if not ts:
                return "0"
            types = sorted({t.qtype for t in ts})
            return f"{len(ts)} tensor{'s' if len(ts) != 1 else ''} as {'/'.join(types)}"

        c = self.config
        line = (f"GPTQ {c.bits}-bit, group {c.group_size}, {'sym' if c.sym else 'asym'}"
                f"{', act-order' if self.act_order else ''}: exact: {part(self.exact)}; "
                f"re-quantized: {part(self.requantized)}")
        if self.kept_float:
            line += f"; kept float: {part(self.kept_float)}"
        return line + (f"; added error (relative RMS) max {self.max_error:.3g}, mean {self.mean_error:.3g}, "
                       f"overall {self.overall_error:.3g}")


def _float_roundtrip(w: np.ndarray, outtype: str) -> np.ndarray:
    """What the converter's --outtype makes of float32 weights, read back as float32."""
    if outtype == "f32":
        return w
    if outtype == "f16":
        return w.astype(np.float16).astype(np.float32)
    import gguf

    q = gguf.GGMLQuantizationType.BF16
    return gguf.quants.dequantize(gguf.quants.quantize(w, q), q)


def _measure(name: str, mode: str, qtype: str, got: np.ndarray, ref: np.ndarray) -> TensorImport:
    diff = got.astype(np.float64) - ref
    sq_err, sq_ref = float(np.square(diff).sum()), float(np.square(ref, dtype=np.float64).sum())
    rel = math.sqrt(sq_err / sq_ref) if sq_ref else (0.0 if sq_err == 0 else math.inf)
    return TensorImport(name, mode, qtype, rel, float(np.abs(diff).max()) if diff.size else 0.0, sq_err, sq_ref)


def import_tensor(t: GPTQTensor, bits: int, name: str, outtype: str):
    """-> (BlockCodes or None for "keep float", TensorImport) for one GPTQ linear."""
    import torch

    from .ggml_pack import dequantize
    from .gptq import rtn_quantize

    ref = t.dequantize()
    bc = exact_block_codes(t, bits)
    mode = "exact"
    if bc is None and ref.shape[1] % BLOCK == 0:
        qtype = requant_type(t, bits)
        bc = rtn_quantize(torch.from_numpy(ref), qtype).block_codes(qtype)
        mode = "requantized"
    if bc is None:
        return None, _measure(name, "float", outtype.upper(), _float_roundtrip(ref, outtype), ref)
    return bc, _measure(name, mode, bc.qtype.name, dequantize(bc), ref)


# --- the whole model ---------------------------------------------------------------------------


def _file_type(report: GPTQImportReport):
    """general.file_type: the block type most imported weights have."""
    from collections import Counter

    from gguf import LlamaFileType

    counts = Counter(t.qtype for t in report.tensors if t.mode != "float")
    if not counts:
        return None
    return {"Q4_0": LlamaFileType.MOSTLY_Q4_0, "Q4_1": LlamaFileType.MOSTLY_Q4_1,
            "Q8_0": LlamaFileType.MOSTLY_Q8_0}[counts.most_common(1)[0][0]]


def import_gptq(model_dir: Path, out: Path, outtype: str = "f16", *, force: bool = False,
                chat_template: str | None = None, pre: str | None = None,
                import_progress: Progress | None = None, progress: Progress | None = None) -> GPTQImportReport:
    """Convert a GPTQ checkpoint directory to a GGUF; returns what was done to each quantized linear.

    `outtype` is for the tensors GPTQ left in float (embeddings, norms, an unquantized head).
    `import_progress` follows the first pass (unpacking and packing the GPTQ linears), `progress`
    the converter's writing pass.
    """
    from .arch import get_arch, need
    from .convert import check_inputs, convert, plan_tensors
    from .ggml_pack import pack
    from .vocab import read_vocab, resolve_chat_template

    model_dir, out = Path(model_dir), Path(out)
    check_inputs(model_dir, out, outtype, force)
    qcfg = read_gptq_config(model_dir)
    if qcfg is None:
        raise ModelFileError(f"{model_dir}: not a GPTQ checkpoint (no quantization_config with quant_method "
                             f"'gptq' in config.json, and no quantize_config.json)")

    spool = None
    try:
        with GPTQCheckpoint(model_dir, qcfg) as ckpt:
            cfg = ckpt.config
            arch = get_arch(cfg, str(model_dir / "config.json"))
            plan = [t for t in plan_tensors(ckpt, arch, outtype) if t.hf_name in ckpt.linears]
            # what would fail in the converter's pass fails now, not after the long import pass
            read_vocab(model_dir, need(cfg, "vocab_size"), prefer_sentencepiece=not arch.bpe_only, pre=pre)
            if chat_template:
                resolve_chat_template(chat_template)
            act_order = any(
                lin.has_g_idx and not np.array_equal(ckpt._raw(f"{lin.prefix}.g_idx"), ckpt.natural_g_idx(lin))
                for lin in ckpt.linears.values())
            report = GPTQImportReport(out, qcfg, act_order)
            spool = Path(tempfile.mkdtemp(prefix=f".{out.name}.gptq-import-", dir=out.parent))
            files: dict[str, Path] = {}
            types = {}
            for i, t in enumerate(plan):
                bc, rec = import_tensor(ckpt.gptq(t.hf_name), qcfg.bits, t.gguf_name, outtype)
                report.tensors.append(rec)
                log.info("%s: %s %s, added relative RMS error %.3g (max |diff| %.3g)",
                         t.gguf_name, rec.mode, rec.qtype, rec.rel_rms, rec.max_abs)
                if bc is not None:
                    files[t.gguf_name] = spool / f"{i}.npy"
                    np.save(files[t.gguf_name], pack(bc))
                    types[t.gguf_name] = bc.qtype
                del bc
                if import_progress:
                    import_progress(i + 1, len(plan), t.gguf_name)
        log.info("%s", report.summary())

        def extra(writer) -> None:
            writer.add_string("quantize.method", "gptq-import")
            writer.add_uint32("quantize.gptq.bits", qcfg.bits)
            writer.add_int32("quantize.gptq.group_size", qcfg.group_size)
            writer.add_bool("quantize.gptq.sym", qcfg.sym)
            writer.add_bool("quantize.gptq.act_order", report.act_order)
            writer.add_string("quantize.gptq.checkpoint_format", qcfg.checkpoint_format)
            writer.add_uint32("quantize.gptq_import.exact_tensors", len(report.exact))
            writer.add_uint32("quantize.gptq_import.requantized_tensors", len(report.requantized))
            writer.add_uint32("quantize.gptq_import.float_tensors", len(report.kept_float))
            writer.add_string("quantize.gptq_import.added_error", "relative RMS of GGUF minus GPTQ weights, per tensor")
            writer.add_float32("quantize.gptq_import.added_error_max", report.max_error)
            writer.add_float32("quantize.gptq_import.added_error_mean", report.mean_error)

        def packed(t) -> np.ndarray:
            return np.load(files[t.gguf_name])

        convert(model_dir, out, outtype, force=force, chat_template=chat_template, pre=pre, progress=progress,
                types=types, packed=packed, file_type=_file_type(report), extra_kv=extra,
                checkpoint=lambda d: GPTQCheckpoint(d, qcfg))
    finally:
        if spool is not None:
            shutil.rmtree(spool, ignore_errors=True)
    return report
