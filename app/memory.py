"""Will this model fit? Compares the estimate from gguf_info with the machine's free memory."""

import os
import sys
from dataclasses import dataclass

try:
    import psutil
except ImportError:  # iOS: Flet's mobile wheels build psutil for Android only
    psutil = None

from . import device
from .gguf_info import ModelInfo, RamEstimate, estimate_ram, human_bytes

TIGHT_MARGIN = 0.8  # above 80% of available memory the OS starts paging on most machines


@dataclass
class FitCheck:
    verdict: str  # "fits" | "tight" | "wont_fit"
    estimate: RamEstimate
    available: int

    def message(self, name: str) -> str:
        return (f"{name} needs about {human_bytes(self.estimate.total)} (weights {human_bytes(self.estimate.weights)}, "
                f"KV cache {human_bytes(self.estimate.kv_cache)}, compute {human_bytes(self.estimate.compute)}) "
                f"but {human_bytes(self.available)} is free")


def available_memory() -> int:
    """Memory available now: free plus what the OS can reclaim at once (page cache)."""
    if psutil is not None:
        return psutil.virtual_memory().available
    # Without psutil (an iOS build): the whole RAM, an upper bound, so the check only ever says
    # "fits" too often; it never blocks anything.
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def estimate_need(info: ModelInfo, n_ctx: int) -> RamEstimate:
    """The estimate for the way this device loads models: a phone reads prompts in small batches
    (less compute buffer) but pays for the interpreter and llama-cpp-python's logits array, counted
    as compute (see device.py)."""
    if not device.is_phone():
        return estimate_ram(info, n_ctx)
    est = estimate_ram(info, n_ctx, n_batch=device.PHONE_N_BATCH)
    extra = device.python_overhead(info.n_vocab)
    return RamEstimate(est.weights, est.kv_cache, est.compute + extra, est.total + extra)


def check_fit(info: ModelInfo, n_ctx: int, available: int | None = None) -> FitCheck:
    """Against the memory available now (free plus reclaimable cache), never the total: on a phone
    the other apps hold much of it."""
    est = estimate_need(info, n_ctx)
    available = available_memory() if available is None else available
    if est.total > available:
        verdict = "wont_fit"
    elif est.total > available * TIGHT_MARGIN:
        verdict = "tight"
    else:
        verdict = "fits"
    return FitCheck(verdict, est, available)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
