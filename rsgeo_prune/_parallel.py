"""Run a compiled ``nogil`` kernel over slices of a batch in a few threads.

numba's own ``parallel=True`` needs a threading layer: its ``omp`` layer slows down beside torch's
OpenMP runtime, and its ``workqueue`` layer aborts the process when two threads (dask's, say) call
a parallel function at once. Plain threads over serial ``nogil`` kernels have neither problem, and
callers that already run in parallel (the pipeline's dask tasks) ask for one thread.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def default_threads() -> int:
    return max(1, os.cpu_count() or 1)


def map_slices(kernel, n: int, threads: int | None = None, min_per_thread: int = 8):
    """Call ``kernel(start, stop)`` on contiguous slices of ``range(n)``; results in slice order."""
    threads = default_threads() if threads is None else max(1, threads)
    parts = max(1, min(threads, n // min_per_thread))
    edges = np.linspace(0, n, parts + 1).astype(int)
    if parts == 1:
        return [kernel(0, n)]
    with ThreadPoolExecutor(parts) as pool:
        return list(pool.map(lambda ab: kernel(*ab), zip(edges[:-1], edges[1:])))
