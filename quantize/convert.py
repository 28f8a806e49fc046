"""Hugging Face directory -> GGUF (F32 / F16 / BF16), one tensor in memory at a time.

Plan first (names, shapes and types from the checkpoint index, checked against config.json), write
the header and tensor infos, then stream: read one tensor, rearrange it, cast it, append it, drop it.
The output is written to `OUT.part` and renamed at the end, so a failed run leaves no half file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import gguf
from gguf import GGMLQuantizationType, GGUFWriter

from belle.app.errors import BelleError, ModelFileError

from .arch import Arch, BLOCK_RE, get_arch, need
from .constants import OUTTYPES, outtype_types
from .hf_reader import HFCheckpoint
from .vocab import default_chat_template, read_vocab, resolve_chat_template, write_vocab

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]  # (tensors done, total, current name)
# A quantizer's output for one tensor: GGUF block bytes [rows, bytes per row] in the checkpoint's
# row order (the converter applies the same row rearrangement as for float tensors).
PackedSource = Callable[["PlannedTensor"], np.ndarray]


@dataclass(frozen=True)
class PlannedTensor:
    hf_name: str
    gguf_name: str
    kind: str  # gguf_name without "blk.N." (the key of Arch.shapes)
    shape: tuple[int, ...]  # numpy order, as written
    qtype: GGMLQuantizationType

    @property
    def nbytes(self) -> int:
        if self.qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16):
            return int(np.prod(self.shape)) * (4 if self.qtype == GGMLQuantizationType.F32 else 2)
        return int(np.prod(gguf.quants.quant_shape_to_byte_shape(self.shape, self.qtype)))

    @property
    def packed(self) -> bool:
        """Block-quantized: its bytes come pre-packed from a quantizer, not from the checkpoint."""
        return self.qtype not in (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)


def check_output_path(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise BelleError(f"{out}: already exists (use --force to overwrite)")
    if not out.parent.is_dir():
        raise BelleError(f"{out.parent}: output directory does not exist")


def check_inputs(model_dir: Path, out: Path, outtype: str, force: bool) -> None:
    """What every converter entry point checks before reading anything."""
    if outtype not in OUTTYPES:
        raise BelleError(f"--outtype {outtype!r}: choose one of {', '.join(OUTTYPES)}")
    check_output_path(out, force)
    if not model_dir.is_dir():
        raise ModelFileError(f"{model_dir}: not a directory")


def plan_tensors(ckpt: HFCheckpoint, arch: Arch, outtype: str) -> list[PlannedTensor]:
    cfg = ckpt.config
    n_blocks = need(cfg, "num_hidden_layers", "n_layer")
    name_map = gguf.get_tensor_name_map(arch.gguf_arch, n_blocks)
    expected = arch.shapes(cfg)
    weight_type = outtype_types(outtype)[0]
    plan: list[PlannedTensor] = []
    seen_kinds: dict[int, set[str]] = {b: set() for b in range(n_blocks)}
    for hf_name, entry in ckpt.entries.items():
        if hf_name.endswith(arch.skip_suffixes):
            continue
        short = hf_name[len(arch.strip_prefix):] if hf_name.startswith(arch.strip_prefix) else hf_name
        gguf_name = name_map.get_name(short, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ModelFileError(f"{entry.file}: tensor {hf_name} has no GGUF name for {arch.model_type}")
        m = BLOCK_RE.match(gguf_name)
        kind = gguf_name[m.end():] if m else gguf_name
        if m:
            block = int(m.group(1))
            if block >= n_blocks:
                raise ModelFileError(f"{entry.file}: tensor {hf_name} is in block {block} but config.json has {n_blocks} layers")
            seen_kinds[block].add(kind)
        if kind in expected and tuple(entry.shape) != tuple(expected[kind]):
            raise ModelFileError(
                f"{entry.file}: tensor {hf_name} has shape {list(entry.shape)}, config.json implies {list(expected[kind])}")
        # 1-D tensors (norms, biases) stay F32, as llama.cpp expects
        qtype = weight_type if len(entry.shape) >= 2 else GGMLQuantizationType.F32
        plan.append(PlannedTensor(hf_name, gguf_name, kind, tuple(entry.shape), qtype))
    for block, kinds in seen_kinds.items():
        if missing := [k for k in arch.required_block_kinds if k not in kinds]:
            raise ModelFileError(f"{ckpt.model_dir}: block {block} lacks {', '.join(missing)} (truncated or mismatched checkpoint?)")
    if not any(p.gguf_name == "token_embd.weight" for p in plan):
        raise ModelFileError(f"{ckpt.model_dir}: no token embedding tensor found")
    return sorted(plan, key=_file_order)


def _file_order(t: PlannedTensor) -> tuple[int, int, str]:
    """Embeddings, then blocks in order, then the output head, whatever order the shards had."""
    if m := BLOCK_RE.match(t.gguf_name):
        return (1, int(m.group(1)), t.kind)
    return (0 if t.gguf_name.startswith("token_embd") else 2, 0, t.gguf_name)


ENCODE_ROWS = 4096  # rows converted at a time, so F16/BF16 temporaries stay small even for a 250k-row embedding


def _encode(x: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """float32 [rows, ...] -> the bytes GGUF stores for qtype (F32, F16, or BF16 as raw uint8)."""
    if qtype == GGMLQuantizationType.F32:
        return np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim < 2 or x.shape[0] <= ENCODE_ROWS:
        return _encode_half(x, qtype)
    first = _encode_half(x[:ENCODE_ROWS], qtype)
    out = np.empty((x.shape[0], *first.shape[1:]), dtype=first.dtype)
    out[:ENCODE_ROWS] = first
    for i in range(ENCODE_ROWS, x.shape[0], ENCODE_ROWS):
        out[i:i + ENCODE_ROWS] = _encode_half(x[i:i + ENCODE_ROWS], qtype)
    return out


def _encode_half(x: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    if qtype == GGMLQuantizationType.F16:
        return np.ascontiguousarray(x, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(x, dtype=np.float32), qtype)  # BF16, as raw bytes


def convert(model_dir: Path, out: Path, outtype: str = "f16", *, force: bool = False,
            chat_template: str | None = None, pre: str | None = None, progress: Progress | None = None,
            types: dict[str, GGMLQuantizationType] | None = None, packed: PackedSource | None = None,
            file_type=None, extra_kv: Callable[[GGUFWriter], None] | None = None,
            checkpoint: Callable[[Path], HFCheckpoint] | None = None) -> Path:
    """Convert a Hugging Face model directory to a GGUF file; returns the output path.

    A quantizer (gptq_run) reuses the whole converter: `types` maps GGUF tensor names to block
    types, `packed` returns those tensors' bytes, `file_type` / `extra_kv` fill the metadata, so a
    quantized file has exactly the vocabulary, template and hyperparameters of a converted one.
    `checkpoint` opens the directory in place of HFCheckpoint: gptq_import passes a view of a GPTQ
    checkpoint whose quantized linears appear as plain `.weight` tensors.
    """
    model_dir, out = Path(model_dir), Path(out)
    check_inputs(model_dir, out, outtype, force)
    with (checkpoint or HFCheckpoint)(model_dir) as ckpt:
        cfg = ckpt.config
        arch = get_arch(cfg, str(model_dir / "config.json"))
        plan = plan_tensors(ckpt, arch, outtype)
        if types:
            plan = [PlannedTensor(t.hf_name, t.gguf_name, t.kind, t.shape, types.get(t.gguf_name, t.qtype))
                    for t in plan]
        vocab = read_vocab(model_dir, need(cfg, "vocab_size"), prefer_sentencepiece=not arch.bpe_only, pre=pre)

        writer = GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[arch.gguf_arch])
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(str(cfg.get("_name_or_path") or cfg.get("_model_name_or_path") or model_dir.resolve().name))
        arch.write_hparams(writer, cfg)
        writer.add_file_type(file_type if file_type is not None else outtype_types(outtype)[1])
        write_vocab(writer, model_dir, vocab,
                    chat_template=resolve_chat_template(chat_template) if chat_template else None,
                    fallback_template=default_chat_template(model_dir, cfg))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        if extra_kv:
            extra_kv(writer)
        for t in plan:
            if t.packed:
                byte_shape = gguf.quants.quant_shape_to_byte_shape(t.shape, t.qtype)
                writer.add_tensor_info(t.gguf_name, byte_shape, np.dtype(np.uint8), t.nbytes, raw_dtype=t.qtype)
            elif t.qtype == GGMLQuantizationType.BF16:
                byte_shape = (*t.shape[:-1], t.shape[-1] * 2)
                writer.add_tensor_info(t.gguf_name, byte_shape, np.dtype(np.uint8), t.nbytes, raw_dtype=t.qtype)
            else:
                dtype = np.dtype(np.float32 if t.qtype == GGMLQuantizationType.F32 else np.float16)
                writer.add_tensor_info(t.gguf_name, t.shape, dtype, t.nbytes)

        part = out.with_name(out.name + ".part")
        try:
            writer.write_header_to_file(part)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for i, t in enumerate(plan):
                if t.packed:
                    if packed is None:
                        raise BelleError(f"{t.gguf_name}: {t.qtype.name} needs a quantizer")
                    data = arch.transform(t.kind, packed(t), cfg)  # row rearrangements work on byte rows
                    if data.shape != tuple(gguf.quants.quant_shape_to_byte_shape(t.shape, t.qtype)):
                        raise BelleError(f"{t.gguf_name}: quantizer gave {data.shape} bytes for {t.shape} {t.qtype.name}")
                    writer.write_tensor_data(np.ascontiguousarray(data, dtype=np.uint8))
                    del data
                    if progress:
                        progress(i + 1, len(plan), t.gguf_name)
                    continue
                data = arch.transform(t.kind, ckpt.tensor(t.hf_name), cfg)
                writer.write_tensor_data(_encode(data, t.qtype))
                del data
                if progress:
                    progress(i + 1, len(plan), t.gguf_name)
            writer.close()
            os.replace(part, out)
        except BaseException:
            writer.close()
            part.unlink(missing_ok=True)
            raise
    log.info("wrote %s (%d tensors, %s)", out, len(plan), outtype)
    return out
