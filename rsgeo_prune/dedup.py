"""Copies inside the RS-Prune quota: a greedy walk in the selection's own priority order that skips
exact copies, near copies and surplus tiles of one place, so the budget is filled from distinct tiles.

RS-Prune keeps the tiles nearest each centroid, which are the most alike: overlapping tiles,
re-exports of one scene and the same field in several years all crowd the top of a cluster.
:func:`select_distinct` makes the same choice as :func:`rsgeo_prune.select.select_quota` (quota
``q = ⌊B/K⌋`` per cluster in priority order, then the rest of the budget in global priority order)
while skipping, in that one walk:

* **exact copies** — tiles whose pixel digest equals that of a tile earlier in priority order
  (found up front in one pass over the digests);
* **near copies** — a tile whose canonical cosine to an already chosen tile *of its cluster* is
  ``≥ τ``;
* **same place** — a tile with ``max_per_place`` chosen same-place partners
  (:mod:`rsgeo_prune.places`).

A skipped tile frees its slot for the next distinct tile, so exactly ``min(B, distinct)`` tiles are
chosen. Each skipped tile records the tile it copies: the earliest chosen one in priority order
(near and same-place copies), or its byte-identical original (exact copies; when the walk skipped
that original, the tile the original copies), so a copy never names another copy.

**Cost follows the quota.** Near-copy tests need the cosines of a cluster's tiles to the chosen
tiles before them, never a cluster's full ``n x n`` matrix: the walk runs in a compiled kernel over
a *prefix* of each cluster (its tiles in priority order), and when it reaches a tile past the prefix
it pauses while the prefix grows by a block, whose rows are compared with the chosen tiles before
them and with each other. The walk examines about ``q`` + (copies skipped) tiles per cluster.

**Same bits everywhere.** Cosines are screened by a float32 matrix product (any BLAS, any thread
count) and only those within :func:`rsgeo_prune.exact.float32_screen_error` of ``τ`` are
recomputed canonically, as :func:`rsgeo_prune.kmeans.assign` does; so every keep/drop decision is
that of the canonical cosine, whatever the CPU, thread count or block size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from .errors import InvalidOption, RSGeoPruneError
from .exact import canonical_pair_dots, float32_screen_error, row_norms
from .places import Places

DEFAULT_COSINE = 0.97  # τ of rs-prune-dedup when none is given
DEFAULT_MAX_PER_PLACE = 1  # tiles per place of rs-prune-dedup when none is given

#: kinds of copy (``DistinctSelection.kind``)
DISTINCT, EXACT, NEAR, PLACE = 0, 1, 2, 3
KIND_NAMES = {EXACT: "exact", NEAR: "near", PLACE: "same place"}

# walk states of a candidate
_OPEN, _CHOSEN, _NEAR, _PLACE, _EXACT = 0, 1, 2, 3, 4
_KIND_OF_STATE = np.array([DISTINCT, DISTINCT, NEAR, PLACE, EXACT], np.uint8)

_PREFIX_STEP = 64  # smallest growth of a cluster's prefix (tiles)


@dataclass(frozen=True)
class DistinctSelection:
    """The chosen candidates ``(N,)`` bool; per candidate the copied candidate (``copy_of``, -1 for
    none) and the kind of copy (``kind``: DISTINCT, EXACT, NEAR or PLACE)."""

    chosen: np.ndarray
    copy_of: np.ndarray
    kind: np.ndarray

    def counts(self) -> dict[str, int]:
        """``{"exact": a, "near": b, "same place": c}``: copies skipped by kind."""
        found = np.bincount(self.kind, minlength=len(KIND_NAMES) + 1)
        return {name: int(found[k]) for k, name in KIND_NAMES.items()}


def check_cosine(cosine) -> None:
    if cosine is not None and (
        isinstance(cosine, bool) or not isinstance(cosine, (int, float)) or not 0.0 < cosine <= 1.0
    ):
        raise InvalidOption(
            "dedup_cosine",
            cosine,
            "must be a cosine in (0, 1] (e.g. 0.97; 1 removes only tiles with identical embeddings)",
        )


def check_max_per_place(n) -> None:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise InvalidOption("max_per_place", n, "must be a whole number of tiles >= 1 (e.g. 1)")


def select_distinct(
    cluster,
    order,
    embeddings,
    budget: int,
    k: int,
    *,
    cosine: float | None = None,
    digests=None,
    places: Places | None = None,
    max_per_place: int | None = None,
    block: int = 256,
) -> DistinctSelection:
    """RS-Prune's quota selection of ``min(budget, distinct)`` tiles that skips copies (module docstring).

    Args:
        cluster: ``(N,)`` centroid index per candidate, in ``[0, k)``.
        order: ``(N,)`` the candidates in the selection's priority order (a permutation).
        embeddings: ``(N, D)`` float32 unit rows (read only for the tiles the walk examines).
        budget: B. k: K (the quota is ``⌊B/K⌋``).
        cosine: τ in (0, 1]; None: no near-copy test.
        digests: ``(N,)`` pixel digests (equal digest = exact copy; empty or None entries never
            match); None: no exact-copy test.
        places: same-place partners of the candidates; needed with ``max_per_place``.
        max_per_place: at most this many chosen tiles per place; None: no place test.
        block: rows per matrix product (speed and memory only; the result does not depend on it).
    """
    check_cosine(cosine)
    check_max_per_place(max_per_place)
    cluster = np.asarray(cluster).astype(np.int64)
    order = np.asarray(order, np.int64)
    n = len(cluster)
    if len(order) != n or (digests is not None and len(digests) != n) or len(embeddings) != n:
        raise RSGeoPruneError("cluster, order, embeddings and digests must have one entry per candidate")
    if budget < 0 or k <= 0:
        raise RSGeoPruneError(f"budget {budget} must be >= 0 and k {k} >= 1")
    if n and (cluster.min() < 0 or cluster.max() >= k):
        raise RSGeoPruneError(f"cluster ids must lie in [0, {k}); the assignment does not match the centroid bank")
    if max_per_place is not None and places is None:
        raise RSGeoPruneError("max_per_place needs the candidates' same-place partners (rsgeo_prune.places)")
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    state = np.zeros(n, np.int8)
    copy_of = np.full(n, -1, np.int64)
    if digests is not None:
        _mark_exact_copies(np.asarray(digests, dtype=object), rank, order, state, copy_of)
    walk = order[state[order] == _OPEN]
    members, bounds = _clusters_in_order(walk, cluster, k)
    pos = np.zeros(n, np.int64)
    pos[members] = np.arange(len(members)) - np.repeat(bounds[:-1], np.diff(bounds))
    sizes = np.diff(bounds)
    near = _NearCopies(np.asarray(embeddings), cosine, n, block) if cosine is not None else None
    prefix = np.zeros(k, np.int64) if near is not None else sizes.copy()
    if places is None or max_per_place is None:
        places, max_per_place = Places.none(n), 0
    quota = budget // k
    filled = np.zeros(k, np.int64)
    cursor = np.zeros(3, np.int64)  # phase (0: quotas, 1: the rest, 2: done), position in walk, chosen so far
    while True:
        c = _walk(
            walk,
            cluster,
            pos,
            prefix,
            rank,
            *(near.arrays() if near else _no_partners(n)),
            places.start,
            places.partner,
            max_per_place,
            quota,
            budget,
            state,
            copy_of,
            filled,
            cursor,
        )
        if c < 0:
            break
        # the walk reached a tile past cluster c's prefix: grow it (the first time: the quota and a little)
        old = int(prefix[c])
        grow = max(_PREFIX_STEP, old // 8) if old else max(quota + max(16, quota // 32), _PREFIX_STEP)
        new = min(int(sizes[c]), old + grow)
        mine = members[bounds[c] : bounds[c] + new]
        near.add_prefix_rows(mine[old:], mine[:old][state[mine[:old]] == _CHOSEN])
        prefix[c] = new
    # a byte copy of a tile the walk skipped names the tile that one copies: no copy names a copy
    exact = np.flatnonzero(state == _EXACT)
    via = copy_of[exact]
    skipped = (state[via] == _NEAR) | (state[via] == _PLACE)
    copy_of[exact[skipped]] = copy_of[via[skipped]]
    return DistinctSelection(state == _CHOSEN, copy_of, _KIND_OF_STATE[state])


# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------


def _mark_exact_copies(
    digests: np.ndarray, rank: np.ndarray, order: np.ndarray, state: np.ndarray, copy_of: np.ndarray
) -> None:
    """Every tile whose digest an earlier tile (in priority order) has is an exact copy of the earliest."""
    import pandas as pd

    known = np.flatnonzero(pd.notna(digests) & (digests != ""))
    codes = pd.factorize(digests[known])[0]
    first = np.full(codes.max() + 1 if len(codes) else 0, np.iinfo(np.int64).max)
    np.minimum.at(first, codes, rank[known])
    original = order[first[codes]]
    copies = original != known
    state[known[copies]] = _EXACT
    copy_of[known[copies]] = original[copies]


def _clusters_in_order(walk: np.ndarray, cluster: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The walk's tiles grouped by cluster (priority order kept inside each) and the group bounds."""
    members = walk[np.argsort(cluster[walk], kind="stable")]
    return members, np.searchsorted(cluster[members], np.arange(k + 1))


def _no_partners(n: int):
    return np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(0, np.int64)


class _NearCopies:
    """Near-copy partners of the tiles in the clusters' prefixes: for tile ``i``, the tiles before it
    in its cluster (chosen ones, or ones in the same block) whose canonical cosine to it is ``≥ τ``."""

    def __init__(self, embeddings: np.ndarray, cosine: float, n: int, block: int):
        self.z, self.cosine, self.block = embeddings, float(cosine), max(1, int(block))
        self.start = np.zeros(n, np.int64)
        self.count = np.zeros(n, np.int64)
        self.partner = np.zeros(1024, np.int64)
        self.used = 0

    def arrays(self):
        return self.start, self.count, self.partner

    def add_prefix_rows(self, new: np.ndarray, chosen: np.ndarray) -> None:
        """Partners of the ``new`` rows (a cluster's next tiles, in priority order) among ``chosen``
        (the chosen tiles before them) and among the ``new`` rows before each."""
        z_new = self._rows(new)
        z_old = self._rows(chosen)
        norm_new, norm_old = row_norms(z_new), row_norms(z_old)
        rows, cols = [], []
        for s in range(0, len(new), self.block):
            e = min(len(new), s + self.block)
            r, c = _pairs_at_least(z_new[s:e], z_old, norm_new[s:e], norm_old, self.cosine)
            rows.append(s + r)
            cols.append(chosen[c])
            r, c = _pairs_at_least(z_new[s:e], z_new[:e], norm_new[s:e], norm_new[:e], self.cosine)
            before = c < s + r  # only tiles earlier in priority order
            rows.append(s + r[before])
            cols.append(new[c[before]])
        r, c = np.concatenate(rows), np.concatenate(cols)
        by_row = np.argsort(r, kind="stable")
        self._store(new, np.bincount(r, minlength=len(new)), c[by_row])

    def _rows(self, idx: np.ndarray) -> np.ndarray:
        z = np.ascontiguousarray(self.z[idx], np.float32)
        if z.ndim != 2:
            raise RSGeoPruneError(f"embeddings must be (N, D); got shape {self.z.shape}")
        return z

    def _store(self, new: np.ndarray, counts: np.ndarray, partners: np.ndarray) -> None:
        need = self.used + len(partners)
        if need > len(self.partner):
            grown = np.zeros(max(need, 2 * len(self.partner)), np.int64)
            grown[: self.used] = self.partner[: self.used]
            self.partner = grown
        self.partner[self.used : need] = partners
        self.start[new] = self.used + np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.count[new] = counts
        self.used = need


def _pairs_at_least(
    a: np.ndarray, b: np.ndarray, norm_a: np.ndarray, norm_b: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, cols)`` of the pairs whose canonical dot product ``a[r] · b[c]`` is ``≥ threshold``.

    A float32 product screens; entries within twice :func:`float32_screen_error` of the threshold
    are recomputed canonically, so the answer is that of the canonical values (any BLAS, threads).
    """
    empty = np.zeros(0, np.int64)
    if not len(a) or not len(b):
        return empty, empty
    bad = np.flatnonzero(~np.isfinite(norm_a))
    if len(bad):
        raise RSGeoPruneError("an embedding holds NaN or infinite values; re-embed the tiles")
    import torch

    with torch.inference_mode():
        s = (torch.from_numpy(a) @ torch.from_numpy(b).T).numpy()
    margin = 2.0 * float32_screen_error(a.shape[1], norm_a, float(norm_b.max()))
    # a float32 floor at or below threshold - margin, so no pair near the threshold is missed
    floor = np.nextafter((threshold - margin).astype(np.float32), np.float32(-np.inf))
    rows, cols = np.nonzero(s >= floor[:, None])
    value = s[rows, cols].astype(np.float64)
    sure = value >= threshold + margin[rows]
    unsure = np.flatnonzero(~sure)
    if len(unsure):
        exact = canonical_pair_dots(a, b, rows[unsure], cols[unsure], norm_a=norm_a, norm_b=norm_b)
        sure[unsure] = exact.astype(np.float64) >= threshold
    return rows[sure].astype(np.int64), cols[sure].astype(np.int64)


@numba.njit(cache=True, nogil=True)
def _walk(
    walk,
    cluster,
    pos,
    prefix,
    rank,
    near_start,
    near_count,
    near_partner,
    place_start,
    place_partner,
    max_per_place,
    quota,
    budget,
    state,
    copy_of,
    filled,
    cursor,
):  # pragma: no cover - compiled
    # The greedy walk, resumable: returns a cluster whose prefix must grow before tile walk[cursor[1]]
    # can be judged, or -1 when the budget is met or every tile was seen. Phase 0 fills each cluster's
    # quota in priority order; phase 1 fills the rest of the budget in global priority order. A
    # skipped tile is skipped for good: the chosen set only grows.
    m = walk.shape[0]
    while cursor[0] < 2:
        phase = cursor[0]
        t = cursor[1]
        while t < m:
            if cursor[2] >= budget:
                cursor[0] = 2
                cursor[1] = t
                return -1
            i = walk[t]
            c = cluster[i]
            if state[i] != 0 or (phase == 0 and filled[c] >= quota):
                t += 1
                continue
            if pos[i] >= prefix[c]:
                cursor[1] = t
                return c
            first = -1
            for p in range(near_start[i], near_start[i] + near_count[i]):
                j = near_partner[p]
                if state[j] == 1 and (first < 0 or rank[j] < rank[first]):
                    first = j
            if first >= 0:
                state[i] = 2
                copy_of[i] = first
                t += 1
                continue
            if max_per_place > 0:
                same = 0
                for p in range(place_start[i], place_start[i + 1]):
                    j = place_partner[p]
                    if state[j] == 1:
                        same += 1
                        if first < 0 or rank[j] < rank[first]:
                            first = j
                if same >= max_per_place:
                    state[i] = 3
                    copy_of[i] = first
                    t += 1
                    continue
            state[i] = 1
            filled[c] += 1
            cursor[2] += 1
            t += 1
        cursor[0] = phase + 1
        cursor[1] = 0
    return -1


__all__ = [
    "DEFAULT_COSINE",
    "DEFAULT_MAX_PER_PLACE",
    "DISTINCT",
    "EXACT",
    "KIND_NAMES",
    "NEAR",
    "PLACE",
    "DistinctSelection",
    "check_cosine",
    "check_max_per_place",
    "select_distinct",
]
