"""Run a compiled ``nogil`` kernel over slices of a batch in a few threads.

numba's own ``parallel=True`` needs a threading layer: its ``omp`` layer slows down beside torch's
OpenMP runtime, and its ``workqueue`` layer aborts the process when two threads (dask's, say) call
a parallel function at once. Plain threads over serial ``nogil`` kernels have neither problem, and
callers that already run in parallel (the pipeline's dask tasks) ask for one thread.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def default_threads() -> int:
    return max(1, os.cpu_count() or 1)


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
_IN_POOL = threading.local()


def _pool() -> ThreadPoolExecutor:
    """One process-wide pool: starting threads on every call cost ~2 ms (a third of k-means' time
    in its many small canonical recomputations)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(
                default_threads(),
                thread_name_prefix="rsgeo-slices",
                initializer=lambda: setattr(_IN_POOL, "active", True),
            )
        return _POOL


def _forget_pool_after_fork() -> None:
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()  # a forked child has none of the parent's threads


os.register_at_fork(after_in_child=_forget_pool_after_fork)


def map_slices(kernel, n: int, threads: int | None = None, min_per_thread: int = 8):
    """Call ``kernel(start, stop)`` on contiguous slices of ``range(n)``; results in slice order.

    The slices are fixed by ``n`` and ``threads`` alone, and each kernel call is independent, so the
    result never depends on which thread ran which slice. A call made from inside the pool runs
    serially (waiting on the pool from one of its own threads could deadlock)."""
    threads = default_threads() if threads is None else max(1, threads)
    parts = max(1, min(threads, n // min_per_thread))
    edges = np.linspace(0, n, parts + 1).astype(int)
    if parts == 1 or getattr(_IN_POOL, "active", False):
        return [kernel(a, b) for a, b in zip(edges[:-1], edges[1:])]
    return list(_pool().map(lambda ab: kernel(*ab), zip(edges[:-1], edges[1:])))
