"""Embeddings of a run's candidate tiles, reusing every embedding made before.

An embedding is reused only for the same tile of the same file read the same way: its row key is
``tile_id`` plus a digest of the source file's identity (path, size, mtime), the window size and
the nodata rule, and the file's metadata must name the same embedder identity (spec, view, weights
file, package version). When copy removal asks for them, each tile's pixel digest is made in the
same read and kept in a ``pixel_digest`` column (null where never asked for). Work is written in parts (one per task)
as it finishes, so a killed run
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


def embed_candidates(
    run: RunDir,
    rows: pd.DataFrame,
    *,
    embedder_spec: str,
    nir_view: str,
    embedder_id: str,
    dim: int,
    nodata,
    chunk: int,
    workers: int,
    progress: bool,
    digests: bool = False,
) -> tuple[np.ndarray, int, np.ndarray | None]:
    """Embeddings ``(len(rows), dim)`` of the candidate tile rows; returns them, how many tiles were
    embedded in this call (the rest were reused), and with ``digests`` their pixel digests (made
    in the embedding read; tiles embedded earlier without one are read again for it only)."""
    ids = rows["tile_id"].to_numpy().astype(str)
    keys = _row_keys(rows, ids, nodata)
    z = np.zeros((len(rows), dim), np.float32)
    have = np.zeros(len(rows), bool)
    found = np.full(len(rows), None, dtype=object)  # pixel digests known so far
    parts = run.path / PARTS_DIR
    for old in [run.artifact("embed"), *sorted(parts.glob("part-*.parquet"))]:
        if old.exists():
            _reuse(old, ids, keys, embedder_id, z, have, found)
    todo = np.flatnonzero(~have)
    log.info("embed: %d of %d candidate tiles already embedded, %d to do", int(have.sum()), len(rows), len(todo))
    work = dict(
        rows=rows,
        ids=ids,
        keys=keys,
        z=z,
        found=found,
        parts=parts,
        embedder_spec=embedder_spec,
        nir_view=nir_view,
        embedder_id=embedder_id,
        nodata=nodata,
        chunk=chunk,
        workers=workers,
        progress=progress,
    )
    _embed_missing(todo, embed=True, digests=digests, **work)
    if digests:
        _embed_missing(np.flatnonzero(have & pd.isna(found)), embed=False, digests=True, **work)
    write_part(run.artifact("embed"), ids, keys, z, embedder_id, found)
    shutil.rmtree(parts, ignore_errors=True)
    return z, len(todo), (found if digests else None)


def _row_keys(rows: pd.DataFrame, ids: np.ndarray, nodata) -> np.ndarray:
    """Per row: a digest of what its pixels depend on besides the tile id."""
    sources = {h: file_identity(h) for h in rows["href"].unique()}
    hw = rows[["height", "width"]].to_numpy()
    return np.array([digest([sources[h], int(a), int(b), nodata]) for h, (a, b) in zip(rows["href"], hw)])


def _reuse(
    path: Path, ids: np.ndarray, keys: np.ndarray, embedder_id: str, z: np.ndarray, have: np.ndarray, found: np.ndarray
) -> None:
    """Fill ``z``/``have`` (and ``found``, the pixel digests the file holds) from an earlier
    embeddings file where tile id, row key and embedder match (and the stored vector is a unit vector)."""
    import pyarrow.parquet as pq

    wanted = {f"{t}|{k}": i for i, (t, k) in enumerate(zip(ids, keys))}
    try:
        schema = pq.read_schema(path)
        meta = schema.metadata or {}
        if meta.get(EMBEDDER_KEY, b"").decode() != embedder_id:
            return
        sources = pq.read_table(path, columns=["source"]).column("source").to_pylist()
        old_digests = (
            pq.read_table(path, columns=["pixel_digest"]).column("pixel_digest").to_pylist()
            if "pixel_digest" in schema.names
            else [None] * len(sources)
        )
        old_ids, old_z = read_embeddings(path)
    except Exception:  # a corrupt artifact is recomputed, never trusted
        log.warning("%s is unreadable: its tiles are embedded again", path)
        return
    if old_z.shape[1] != z.shape[1]:
        return
    unit = np.abs(np.linalg.norm(old_z.astype(np.float64), axis=1) - 1.0) < NORM_TOLERANCE
    for j, (tid, s, d) in enumerate(zip(old_ids, sources, old_digests)):
        i = wanted.get(f"{tid}|{s}")
        if i is not None and unit[j]:
            z[i], have[i] = old_z[j], True
            if d is not None:
                found[i] = d


def _embed_missing(
    todo,
    *,
    embed: bool,
    digests: bool,
    rows,
    ids,
    keys,
    z,
    found,
    parts: Path,
    embedder_spec,
    nir_view,
    embedder_id,
    nodata,
    chunk,
    workers,
    progress,
) -> None:
    """Embed (``embed``) and/or digest (``digests``) the rows ``todo`` in tasks of ``chunk`` rows,
    ``workers`` tasks at a time, writing each finished task as a part."""
    if not (embed or digests) or not len(todo):
        return
    parts.mkdir(parents=True, exist_ok=True)
    chunks = [todo[s : s + chunk] for s in range(0, len(todo), chunk)]
    step = max(1, workers)
    what = "embedding" if embed else "pixel digests"
    with tqdm(total=len(todo), desc=what, unit="tile", disable=None if progress else True) as bar:
        for g in range(0, len(chunks), step):
            group = chunks[g : g + step]
            for c, (zc, dc) in zip(
                group, embed_in_tasks(rows, group, embedder_spec, nir_view, nodata, embed=embed, digests=digests)
            ):
                if zc is not None:
                    z[c] = zc
                if dc is not None:
                    found[c] = dc
                write_part(
                    parts / f"part-{'' if embed else 'digest-'}{int(c[0]):09d}.parquet",
                    ids[c],
                    keys[c],
                    z[c],
                    embedder_id,
                    found[c],
                )
                bar.update(len(c))


def write_part(path: Path, ids, keys, z, embedder_id: str, digests=None) -> None:
    """``embeddings.parquet`` layout plus the row keys (``source``), the pixel digests when any is
    known, and the embedder, atomically."""
    known = digests is not None and not pd.isna(digests).all()
    write_embeddings(
        ids,
        z,
        path,
        source=keys,
        pixel_digest=digests if known else None,
        metadata={EMBEDDER_KEY: embedder_id.encode()},
    )


__all__ = ["embed_candidates", "write_part"]
