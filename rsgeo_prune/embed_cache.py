"""Embeddings of a run's candidate tiles, reusing every embedding made before.

An embedding is reused only for the same tile of the same file read the same way: its row key is
``tile_id`` plus a digest of the source file's identity (path, size, mtime), the window size and
the nodata rule, and the file's metadata must name the same embedder identity (spec, view, weights
file, package version). Work is written in parts (one per task) as it finishes, so a killed run
loses at most the tasks in flight; the parts are merged into ``embeddings.parquet`` at the end.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .catalog import read_embeddings, write_embeddings
from .rundir import PARTS_DIR, RunDir, digest, file_identity
from .scheduler import embed_in_tasks

log = logging.getLogger(__name__)

EMBEDDER_KEY = b"rsgeo_prune_embedder"
NORM_TOLERANCE = 1e-3  # a stored embedding must be a unit vector to be trusted


def embed_candidates(run: RunDir, rows: pd.DataFrame, *, embedder_spec: str, nir_view: str, embedder_id: str,
                     dim: int, nodata, chunk: int, workers: int, progress: bool) -> tuple[np.ndarray, int]:
    """Embeddings ``(len(rows), dim)`` of the candidate tile rows; returns them and how many tiles
    were embedded in this call (the rest were reused)."""
    ids = rows["tile_id"].to_numpy().astype(str)
    keys = _row_keys(rows, ids, nodata)
    z = np.zeros((len(rows), dim), np.float32)
    have = np.zeros(len(rows), bool)
    parts = run.path / PARTS_DIR
    for old in [run.artifact("embed"), *sorted(parts.glob("part-*.parquet"))]:
        if old.exists():
            _reuse(old, ids, keys, embedder_id, z, have)
    todo = np.flatnonzero(~have)
    log.info("embed: %d of %d candidate tiles already embedded, %d to do", int(have.sum()), len(rows), len(todo))
    _embed_missing(rows, todo, ids, keys, z, parts, embedder_spec=embedder_spec, nir_view=nir_view,
                   embedder_id=embedder_id, nodata=nodata, chunk=chunk, workers=workers, progress=progress)
    write_part(run.artifact("embed"), ids, keys, z, embedder_id)
    shutil.rmtree(parts, ignore_errors=True)
    return z, len(todo)


def _row_keys(rows: pd.DataFrame, ids: np.ndarray, nodata) -> np.ndarray:
    """Per row: a digest of what its pixels depend on besides the tile id."""
    sources = {h: file_identity(h) for h in rows["href"].unique()}
    hw = rows[["height", "width"]].to_numpy()
    return np.array([digest([sources[h], int(a), int(b), nodata]) for h, (a, b) in zip(rows["href"], hw)])


def _reuse(path: Path, ids: np.ndarray, keys: np.ndarray, embedder_id: str, z: np.ndarray, have: np.ndarray) -> None:
    """Fill ``z``/``have`` from an earlier embeddings file where tile id, row key and embedder match
    (and the stored vector is a unit vector)."""
    import pyarrow.parquet as pq

    wanted = {f"{t}|{k}": i for i, (t, k) in enumerate(zip(ids, keys))}
    try:
        meta = pq.read_schema(path).metadata or {}
        if meta.get(EMBEDDER_KEY, b"").decode() != embedder_id:
            return
        sources = pq.read_table(path, columns=["source"]).column("source").to_pylist()
        old_ids, old_z = read_embeddings(path)
    except Exception:  # a corrupt artifact is recomputed, never trusted
        log.warning("%s is unreadable: its tiles are embedded again", path)
        return
    if old_z.shape[1] != z.shape[1]:
        return
    unit = np.abs(np.linalg.norm(old_z.astype(np.float64), axis=1) - 1.0) < NORM_TOLERANCE
    for j, (tid, s) in enumerate(zip(old_ids, sources)):
        i = wanted.get(f"{tid}|{s}")
        if i is not None and unit[j]:
            z[i], have[i] = old_z[j], True


def _embed_missing(rows, todo, ids, keys, z, parts: Path, *, embedder_spec, nir_view, embedder_id, nodata, chunk,
                   workers, progress) -> None:
    """Embed the rows ``todo`` in tasks of ``chunk`` rows, ``workers`` tasks at a time, writing each
    finished task as a part."""
    parts.mkdir(parents=True, exist_ok=True)
    chunks = [todo[s:s + chunk] for s in range(0, len(todo), chunk)]
    step = max(1, workers)
    with tqdm(total=len(todo), desc="embedding", unit="tile", disable=None if progress else True) as bar:
        for g in range(0, len(chunks), step):
            group = chunks[g:g + step]
            for c, zc in zip(group, embed_in_tasks(rows, group, embedder_spec, nir_view, nodata)):
                z[c] = zc
                write_part(parts / f"part-{int(c[0]):09d}.parquet", ids[c], keys[c], zc, embedder_id)
                bar.update(len(c))


def write_part(path: Path, ids, keys, z, embedder_id: str) -> None:
    """``embeddings.parquet`` layout plus the row keys (``source``) and the embedder, atomically."""
    write_embeddings(ids, z, path, source=keys, metadata={EMBEDDER_KEY: embedder_id.encode()})


__all__ = ["embed_candidates", "write_part"]
