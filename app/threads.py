"""How many threads llama.cpp should use when the user does not say.

Decoding one token reads every weight once, so it is bound by memory bandwidth and wants one thread
per physical core: SMT siblings share their core's load units, and llama.cpp's threads wait for the
slowest one at every matrix, so an extra thread on a busy or slow (efficiency) core costs more than
it brings. llama-cpp-python's own default, `os.cpu_count() // 2`, assumes two hardware threads per
core: on a 2-core machine without SMT (most cloud VMs and CI runners) that is 1 thread and about 60%
of the possible decode speed. Prompt reading (batch evaluation) is compute-bound matrix-matrix work
that SMT threads do help with, so it gets every logical core this process may run on.
"""

import os
from pathlib import Path

import psutil

_HYBRID_PERFORMANCE_CPUS = Path("/sys/devices/cpu_core/cpus")  # Linux, Intel hybrid CPUs only


def logical_cores() -> int:
    """Logical CPUs this process may use (a container or taskset may allow fewer than the machine has)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _parse_cpu_list(text: str) -> list[int]:
    cpus = []
    for part in text.strip().split(","):
        if part:
            first, _, last = part.partition("-")
            cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def _performance_cores() -> int | None:
    """Physical performance cores on an Intel hybrid CPU under Linux, else None."""
    try:
        cpus = _parse_cpu_list(_HYBRID_PERFORMANCE_CPUS.read_text())
        cores = {(Path(f"/sys/devices/system/cpu/cpu{c}/topology/physical_package_id").read_text().strip(),
                  Path(f"/sys/devices/system/cpu/cpu{c}/topology/core_id").read_text().strip()) for c in cpus}
    except (OSError, ValueError):
        return None
    return len(cores) or None


def physical_cores() -> int:
    """Physical (performance) cores, never more than the logical CPUs this process may use; the
    logical count where the platform does not say (psutil returns None)."""
    physical = _performance_cores() or psutil.cpu_count(logical=False) or logical_cores()
    return max(1, min(physical, logical_cores()))


def default_threads() -> tuple[int, int]:
    """(n_threads for decoding, n_threads_batch for prompt reading)."""
    return physical_cores(), logical_cores()
