"""Per-architecture facts for the converter: one entry per Hugging Face `model_type`.

Each entry says which GGUF architecture it becomes, which hyperparameters llama.cpp reads, how a
tensor must be rearranged on the way (LLaMA's q/k rows, BLOOM's fused QKV), and the shape every
tensor must have given config.json, so a mismatched checkpoint fails before anything is written.
References: llama.cpp convert_hf_to_gguf.py (LlamaModel, Qwen2Model, BloomModel) and
src/llama-model.cpp (what the loader expects).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from gguf import GGUFWriter, MODEL_ARCH, RopeScalingType

from belle.app.errors import ModelFileError

BLOCK_RE = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class Arch:
    model_type: str  # config.json "model_type"
    gguf_arch: MODEL_ARCH
    write_hparams: Callable[[GGUFWriter, dict], None]
    # GGUF tensor kind ("attn_q.weight", "token_embd.weight") -> expected HF shape [out, in]
    shapes: Callable[[dict], dict[str, tuple[int, ...]]]
    transform: Callable[[str, np.ndarray, dict], np.ndarray] = lambda kind, x, cfg: x
    strip_prefix: str = ""  # removed from HF names before the name map (BLOOM's "transformer.")
    skip_suffixes: tuple[str, ...] = (".rotary_emb.inv_freq", ".attention.masked_bias", ".attention.bias")
    # tensor kinds every block must have (the rest, e.g. biases, are optional)
    required_block_kinds: tuple[str, ...] = field(default=())
    bpe_only: bool = False  # False: prefer tokenizer.model (SentencePiece) when present


ARCHITECTURES: dict[str, Arch] = {}


def register(arch: Arch) -> Arch:
    ARCHITECTURES[arch.model_type] = arch
    return arch


def get_arch(config: dict, config_path: str = "config.json") -> Arch:
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ModelFileError(
            f"{config_path}: model_type {model_type!r} is not supported (supported: {', '.join(sorted(ARCHITECTURES))})"
        )
    return ARCHITECTURES[model_type]


def need(config: dict, *keys: str):
    """The first of `keys` present in config.json, or a one-line error naming them."""
    for key in keys:
        if key in config and config[key] is not None:
            return config[key]
    raise ModelFileError(f"config.json: missing field {' / '.join(keys)}")


def rope_theta(config: dict, default: float = 10000.0) -> float:
    # transformers 5 moved rope_theta into rope_parameters
    params = config.get("rope_parameters") or {}
    return float(config.get("rope_theta") or params.get("rope_theta") or default)


def rope_scaling(config: dict) -> dict | None:
    scaling = config.get("rope_scaling") or config.get("rope_parameters") or None
    if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        return scaling
    return None


# --- LLaMA family (LLaMA-1/2, BELLE-LLaMA, Chinese-LLaMA, SmolLM2) and Qwen2 ------------------

def _llama_dims(cfg: dict) -> tuple[int, int, int, int, int, int]:
    n_embd = need(cfg, "hidden_size")
    n_head = need(cfg, "num_attention_heads")
    n_head_kv = cfg.get("num_key_value_heads") or n_head
    head_dim = cfg.get("head_dim") or n_embd // n_head
    return n_embd, n_head, n_head_kv, head_dim, need(cfg, "intermediate_size"), need(cfg, "vocab_size")


def _write_llama_common(w: GGUFWriter, cfg: dict) -> None:
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab = _llama_dims(cfg)
    w.add_context_length(need(cfg, "max_position_embeddings"))
    w.add_embedding_length(n_embd)
    w.add_block_count(need(cfg, "num_hidden_layers"))
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_freq_base(rope_theta(cfg))
    w.add_layer_norm_rms_eps(need(cfg, "rms_norm_eps"))
    if cfg.get("head_dim") and cfg["head_dim"] != n_embd // n_head:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if (scaling := rope_scaling(cfg)) and scaling.get("rope_type", scaling.get("type")) == "linear":
        w.add_rope_scaling_type(RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(scaling["factor"]))
    elif scaling:
        raise ModelFileError(f"config.json: rope scaling {scaling} is not supported by the converter yet")


def _write_llama(w: GGUFWriter, cfg: dict) -> None:
    _write_llama_common(w, cfg)
    n_embd, n_head, _, head_dim, _, n_vocab = _llama_dims(cfg)
    w.add_vocab_size(n_vocab)
    w.add_rope_dimension_count(head_dim)


def _llama_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab = _llama_dims(cfg)
    return {
        "token_embd.weight": (n_vocab, n_embd),
        "output.weight": (n_vocab, n_embd),
        "output_norm.weight": (n_embd,),
        "attn_norm.weight": (n_embd,),
        "ffn_norm.weight": (n_embd,),
        "attn_q.weight": (n_head * head_dim, n_embd),
        "attn_k.weight": (n_head_kv * head_dim, n_embd),
        "attn_v.weight": (n_head_kv * head_dim, n_embd),
        "attn_q.bias": (n_head * head_dim,),
        "attn_k.bias": (n_head_kv * head_dim,),
        "attn_v.bias": (n_head_kv * head_dim,),
        "attn_output.weight": (n_embd, n_head * head_dim),
        "ffn_gate.weight": (n_ff, n_embd),
        "ffn_up.weight": (n_ff, n_embd),
        "ffn_down.weight": (n_embd, n_ff),
    }


def permute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF LLaMA rotates the two halves of each head; llama.cpp rotates adjacent pairs.

    Reorder the rows of q_proj / k_proj (and their biases) from (n_head, 2, head_dim/2) to
    (n_head, head_dim/2, 2), as convert_hf_to_gguf.py LlamaModel.permute does. w: [n_head*head_dim, ...]
    """
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama_transform(kind: str, x: np.ndarray, cfg: dict) -> np.ndarray:
    _, n_head, n_head_kv, _, _, _ = _llama_dims(cfg)
    if kind.startswith("attn_q."):
        return permute_rotary(x, n_head)
    if kind.startswith("attn_k."):
        return permute_rotary(x, n_head_kv)
    return x


LLAMA_BLOCK_KINDS = ("attn_norm.weight", "ffn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight",
                     "attn_output.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")

register(Arch("llama", MODEL_ARCH.LLAMA, _write_llama, _llama_shapes, _llama_transform,
              required_block_kinds=LLAMA_BLOCK_KINDS))


def _write_qwen2(w: GGUFWriter, cfg: dict) -> None:
    _write_llama_common(w, cfg)


# Qwen2 uses NEOX-style rotary in llama.cpp (halves, like HF), so no permutation.
register(Arch("qwen2", MODEL_ARCH.QWEN2, _write_qwen2, _llama_shapes,
              required_block_kinds=LLAMA_BLOCK_KINDS + ("attn_q.bias", "attn_k.bias", "attn_v.bias"),
              bpe_only=True))


# --- BLOOM (BELLE-7B-2M is BLOOMZ-7b1-mt) -----------------------------------------------------

def _bloom_dims(cfg: dict) -> tuple[int, int, int]:
    return need(cfg, "hidden_size", "n_embed"), need(cfg, "n_head", "num_attention_heads"), need(cfg, "vocab_size")


def _write_bloom(w: GGUFWriter, cfg: dict) -> None:
    n_embd, n_head, _ = _bloom_dims(cfg)
    # BLOOM uses ALiBi, so the context length is advisory; 2048 is its training length.
    w.add_context_length(cfg.get("seq_length", 2048))
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(4 * n_embd)
    w.add_block_count(need(cfg, "n_layer", "num_hidden_layers"))
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_layer_norm_eps(need(cfg, "layer_norm_epsilon"))


def _bloom_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    n_embd, _, n_vocab = _bloom_dims(cfg)
    shapes = {"token_embd.weight": (n_vocab, n_embd), "output.weight": (n_vocab, n_embd),
              "attn_qkv.weight": (3 * n_embd, n_embd), "attn_qkv.bias": (3 * n_embd,),
              "attn_output.weight": (n_embd, n_embd), "attn_output.bias": (n_embd,),
              "ffn_up.weight": (4 * n_embd, n_embd), "ffn_up.bias": (4 * n_embd,),
              "ffn_down.weight": (n_embd, 4 * n_embd), "ffn_down.bias": (n_embd,)}
    for norm in ("token_embd_norm", "output_norm", "attn_norm", "ffn_norm"):
        shapes[f"{norm}.weight"] = shapes[f"{norm}.bias"] = (n_embd,)
    return shapes


def _bloom_transform(kind: str, x: np.ndarray, cfg: dict) -> np.ndarray:
    """HF BLOOM interleaves q, k, v per head: rows (n_head, 3, head_dim); llama.cpp wants [q; k; v]."""
    if kind.startswith("attn_qkv."):
        n_embd, n_head, _ = _bloom_dims(cfg)
        per_head = x.reshape(n_head, 3, n_embd // n_head, *x.shape[1:])
        return np.concatenate([per_head[:, i].reshape(n_embd, *x.shape[1:]) for i in range(3)], axis=0)
    return x


register(Arch("bloom", MODEL_ARCH.BLOOM, _write_bloom, _bloom_shapes, _bloom_transform,
              strip_prefix="transformer.",
              required_block_kinds=("attn_norm.weight", "attn_qkv.weight", "attn_output.weight",
                                    "ffn_norm.weight", "ffn_up.weight", "ffn_down.weight"),
              bpe_only=True))
