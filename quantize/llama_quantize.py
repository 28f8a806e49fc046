"""llama.cpp's own quantizer through the binding: `llama_model_quantize` (src/llama-quant.cpp).

This is the baseline everything else in the package must beat: round-to-nearest per llama.cpp's
recipes (`--method rtn`) and the same with an importance matrix (`--method imatrix`). The imatrix is
handed over as `llama_model_imatrix_data` entries {name, data, size} with a NULL-name terminator;
llama.cpp copies them before quantizing. Values are per-input-column mean squared activations
(tools/quantize/quantize.cpp divides the stored sums by the counts before the call).
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import LlamaFileType

from belle.app.errors import BelleError, ModelFileError

from .constants import QUANT_TYPES, quant_ftype

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class QuantizeResult:
    path: Path
    qtype: str
    method: str
    seconds: float
    size_bytes: int


def check_gguf(path: Path) -> None:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ModelFileError(f"{path}: not a GGUF file")


def _imatrix_array(imatrix: dict[str, np.ndarray]):
    """ctypes array of llama_model_imatrix_data (NULL-terminated) plus the buffers it points into."""
    import llama_cpp

    keep = []
    entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
    for i, (name, values) in enumerate(sorted(imatrix.items())):
        buf = np.ascontiguousarray(values, dtype=np.float32)
        if not np.all(np.isfinite(buf)):
            raise BelleError(f"importance matrix for {name} has non-finite values")
        name_b = name.encode()
        keep += [buf, name_b]
        entries[i].name = name_b
        entries[i].data = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entries[i].size = buf.size
    entries[len(imatrix)].name = None
    return entries, keep


def _run(src: Path, dst: Path, ftype: int, *, imatrix=None, nthread: int = 0, allow_requantize: bool = False,
         pure: bool = False, what: str = "") -> None:
    import llama_cpp

    from .llama_log import route_llama_log

    route_llama_log()
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = nthread or (os.cpu_count() or 1)
    params.ftype = ftype
    params.allow_requantize = allow_requantize
    params.pure = pure
    keep = None
    if imatrix:
        entries, keep = _imatrix_array(imatrix)
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    part = dst.with_name(dst.name + ".part")
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(part).encode(), ctypes.byref(params))
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    del keep  # llama.cpp has copied the imatrix by now
    if rc != 0:
        part.unlink(missing_ok=True)
        raise ModelFileError(f"{src}: llama.cpp could not quantize it to {what} (run with -v for llama.cpp's log)")
    os.replace(part, dst)


def dequantize_to_f32(src: Path, dst: Path, nthread: int = 0) -> Path:
    """llama.cpp's own dequantization of every tensor to F32 (a GGUF -> GGUF reference, no converter)."""
    check_gguf(src)
    _run(Path(src), Path(dst), int(LlamaFileType.ALL_F32), nthread=nthread, allow_requantize=True, what="F32")
    return Path(dst)


def quantize(src: Path, dst: Path, qtype: str, *, imatrix: dict[str, np.ndarray] | None = None,
             nthread: int = 0, force: bool = False, pure: bool = False) -> QuantizeResult:
    """Quantize a GGUF with llama.cpp's recipe `qtype` (e.g. "Q4_K_M"), optionally with an imatrix.

    pure: llama-quantize's --pure, every 2-D weight (output and token embeddings too) of the recipe's
    base type, with llama.cpp's fallback where a row width does not fit that type's blocks.
    """
    src, dst = Path(src), Path(dst)
    if qtype not in QUANT_TYPES:
        raise BelleError(f"--type {qtype!r}: choose one of {', '.join(QUANT_TYPES)}")
    check_gguf(src)
    if dst.exists() and not force:
        raise BelleError(f"{dst}: already exists (use --force to overwrite)")
    if src.resolve() == dst.resolve():
        raise BelleError(f"{dst}: output would overwrite the input")

    start = time.perf_counter()
    _run(src, dst, quant_ftype(qtype), imatrix=imatrix, nthread=nthread, pure=pure, what=qtype)
    seconds = time.perf_counter() - start
    log.info("quantized %s -> %s (%s) in %.1f s", src, dst, qtype, seconds)
    return QuantizeResult(dst, qtype, "imatrix" if imatrix else "rtn", seconds, dst.stat().st_size)
