"""Where the work runs: dask schedulers (local threads or processes, or a dask.distributed cluster)
and the tasks the pipeline sends to them.

Tasks are plain functions of their arguments, so any scheduler gives the same result: chunk
boundaries are fixed by the ``chunk`` option, never by the number of workers, and every float they
compute is independent of the thread count (see docs/determinism.md).
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InvalidOption, RSGeoPruneError
from .kmeans import assign

LOCAL_SCHEDULERS = ("threads", "processes", "synchronous")


def check_scheduler(spec: str) -> None:
    """Fail early on a scheduler spec that is neither local nor a cluster address."""
    if spec not in LOCAL_SCHEDULERS and not spec.startswith(("tcp://", "tls://")):
        raise InvalidOption("scheduler", spec, f"use {', '.join(LOCAL_SCHEDULERS)} or tcp://HOST:PORT")


@contextlib.contextmanager
def dask_scheduler(spec: str = "threads"):
    """``threads`` (default), ``processes``, ``synchronous``, or ``tcp://HOST:PORT`` of a running
    dask.distributed scheduler; yields the number of parallel workers."""
    import dask

    check_scheduler(spec)
    if spec.startswith(("tcp://", "tls://")):
        from distributed import Client

        try:
            client = Client(spec, timeout="10s")
        except OSError as exc:
            raise RSGeoPruneError(
                f"scheduler {spec}: no dask scheduler answers there ({exc}); start one "
                "(`dask scheduler` + `dask worker`) or run locally with threads"
            ) from exc
        with client:
            yield max(1, sum(client.nthreads().values()))
        return
    with dask.config.set(scheduler=spec):
        yield 1 if spec == "synchronous" else (os.cpu_count() or 1)


@functools.lru_cache(maxsize=4)
def cached_embedder(spec: str, nir_view: str):
    """The embedder of ``spec``, built once per process (dask runs the chunks in parallel, so each
    embedder uses one thread)."""
    from .embed import load_embedder

    return load_embedder(spec, nir_view=nir_view, threads=1)


def embed_chunk(rows: pd.DataFrame, spec: str, nir_view: str, nodata, with_digests: bool = False):
    """Task: embeddings ``(len(rows), D)`` of a chunk of tile rows (and their pixel digests)."""
    from .embed import embed_table

    return embed_table(
        rows.reset_index(drop=True),
        cached_embedder(spec, nir_view),
        nodata=nodata,
        progress=False,
        with_digests=with_digests,
    )


def digest_chunk(rows: pd.DataFrame, nodata) -> np.ndarray:
    """Task: pixel digests of a chunk of tile rows (tiles already embedded)."""
    from .pixels import tile_digests

    return tile_digests(rows.reset_index(drop=True), nodata=nodata)


def embed_in_tasks(
    rows: pd.DataFrame,
    chunks: list[np.ndarray],
    spec: str,
    nir_view: str,
    nodata,
    *,
    embed: bool = True,
    digests: bool = False,
) -> list[tuple[np.ndarray | None, np.ndarray | None]]:
    """``(embeddings, digests)`` of ``rows.iloc[c]`` for every chunk ``c`` (each None when not asked
    for), as parallel tasks on the current scheduler."""
    import dask

    if embed:
        tasks = [dask.delayed(embed_chunk)(rows.iloc[c], spec, nir_view, nodata, digests) for c in chunks]
        return [got if digests else (got, None) for got in dask.compute(*tasks)]
    tasks = [dask.delayed(digest_chunk)(rows.iloc[c], nodata) for c in chunks]
    return [(None, got) for got in dask.compute(*tasks)]


def _assign_rows(source, start: int, stop: int, centroids: np.ndarray):
    """Task: assignment of rows ``start:stop`` of an embeddings array or ``.npy`` file (memory-mapped,
    so a worker reads only its rows)."""
    z = np.load(source, mmap_mode="r")[start:stop] if isinstance(source, (str, Path)) else source
    return assign(np.asarray(z, np.float32), centroids)


def assign_in_tasks(source, centroids: np.ndarray, chunk: int, n: int | None = None):
    """Nearest centroid of every row of ``source`` (``(N, D)`` array, or the path of an ``.npy``
    file) as dask tasks of ``chunk`` rows on the current scheduler. Returns ``(cluster, similarity)``."""
    import dask

    on_disk = isinstance(source, (str, Path))
    if n is None:
        n = len(np.load(source, mmap_mode="r")) if on_disk else len(source)
    tasks = [
        dask.delayed(_assign_rows)(source if on_disk else source[s : s + chunk], s, min(n, s + chunk), centroids)
        for s in range(0, n, chunk)
    ]
    got = dask.compute(*tasks)
    if not got:
        return np.zeros(0, np.int32), np.zeros(0, np.float32)
    return np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got])


__all__ = [
    "LOCAL_SCHEDULERS",
    "assign_in_tasks",
    "cached_embedder",
    "check_scheduler",
    "dask_scheduler",
    "digest_chunk",
    "embed_chunk",
    "embed_in_tasks",
]
