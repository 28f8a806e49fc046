"""Read and check a GGUF model file's metadata without loading it, and estimate the RAM it needs.

Catches what makes llama.cpp fail late or crash: not a GGUF file, a truncated file, missing keys.
"""

import os
from collections import Counter
from dataclasses import dataclass, field
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

    @property
    def head_dim(self) -> int:
        return self.n_embd // max(self.n_head, 1)


@dataclass
class RamEstimate:
    weights: int
    kv_cache: int
    compute: int
    total: int


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    try:
        return f.contents()
    except Exception:  # a malformed field is as good as a missing one here
        return default


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such model file")
    if path.is_dir():
        raise ModelFileError(f"{path}: is a directory, not a GGUF model file")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise ModelFileError(f"{path}: not a GGUF file (starts with {magic!r}, expected b'GGUF')")

    from gguf import GGUFReader  # numpy-only; deferred so `belle --help` stays fast

    try:
        reader = GGUFReader(path, "r")
    except Exception as err:  # the reader raises ValueError/IndexError/... on any damage
        raise ModelFileError(f"{path}: truncated or corrupt GGUF header ({type(err).__name__}: {err})") from None

    end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise ModelFileError(f"{path}: truncated: tensor data needs {end:,} bytes but the file has {size:,}")

    arch = _field(reader, "general.architecture")
    if not arch:
        raise ModelFileError(f"{path}: missing general.architecture; not a model GGUF")

    def hp(key, default=0):
        value = _field(reader, f"{arch}.{key}", default)
        return int(value[0] if isinstance(value, list) else value)

    tokens = _field(reader, "tokenizer.ggml.tokens") or []
    types = _field(reader, "tokenizer.ggml.token_type") or []
    special = {tokens[i]: i for i, t in enumerate(types) if t in _SPECIAL_TOKEN_TYPES and i < len(tokens)}
    bos_id = _field(reader, "tokenizer.ggml.bos_token_id")
    eos_id = _field(reader, "tokenizer.ggml.eos_token_id")
    n_head = hp("attention.head_count", 1)
    return ModelInfo(
        path=path,
        file_size=size,
        architecture=arch,
        name=_field(reader, "general.name") or path.stem,
        n_params=sum(int(t.n_elements) for t in reader.tensors),
        n_layers=hp("block_count"),
        n_ctx_train=hp("context_length"),
        n_embd=hp("embedding_length"),
        n_head=n_head,
        n_head_kv=hp("attention.head_count_kv", n_head),
        n_ff=hp("feed_forward_length"),
        n_vocab=len(tokens),
        tensor_types=dict(Counter(t.tensor_type.name for t in reader.tensors)),
        chat_template=_field(reader, "tokenizer.chat_template"),
        bos_token=tokens[bos_id] if bos_id is not None and bos_id < len(tokens) else "",
        eos_token=tokens[eos_id] if eos_id is not None and eos_id < len(tokens) else "",
        special_tokens=special,
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
