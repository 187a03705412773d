"""Copies inside the quota (rsgeo_prune.dedup): known answers for each kind of copy, the exact
budget, agreement with a plain O(n²) statement of the rule, and the same bits for any thread count
and block size (decisions near τ are those of the canonical cosine)."""

import numpy as np
import pytest
import torch

from rsgeo_prune import dedup
from rsgeo_prune.dedup import EXACT, NEAR, PLACE, select_distinct
from rsgeo_prune.errors import InvalidOption, RSGeoPruneError
from rsgeo_prune.exact import canonical_matmul
from rsgeo_prune.kmeans import assign
from rsgeo_prune.places import Places
from rsgeo_prune.select import _descending_order, _tie_rank, select_quota


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def corpus(n=600, d=32, k=6, copies=120, noise=0.01, seed=0):
    """Unit embeddings in ``k`` loose clusters, with ``copies`` noisy copies of earlier rows; the
    assignment and the priority order of the RS-Prune selection."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((k, d)))
    z = centres[rng.integers(0, k, n)] + 0.6 * rng.standard_normal((n, d))
    src = rng.integers(0, n - copies, copies)
    z[n - copies :] = z[src] + noise * rng.standard_normal((copies, d))
    z = unit(z)
    cluster, sim = assign(z, centres)
    order = _descending_order(sim, _tie_rank(np.arange(n)))
    return z, cluster, sim, order, src


def reference(cluster, order, z, budget, k, cosine=None, digests=None, pairs=(), max_per_place=None):
    """The rule as docs/curation.md states it, with every canonical cosine computed up front."""
    n = len(cluster)
    cos = canonical_matmul(z, np.asfortranarray(z.T)).astype(np.float64) if cosine is not None else None
    partners = {i: set() for i in range(n)}
    for a, b in pairs:
        partners[a].add(b)
        partners[b].add(a)
    rank = np.empty(n, int)
    rank[order] = np.arange(n)
    chosen, kind, copy_of = np.zeros(n, bool), np.zeros(n, np.uint8), np.full(n, -1)
    if digests is not None:
        first = {}
        for i in order:
            if digests[i] in first:
                kind[i], copy_of[i] = EXACT, first[digests[i]]
            else:
                first[digests[i]] = i
    examined = kind == EXACT
    filled = np.zeros(k, int)

    def judge(i):
        examined[i] = True
        mine = [j for j in np.flatnonzero(chosen) if cluster[j] == cluster[i]]
        near = [j for j in mine if cos is not None and cos[i, j] >= cosine]
        if near:
            kind[i], copy_of[i] = NEAR, min(near, key=lambda j: rank[j])
            return
        same = [j for j in partners[i] if chosen[j]]
        if max_per_place is not None and len(same) >= max_per_place:
            kind[i], copy_of[i] = PLACE, min(same, key=lambda j: rank[j])
            return
        chosen[i] = True
        filled[cluster[i]] += 1

    q = budget // k
    for i in order:  # the quotas, then the rest of the budget, both in priority order
        if not examined[i] and filled[cluster[i]] < q and chosen.sum() < budget:
            judge(i)
    for i in order:
        if not examined[i] and chosen.sum() < budget:
            judge(i)
    for i in np.flatnonzero(kind == EXACT):  # copies never name copies
        if kind[copy_of[i]] != 0:
            copy_of[i] = copy_of[copy_of[i]]
    return chosen, copy_of, kind


def same(got, want):
    assert np.array_equal(got.chosen, want[0])
    assert np.array_equal(got.copy_of, want[1])
    assert np.array_equal(got.kind, want[2])


def test_without_copies_it_is_the_rs_prune_selection():
    z, cluster, sim, order, _ = corpus(copies=0)
    for budget in (0, 5, 90, 301, 600, 900):
        got = select_distinct(cluster, order, z, budget, 6, cosine=1.0, digests=np.arange(600).astype(str))
        assert np.array_equal(got.chosen, select_quota(cluster, sim, np.arange(600), budget, 6))
        assert got.chosen.sum() == min(budget, 600) and (got.kind == 0).all()


@pytest.mark.parametrize("budget", [30, 90, 240, 600])
def test_near_copies_match_the_plain_rule_and_fill_the_budget(budget):
    z, cluster, _, order, src = corpus()
    got = select_distinct(cluster, order, z, budget, 6, cosine=0.95, block=16)
    want = reference(cluster, order, z, budget, 6, cosine=0.95)
    same(got, want)
    distinct = 600 - int((got.kind != 0).sum())
    assert got.chosen.sum() == min(budget, distinct)
    if budget == 600:  # everything examined: every planted copy (or its original) is dropped
        for copy, original in zip(range(480, 600), src):
            assert not (got.chosen[copy] and got.chosen[original])
        assert (got.kind == NEAR).sum() >= 100


def test_exact_near_and_place_copies_together_match_the_plain_rule():
    z, cluster, _, order, _ = corpus(seed=3)
    rng = np.random.default_rng(4)
    digests = np.arange(600).astype(str).astype(object)
    dup = rng.choice(600, 40, replace=False)
    digests[dup[20:]] = digests[dup[:20]]  # 20 exact copies
    z[dup[20:]] = z[dup[:20]]  # (identical pixels give identical embeddings)
    cluster, sim = assign(z, unit(np.eye(6, 32, dtype=np.float32) + 0.1))
    order = _descending_order(sim, _tie_rank(np.arange(600)))
    a, b = rng.integers(0, 600, 300), rng.integers(0, 600, 300)
    pairs = sorted({(min(x, y), max(x, y)) for x, y in zip(a, b) if x != y})
    places = Places.from_pairs(600, np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]))
    for cosine, mpp, budget in [(0.9, 1, 200), (0.95, 2, 450), (None, 1, 600), (0.97, None, 100)]:
        got = select_distinct(
            cluster, order, z, budget, 6, cosine=cosine, digests=digests, places=places, max_per_place=mpp, block=50
        )
        same(got, reference(cluster, order, z, budget, 6, cosine, digests, pairs, mpp))
        assert (got.kind == EXACT).sum() == 20
        if mpp == 1:  # no two chosen tiles of one place
            assert not any(got.chosen[x] and got.chosen[y] for x, y in pairs)


def test_exact_copies_keep_the_first_in_priority_order():
    z = unit(np.random.default_rng(1).standard_normal((5, 8)))
    z[3] = z[1]
    cluster = np.zeros(5, np.int64)
    order = np.array([4, 3, 2, 1, 0])  # tile 3 comes before its copy 1
    got = select_distinct(cluster, order, z, 5, 1, cosine=1.0, digests=np.array(["a", "b", "c", "b", "e"], object))
    assert got.kind.tolist() == [0, EXACT, 0, 0, 0] and got.copy_of.tolist() == [-1, 3, -1, -1, -1]
    assert got.chosen.tolist() == [True, False, True, True, True]  # 4 distinct tiles: all of them
    assert got.counts() == {"exact": 1, "near": 0, "same place": 0}
    none = select_distinct(cluster, order, z, 5, 1, digests=np.array(["a", "", None, "", "e"], object))
    assert (none.kind == 0).all()  # missing digests never match


def test_freed_quota_goes_to_the_next_distinct_tiles():
    """One cluster of 10 tiles where tiles 1 and 2 copy tile 0: a budget of 4 takes 0, 3, 4, 5."""
    rng = np.random.default_rng(2)
    z = unit(rng.standard_normal((10, 16)))
    z[1] = unit(z[0] + 0.001 * rng.standard_normal(16)[None])[0]
    z[2] = unit(z[0] + 0.001 * rng.standard_normal(16)[None])[0]
    got = select_distinct(np.zeros(10), np.arange(10), z, 4, 1, cosine=0.99)
    assert np.flatnonzero(got.chosen).tolist() == [0, 3, 4, 5]
    assert got.kind[:3].tolist() == [0, NEAR, NEAR] and got.copy_of[1:3].tolist() == [0, 0]
    assert (got.kind[6:] == 0).all()  # never examined: left to the selection


def test_a_cosine_exactly_at_tau_is_a_copy():
    """The decision is canonical cosine ≥ τ, so τ equal to a pair's canonical cosine counts it."""
    rng = np.random.default_rng(5)
    z = unit(rng.standard_normal((2, 512)))
    z[1] = unit(z[0] + 0.05 * rng.standard_normal(512)[None])[0]
    c = float(canonical_matmul(z[:1], np.asfortranarray(z[1:].T))[0, 0])
    at = select_distinct(np.zeros(2), np.arange(2), z, 2, 1, cosine=c)
    above = select_distinct(np.zeros(2), np.arange(2), z, 2, 1, cosine=float(np.nextafter(c, 2.0)))
    assert at.kind.tolist() == [0, NEAR] and above.kind.tolist() == [0, 0]


def test_same_bits_for_any_thread_count_and_block_size():
    z, cluster, _, order, _ = corpus(n=900, d=256, copies=200, noise=0.02, seed=8)
    before = torch.get_num_threads()
    got = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for block in (1, 7, 64, 4096):
                r = select_distinct(cluster, order, z, 300, 6, cosine=0.97, block=block)
                got.append(np.concatenate([r.chosen, r.copy_of, r.kind]).tobytes())
    finally:
        torch.set_num_threads(before)
    assert len(set(got)) == 1


def test_cost_follows_the_quota_not_the_cluster_size(monkeypatch):
    """One cluster of 20,000 tiles and a quota of 50: the cosines computed stay near 50², not 20,000²."""
    rng = np.random.default_rng(6)
    z = unit(rng.standard_normal((20_000, 32)))
    computed = []
    real = dedup._pairs_at_least
    monkeypatch.setattr(dedup, "_pairs_at_least", lambda a, b, *r: computed.append(len(a) * len(b)) or real(a, b, *r))
    got = select_distinct(np.zeros(20_000), np.arange(20_000), z, 50, 1, cosine=0.97)
    assert got.chosen.sum() == 50
    assert sum(computed) <= 2 * 120**2


BAD = [
    ("cosine", 0.0),
    ("cosine", 1.5),
    ("cosine", -0.2),
    ("cosine", float("nan")),
    ("cosine", True),
    ("max_per_place", 0),
    ("max_per_place", -1),
    ("max_per_place", 1.5),
]


@pytest.mark.parametrize("name,value", BAD)
def test_bad_values_name_the_option(name, value):
    z = unit(np.ones((2, 4)))
    with pytest.raises(InvalidOption) as info:
        select_distinct(np.zeros(2), np.arange(2), z, 1, 1, places=Places.none(2), **{name: value})
    assert info.value.option == ("dedup_cosine" if name == "cosine" else name)


def test_inconsistent_inputs_are_refused():
    z = unit(np.ones((3, 4)))
    with pytest.raises(RSGeoPruneError, match="one entry per candidate"):
        select_distinct(np.zeros(3), np.arange(2), z, 1, 1)
    with pytest.raises(RSGeoPruneError, match="same-place partners"):
        select_distinct(np.zeros(3), np.arange(3), z, 1, 1, max_per_place=1)
    with pytest.raises(RSGeoPruneError, match=r"\[0, 1\)"):
        select_distinct(np.array([0, 1, 0]), np.arange(3), z, 1, 1)
    bad = z.copy()
    bad[1, 0] = np.nan
    with pytest.raises(RSGeoPruneError, match="NaN"):
        select_distinct(np.zeros(3), np.arange(3), bad, 3, 1, cosine=0.9)
