"""Importance matrix: per weight matrix, per input column, the sum of squared activations.

Definition (tools/imatrix/imatrix.cpp, IMatrixCollector::collect_imatrix): for every matrix
multiplication whose weight is a `blk.*` tensor and whose activation has at least 16 rows, add
x_j^2 over all rows to in_sum2[j] and the number of rows to counts. The quantizer is given
in_sum2 / counts, the mean (tools/quantize/quantize.cpp, load_imatrix), i.e. diag(X^T X)/n, the
diagonal of GPTQ's Hessian up to a constant.

Two collectors compute it:
- `collect_llama_cpp`: inside llama.cpp, through the scheduler's eval callback (`cb_eval`), exactly
  where imatrix.cpp collects: no torch needed, works for any GGUF llama.cpp can run.
- `collect_torch`: forward pre-hooks on the `nn.Linear` layers of a transformers model; used to
  check the llama.cpp collector, and for models that only exist as Hugging Face directories.
Both take the same chunks (textdata.chunk_tokens), as imatrix.cpp does.
"""

from __future__ import annotations

import ctypes
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from belle.app.errors import BelleError, InputError, ModelFileError

from .constants import (IMATRIX_KEY_CHUNK_COUNT, IMATRIX_KEY_CHUNK_SIZE, IMATRIX_KEY_DATASETS,
                        IMATRIX_SUFFIX_COUNTS, IMATRIX_SUFFIX_SUMS, IMATRIX_TYPE, PPL_CHUNK)

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (chunks done, total)
MIN_ROWS = 16  # imatrix.cpp ignores matrix multiplications with fewer activation rows


@dataclass
class Imatrix:
    sums: dict[str, np.ndarray] = field(default_factory=dict)  # GGUF weight name -> in_sum2 [n_in] (float64)
    counts: dict[str, int] = field(default_factory=dict)  # rows (tokens) accumulated
    chunk_count: int = 0
    chunk_size: int = PPL_CHUNK
    datasets: list[str] = field(default_factory=list)

    def add(self, name: str, x: np.ndarray) -> None:
        """Accumulate activations x: [rows, n_in]."""
        sq = np.einsum("ij,ij->j", x, x, dtype=np.float64)
        if name in self.sums:
            if self.sums[name].shape != sq.shape:
                raise BelleError(f"imatrix: {name} seen with {sq.shape[0]} and {self.sums[name].shape[0]} columns")
            self.sums[name] += sq
            self.counts[name] += x.shape[0]
        else:
            self.sums[name] = sq
            self.counts[name] = x.shape[0]

    def means(self) -> dict[str, np.ndarray]:
        """What the quantizer takes: in_sum2 / counts, float32."""
        return {n: (s / self.counts[n]).astype(np.float32) for n, s in self.sums.items() if self.counts[n] > 0}


# --- llama.cpp collector ------------------------------------------------------------------------

class GGMLTensor(ctypes.Structure):
    """struct ggml_tensor from ggml/include/ggml.h (checked against ggml_tensor_overhead() at use)."""


GGMLTensor._fields_ = [
    ("type", ctypes.c_int),
    ("buffer", ctypes.c_void_p),
    ("ne", ctypes.c_int64 * 4),
    ("nb", ctypes.c_size_t * 4),
    ("op", ctypes.c_int),
    ("op_params", ctypes.c_int32 * 16),
    ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(GGMLTensor) * 10),
    ("view_src", ctypes.POINTER(GGMLTensor)),
    ("view_offs", ctypes.c_size_t),
    ("data", ctypes.c_void_p),
    ("name", ctypes.c_char * 64),
    ("extra", ctypes.c_void_p),
    ("padding", ctypes.c_char * 8),
]
GGML_OBJECT_SIZE = 32  # struct ggml_object: offs, size, next, type + padding
GGML_TYPE_F32 = 0


def _ggml_lib():
    from llama_cpp._ggml import libggml

    libggml.ggml_tensor_overhead.restype = ctypes.c_size_t
    libggml.ggml_op_name.restype = ctypes.c_char_p
    libggml.ggml_op_name.argtypes = [ctypes.c_int]
    overhead = libggml.ggml_tensor_overhead()
    if overhead != GGML_OBJECT_SIZE + ctypes.sizeof(GGMLTensor):
        raise BelleError(f"this llama.cpp's ggml_tensor layout ({overhead} bytes) is not the one belle knows; "
                         "use --imatrix-from hf or another llama-cpp-python version")
    return libggml


def _op_id(lib, name: str) -> int:
    for i in range(200):
        if lib.ggml_op_name(i) == name.encode():
            return i
    raise BelleError(f"ggml op {name} not found")


def _weight_name(raw: bytes) -> str:
    # imatrix.cpp filter_tensor_name: graph copies are named "prefix#name#suffix"
    name = raw.decode(errors="replace")
    if "#" in name:
        name = name.split("#")[1]
    return name


def collect_llama_cpp(model_path: Path, chunks: list[list[int]], n_threads: int | None = None,
                      progress: Progress | None = None) -> Imatrix:
    """Run the chunks through llama.cpp and accumulate the inputs of every blk.* matrix multiplication."""
    from .llama_runner import LlamaRunner

    lib = _ggml_lib()
    mul_mat = _op_id(lib, "MUL_MAT")
    im = Imatrix(chunk_size=len(chunks[0]) if chunks else PPL_CHUNK)
    errors: list[BaseException] = []

    def callback(t_ptr, ask, _user):
        try:
            t = ctypes.cast(t_ptr, ctypes.POINTER(GGMLTensor)).contents
            if t.op != mul_mat:
                return bool(not ask)  # not interested; and never stop the graph
            src0, src1 = t.src[0].contents, t.src[1].contents
            name = _weight_name(src0.name)
            if ask:
                return bool(src1.ne[1] >= MIN_ROWS and src1.type == GGML_TYPE_F32 and name.startswith("blk."))
            n_in, rows = src1.ne[0], src1.ne[1] * src1.ne[2] * src1.ne[3]
            x = np.lib.stride_tricks.as_strided(
                np.ctypeslib.as_array(ctypes.cast(src1.data, ctypes.POINTER(ctypes.c_float)), shape=(1,)),
                shape=(src1.ne[3], src1.ne[2], src1.ne[1], n_in),
                strides=(src1.nb[3], src1.nb[2], src1.nb[1], src1.nb[0]))
            im.add(name, np.ascontiguousarray(x).reshape(rows, n_in))
            return True
        except BaseException as err:  # an exception must not cross the C boundary
            errors.append(err)
            return False

    with LlamaRunner(model_path, len(chunks[0]), n_threads, cb_eval=callback) as runner:
        for i, chunk in enumerate(chunks):
            runner.logits(chunk)  # all positions, as imatrix.cpp requests logits for every token
            if errors:
                raise errors[0]
            im.chunk_count += 1
            if progress:
                progress(i + 1, len(chunks))
    if not im.sums:
        raise ModelFileError(f"{model_path}: no matrix multiplications seen (is it a supported model?)")
    return im


# --- torch collector ----------------------------------------------------------------------------

def collect_torch(model, gguf_arch, n_blocks: int, chunks: list[list[int]], strip_prefix: str = "",
                  progress: Progress | None = None) -> Imatrix:
    """Forward pre-hooks on every nn.Linear of a transformers model that maps to a blk.* GGUF tensor."""
    import gguf
    import torch

    name_map = gguf.get_tensor_name_map(gguf_arch, n_blocks)
    im = Imatrix(chunk_size=len(chunks[0]) if chunks else PPL_CHUNK)
    handles = []
    for module_name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        short = module_name[len(strip_prefix):] if module_name.startswith(strip_prefix) else module_name
        gguf_name = name_map.get_name(short + ".weight", try_suffixes=(".weight",))
        if gguf_name is None or not re.match(r"blk\.\d+\.", gguf_name):
            continue

        def hook(_mod, inputs, name=gguf_name):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float().numpy()
            if x.shape[0] >= MIN_ROWS:
                im.add(name, x)

        handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for i, chunk in enumerate(chunks):
                model(torch.tensor([chunk]))
                im.chunk_count += 1
                if progress:
                    progress(i + 1, len(chunks))
    finally:
        for h in handles:
            h.remove()
    return im


# --- llama.cpp's imatrix GGUF format -----------------------------------------------------------

def save_gguf(im: Imatrix, path: Path) -> Path:
    """Write llama.cpp's imatrix GGUF: <name>.in_sum2 [n_in] and <name>.counts [1], F32 (save_imatrix)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch=IMATRIX_TYPE)
    # imatrix files carry general.type = imatrix and no architecture key (imatrix.cpp writes none)
    writer.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)
    writer.add_type(IMATRIX_TYPE)
    writer.add_array(IMATRIX_KEY_DATASETS, im.datasets or ["unknown"])
    writer.add_uint32(IMATRIX_KEY_CHUNK_COUNT, im.chunk_count)
    writer.add_uint32(IMATRIX_KEY_CHUNK_SIZE, im.chunk_size)
    for name in sorted(im.sums):
        writer.add_tensor(name + IMATRIX_SUFFIX_SUMS, im.sums[name].astype(np.float32).reshape(1, -1))
        writer.add_tensor(name + IMATRIX_SUFFIX_COUNTS, np.array([[im.counts[name]]], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def load_gguf(path: Path) -> Imatrix:
    import gguf

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such imatrix file")
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError) as err:
        raise InputError(f"{path}: not an imatrix GGUF ({err})") from None
    fields = reader.fields
    im = Imatrix()
    if IMATRIX_KEY_CHUNK_COUNT in fields:
        im.chunk_count = int(fields[IMATRIX_KEY_CHUNK_COUNT].contents())
    if IMATRIX_KEY_CHUNK_SIZE in fields:
        im.chunk_size = int(fields[IMATRIX_KEY_CHUNK_SIZE].contents())
    if IMATRIX_KEY_DATASETS in fields:
        im.datasets = list(fields[IMATRIX_KEY_DATASETS].contents())
    for t in reader.tensors:
        if t.name.endswith(IMATRIX_SUFFIX_SUMS):
            im.sums[t.name[: -len(IMATRIX_SUFFIX_SUMS)]] = np.array(t.data, dtype=np.float64).reshape(-1)
        elif t.name.endswith(IMATRIX_SUFFIX_COUNTS):
            im.counts[t.name[: -len(IMATRIX_SUFFIX_COUNTS)]] = int(round(float(np.array(t.data).reshape(-1)[0])))
    if not im.sums or set(im.sums) != set(im.counts):
        raise InputError(f"{path}: no imatrix data, or sums without counts")
    return im


def compute(model_path: Path, text: str, *, n_ctx: int = PPL_CHUNK, max_chunks: int | None = None,
            n_threads: int | None = None, dataset: str = "", progress: Progress | None = None) -> Imatrix:
    """Tokenize `text` with the model, cut it into chunks as imatrix.cpp does, collect in llama.cpp."""
    from .llama_runner import LlamaRunner
    from .textdata import chunk_tokens

    with LlamaRunner(model_path, n_ctx, n_threads) as runner:
        tokens = runner.tokenize(text)
        chunks = chunk_tokens(tokens, n_ctx, runner.bos if runner.add_bos else None, max_chunks)
    if not chunks:
        raise InputError(f"{dataset or 'calibration text'}: {len(tokens)} tokens, shorter than one chunk of {n_ctx}")
    im = collect_llama_cpp(model_path, chunks, n_threads, progress)
    im.datasets = [dataset] if dataset else []
    return im
