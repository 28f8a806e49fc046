"""Read and check a GGUF model file's metadata without loading it, and estimate the RAM it needs.

Catches what makes llama.cpp fail late or crash: not a GGUF file, a truncated file, missing keys.
"""

import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .errors import ModelFileError

GGUF_MAGIC = b"GGUF"
# gguf token types (gguf-py constants.TokenType): CONTROL and USER_DEFINED are the ones
# llama.cpp parses as special tokens when asked to.
_SPECIAL_TOKEN_TYPES = (3, 4)
# Architectures whose chat behaviour we test or ship in the catalog; others still load if
# llama.cpp knows them, this only improves the error when it does not.
KNOWN_ARCHITECTURES = (
    "llama", "qwen2", "qwen3", "qwen2moe", "qwen3moe", "bloom", "gemma", "gemma2", "gemma3", "phi3",
    "mistral3", "deepseek2", "chatglm", "glm4", "internlm2", "baichuan", "minicpm", "starcoder2", "falcon",
    "gpt2", "stablelm", "olmo", "granite", "exaone",
)
# The model card `belle build` writes into the files it makes: string keys CARD_PREFIX + field, in
# the order people read them. A file may carry any subset; other GGUF files carry none.
CARD_PREFIX = "belle.card."
CARD_FIELDS = ("base", "data", "template", "training", "quantization", "fidelity", "built", "recipe")


@dataclass
class ModelInfo:
    path: Path
    file_size: int
    architecture: str
    name: str
    n_params: int
    n_layers: int
    n_ctx_train: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    tensor_types: dict[str, int]
    chat_template: str | None
    bos_token: str
    eos_token: str
    special_tokens: dict[str, int] = field(repr=False)
    card: dict[str, str] = field(default_factory=dict, repr=False)  # CARD_FIELDS order, unknown fields after

    @property
    def head_dim(self) -> int:
        return self.n_embd // max(self.n_head, 1)


@dataclass
class RamEstimate:
    weights: int
    kv_cache: int
    compute: int
    total: int


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# Arrays we keep; other big arrays (merges, scores) are skipped without decoding.
_KEEP_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type")


class _Header:
    """A reader of the GGUF header (spec: ggml/docs/gguf.md) over a growing in-memory buffer.
    gguf-py's GGUFReader maps every array element into numpy views, ~4 s for a 49k vocabulary;
    app start-up needs only the scalars, the token types and the tensor table."""

    def __init__(self, fh):
        self.fh = fh
        self.buf = b""
        self.pos = 0

    def _need(self, n: int) -> None:
        if self.pos + n > len(self.buf):
            more = self.fh.read(max(n, 4 << 20))
            self.buf = self.buf[self.pos:] + more
            self.pos = 0
            if n > len(self.buf):
                raise EOFError(f"file ends inside the header (wanted {n} bytes at offset {self.tell()})")

    def tell(self) -> int:
        return self.fh.tell() - len(self.buf) + self.pos

    def read(self, n: int) -> bytes:
        self._need(n)
        self.pos += n
        return self.buf[self.pos - n : self.pos]

    def unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        self._need(size)
        self.pos += size
        return struct.unpack_from(fmt, self.buf, self.pos - size)[0]

    def string(self) -> bytes:
        return self.read(self.unpack("<Q"))

    def value(self, vtype: int, keep: bool = True):
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string().decode("utf-8", errors="replace")
        if vtype != _ARRAY:
            raise ValueError(f"unknown GGUF value type {vtype}")
        item_type, count = self.unpack("<I"), self.unpack("<Q")
        if item_type in _SCALARS:
            fmt = _SCALARS[item_type]
            data = self.read(struct.calcsize(fmt) * count)
            return list(struct.unpack(f"<{count}{fmt[1]}", data)) if keep else None
        if item_type == _STRING:
            out = [self.string() for _ in range(count)]
            return out if keep else None
        return [self.value(item_type, keep) for _ in range(count)]


def _parse(path: Path) -> tuple[dict, list[tuple[str, int]], int]:
    """Returns (metadata, [(ggml type name, n_elements)] per tensor, file size the tensor data needs)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType  # format facts; cheap import

    with open(path, "rb") as fh:
        h = _Header(fh)
        h.read(4)  # magic, checked by the caller
        version = h.unpack("<I")
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version}")
        n_tensors, n_kv = h.unpack("<Q"), h.unpack("<Q")
        meta = {}
        for _ in range(n_kv):
            key = h.string().decode("utf-8", errors="replace")
            vtype = h.unpack("<I")
            meta[key] = h.value(vtype, keep=vtype != _ARRAY or key in _KEEP_ARRAYS)
        tensors, data_end = [], 0
        for _ in range(n_tensors):
            h.string()  # name
            dims = [h.unpack("<Q") for _ in range(h.unpack("<I"))]
            qtype, offset = GGMLQuantizationType(h.unpack("<I")), h.unpack("<Q")
            n_elements = 1
            for d in dims:
                n_elements *= d
            block, type_size = GGML_QUANT_SIZES[qtype]
            tensors.append((qtype.name, n_elements))
            data_end = max(data_end, offset + n_elements // block * type_size)
        alignment = int(meta.get("general.alignment", 32))
        data_start = -(-h.tell() // alignment) * alignment
    return meta, tensors, data_start + data_end


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        st = None
    if st is not None and not path.is_dir():
        return _read_cached(path, st.st_size, st.st_mtime_ns)
    return _read(path)


@lru_cache(maxsize=32)
def _read_cached(path: Path, size: int, mtime_ns: int) -> ModelInfo:
    return _read(path)  # keyed on size and mtime: a replaced file is read again


def _describe_magic(magic: bytes) -> str:
    """The first bytes as people read them: text when printable (a zip shows "PK"), else hex."""
    text = magic.decode("ascii", errors="replace")
    if text.isprintable() and "\ufffd" not in text:
        return f'"{text}"'
    return "bytes " + magic.hex(" ")


def _card(meta: dict) -> dict[str, str]:
    """The belle.card.* strings without the prefix: known fields first, in CARD_FIELDS order, then
    fields a newer `belle build` may add, in file order. Empty and non-string values are left out
    (the header reader drops arrays it does not keep, so those arrive as None)."""
    found = {key[len(CARD_PREFIX):]: value for key, value in meta.items()
             if key.startswith(CARD_PREFIX) and isinstance(value, str) and value.strip()}
    known = {name: found.pop(name) for name in CARD_FIELDS if name in found}
    return known | found


def _add_split_parts(path: Path, count: int, size: int, tensors: list) -> tuple[int, list]:
    """A split GGUF (NAME-00001-of-0000N.gguf, as llama.cpp's gguf-split writes it) is one model:
    the weights and parameters of all its parts count, and a missing part means it cannot load."""
    from .hub import split_siblings

    parts = split_siblings(path)
    if len(parts) != count:
        raise ModelFileError(f"{path}: part of a {count}-part split model; open its first part, "
                             "NAME-00001-of-...gguf, with the other parts beside it")
    tensors = list(tensors)
    for part in parts[1:]:
        if not part.exists():
            raise ModelFileError(f"{path}: part {part.name} of this split model is missing")
        try:
            _, more, needed = _parse(part)
        except Exception as err:
            raise ModelFileError(f"{part}: truncated or corrupt GGUF header ({err})") from None
        if needed > part.stat().st_size:
            raise ModelFileError(f"{part}: truncated: tensor data needs {needed:,} bytes but the file has "
                                 f"{part.stat().st_size:,}")
        tensors += more
        size += part.stat().st_size
    return size, tensors


def _read(path: Path) -> ModelInfo:
    if not path.exists():
        raise ModelFileError(f"{path}: no such model file")
    if path.is_dir():
        raise ModelFileError(f"{path}: is a directory, not a GGUF model file")
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as err:
        raise ModelFileError(f"{path}: cannot read the file ({(err.strerror or str(err)).lower()})") from None
    if magic != GGUF_MAGIC:
        found = f"starts with {_describe_magic(magic)}" if magic else "the file is empty"
        raise ModelFileError(f"{path}: not a GGUF file ({found}; a GGUF file starts with \"GGUF\")")
    try:
        meta, tensors, needed = _parse(path)
    except Exception as err:  # EOFError, struct.error, bad enum values: all mean a damaged header
        raise ModelFileError(f"{path}: truncated or corrupt GGUF header ({err})") from None
    if needed > size:
        raise ModelFileError(f"{path}: truncated: tensor data needs {needed:,} bytes but the file has {size:,}")

    arch = meta.get("general.architecture")
    if not arch:
        raise ModelFileError(f"{path}: missing general.architecture; not a model GGUF")
    if int(meta.get("split.count", 1) or 1) > 1:
        size, tensors = _add_split_parts(path, int(meta["split.count"]), size, tensors)

    def hp(key, default=0):
        value = meta.get(f"{arch}.{key}", default)
        return int(max(value) if isinstance(value, list) else value)  # some models store per-layer arrays

    tokens = meta.get("tokenizer.ggml.tokens") or []
    types = meta.get("tokenizer.ggml.token_type") or []

    def token_text(i):
        return tokens[i].decode("utf-8", errors="replace") if i is not None and 0 <= i < len(tokens) else ""

    special = {token_text(i): i for i, t in enumerate(types) if t in _SPECIAL_TOKEN_TYPES and i < len(tokens)}
    n_head = hp("attention.head_count", 1)
    return ModelInfo(
        path=path,
        file_size=size,
        architecture=arch,
        name=meta.get("general.name") or path.stem,
        n_params=sum(n for _, n in tensors),
        n_layers=hp("block_count"),
        n_ctx_train=hp("context_length"),
        n_embd=hp("embedding_length"),
        n_head=n_head,
        n_head_kv=hp("attention.head_count_kv", n_head),
        n_ff=hp("feed_forward_length"),
        n_vocab=len(tokens),
        tensor_types=dict(Counter(t for t, _ in tensors)),
        chat_template=meta.get("tokenizer.chat_template"),
        bos_token=token_text(meta.get("tokenizer.ggml.bos_token_id")),
        eos_token=token_text(meta.get("tokenizer.ggml.eos_token_id")),
        special_tokens=special,
        card=_card(meta),
    )


def estimate_ram(info: ModelInfo, n_ctx: int, n_batch: int = 512) -> RamEstimate:
    """Rough peak RSS with use_mmap=False: weights once, an f16 KV cache, and llama.cpp's compute
    buffer (attention scores for one batch, FFN activations, logits) plus runtime overhead."""
    kv = 2 * info.n_layers * n_ctx * info.n_head_kv * info.head_dim * 2
    compute = n_batch * 4 * (min(n_ctx, 4096) * info.n_head + 3 * info.n_ff + info.n_vocab) + 64 * 2**20
    weights = info.file_size
    return RamEstimate(weights, kv, compute, weights + kv + compute)


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return str(n)
