"""Canonical dot products (``f32(f64(exact))``) against a math.fsum reference, and the default
embedder built on them: the same bits for a tile alone, in any batch and on any thread count."""

import math

import numpy as np
import pytest
import torch

from rsgeo_prune import exact
from rsgeo_prune.embed.default import GRAD_BINS, GRAD_EDGES, DefaultEmbedder


def fsum_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """f32(correctly rounded float64 of the exact products) for every entry of ``a @ b``."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    out = [[math.fsum((a64[i] * b64[:, j]).tolist()) for j in range(b.shape[1])] for i in range(len(a))]
    return np.array(out, np.float64).astype(np.float32) + np.float32(0.0)  # + 0.0: -0.0 → +0.0


def bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, np.float32).view(np.uint32)


def midpoint_rows(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose exact dot with ``b`` lies on, or within 2^-49 of, a float32 rounding midpoint
    (the float64 product cannot certify those; the fallbacks must)."""
    a = np.zeros((n, 8), np.float32)
    b = np.zeros((8, 1), np.float32)
    b[:3, 0] = 1.0
    for i in range(n):
        f = np.float32(rng.uniform(0.1, 1.0))
        mid = np.float64(f) + np.float64(np.spacing(f)) / 2  # halfway between f and the next float32
        hi = np.float32(mid)
        a[i, :3] = [hi, np.float32(mid - np.float64(hi)), np.float32(rng.choice([-1.0, 0.0, 1.0]) * 2.0**-49)]
        a[i, 3:] = rng.standard_normal(5)  # b is zero there: exact zeros in the sum
    return a, b


def test_canonical_matmul_equals_the_fsum_reference():
    rng = np.random.default_rng(1)
    for m, n, k in [(40, 300, 30), (7, 1, 3), (5, 1024, 9)]:
        a = rng.standard_normal((m, n)).astype(np.float32)
        b = rng.standard_normal((n, k)).astype(np.float32)
        want = bits(fsum_reference(a, b))
        assert np.array_equal(bits(exact.canonical_matmul(a, b)), want)
        assert np.array_equal(bits(exact.canonical_matmul(a, np.asfortranarray(b))), want)
        assert np.array_equal(bits(exact.canonical_matmul(a.astype(np.float64), b)), want)  # float32 values
        rows, cols = np.nonzero(np.ones((m, k), bool))
        assert np.array_equal(bits(exact.canonical_pair_dots(a, np.ascontiguousarray(b.T), rows, cols)), want.ravel())


def test_rounding_midpoints_go_through_every_fallback(monkeypatch):
    rng = np.random.default_rng(2)
    a, b = midpoint_rows(rng, 300)
    calls = {"compensated": 0, "fsum": 0}
    kernel, fsum_pairs = exact._compensated_kernel, exact._fsum_pairs

    def count(name, fn):
        def wrapped(*args):
            calls[name] += len(args[2])
            return fn(*args)

        return wrapped

    monkeypatch.setattr(exact, "_compensated_kernel", count("compensated", kernel))
    monkeypatch.setattr(exact, "_fsum_pairs", count("fsum", fsum_pairs))
    assert np.array_equal(bits(exact.canonical_matmul(a, b)), bits(fsum_reference(a, b)))
    # every row is uncertain for the float64 product; those off the midpoint by 2^-49 are settled
    # by the compensated sum, those exactly on it (a tie: rounds to even) reach math.fsum
    assert calls["compensated"] == 300 and 0 < calls["fsum"] < 300


def test_canonical_results_do_not_depend_on_threads_or_row_blocks():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((300, 512)).astype(np.float32)
    b = rng.standard_normal((512, 50)).astype(np.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = exact.canonical_matmul(a, b)
        torch.set_num_threads(4)
        four = exact.canonical_matmul(a, b)
    finally:
        torch.set_num_threads(threads)
    pieces = np.concatenate([exact.canonical_matmul(a[i : i + 7], b) for i in range(0, 300, 7)])
    assert np.array_equal(bits(one), bits(four)) and np.array_equal(bits(one), bits(pieces))


def test_zero_is_plus_zero_and_float64_input_must_hold_float32_values():
    z = np.zeros((2, 3), np.float32)
    z[1] = -0.0
    assert not bits(exact.canonical_matmul(z, -np.ones((3, 2), np.float32))).any()
    with pytest.raises(ValueError, match="float32 values"):
        exact.canonical_matmul(np.full((1, 2), 0.1), np.ones((2, 1), np.float32))


def test_unit_rows_known_answer():
    z = np.array([[3.0, 4.0], [0.0, 0.0], [1e-30, 0.0]], np.float32)
    want = np.array([[0.6, 0.8], [0.0, 0.0], [1e-18, 0.0]], np.float32)  # 1e-30 / max(1e-30, 1e-12)
    assert np.array_equal(bits(exact.unit_rows(z)), bits(want))
    assert exact.canonical_squared_norms(z[:1]).tolist() == [25.0]


def _tiles(rng, n, c=4, side=80):
    tiles = rng.integers(0, 256, (n, c, side, side), dtype=np.uint8)
    tiles[::3] //= 7  # darker tiles: sparse colour histograms, NDVI near the edges
    return tiles


def test_default_embedder_gives_a_tile_the_same_bits_alone_and_in_any_batch():
    rng = np.random.default_rng(4)
    tiles = _tiles(rng, 24)
    emb = DefaultEmbedder(threads=2)
    alone = np.concatenate([emb(t[None]) for t in tiles])
    for size in (2, 5, 24):
        batched = np.concatenate([emb(tiles[i : i + size]) for i in range(0, len(tiles), size)])
        assert np.array_equal(bits(batched), bits(alone)), size
    perm = rng.permutation(len(tiles))
    assert np.array_equal(bits(emb(tiles[perm])), bits(alone[perm]))
    floats = tiles[:6, :3].astype(np.float32) / 255  # float RGB input: no vegetation block
    assert np.array_equal(bits(emb(floats)[2:3]), bits(emb(floats[2:3])))


def test_default_embedder_does_not_depend_on_thread_counts():
    tiles = _tiles(np.random.default_rng(5), 20)
    threads = torch.get_num_threads()
    out = []
    try:
        for n in (1, 2, 4):
            torch.set_num_threads(n)
            out.append(DefaultEmbedder(threads=n)(tiles))
    finally:
        torch.set_num_threads(threads)
    assert all(np.array_equal(bits(o), bits(out[0])) for o in out)
    assert np.allclose(np.linalg.norm(out[0], axis=1), 1, atol=1e-6)


def test_gradient_bins_are_exact_powers_of_two():
    # the kernel's bins equal floor(log2(m + 2^-8) + 8), clipped to [0, GRAD_BINS)
    assert len(GRAD_EDGES) == GRAD_BINS - 1
    assert GRAD_EDGES == tuple(2.0**e for e in range(-7, 0))
