"""Stage II — assignment of tiles to reference centroids and budgeted selection (RS-Prune §3.3).

* :func:`assign` (from :mod:`rsgeo_prune.kmeans`): cluster = argmax canonical cosine similarity to
  the centroids, computed in blocks so that an ``N x K`` matrix never exists at once.
* :func:`select_quota`: RS-Prune's selection — quota ``q = ⌊B/K⌋`` per cluster, nearest to the
  centroid first; a cluster with fewer than ``q`` candidates keeps all; the unused budget is filled
  from all not-yet-selected candidates by descending similarity. Exactly ``min(B, N)`` are kept.
* :func:`select_quota_distinct`: the same selection without copies (exact, near and same-place
  ones are skipped and the next distinct tiles take their slots; :mod:`rsgeo_prune.dedup`).
* :func:`select_water_filling`: the alternative allocation — the largest cap ``x`` with
  ``Σ min(x, |P_k|) ≤ B``, each cluster keeps its top ``min(x, |P_k|)``, and the last few slots go
  to the next-nearest tiles of the clusters that still have some.

Every ordering breaks ties by ``tile_id``, so a selection is a pure function of its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .dedup import DEFAULT_COSINE, DEFAULT_MAX_PER_PLACE, DistinctSelection, select_distinct
from .errors import RSGeoPruneError
from .kmeans import assign, spherical_kmeans  # also importable as select.assign
from .places import Places


def _check(cluster, similarity, tile_id, budget):
    cluster = np.asarray(cluster)
    similarity = np.asarray(similarity, np.float32)
    if not (len(cluster) == len(similarity) == len(tile_id)):
        raise RSGeoPruneError("cluster, similarity and tile_id must have one entry per tile")
    if budget < 0:
        raise RSGeoPruneError(f"budget {budget} must be >= 0")
    if np.isnan(similarity).any():
        raise RSGeoPruneError("similarity holds NaN; re-embed the tiles")
    return cluster, similarity, _tie_rank(tile_id)


def _tie_rank(tile_id) -> np.ndarray:
    """Tile ids as integers that sort like them: integer ids as they are, strings by their rank."""
    tile_id = np.asarray(tile_id)
    if np.issubdtype(tile_id.dtype, np.integer) and (
        len(tile_id) == 0 or (tile_id.min() >= 0 and tile_id.max() < 2**32)
    ):
        return tile_id.astype(np.int64)
    if np.issubdtype(tile_id.dtype, np.integer):
        return np.unique(tile_id, return_inverse=True)[1].astype(np.int64)
    return np.unique(tile_id.astype(str), return_inverse=True)[1].astype(np.int64)


def _descending_keys(similarity: np.ndarray, tie: np.ndarray) -> np.ndarray:
    """uint64 keys whose ascending order is descending similarity, then ascending tile id.

    The float32 similarity is mapped to an order-preserving uint32 (sign-bit flip), inverted, and
    put above the tie rank, so keys are unique and one integer comparison orders two tiles. Keys of
    different partitions compare correctly as long as their tie ranks are global.
    """
    u = np.ascontiguousarray(similarity, np.float32).view(np.uint32)
    ordered = np.where(u >> 31, ~u, u | np.uint32(0x80000000))  # ascending with the float
    key = (~ordered).astype(np.uint64) << np.uint64(32)
    key |= np.asarray(tie).astype(np.uint64)  # tie ranks lie in [0, 2**32): see _tie_rank
    return key


def _descending_order(similarity: np.ndarray, tie: np.ndarray) -> np.ndarray:
    """Indices by descending similarity, ties by ascending tile id (one sort of unique keys)."""
    return np.argsort(_descending_keys(similarity, tie))


def _top(members: np.ndarray, key: np.ndarray, m: int) -> np.ndarray:
    """The ``m`` members with the smallest keys (unique keys: the answer is exact), O(len(members))."""
    if m >= len(members):
        return members
    if m <= 0:
        return members[:0]
    return members[np.argpartition(key[members], m - 1)[:m]]


def _ranks(cluster, similarity, tie) -> tuple[np.ndarray, np.ndarray]:
    order = _descending_order(similarity, tie)
    by_cluster = order[np.argsort(cluster[order], kind="stable")]  # stable: similarity order kept
    sorted_cluster = cluster[by_cluster]
    starts = np.flatnonzero(np.r_[True, sorted_cluster[1:] != sorted_cluster[:-1]]) if len(order) else np.zeros(0, int)
    sizes = np.diff(np.r_[starts, len(order)])
    rank = np.empty(len(order), np.int64)
    rank[by_cluster] = np.arange(len(order)) - np.repeat(starts, sizes)
    return rank, order


def rank_in_cluster(cluster, similarity, tile_id) -> np.ndarray:
    """Each tile's place in its cluster, 0 = nearest to the centroid (ties by ``tile_id``)."""
    cluster, similarity, tie = _check(cluster, similarity, tile_id, 0)
    return _ranks(cluster, similarity, tie)[0]


def select_quota(cluster, similarity, tile_id, budget: int, k: int) -> np.ndarray:
    """RS-Prune selection of exactly ``min(budget, N)`` tiles, ``(N,)`` bool.

    Args:
        cluster: centroid index per candidate tile.
        similarity: cosine similarity to that centroid.
        tile_id: tie-break.
        budget: B, the number of tiles to keep.
        k: K, the number of centroids (sets the quota ``⌊B/K⌋``).
    """
    cluster, similarity, tie = _check(cluster, similarity, tile_id, budget)
    if k <= 0:
        raise RSGeoPruneError(f"k {k} must be >= 1")
    if len(cluster) and (cluster.min() < 0 or cluster.max() >= k):
        raise RSGeoPruneError(f"cluster ids must lie in [0, {k}); the assignment does not match the centroid bank")
    q = budget // k
    # Only the top q of each cluster and the top r of the rest are needed, not a full ranking:
    # group by cluster (a radix sort of small integers), then partial selections.
    key = _descending_keys(similarity, tie)
    small = cluster.astype(np.int16) if k < 2**15 else cluster.astype(np.int64)
    by_cluster = np.argsort(small, kind="stable")
    bounds = np.searchsorted(small[by_cluster], np.arange(k + 1))
    selected = np.zeros(len(cluster), bool)
    for c in range(k):
        selected[_top(by_cluster[bounds[c] : bounds[c + 1]], key, q)] = True
    r = budget - int(selected.sum())
    selected[_top(np.flatnonzero(~selected), key, r)] = True
    return selected


def select_quota_distinct(
    cluster,
    similarity,
    tile_id,
    budget: int,
    k: int,
    embeddings,
    *,
    cosine: float | None = None,
    digests=None,
    places: Places | None = None,
    max_per_place: int | None = None,
    acquired=None,
    block: int = 256,
) -> DistinctSelection:
    """:func:`select_quota` without copies (:func:`rsgeo_prune.dedup.select_distinct`): exact copies
    (equal ``digests``), near copies (canonical cosine ``≥ cosine`` to a chosen tile of the same
    cluster) and tiles of a place that already has ``max_per_place`` chosen are skipped, and the
    next distinct tiles take their slots. Priority: descending similarity, then the most recent
    ``acquired`` time (unknown last), then ``tile_id``."""
    cluster, similarity, _ = _check(cluster, similarity, tile_id, budget)
    order = _descending_order(similarity, _recent_first_ties(tile_id, acquired))
    return select_distinct(
        cluster,
        order,
        embeddings,
        budget,
        k,
        cosine=cosine,
        digests=digests,
        places=places,
        max_per_place=max_per_place,
        block=block,
    )


def _recent_first_ties(tile_id, acquired) -> np.ndarray:
    """Tie ranks: the most recent acquisition first (unknown last), then ``tile_id``."""
    tie = _tie_rank(tile_id)
    if acquired is None:
        return tie
    acquired = np.asarray(acquired, "datetime64[ns]")
    known = ~np.isnat(acquired)
    newest_first = np.where(known, -acquired.view(np.int64), np.iinfo(np.int64).max)
    order = np.lexsort((tie, newest_first))
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank


def select_water_filling(cluster, similarity, tile_id, budget: int) -> np.ndarray:
    """Water-filling allocation of exactly ``min(budget, N)`` tiles, ``(N,)`` bool."""
    cluster, similarity, tie = _check(cluster, similarity, tile_id, budget)
    if budget >= len(cluster):
        return np.ones(len(cluster), bool)
    rank, order = _ranks(cluster, similarity, tie)
    sizes = np.bincount(np.unique(cluster, return_inverse=True)[1])
    # the largest cap x with sum(min(x, |P_k|)) <= B: binary search on x
    lo, hi = 0, int(sizes.max())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if np.minimum(mid, sizes).sum() <= budget:
            lo = mid
        else:
            hi = mid - 1
    selected = rank < lo
    # slots left (fewer than the clusters larger than x): their (x+1)-th tiles, nearest first
    left = budget - int(selected.sum())
    if left > 0:
        nxt = order[rank[order] == lo]
        selected[nxt[:left]] = True
    return selected


def select_random(n: int, budget: int, seed: int = 0) -> np.ndarray:
    """Random baseline: ``min(budget, n)`` tiles chosen uniformly with ``seed``."""
    selected = np.zeros(n, bool)
    selected[np.random.default_rng(seed).permutation(n)[: min(budget, n)]] = True
    return selected


def select_top_entropy(entropy, tile_id, budget: int) -> np.ndarray:
    """Entropy baseline: the ``budget`` tiles with the highest entropy (ties by ``tile_id``)."""
    entropy = np.nan_to_num(np.asarray(entropy, np.float32), nan=-np.inf)
    order = _descending_order(entropy, _tie_rank(tile_id))
    selected = np.zeros(len(entropy), bool)
    selected[order[:budget]] = True
    return selected


def select_moderate(similarity, tile_id, budget: int) -> np.ndarray:
    """Moderate-DS baseline (Xia et al. 2023): the tiles whose distance to their centroid
    (``1 - similarity``) is closest to the median distance (ties by ``tile_id``)."""
    d = 1.0 - np.asarray(similarity, np.float64)
    gap = np.abs(d - np.median(d)) if len(d) else d
    order = _descending_order(-gap.astype(np.float32), _tie_rank(tile_id))  # smallest gap first
    selected = np.zeros(len(d), bool)
    selected[order[:budget]] = True
    return selected


def select_cluster_nearest(embeddings, tile_id, budget: int, *, seed: int = 0) -> np.ndarray:
    """Cluster-nearest baseline (Briq et al.): spherical k-means with ``budget`` clusters on the
    candidates themselves, then the tile nearest to each centroid (a cluster left empty gives its
    slot to the remainder by similarity)."""
    embeddings = np.asarray(embeddings, np.float32)
    n = len(embeddings)
    if budget >= n:
        return np.ones(n, bool)
    if budget == 0:
        return np.zeros(n, bool)
    centroids, _ = spherical_kmeans(embeddings, budget, seed=seed)
    cluster, similarity = assign(embeddings, centroids)
    return select_quota(cluster, similarity, tile_id, budget, budget)


def select_full_kmeans(embeddings, tile_id, budget: int, k: int, *, seed: int = 0):
    """RS-Prune's selection with centroids fitted on all candidates instead of reference sets (the
    costly variant the paper compares against). Returns ``(selected, cluster, similarity)``."""
    embeddings = np.asarray(embeddings, np.float32)
    centroids, _ = spherical_kmeans(embeddings, min(k, len(embeddings)), seed=seed)
    cluster, similarity = assign(embeddings, centroids)
    return select_quota(cluster, similarity, tile_id, budget, len(centroids)), cluster, similarity


# ---------------------------------------------------------------------------------------------
# The registry of selection methods: drives the CLI choices, the config check and the dispatch
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SelectionInputs:
    """What a selection method may use, for the ``N`` candidate tiles.

    ``cluster``/``similarity`` are the assignment to the reference bank's ``k`` centroids (None
    without a bank); ``chunk`` is the partition size of the map-reduce.
    """

    embeddings: np.ndarray
    tile_id: np.ndarray
    entropy: np.ndarray
    budget: int
    seed: int = 0
    k: int = 200
    chunk: int = 4096
    cluster: np.ndarray | None = None
    similarity: np.ndarray | None = None
    # copies (COPY_METHODS): near-copy cosine, tiles per place, pixel digests, same-place partners,
    # acquisition times (ties: most recent first)
    dedup_cosine: float | None = None
    max_per_place: int | None = None
    digests: np.ndarray | None = None
    places: Places | None = None
    acquired: np.ndarray | None = None

    @property
    def asks_for_copy_removal(self) -> bool:
        return self.dedup_cosine is not None or self.max_per_place is not None


@dataclass(frozen=True)
class Selection:
    """The chosen candidates ``(N,)`` bool, and the cluster/similarity the catalog records; for the
    methods that skip copies, the candidate each copy copies (-1: none) and its kind (dedup.KIND_NAMES)."""

    chosen: np.ndarray
    cluster: np.ndarray | None
    similarity: np.ndarray | None
    copy_of: np.ndarray | None = None
    copy_kind: np.ndarray | None = None


@dataclass(frozen=True)
class Method:
    """A selection method: its name, a one-line description, and whether it needs reference centroids."""

    name: str
    summary: str
    needs_reference: bool
    choose: Callable[[SelectionInputs], Selection]
    needs_entropy: bool = False  # ranks by Stage I entropy, which only an entropy option computes


def _with_bank(chosen: np.ndarray, p: SelectionInputs) -> Selection:
    return Selection(chosen, p.cluster, p.similarity)


def _full_kmeans(p: SelectionInputs) -> Selection:
    return Selection(*select_full_kmeans(p.embeddings, p.tile_id, p.budget, p.k, seed=p.seed))


def _without_copies(p: SelectionInputs, *, defaults: bool) -> Selection:
    """The quota selection that skips copies; ``defaults``: rs-prune-dedup's τ and tiles per place
    where the inputs give none (the place limit only when same-place partners are given)."""
    cosine = DEFAULT_COSINE if defaults and p.dedup_cosine is None else p.dedup_cosine
    per_place = (
        DEFAULT_MAX_PER_PLACE if defaults and p.max_per_place is None and p.places is not None else p.max_per_place
    )
    got = select_quota_distinct(
        p.cluster,
        p.similarity,
        p.tile_id,
        p.budget,
        p.k,
        p.embeddings,
        cosine=cosine,
        digests=p.digests if cosine is not None else None,
        places=p.places,
        max_per_place=per_place,
        acquired=p.acquired,
    )
    return Selection(got.chosen, p.cluster, p.similarity, got.copy_of, got.kind)


_METHOD_LIST = (
    Method(
        "rs-prune",
        "RS-Prune: quota per reference centroid, nearest first, then the global remainder",
        True,
        lambda p: _with_bank(select_in_tasks(p.cluster, p.similarity, tie_ranks(p.tile_id), p.budget, p.k, p.chunk), p),
    ),
    Method(
        "water-filling",
        "water-filling allocation over the reference centroids",
        True,
        lambda p: _with_bank(select_water_filling(p.cluster, p.similarity, p.tile_id, p.budget), p),
    ),
    Method(
        "random",
        "uniform random subset (seeded)",
        False,
        lambda p: _with_bank(select_random(len(p.tile_id), p.budget, seed=p.seed), p),
    ),
    Method(
        "entropy",
        "the highest-entropy tiles (needs a Stage I option, e.g. entropy_min 0)",
        False,
        lambda p: _with_bank(select_top_entropy(p.entropy, p.tile_id, p.budget), p),
        needs_entropy=True,
    ),
    Method(
        "moderate",
        "Moderate-DS: distance to the centroid closest to the median",
        True,
        lambda p: _with_bank(select_moderate(p.similarity, p.tile_id, p.budget), p),
    ),
    Method(
        "cluster-nearest",
        "k-means with B clusters on the candidates, nearest tile of each",
        False,
        lambda p: _with_bank(select_cluster_nearest(p.embeddings, p.tile_id, p.budget, seed=p.seed), p),
    ),
    Method("full-kmeans", "RS-Prune with centroids fitted on all candidates (the costly variant)", False, _full_kmeans),
    Method(
        "rs-prune-dedup",
        f"RS-Prune without copies: exact copies, near copies (cosine >= {DEFAULT_COSINE} "
        f"by default) and more than {DEFAULT_MAX_PER_PLACE} tile per place are skipped inside the quota",
        True,
        lambda p: _without_copies(p, defaults=True),
    ),
)
METHODS: dict[str, Method] = {m.name: m for m in _METHOD_LIST}
COPY_METHODS = ("rs-prune", "rs-prune-dedup")  # the methods that take copy options (rs-prune: off by default)


def run_selection(method: str, inputs: SelectionInputs) -> Selection:
    """Dispatch to a registered method (see :data:`METHODS`)."""
    if method not in METHODS:
        raise RSGeoPruneError(f"selection method {method!r} is unknown; use one of {', '.join(METHODS)}")
    m = METHODS[method]
    if m.needs_reference and inputs.cluster is None:
        raise RSGeoPruneError(f"selection method {method} needs reference centroids (reference sets or a bank .npz)")
    if inputs.asks_for_copy_removal and method not in COPY_METHODS:
        raise RSGeoPruneError(f"selection method {method} does not remove copies; use {' or '.join(COPY_METHODS)}")
    if method == "rs-prune" and inputs.asks_for_copy_removal:
        return _without_copies(inputs, defaults=False)
    return m.choose(inputs)


# ---------------------------------------------------------------------------------------------
# The same RS-Prune selection as a map-reduce (docs/determinism.md)
# ---------------------------------------------------------------------------------------------


def quota_plan(cluster_counts: np.ndarray, budget: int, k: int) -> tuple[int, int]:
    """Pass 1: from the candidate count of every cluster, the quota ``q = ⌊B/K⌋`` and the number
    ``r`` of tiles the remainder must supply."""
    q = budget // k
    r = min(budget, int(cluster_counts.sum())) - int(np.minimum(cluster_counts, q).sum())
    return q, max(r, 0)


def reduce_candidates(part: dict, q: int, r: int) -> dict:
    """Keep only the tiles of ``part`` that can still be selected: each cluster's ``q`` best and the
    ``r`` best of the others. Applied to a partition (map) or to the union of two results (reduce),
    it is associative, so any tree of partitions gives the in-memory answer; a result never holds
    more than ``q·K + r`` tiles (memory O(B)).

    ``part`` holds equal-length arrays: ``index`` (global position), ``cluster`` and ``key``
    (see :func:`_descending_keys`).
    """
    index, cluster, key = part["index"], part["cluster"], part["key"]
    keep = np.zeros(len(index), bool)
    order = np.argsort(key)  # best first; keys are unique
    rank = np.zeros(len(index), np.int64)
    by_cluster = order[np.argsort(cluster[order], kind="stable")]
    sc = cluster[by_cluster]
    starts = np.flatnonzero(np.r_[True, sc[1:] != sc[:-1]]) if len(sc) else np.zeros(0, int)
    rank[by_cluster] = np.arange(len(sc)) - np.repeat(starts, np.diff(np.r_[starts, len(sc)]))
    keep[rank < q] = True
    rest = order[~keep[order]]
    keep[rest[:r]] = True
    return {name: arr[keep] for name, arr in part.items()}


def merge_candidates(a: dict, b: dict, q: int, r: int) -> dict:
    """Reduce step: the union of two partial results, reduced again."""
    return reduce_candidates({name: np.concatenate([a[name], b[name]]) for name in a}, q, r)


def finish_selection(part: dict, q: int, r: int) -> np.ndarray:
    """Global positions of the selected tiles from the fully reduced candidates."""
    cand = reduce_candidates(part, q, 0)  # each cluster's q best
    others = ~np.isin(part["index"], cand["index"])
    rest_idx = part["index"][others]
    rest_key = part["key"][others]
    extra = rest_idx[np.argsort(rest_key)[:r]]
    return np.sort(np.concatenate([cand["index"], extra]))


def candidate_partition(cluster, similarity, tie, offset: int = 0) -> dict:
    """The arrays a partition contributes to the map-reduce (``index`` = ``offset`` + position).

    ``tie`` must be the tiles' *global* tie ranks (rank of ``tile_id`` among all candidates, or any
    integers in [0, 2**32) that sort like the ids), so that keys of different partitions compare.
    """
    cluster = np.asarray(cluster)
    return {
        "index": np.arange(offset, offset + len(cluster), dtype=np.int64),
        "cluster": cluster.astype(np.int64),
        "key": _descending_keys(np.asarray(similarity, np.float32), np.asarray(tie)),
    }


def tie_ranks(tile_id) -> np.ndarray:
    """Global tie ranks of tile ids (integers in [0, 2**32) that sort like the ids)."""
    return _tie_rank(tile_id)


def select_in_tasks(cluster, similarity, tie, budget: int, k: int, chunk: int) -> np.ndarray:
    """RS-Prune selection as the two-pass map-reduce on the current dask scheduler: pass 1 counts
    candidates per cluster (giving ``q`` and ``r``); pass 2 reduces every partition to its possible
    winners and merges them in a tree. Identical to :func:`select_quota`; no task holds more than
    ``2 (q·K + r)`` candidates."""
    import dask

    n = len(cluster)
    counts = sum(
        dask.compute(*[dask.delayed(np.bincount)(cluster[s : s + chunk], minlength=k) for s in range(0, n, chunk)]),
        np.zeros(k, np.int64),
    )
    q, r = quota_plan(np.asarray(counts), budget, k)
    parts = [
        dask.delayed(reduce_candidates)(
            dask.delayed(candidate_partition)(cluster[s : s + chunk], similarity[s : s + chunk], tie[s : s + chunk], s),
            q,
            r,
        )
        for s in range(0, n, chunk)
    ]
    while len(parts) > 1:
        parts = [
            dask.delayed(merge_candidates)(parts[i], parts[i + 1], q, r) if i + 1 < len(parts) else parts[i]
            for i in range(0, len(parts), 2)
        ]
    chosen = np.zeros(n, bool)
    if parts:
        chosen[finish_selection(dask.compute(parts[0])[0], q, r)] = True
    return chosen
