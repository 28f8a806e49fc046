"""Helpers shared by the quantize tests (a module of its own: two conftest.py files cannot be imported by name)."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parents[2] / "assets"


def llama_logits(path: Path, ids: list[int], n_ctx: int = 256):
    """llama.cpp logits for every position of `ids` (F32 KV cache, so only the weights differ)."""
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=2,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()
