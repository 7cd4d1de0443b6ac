"""CPU threads: each worker process's share when ``--workers N`` processes share one machine's cores, and
FAISS's OpenMP thread count set for one block of work.

torch sizes its intra-op pool to every core of the machine in each process, so N worker processes would run
N x cores threads on those cores, and OpenMP threads spin when oversubscribed. Each worker
process calls ``share_cpu_threads`` in its model setup, before its first forward pass.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def cpu_share(processes: int, cpus: int | None = None) -> int:
    """Threads for one of ``processes`` processes sharing ``cpus`` cores (default: the cores this process may use)."""
    cpus = cpus or len(os.sched_getaffinity(0))
    return max(1, cpus // max(1, processes))


def share_cpu_threads(processes: int | None, cpus: int | None = None) -> int | None:
    """Set torch's intra-op threads of this process to its share; returns it. One process (or ``None``) keeps torch's
    default, and an explicit ``OMP_NUM_THREADS`` always wins (the user sized the pool)."""
    if not processes or processes <= 1 or os.environ.get("OMP_NUM_THREADS"):
        return None
    import torch

    threads = cpu_share(processes, cpus)
    torch.set_num_threads(threads)
    return threads


@contextlib.contextmanager
def faiss_threads(threads: int) -> Iterator[None]:
    """FAISS's OpenMP threads set to ``threads`` inside, restored after (the setting is process-wide)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
