"""What changes when belle runs on a phone.

A phone build runs inside Flet's embedded Python, which sets FLET_PLATFORM to "android" or "ios";
that one process-level signal switches on everything here. A phone differs from a laptop in ways
that matter to llama.cpp:

- Threads. llama-cpp-python's defaults are cpu_count // 2 for decoding and cpu_count for prompt
  reading: every core, the slow little ones included, which makes the whole pass wait for them,
  heats the phone and gets a backgrounded app throttled or killed. A phone gets a few threads,
  never more than its big cores.
- Memory. `Llama.__init__` allocates an n_batch x n_vocab float32 array in Python: 311 MB at
  n_batch 512 with Qwen's 151,936-token vocabulary, 39 MB at 64. The KV cache grows with n_ctx, so
  a new chat starts at 2048 tokens. Weights are memory-mapped: mapped pages are clean, so the OS can
  drop them under pressure instead of killing the app (the peak is no lower).
- The fit check counts the interpreter and that Python array, and compares with the memory
  available now (a phone's other apps hold much of its RAM).
- Files live in FLET_APP_STORAGE_DATA, the app's private folder that the OS keeps and backs up
  (never its cache or temp folders, which it may empty): see paths.home.
- No pip: a catalog model that comes in a wheel cannot be fetched, so the first start offers a
  small Chinese-capable model from the hub instead.
"""

import os
from dataclasses import dataclass

PHONE_PLATFORMS = ("android", "ios")

PHONE_N_CTX = 2048
PHONE_N_BATCH = 64
PHONE_DECODE_THREADS = 2  # decoding is bound by memory bandwidth: two big cores get most of it
PHONE_BATCH_THREADS = 4  # prompt reading is compute-bound and scales further, up to the big cores
INTERPRETER_BYTES = 90 * 10**6  # Python, numpy and llama_cpp imported, measured beside the model on Linux
# Offered at the first start of a phone with no model: Chinese and English, ~490 MB, about 1 GB of RAM.
STARTER_MODEL = "qwen2.5-0.5b-instruct-q4_k_m"


def platform() -> str:
    """"android", "ios", another Flet platform name, or "" outside a Flet-built app."""
    return os.environ.get("FLET_PLATFORM", "").strip().lower()


def is_phone() -> bool:
    return platform() in PHONE_PLATFORMS


@dataclass(frozen=True)
class PhoneLoad:
    """What a phone passes to llama_cpp.Llama where the caller did not choose."""
    n_threads: int
    n_threads_batch: int
    n_batch: int = PHONE_N_BATCH
    use_mmap: bool = True


def phone_threads(big_cores: int | None, logical: int) -> tuple[int, int]:
    """(n_threads, n_threads_batch). `big_cores`: the performance cores where the kernel says (ARM
    big.LITTLE reports each core's capacity), else None: then a quarter of the cores, since most
    phones have at least as many little cores as big ones."""
    cap = max(1, min(big_cores or logical // 4, logical))
    return min(PHONE_DECODE_THREADS, cap), min(PHONE_BATCH_THREADS, cap)


def phone_load() -> PhoneLoad | None:
    """The phone's load settings, or None on a desktop (which keeps its own defaults)."""
    if not is_phone():
        return None
    from .threads import logical_cores, performance_cores

    return PhoneLoad(*phone_threads(performance_cores(), logical_cores()))


def python_overhead(n_vocab: int, n_batch: int = PHONE_N_BATCH) -> int:
    """Memory a loaded model costs outside llama.cpp's own estimate: the interpreter with its imports
    and llama-cpp-python's n_batch x n_vocab float32 logits array."""
    return INTERPRETER_BYTES + n_batch * n_vocab * 4
