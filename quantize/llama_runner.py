"""A llama.cpp model and context through the low-level binding: all-position logits per chunk, and
an optional eval callback (`cb_eval`) that sees every matrix multiplication, as tools/imatrix does.

The high-level `llama_cpp.Llama` cannot take a `cb_eval`, and its `scores` buffer holds the whole
context; this keeps exactly one chunk of logits at a time.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np

from belle.app.errors import ModelFileError

log = logging.getLogger(__name__)


class LlamaRunner:
    """One loaded model with one context of n_ctx tokens; evaluates whole chunks from position 0."""

    def __init__(self, path: Path, n_ctx: int = 512, n_threads: int | None = None,
                 cb_eval: Callable | None = None, f32_cache: bool = False):
        import llama_cpp

        from .llama_log import route_llama_log

        route_llama_log()
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"{self.path}: no such file")
        self._ll = llama_cpp
        mparams = llama_cpp.llama_model_default_params()
        self.model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not self.model:
            raise ModelFileError(f"{self.path}: llama.cpp cannot load it (not a GGUF model, or an unsupported one)")
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = n_ctx
        threads = n_threads or os.cpu_count() or 1
        cparams.n_threads = cparams.n_threads_batch = threads
        if f32_cache:
            cparams.type_k = cparams.type_v = llama_cpp.GGML_TYPE_F32
        self._cb = None
        if cb_eval is not None:
            self._cb = llama_cpp.ggml_backend_sched_eval_callback(cb_eval)  # keep alive
            cparams.cb_eval = self._cb
            cparams.cb_eval_user_data = None
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise ModelFileError(f"{self.path}: llama.cpp cannot create a context for it")
        self.n_ctx = n_ctx
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.bos = llama_cpp.llama_vocab_bos(self.vocab)
        self._batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)

    def tokenize(self, text: str) -> list[int]:
        """Tokens of `text`, with BOS if the model adds one (common_tokenize(ctx, text, add_special=true))."""
        data = text.encode("utf-8")
        n_max = len(data) + 16
        buf = (self._ll.llama_token * n_max)()
        n = self._ll.llama_tokenize(self.vocab, data, len(data), buf, n_max, True, False)
        if n < 0:
            raise RuntimeError(f"tokenizer needs {-n} slots")
        return list(buf[:n])

    def logits(self, tokens: list[int]) -> np.ndarray:
        """Logits at every position of `tokens` (a fresh sequence from position 0): [n_tokens, n_vocab]."""
        n = len(tokens)
        if not 0 < n <= self.n_ctx:
            raise ValueError(f"{n} tokens for a context of {self.n_ctx}")
        self._ll.llama_memory_clear(self._ll.llama_get_memory(self.ctx), True)
        b = self._batch
        b.n_tokens = n
        for i, t in enumerate(tokens):
            b.token[i] = t
            b.pos[i] = i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = 1
        rc = self._ll.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc})")
        ptr = self._ll.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(n, self.n_vocab)).copy()

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self._ll.llama_batch_free(self._batch)
            self._ll.llama_free(self.ctx)
            self._ll.llama_model_free(self.model)
            self.ctx = None

    def __enter__(self) -> "LlamaRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # at interpreter shutdown the binding may already be gone
            pass
