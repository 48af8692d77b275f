"""How many CPU threads a torch-heavy job (training, exploration) takes: the cores that are free when it
starts.

Measured on 2 cores (issue 24): OpenMP threads that wait passively (``OMP_WAIT_POLICY=PASSIVE``) halve the
speed of a training on a free machine, and threads that spin collapse it on a busy one (2.3x slower than
passive with the test suite running beside). Neither wait policy is right on both; sizing the threads to
the free cores is: on a free machine every core and OpenMP's default wait, on a busy one fewer threads, so
that none of ours waits for a core. The free cores are read from ``/proc/stat`` over a short window at
the job's start (our own process is idle then; a load average would count our previous job), on the CPUs
this process may run on.

``ALMAT_NUM_THREADS`` (or a learner's ``num_threads``) fixes the number instead.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Iterator

#: seconds over which the idle share of the CPUs is measured
WINDOW_S = 0.25
#: the environment variable that fixes the threads of every job
ENV_VAR = "ALMAT_NUM_THREADS"


def parse_cpu_times(text: str, cpus: set[int] | None = None) -> tuple[int, int] | None:
    """``(idle, total)`` jiffies since boot from the text of ``/proc/stat``: summed over the ``cpuN`` lines of
    ``cpus``, or the all-CPU line where ``cpus`` is None or names none of them; None where there is neither."""
    lines = {}
    for line in text.splitlines():
        name, *fields = line.split() or [""]
        if name.startswith("cpu") and fields:
            lines[name] = [int(x) for x in fields]
    picked = [lines[f"cpu{c}"] for c in sorted(cpus or ()) if f"cpu{c}" in lines]
    if not picked:
        picked = [lines["cpu"]] if "cpu" in lines else []
    if not picked:
        return None
    idle = sum(f[3] + (f[4] if len(f) > 4 else 0) for f in picked)  # idle + iowait
    return idle, sum(sum(f[:8]) for f in picked)  # (guest time is counted in user already)


def idle_share(first: tuple[int, int] | None, second: tuple[int, int] | None) -> float | None:
    """The idle fraction of the CPUs between two ``parse_cpu_times`` readings (None where it cannot be told)."""
    if first is None or second is None or second[1] - first[1] <= 0:
        return None
    return min(1.0, max(0.0, (second[0] - first[0]) / (second[1] - first[1])))


def _allowed_cpus() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    cpus = _allowed_cpus()
    return len(cpus) if cpus else os.cpu_count() or 1


def _read_cpu_times(cpus: set[int] | None) -> tuple[int, int] | None:
    try:
        with open("/proc/stat") as fh:
            return parse_cpu_times(fh.read(), cpus)
    except (OSError, ValueError, IndexError):
        return None


def free_cores(window_s: float = WINDOW_S) -> float:
    """How many of the cores this process may run on were idle over the next ``window_s`` seconds (all of
    them where this cannot be measured)."""
    cpus, cores = _allowed_cpus(), available_cores()
    first = _read_cpu_times(cpus)
    if first is None:
        return float(cores)
    time.sleep(window_s)
    share = idle_share(first, _read_cpu_times(cpus))
    return float(cores) if share is None else share * cores


def fixed_threads(requested: int | None = None) -> int | None:
    """``requested``, else ``ALMAT_NUM_THREADS``, else None; a value that is not a whole number >= 1 is refused
    in one line."""
    if requested:
        return int(requested)
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{ENV_VAR} must be a whole number of threads >= 1 (or unset: the free cores), got {value!r}")
    return n


def threads_for(free: float, cores: int) -> int:
    """Threads for ``free`` idle cores out of ``cores``: a core counts as free when more than half of it is
    idle; at least one, at most ``cores``."""
    return max(1, min(cores, int(free + 0.5)))


def job_threads(requested: int | None = None) -> int:
    """Threads for a torch-heavy job: ``requested``, else ``ALMAT_NUM_THREADS``, else the free cores
    (``free_cores``, ``threads_for``)."""
    fixed = fixed_threads(requested)
    return fixed if fixed is not None else threads_for(free_cores(), available_cores())


@contextmanager
def torch_threads(requested: int | None = None) -> Iterator[int]:
    """torch's CPU threads set to ``job_threads(requested)`` for the block (restored afterwards); yields
    the number."""
    import torch  # (the heavy dependency of the jobs that use this)

    n, previous = job_threads(requested), torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(previous)
