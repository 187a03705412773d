"""Nearest-centroid assignment and spherical k-means: known answers, and the same bits whatever
the thread count, block size or process environment."""

import hashlib
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from rsgeo_prune import RSGeoPruneError, centroids, kmeans, select
from rsgeo_prune.centroids import CentroidBank
from rsgeo_prune.kmeans import assign, spherical_kmeans


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _planted(k=5, per=40, d=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(k), per)
    x = centres[labels] + 0.05 * rng.normal(size=(k * per, d))
    return unit(x), labels, centres


def _cloud(n=3000, k=40, d=256, seed=0):
    rng = np.random.default_rng(seed)
    return unit(rng.standard_normal((n, d), dtype=np.float32)), unit(rng.standard_normal((k, d), dtype=np.float32))


def _with_threads(n, fn):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(old)


def digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


# -- assign ---------------------------------------------------------------------------------------


def test_assign_is_the_canonical_argmax_with_ties_to_the_lowest_index():
    emb, cen = _cloud(200, 12, 300, seed=1)
    cen[7] = cen[3]  # a duplicate centroid: every tie goes to 3, never 7
    e64, c64 = emb.astype(np.float64), cen.astype(np.float64)
    exact = np.array([[math.fsum((e64[i] * c64[j]).tolist()) for j in range(len(cen))] for i in range(len(emb))])
    canon = exact.astype(np.float32)
    cluster, sim = assign(emb, cen)
    assert cluster.dtype == np.int32 and sim.dtype == np.float32
    assert cluster.tolist() == canon.argmax(axis=1).tolist()  # argmax: first of the maxima
    assert np.array_equal(sim.view(np.uint32), canon.max(axis=1).view(np.uint32))
    assert 7 not in set(cluster.tolist()) and 3 in set(cluster.tolist())
    assert select.assign is assign


def test_assign_bits_do_not_depend_on_threads_or_blocks():
    emb, cen = _cloud()
    runs = [_with_threads(t, lambda: assign(emb, cen, block=b)) for t in (1, 2, 4) for b in (7, 1000, 8192)]
    assert len({digest(*r) for r in runs}) == 1


def test_assign_and_kmeans_bits_in_a_fresh_one_thread_process():
    emb, cen = _cloud(2000, 30, 128, seed=2)
    x = _cloud(1500, 1, 64, seed=7)[0]
    here = [digest(*assign(emb, cen)), digest(*spherical_kmeans(x, 12, seed=2))]
    code = (
        "from rsgeo_prune.kmeans import assign, spherical_kmeans; from tests.test_kmeans import _cloud, digest; "
        "print(digest(*assign(*_cloud(2000, 30, 128, seed=2)))); "
        "print(digest(*spherical_kmeans(_cloud(1500, 1, 64, seed=7)[0], 12, seed=2)))"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-2:] == here


def test_assign_errors():
    emb, cen = _cloud(100, 7, 16)
    emb[50, 3] = np.nan
    with pytest.raises(RSGeoPruneError, match="embedding row 50 holds NaN"):
        assign(emb, cen, block=16)
    with pytest.raises(RSGeoPruneError, match="must be \\(N, D\\) and \\(K, D\\)"):
        assign(emb[:, :8], cen)
    cen[2, 0] = np.inf
    with pytest.raises(RSGeoPruneError, match="centroid bank holds NaN"):
        assign(emb[:10], cen)
    c, s = assign(np.zeros((0, 16), np.float32), cen[:2])
    assert c.shape == s.shape == (0,)


# -- spherical k-means ------------------------------------------------------------------------------


def test_spherical_kmeans_recovers_planted_clusters():
    x, labels, centres = _planted()
    c, found = spherical_kmeans(x, 5, seed=3)
    assert found.dtype == np.int64 and c.dtype == np.float32
    assert np.allclose(np.linalg.norm(c, axis=1), 1, atol=1e-6)
    for j in range(5):  # every found cluster is exactly one planted cluster
        assert len(set(labels[found == j])) == 1
    assert sorted(np.round(np.max(c @ centres.T, axis=1), 2) > 0.99) == [True] * 5


def test_kmeans_is_seeded_and_k_is_checked():
    x, _, _ = _planted()
    a, _ = spherical_kmeans(x, 7, seed=1)
    b, _ = spherical_kmeans(x, 7, seed=1)
    assert np.array_equal(a, b)
    with pytest.raises(RSGeoPruneError, match="k 201.*is larger than the 200 reference images"):
        spherical_kmeans(x, 201)
    with pytest.raises(RSGeoPruneError, match="k 0.*must be >= 1"):
        spherical_kmeans(x, 0)
    assert centroids.spherical_kmeans is spherical_kmeans


def test_kmeans_centroids_and_bank_digest_do_not_depend_on_threads():
    x, _ = _cloud(2500, 1, 96, seed=4)
    runs = [_with_threads(t, lambda: spherical_kmeans(x, 20, seed=0)) for t in (1, 2, 4)]
    assert len({digest(c, lab) for c, lab in runs}) == 1
    banks = {CentroidBank(c, "default", "ref", ("a",), np.zeros((20, 1), np.int64)).digest for c, _ in runs}
    assert len(banks) == 1


def test_update_centroids_adds_members_in_row_order():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((500, 9)).astype(np.float32)
    labels = rng.integers(0, 4, 500)
    sums, counts = kmeans._update_centroids(x, labels, 5)
    want = np.zeros((5, 9))
    for i in range(500):  # the documented order: ascending row index, float64
        want[labels[i]] += x[i].astype(np.float64)
    assert np.array_equal(sums, want) and counts.tolist() == np.bincount(labels, minlength=5).tolist()


def test_empty_cluster_is_repaired_with_the_farthest_points():
    x = np.eye(4, dtype=np.float32)
    sums = np.zeros((3, 4))
    sums[0] = x[0] + x[1] + x[2] + x[3]
    counts = np.array([4, 0, 0])
    s = np.array([0.9, 0.1, 0.5, 0.1], np.float32)  # rows 1 and 3 tie as farthest: 1 first, then 3
    kmeans._repair_empty_clusters(sums, counts, x, s)
    assert sums[1].tolist() == x[1].tolist() and sums[2].tolist() == x[3].tolist()


def test_kmeans_with_more_clusters_than_distinct_points():
    # 3 directions, k = 5: k-means++ runs out of distance, clusters empty out and are re-seeded
    x = np.repeat(np.eye(3, 8, dtype=np.float32), 10, axis=0)
    c, labels = spherical_kmeans(x, 5, seed=0)
    assert np.allclose(np.linalg.norm(c, axis=1), 1)
    assert len(set(labels.tolist())) == 3  # each direction in one cluster
    assert all(len(set(labels[i * 10 : (i + 1) * 10].tolist())) == 1 for i in range(3))
