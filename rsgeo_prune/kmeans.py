"""Nearest-centroid assignment and spherical k-means as named steps, with canonical arithmetic.

Every similarity this module returns is the canonical float32 dot product of
:mod:`rsgeo_prune.exact` (``f32(f64(exact))``), so clusters, similarities and centroids are the
same bits whatever the thread count, block size, partitioning, scheduler or CPU.

* :func:`assign` — nearest centroid by cosine. A fast float32 matrix product (any BLAS, any
  threads) only *screens*: its error is at most ``γ_n(2^-24)·‖e‖·‖c‖``, so every centroid that
  could be the canonical nearest lies within twice that of the screened maximum. Only those few
  candidates are recomputed canonically; ties go to the lowest centroid index.
* :func:`spherical_kmeans` — :func:`_seed_kmeanspp`, then rounds of :func:`assign`,
  :func:`_update_centroids` and :func:`_repair_empty_clusters` until (almost) no point moves.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .errors import InvalidOption, RSGeoPruneError
from .exact import canonical_pair_dots, float32_screen_error, row_norms, unit_rows

DEFAULT_K = 200  # centroids (over-clustering the reference classes, RS-Prune §3.3)


def assign(embeddings: np.ndarray, centroids: np.ndarray, *, block: int = 8_192) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid by cosine for ℓ2-normalised ``embeddings (N, D)`` and ``centroids (K, D)``.

    Returns:
        ``(cluster (N,) int32, similarity (N,) float32)``: the lowest index among the centroids
        with the largest canonical similarity, and that similarity. Memory: one ``block x K``
        matrix. The result does not depend on ``block`` or on torch's thread count.
    """
    embeddings = np.asarray(embeddings, np.float32)
    centroids = np.asarray(centroids, np.float32)
    if embeddings.ndim != 2 or centroids.ndim != 2 or embeddings.shape[1] != centroids.shape[1]:
        raise RSGeoPruneError(
            f"embeddings {embeddings.shape} and centroids {centroids.shape} must be (N, D) and (K, D)"
        )
    if not np.isfinite(centroids).all():
        raise RSGeoPruneError("the centroid bank holds NaN or infinite values; rebuild it with `rsgeo-prune centroids`")
    # writable copies where needed: torch cannot wrap read-only arrays (dask task arguments, memmaps)
    return _assign(embeddings, np.require(centroids, np.float32, ["C", "W"]), block)


def _assign(
    embeddings: np.ndarray, centroids: np.ndarray, block: int, norm_e_all: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`assign` on checked float32 inputs; ``norm_e_all (N,)``: the rows' norms if known."""
    n = len(embeddings)
    cluster = np.empty(n, np.int32)
    similarity = np.empty(n, np.float32)
    if n == 0 or len(centroids) == 0:
        return cluster, similarity
    norm_c = row_norms(centroids)
    for start in range(0, n, max(1, block)):
        part = np.require(embeddings[start : start + block], np.float32, ["C", "W"])
        norm_e = row_norms(part) if norm_e_all is None else norm_e_all[start : start + len(part)]
        _check_finite_rows(norm_e, start)
        rows, cols = _screen(part, centroids, norm_e, float(norm_c.max()))
        sims = canonical_pair_dots(part, centroids, rows, cols, norm_a=norm_e, norm_b=norm_c)
        best, best_sim = _best_per_row(rows, cols, sims, len(part))
        cluster[start : start + len(part)] = best
        similarity[start : start + len(part)] = best_sim
    return cluster, similarity


def spherical_kmeans(
    x: np.ndarray, k: int = DEFAULT_K, *, seed: int = 0, iters: int = 30, tol: float = 1e-3
) -> tuple[np.ndarray, np.ndarray]:
    """k-means on the unit sphere: cosine assignment, centroids re-normalised every iteration.

    Seeded k-means++ initialisation on a sample of ``20·k`` points; an emptied cluster is re-seeded
    with the point farthest from its centroid; stops after ``iters`` rounds or when at most ``tol``
    of the points change cluster. Every step is canonical or order-fixed, so the result is the same
    bits on any machine and thread count.

    Args:
        x: ``(N, D)`` unit vectors.
    Returns:
        ``(centroids (K, D) float32, labels (N,) int64)``.
    """
    n = len(x)
    if k > n:
        raise InvalidOption(
            "k", k, f"is larger than the {n} reference images; use {n} or fewer, or add reference images"
        )
    if k <= 0:
        raise InvalidOption("k", k, "must be >= 1")
    if not np.isfinite(x).all():
        raise RSGeoPruneError("reference embeddings hold NaN; check the embedder on the reference images")
    x = np.ascontiguousarray(x, np.float32)
    c = _seed_kmeanspp(x, k, np.random.default_rng(seed))
    norms = row_norms(x)  # once: every round's assignment needs them
    labels = np.full(n, -1, np.int64)
    stale = True  # c changed since labels were computed
    for _ in range(iters):
        new_labels, s = _assign(x, c, 8_192, norms)
        moved = int((new_labels != labels).sum())
        labels, stale = new_labels.astype(np.int64), False
        if moved <= tol * n:  # (almost) no point changed cluster: converged
            break
        sums, counts = _update_centroids(x, labels, k)
        _repair_empty_clusters(sums, counts, x, s)
        c, stale = unit_rows(sums.astype(np.float32)), True
    if stale:
        labels = _assign(x, c, 8_192, norms)[0].astype(np.int64)
    return c, labels


# ---------------------------------------------------------------------------------------------
# assign: steps
# ---------------------------------------------------------------------------------------------


def _check_finite_rows(norms: np.ndarray, offset: int) -> None:
    # a row's float64 norm is finite exactly when the row is (float32 squares cannot overflow it)
    bad = np.flatnonzero(~np.isfinite(norms))
    if len(bad):
        raise RSGeoPruneError(
            f"embedding row {offset + int(bad[0])} holds NaN or infinite values; re-embed the tiles "
            "(check the embedder on that tile)"
        )


def _screen(
    part: np.ndarray, centroids: np.ndarray, norm_e: np.ndarray, max_norm_c: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, cols)`` of every centroid that may be a row's canonical nearest, row-major.

    The float32 product ``S`` is off by at most ``E = γ_D(2^-24)·‖e‖·max‖c‖`` (any summation order,
    FMA or not; plus ``D·2^-125`` for products that underflow), and a canonical value is within
    ``δ = 2^-23·‖e‖·‖c‖`` of the exact one. The canonical nearest ``j*`` therefore has
    ``S_j* ≥ max S - 2E - 2δ``; the margin is doubled again for safety. A row whose product
    overflowed keeps every centroid.
    """
    import torch

    d = part.shape[1]
    with torch.inference_mode():
        s = (torch.from_numpy(part) @ torch.from_numpy(centroids).T).numpy()
    # both the maximum and the candidate are screened values (2x), doubled again for safety
    margin = 4.0 * float32_screen_error(d, norm_e, max_norm_c)
    return _candidates(s, margin)


@numba.njit(cache=True, nogil=True)
def _candidates(s, margin):  # pragma: no cover - compiled
    # per row: the screened maximum, then every column within ``margin`` of it (float64 compare)
    b, k = s.shape
    floor = np.empty(b, np.float64)
    count = 0
    for i in range(b):
        top = -np.inf
        finite = True
        for j in range(k):
            v = np.float64(s[i, j])
            finite = finite and np.isfinite(v)
            top = max(top, v)
        floor[i] = top - margin[i] if finite else np.nan  # NaN floor: overflow, keep every column
        for j in range(k):
            if not np.float64(s[i, j]) < floor[i]:
                count += 1
    rows = np.empty(count, np.int64)
    cols = np.empty(count, np.int64)
    p = 0
    for i in range(b):
        for j in range(k):
            if not np.float64(s[i, j]) < floor[i]:
                rows[p] = i
                cols[p] = j
                p += 1
    return rows, cols


def _best_per_row(rows: np.ndarray, cols: np.ndarray, sims: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the candidate with the largest similarity, the lowest column among equals."""
    order = np.lexsort((cols, -sims, rows))  # by row, then similarity descending, then column
    first = order[np.r_[True, rows[order][1:] != rows[order][:-1]]]
    if len(first) != n:  # every row has at least its screened maximum as a candidate
        raise AssertionError("a row has no candidate centroid")
    return cols[first].astype(np.int32), sims[first]


# ---------------------------------------------------------------------------------------------
# spherical k-means: steps
# ---------------------------------------------------------------------------------------------


def _seed_kmeanspp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeds ``(k, D)`` float32, cosine distance ``1 - s``, on a seeded sample of ``20·k`` points.

    The sample gives the same spread-out start for a fraction of the cost of a pass over all N
    points per centroid. Distances use canonical similarities and the total is :func:`math.fsum`,
    so the draws never depend on threads.
    """
    n = len(x)
    pool = np.ascontiguousarray(x[np.sort(rng.choice(n, size=min(n, 20 * k), replace=False))])
    norms = row_norms(pool)
    idx = np.arange(len(pool), dtype=np.int64)

    def distance_to(j: int) -> np.ndarray:
        s = canonical_pair_dots(pool, pool, idx, np.full(len(pool), j, np.int64), norm_a=norms, norm_b=norms)
        return np.maximum(np.float32(1.0) - s, np.float32(0.0)).astype(np.float64)

    chosen = [int(rng.integers(len(pool)))]
    best = distance_to(chosen[0])
    for _ in range(1, k):
        total = math.fsum(best.tolist())
        nxt = int(rng.choice(len(pool), p=best / total)) if total > 0 else int(rng.integers(len(pool)))
        chosen.append(nxt)
        best = np.minimum(best, distance_to(nxt))
    return pool[chosen].copy()


def _update_centroids(x: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster float64 sums ``(k, D)`` of ``x`` (members added in row order) and counts ``(k,)``."""
    sums = np.zeros((k, x.shape[1]), np.float64)
    _add_rows_in_order(x, labels, sums)
    return sums, np.bincount(labels, minlength=k)


@numba.njit(cache=True, nogil=True)
def _add_rows_in_order(x, labels, sums):  # pragma: no cover - compiled
    # one fixed order (ascending row index) for every cluster's sum, whatever the machine: no
    # sort, no copy of x, and elementwise float64 adds
    for i in range(x.shape[0]):
        row = sums[labels[i]]
        for d in range(x.shape[1]):
            row[d] += np.float64(x[i, d])


def _repair_empty_clusters(sums: np.ndarray, counts: np.ndarray, x: np.ndarray, s: np.ndarray) -> None:
    """Re-seed each empty cluster (ascending index) with the point least similar to its centroid
    (lowest index among equals), each point used once. Modifies ``sums`` in place."""
    s = s.copy()
    for e in np.flatnonzero(counts == 0).tolist():
        far = int(np.argmin(s))  # first occurrence: ties by row index
        sums[e] = x[far]
        s[far] = 2.0  # above any cosine: not chosen again


__all__ = ["DEFAULT_K", "assign", "spherical_kmeans"]
