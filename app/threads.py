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
import subprocess
import sys
from pathlib import Path

try:
    import psutil
except ImportError:  # iOS: Flet's mobile wheels build psutil for Android only
    psutil = None

_HYBRID_PERFORMANCE_CPUS = Path("/sys/devices/cpu_core/cpus")  # Linux on Intel hybrid CPUs


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


def _core_of(cpu: int) -> tuple[str, str]:
    topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
    return (topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip()


def _linux_performance_cores() -> int | None:
    """Intel hybrid CPUs list their performance cores' CPUs; ARM big.LITTLE (Android, Linux) gives
    each CPU a relative capacity, 1024 for the fastest: the big cores are those at half of it or more."""
    try:
        if _HYBRID_PERFORMANCE_CPUS.exists():
            cpus = _parse_cpu_list(_HYBRID_PERFORMANCE_CPUS.read_text())
        else:
            allowed = sorted(os.sched_getaffinity(0))
            capacity = {c: int(Path(f"/sys/devices/system/cpu/cpu{c}/cpu_capacity").read_text()) for c in allowed}
            if len(set(capacity.values())) < 2:
                return None  # all cores alike
            cpus = [c for c, cap in capacity.items() if cap * 2 >= max(capacity.values())]
        return len({_core_of(c) for c in cpus}) or None
    except (OSError, ValueError):
        return None


def _macos_performance_cores() -> int | None:
    """Apple Silicon: the performance cluster is perflevel0."""
    try:
        out = subprocess.run(["sysctl", "-n", "hw.perflevel0.physicalcpu"], capture_output=True, text=True, timeout=5)
        return int(out.stdout) or None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def performance_cores() -> int | None:
    """Physical performance cores on a CPU that mixes fast and slow cores (a phone's big cores, a
    hybrid laptop's P-cores), else None: all cores alike, or the system does not say. device.py caps
    a phone's threads by it."""
    if sys.platform.startswith("linux"):
        return _linux_performance_cores()
    if sys.platform == "darwin":
        return _macos_performance_cores()
    return None


def physical_cores() -> int:
    """Physical (performance) cores, never more than the logical CPUs this process may use; the
    logical count where the platform does not say (psutil returns None)."""
    physical = performance_cores() or (psutil.cpu_count(logical=False) if psutil else None) or logical_cores()
    return max(1, min(physical, logical_cores()))


def default_threads() -> tuple[int, int]:
    """(n_threads for decoding, n_threads_batch for prompt reading)."""
    return physical_cores(), logical_cores()
