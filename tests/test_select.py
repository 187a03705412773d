"""Stage II selection with hand-built assignments whose answer is known."""

import numpy as np
import pytest

from rsgeo_prune import RSGeoPruneError
from rsgeo_prune.select import rank_in_cluster, select_quota, select_random, select_top_entropy, select_water_filling

# 3 clusters: A (cluster 0) has 5 tiles, B (1) has 3, C (2, rare) has 1
CLUSTER = np.array([0, 0, 0, 0, 0, 1, 1, 1, 2])
SIM = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.95, 0.4, 0.3, 0.2])
IDS = np.array([f"t{i}" for i in range(9)])


def picked(mask):
    return sorted(IDS[mask].tolist())


def test_quota_per_cluster_nearest_first_and_rare_cluster_keeps_all():
    # B = 6, K = 3: q = 2 → A: t0, t1; B: t5, t6; C has 1 < q: keeps t8; 1 left → best remaining: t2 (0.7)
    assert picked(select_quota(CLUSTER, SIM, IDS, 6, 3)) == ["t0", "t1", "t2", "t5", "t6", "t8"]


def test_remainder_by_descending_similarity_with_tile_id_ties():
    sim = np.array([0.9, 0.5, 0.5, 0.5, 0.1, 0.95, 0.5, 0.3, 0.2])
    # q = 1: t0, t5, t8; 2 left among 0.5-ties t1, t2, t3, t6 → by tile_id: t1, t2
    assert picked(select_quota(CLUSTER, sim, IDS, 5, 4)) == ["t0", "t1", "t2", "t5", "t8"]


def test_exactly_b_and_all_when_b_exceeds_n():
    for b in range(0, 12):
        assert select_quota(CLUSTER, SIM, IDS, b, 3).sum() == min(b, 9)
        assert select_water_filling(CLUSTER, SIM, IDS, b).sum() == min(b, 9)


def test_k_equal_one_is_global_top_b():
    top4 = select_quota(np.zeros(9, int), SIM, IDS, 4, 1)
    assert picked(top4) == ["t0", "t1", "t2", "t5"]
    with pytest.raises(RSGeoPruneError, match="must lie in"):
        select_quota(CLUSTER, SIM, IDS, 4, 1)


def test_water_filling_cap():
    # sizes 5, 3, 1; B = 7: x = 3 gives 3 + 3 + 1 = 7 → A: t0-t2, B: all, C: all
    assert picked(select_water_filling(CLUSTER, SIM, IDS, 7)) == ["t0", "t1", "t2", "t5", "t6", "t7", "t8"]
    # B = 5: x = 2 gives 2 + 2 + 1 = 5
    assert picked(select_water_filling(CLUSTER, SIM, IDS, 5)) == ["t0", "t1", "t5", "t6", "t8"]
    # B = 6: x = 2 (5), one slot left → next of A (t2, 0.7) beats next of B (t7, 0.3)
    assert picked(select_water_filling(CLUSTER, SIM, IDS, 6)) == ["t0", "t1", "t2", "t5", "t6", "t8"]


def test_rank_in_cluster():
    assert rank_in_cluster(CLUSTER, SIM, IDS).tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 0]


def test_baselines():
    assert select_random(100, 10, seed=1).sum() == 10
    assert (select_random(100, 10, seed=1) == select_random(100, 10, seed=1)).all()
    e = np.array([1.0, 5.0, np.nan, 5.0])
    assert select_top_entropy(e, ["d", "c", "b", "a"], 2).tolist() == [False, True, False, True]


def test_map_reduce_selection_equals_in_memory():
    from rsgeo_prune.select import (
        candidate_partition,
        finish_selection,
        merge_candidates,
        quota_plan,
        reduce_candidates,
        tie_ranks,
    )

    rng = np.random.default_rng(0)
    for trial in range(100):
        n, k = int(rng.integers(1, 300)), int(rng.integers(1, 12))
        budget = int(rng.integers(0, n + 20))
        cluster = rng.integers(0, k, n)
        sim = rng.random(n).astype(np.float32)
        sim[rng.random(n) < 0.2] = 0.5  # ties
        ids = np.array([f"s/{i:04d}" for i in rng.permutation(n)])
        want = np.flatnonzero(select_quota(cluster, sim, ids, budget, k))
        q, r = quota_plan(np.bincount(cluster, minlength=k), budget, k)
        tie = tie_ranks(ids)
        cuts = sorted(set(rng.integers(0, n + 1, int(rng.integers(0, 6))).tolist()) | {0, n})
        parts = [
            reduce_candidates(candidate_partition(cluster[a:b], sim[a:b], tie[a:b], a), q, r)
            for a, b in zip(cuts[:-1], cuts[1:])
        ]
        while len(parts) > 1:  # a tree, as dask would build it
            parts = [
                merge_candidates(parts[i], parts[i + 1], q, r) if i + 1 < len(parts) else parts[i]
                for i in range(0, len(parts), 2)
            ]
        assert np.array_equal(finish_selection(parts[0], q, r), want), trial
        assert len(parts[0]["index"]) <= q * k + r
