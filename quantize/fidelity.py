"""How close a quantized model stays to its reference, measured as llama.cpp's perplexity tool does.

The text is tokenized once (by the reference model), cut into chunks of n_ctx tokens whose first
token becomes BOS when the model adds one, and each chunk is evaluated from an empty cache. Only
the second half of each chunk is scored (every token there has at least n_ctx/2 tokens of context):
tools/perplexity/perplexity.cpp, `first = n_ctx/2`. Per scored token we compare the candidate's
distribution with the reference's: KL(ref || cand), and whether both put the same token on top.

The reference pass writes its log-probabilities to a temporary float32 file, and each candidate then
streams through the chunks against it, so only one model is loaded at a time.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from belle.app.errors import InputError

from .constants import PPL_CHUNK
from .llama_runner import LlamaRunner
from .textdata import chunk_tokens

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (model name, chunks done, total)


@dataclass
class FidelityRow:
    model: str
    path: str
    size_bytes: int
    bpw: float  # bits per weight: tensor bytes * 8 / number of weights
    ppl: float
    mean_kld: float | None  # None for the reference itself
    kld_p99: float | None
    top1_agree_pct: float | None
    seconds: float


@dataclass
class FidelityReport:
    reference: FidelityRow
    candidates: list[FidelityRow]
    text: str
    n_ctx: int
    n_chunks: int
    n_scored: int  # tokens scored per model
    settings: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def gguf_size_and_bpw(path: Path) -> tuple[int, float]:
    import gguf

    reader = gguf.GGUFReader(path)
    n_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    n_weights = sum(int(t.n_elements) for t in reader.tensors)
    return Path(path).stat().st_size, 8.0 * n_bytes / max(n_weights, 1)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64. logits: [n, n_vocab]."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _score_positions(n_ctx: int) -> slice:
    # logits at positions first .. n_ctx-2 predict tokens first+1 .. n_ctx-1
    first = n_ctx // 2
    return slice(first, n_ctx - 1)


def evaluate(reference: Path, candidates: list[Path], text: str, *, n_ctx: int = PPL_CHUNK,
             max_chunks: int | None = None, n_threads: int | None = None, text_name: str = "",
             progress: Progress | None = None) -> FidelityReport:
    reference = Path(reference)
    pos = _score_positions(n_ctx)
    n_scored_per_chunk = pos.stop - pos.start
    with tempfile.TemporaryDirectory(prefix="belle-fidelity-") as tmp:
        start = time.perf_counter()
        with LlamaRunner(reference, n_ctx, n_threads) as ref:
            tokens = ref.tokenize(text)
            chunks = chunk_tokens(tokens, n_ctx, ref.bos if ref.add_bos else None, max_chunks)
            if not chunks:
                raise InputError(f"{text_name or 'text'}: {len(tokens)} tokens, shorter than one chunk of {n_ctx}")
            n_vocab = ref.n_vocab
            ref_lp = np.lib.format.open_memmap(Path(tmp) / "ref.npy", mode="w+", dtype=np.float32,
                                               shape=(len(chunks), n_scored_per_chunk, n_vocab))
            nll = []
            for c, chunk in enumerate(chunks):
                lp = log_softmax(ref.logits(chunk)[pos])
                ref_lp[c] = lp
                nll.append(-lp[np.arange(n_scored_per_chunk), chunk[pos.start + 1:pos.stop + 1]])
                if progress:
                    progress(reference.name, c + 1, len(chunks))
        ref_row = FidelityRow(reference.name, str(reference), *gguf_size_and_bpw(reference),
                              float(np.exp(np.concatenate(nll).mean())), None, None, None,
                              time.perf_counter() - start)
        ref_lp.flush()
        rows = [_evaluate_candidate(Path(c), chunks, ref_lp, pos, n_ctx, n_threads, n_vocab, progress)
                for c in candidates]
    return FidelityReport(ref_row, rows, text_name, n_ctx, len(chunks), len(chunks) * n_scored_per_chunk,
                          {"n_threads": n_threads})


def _evaluate_candidate(path: Path, chunks, ref_lp, pos: slice, n_ctx: int, n_threads, n_vocab: int,
                        progress: Progress | None) -> FidelityRow:
    start = time.perf_counter()
    nll, kld, agree = [], [], []
    with LlamaRunner(path, n_ctx, n_threads) as cand:
        if cand.n_vocab != n_vocab:
            raise InputError(f"{path}: vocabulary of {cand.n_vocab} tokens, the reference has {n_vocab}")
        for c, chunk in enumerate(chunks):
            lp = log_softmax(cand.logits(chunk)[pos])
            r = ref_lp[c].astype(np.float64)
            targets = chunk[pos.start + 1:pos.stop + 1]
            nll.append(-lp[np.arange(len(targets)), targets])
            kld.append((np.exp(r) * (r - lp)).sum(axis=-1))  # KL(ref || cand) per token
            agree.append(r.argmax(-1) == lp.argmax(-1))
            if progress:
                progress(path.name, c + 1, len(chunks))
    kld_all = np.maximum(np.concatenate(kld), 0.0)
    return FidelityRow(path.name, str(path), *gguf_size_and_bpw(path),
                       float(np.exp(np.concatenate(nll).mean())), float(kld_all.mean()),
                       float(np.percentile(kld_all, 99)), float(100.0 * np.concatenate(agree).mean()),
                       time.perf_counter() - start)


def format_table(report: FidelityReport) -> str:
    head = f"{'model':<36} {'size MiB':>9} {'bpw':>6} {'PPL':>9} {'mean KLD':>9} {'KLD p99':>9} {'top-1 %':>8} {'s':>6}"
    lines = [head, "-" * len(head)]
    for row in [report.reference, *report.candidates]:
        kld = f"{row.mean_kld:9.5f}" if row.mean_kld is not None else f"{'(ref)':>9}"
        p99 = f"{row.kld_p99:9.5f}" if row.kld_p99 is not None else f"{'':>9}"
        top = f"{row.top1_agree_pct:8.2f}" if row.top1_agree_pct is not None else f"{'':>8}"
        lines.append(f"{row.model[:36]:<36} {row.size_bytes / 2**20:9.1f} {row.bpw:6.2f} {row.ppl:9.4f} "
                     f"{kld} {p99} {top} {row.seconds:6.1f}")
    lines.append(f"{report.n_chunks} chunks of {report.n_ctx} tokens, {report.n_scored} tokens scored per model"
                 f" ({report.text})")
    return "\n".join(lines)
