"""FD and KID in named, digested feature spaces: closed forms, monotonicity, symmetry, digests, torchmetrics, errors."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rsgeo_prune.errors import RSGeoPruneError
from rsgeo_prune.synth import render_tile
from rsgeo_prune.train.metrics import (
    MetricReport,
    RandomCNNFeatures,
    as_uint8_tiles,
    compare_features,
    compare_sets,
    feature_space,
    frechet_distance,
    kernel_inception_distance,
)

from .helpers import feature_moments, frechet_from_moments, torchmetrics_fid, torchmetrics_kid

torch.set_num_threads(1)

#: sha256 of random-cnn-0 on 4 bands (config + float64 weights); computed once, must never change silently
RANDOM_CNN_0_DIGEST = "75808a55521e0af5dc7b4b456f95507f62e3c98338d04b9b83448333835669f6"
SPACES = ["rsgeo-default", "random-cnn-0"]
MIX = ("forest", "water", "urban", "cloud", "cropland", "bare_soil")


def _tiles(n: int, seed: int, size: int = 64, classes=MIX) -> np.ndarray:
    """``(n, 4, size, size)`` uint8 synthetic tiles cycling through ``classes``."""
    rng = np.random.default_rng(seed)
    return np.stack([render_tile(classes[i % len(classes)], rng, size) for i in range(n)])


@pytest.fixture(scope="module")
def tiles() -> np.ndarray:
    return _tiles(120, seed=1)


@pytest.fixture(scope="module", params=SPACES)
def space(request):
    return feature_space(request.param, threads=1)


def _exact_moment_samples(rng, n: int, mu: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """``(n, D)`` samples whose sample mean is exactly ``mu`` and unbiased covariance exactly ``cov``
    (whitened Gaussian draws, re-coloured), so FD on them must equal the population closed form."""
    z = rng.standard_normal((n, len(mu)))
    z -= z.mean(axis=0)
    white = np.linalg.cholesky(np.atleast_2d(np.cov(z.T)))
    z = np.linalg.solve(white, z.T).T  # sample covariance now exactly I (up to rounding)
    return mu + z @ np.linalg.cholesky(cov).T


# ---------------------------------------------------------------------------------- known answers
def test_fd_known_answer_proportional_covariances():
    """Σb = c·Σa: tr(Σa^½ Σb Σa^½)^½ = √c tr Σa, so FD = ‖Δμ‖² + (1 − √c)² tr Σa."""
    rng = np.random.default_rng(0)
    d, c = 6, 2.25
    m = rng.standard_normal((d, d))
    cov = m @ m.T + 0.5 * np.eye(d)
    mu_a, mu_b = rng.standard_normal(d), rng.standard_normal(d)
    a = _exact_moment_samples(rng, 400, mu_a, cov)
    b = _exact_moment_samples(rng, 300, mu_b, c * cov)
    expected = np.sum((mu_a - mu_b) ** 2) + (1 - np.sqrt(c)) ** 2 * np.trace(cov)
    for method in ("samples", "features", "auto"):
        assert frechet_distance(a, b, method=method) == pytest.approx(expected, rel=1e-9)
    assert frechet_from_moments(mu_a, cov, mu_b, c * cov) == pytest.approx(expected, rel=1e-12)


def test_fd_known_answer_isotropic_against_rotated_diagonal():
    """Σa = s²I, Σb = Q diag(λ) Qᵀ: FD = ‖Δμ‖² + D s² + Σλ − 2 s Σ√λ (independent of the rotation Q)."""
    rng = np.random.default_rng(1)
    d, s = 5, 0.7
    lam = np.array([0.1, 0.5, 1.0, 2.0, 4.0])
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    cov_b = q @ np.diag(lam) @ q.T
    mu_a, mu_b = np.zeros(d), np.full(d, 0.3)
    expected = d * 0.09 + d * s**2 + lam.sum() - 2 * s * np.sqrt(lam).sum()
    a = _exact_moment_samples(rng, 500, mu_a, s**2 * np.eye(d))
    b = _exact_moment_samples(rng, 500, mu_b, cov_b)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_from_moments(mu_a, s**2 * np.eye(d), mu_b, cov_b) == pytest.approx(expected, rel=1e-12)


def test_fd_one_dimensional_is_mean_and_std_gap():
    a = _exact_moment_samples(np.random.default_rng(2), 50, np.array([1.0]), np.array([[4.0]]))
    b = _exact_moment_samples(np.random.default_rng(3), 80, np.array([-0.5]), np.array([[0.25]]))
    assert frechet_distance(a, b) == pytest.approx(1.5**2 + (2.0 - 0.5) ** 2, rel=1e-12)


def test_fd_methods_agree_below_and_above_the_dimension():
    """The SVD of the (Na, Nb) cross matrix and the (D, D) route give one number, singular covariances included."""
    rng = np.random.default_rng(4)
    for n_a, n_b, d in [(20, 30, 50), (200, 150, 40)]:
        a = rng.standard_normal((n_a, d)) @ rng.standard_normal((d, d))
        b = 0.8 * rng.standard_normal((n_b, d)) + 0.2
        got = [frechet_distance(a, b, method=m) for m in ("samples", "features")]
        assert got[0] == pytest.approx(got[1], rel=1e-10)
        assert got[0] == pytest.approx(frechet_from_moments(*feature_moments(a), *feature_moments(b)), rel=1e-9)


# ----------------------------------------------------------------------------- properties on tiles
def test_fd_of_a_set_with_itself_is_zero(space, tiles):
    f = space(tiles)
    scale = np.trace(feature_moments(f)[1])
    assert abs(frechet_distance(f, f)) < 1e-6 * scale
    assert abs(frechet_distance(f, f[::-1])) < 1e-6 * scale  # order of tiles does not matter


def test_fd_is_exactly_symmetric(space, tiles):
    f, g = space(tiles[:60]), space(tiles[60:])
    assert frechet_distance(f, g) == frechet_distance(g, f)
    assert kernel_inception_distance(f, g, 10, 40) == kernel_inception_distance(g, f, 10, 40)


def test_fd_grows_with_noise(space, tiles):
    x = torch.from_numpy(tiles).float() / 127.5 - 1
    ref = space(tiles)
    gen = torch.Generator().manual_seed(0)
    eps = torch.randn(x.shape, generator=gen)
    fds = [frechet_distance(ref, space((x + s * eps).clamp(-1, 1))) for s in (0.0, 0.03, 0.08, 0.2)]
    assert abs(fds[0]) < 1e-9 and all(lo < hi for lo, hi in zip(fds, fds[1:])), fds


def test_fd_grows_with_blur(space, tiles):
    x = torch.from_numpy(tiles).float() / 127.5 - 1
    ref = space(tiles)
    fds = [
        frechet_distance(ref, space(F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)))
        for k in (1, 3, 5, 9)
    ]
    assert abs(fds[0]) < 1e-9 and all(lo < hi for lo, hi in zip(fds, fds[1:])), fds


def test_kid_near_zero_for_identical_and_positive_for_different(space, tiles):
    f = space(tiles)
    twin = space(_tiles(120, seed=2))  # a second draw of the same class mix
    other = space(_tiles(120, seed=2, classes=("forest", "urban")))
    same, same_std, _ = kernel_inception_distance(f, twin, subsets=20, subset_size=60)
    diff, diff_std, m = kernel_inception_distance(f, other, subsets=20, subset_size=60)
    assert m == 60 and diff > 2 * diff_std > 0
    # the sets hold fixed class counts (stratified, not i.i.d.), which tilts the unbiased estimate slightly negative
    assert abs(same) < 0.2 * diff and abs(same) < 2 * same_std
    # one set against itself, used whole: 2·mean_{i≠j} k − 2·mean_{i,j} k (= −2(mean k_ii − mean k_i≠j)/m ≤ 0)
    k = (f @ f.T / f.shape[1] + 1) ** 3
    m = len(f)
    expected = 2 * (k.sum() - np.trace(k)) / (m * (m - 1)) - 2 * k.sum() / m**2
    self_kid, self_std, _ = kernel_inception_distance(f, f, subsets=1, subset_size=m)
    assert self_kid == pytest.approx(expected, rel=1e-9) and self_kid <= 0 and self_std == 0


def test_kid_is_seeded():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((80, 8)), rng.standard_normal((70, 8)) + 0.3
    assert kernel_inception_distance(a, b, 7, 30, seed=3) == kernel_inception_distance(a, b, 7, 30, seed=3)
    assert kernel_inception_distance(a, b, 7, 30, seed=3) != kernel_inception_distance(a, b, 7, 30, seed=4)
    # equal sets used whole: the subset size is capped and no spread is left
    std, m = kernel_inception_distance(a[:70], b, 5, 10_000)[1:]
    assert m == 70 and std == 0.0  # the same rows in the same order every time: not rounding noise (~1e-16)


# ------------------------------------------------------------------------------------- torchmetrics
def test_torchmetrics_fid_and_kid_agree_with_ours():
    """More samples than the 256 dimensions: torchmetrics' eigvals of the non-symmetric Σa·Σb would otherwise
    add square roots of rounding noise from the null directions (~1e-6 relative); ours has none. What is
    left (~1e-7) is torchmetrics' uncentred covariance, Σxxᵀ − n·μμᵀ, which cancels digits."""
    space = feature_space("random-cnn-0")
    a, b = _tiles(300, seed=5, size=16), _tiles(280, seed=6, size=16, classes=("forest", "cropland", "water"))
    fa, fb = space(a), space(b)
    assert torchmetrics_fid(a, b, space) == pytest.approx(frechet_distance(fa, fb), rel=1e-6)
    # one subset of the whole (equal-size) sets: no draws left to differ
    tm_mean, _ = torchmetrics_kid(a[:280], b, space, subsets=1, subset_size=280)
    assert tm_mean == pytest.approx(kernel_inception_distance(fa[:280], fb, 1, 280)[0], rel=1e-9)
    # the bridge takes a registry name as compare_sets does
    assert torchmetrics_fid(a[:40], b[:40], "random-cnn-0") == torchmetrics_fid(a[:40], b[:40], space)
    assert torchmetrics_kid(a[:40], b[:40], "random-cnn-0", 1, 40) == torchmetrics_kid(a[:40], b[:40], space, 1, 40)


# ------------------------------------------------------------------------------------------ digests
def test_random_cnn_digest_and_features_do_not_depend_on_threads(tiles):
    big = _tiles(3, seed=4, size=256)
    before = torch.get_num_threads()
    try:
        got = {}
        for n in (1, 2):
            torch.set_num_threads(n)
            cnn = feature_space("random-cnn-0")
            got[n] = (cnn.digest, cnn(tiles), cnn(big))
    finally:
        torch.set_num_threads(before)
    assert got[1][0] == got[2][0] == RANDOM_CNN_0_DIGEST
    assert np.array_equal(got[1][1], got[2][1]) and np.array_equal(got[1][2], got[2][2])
    # a tile's features do not depend on its batch either
    assert np.array_equal(feature_space("random-cnn-0")(tiles[:5]), got[1][1][:5])


def test_digests_name_the_space():
    a, b = feature_space("random-cnn-0"), feature_space("random-cnn-1")
    rgb = feature_space("random-cnn-0", channels=3)
    assert len({a.digest, b.digest, rgb.digest}) == 3  # seed and bands are part of the space
    assert (a.dim, a.name, rgb.name) == (256, "random-cnn-0", "random-cnn-0")
    default = feature_space("rsgeo-default", threads=1)
    assert default.dim == 1064 and default.name == "rsgeo-default" and len(default.digest) == 64
    assert feature_space("rsgeo-default", threads=1).digest == default.digest
    assert RandomCNNFeatures(0).weights[0].dtype == torch.float64


def test_float_and_uint8_tiles_give_the_same_features(tiles):
    x = torch.from_numpy(tiles).float() / 127.5 - 1  # the dataset's convention
    assert np.array_equal(as_uint8_tiles(x), tiles) and np.array_equal(as_uint8_tiles(x.numpy()), tiles)
    cnn = feature_space("random-cnn-0")
    assert np.array_equal(cnn(x[:8]), cnn(tiles[:8]))


def test_inception_from_a_local_file_only(tmp_path, tiles):
    from torchvision.models import inception_v3

    missing = tmp_path / "nowhere.pth"
    with pytest.raises(RSGeoPruneError, match="not found"):
        feature_space(f"inception:{missing}")
    path = tmp_path / "inception.pth"
    torch.manual_seed(0)
    torch.save(inception_v3(weights=None, aux_logits=False, init_weights=False).state_dict(), path)
    inc = feature_space(f"inception:{path}")
    f = inc(tiles[:2])  # 4 bands in: the RGB bands are used
    assert f.shape == (2, 2048) and f.dtype == np.float64 and inc.name == "inception-v3-rgb"
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RSGeoPruneError, match="state_dict"):
        feature_space(f"inception:{bad}")


# ------------------------------------------------------------------------------------------ reports
def test_report_names_space_digest_and_n(tiles, caplog):
    with caplog.at_level(logging.WARNING, logger="rsgeo_prune.train.metrics"):
        rep = compare_sets(tiles[:40], tiles[40:100], "random-cnn-0", kid_subsets=5, kid_subset_size=30)
    assert isinstance(rep, MetricReport) and (rep.n_a, rep.n_b, rep.dim) == (40, 60, 256)
    text = str(rep)
    assert "random-cnn-0" in text and RANDOM_CNN_0_DIGEST[:16] in text and "n_a=40" in text and "n_b=60" in text
    assert rep.as_dict()["digest"] == RANDOM_CNN_0_DIGEST and rep.as_dict()["kid_subset_size"] == 30
    assert any("n < dim" in r.getMessage() for r in caplog.records)  # 40 samples in 256-d: singular covariances
    space = feature_space("random-cnn-0")
    again = compare_features(space(tiles[:40]), space(tiles[40:100]), space, kid_subsets=5, kid_subset_size=30)
    assert again == rep


# ------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "call, match",
    [
        (lambda t: feature_space("vgg16"), "unknown feature space 'vgg16'"),
        (lambda t: feature_space("inception:"), "inception:<path"),
        (lambda t: compare_sets(t[:4], t[:4, :3], "random-cnn-0"), "4 channels and set b 3"),
        (lambda t: compare_sets(t[:4], t[:4, :, :32, :32], "random-cnn-0"), "64x64 px and set b 32x32"),
        (lambda t: compare_sets(t[:1], t[:4], "random-cnn-0"), "set a has 1 tile"),
        (lambda t: frechet_distance(np.zeros((1, 3)), np.zeros((5, 3))), "at least 2"),
        (lambda t: frechet_distance(np.zeros((4, 3)), np.zeros((5, 2))), "dimensions differ"),
        (lambda t: feature_space("random-cnn-0")(t[:2, :3]), "built for 4 channels"),
        (lambda t: as_uint8_tiles(t.astype(np.float32)), r"floats must lie in \[-1, 1\]"),
        (lambda t: as_uint8_tiles(t.astype(np.uint16)), "dtype uint16"),
        (lambda t: as_uint8_tiles(t[0]), r"\(N, C, H, W\)"),
        (lambda t: as_uint8_tiles(np.zeros((2, 5, 8, 8), np.uint8)), "5 channels"),
    ],
)
def test_errors_name_the_value_and_the_fix(tiles, call, match):
    with pytest.raises(RSGeoPruneError, match=match):
        call(tiles)


# -- precision and recall (Kynkäänniemi et al. 2019) ---------------------------------------------------
def test_precision_recall_of_a_set_with_itself_is_one():
    from rsgeo_prune.train.metrics import precision_recall

    x = np.random.default_rng(0).normal(size=(200, 8))
    pr = precision_recall(x, x, k=3)
    assert pr.precision == 1.0 and pr.recall == 1.0 and (pr.k, pr.n_real, pr.n_fake) == (3, 200, 200)


def test_precision_recall_of_far_apart_sets_is_zero():
    from rsgeo_prune.train.metrics import precision_recall

    rng = np.random.default_rng(1)
    pr = precision_recall(rng.normal(size=(100, 4)), rng.normal(size=(100, 4)) + 100.0, k=3)
    assert pr.precision == 0.0 and pr.recall == 0.0


def test_a_generator_of_one_mode_out_of_two_has_full_precision_and_half_recall_and_misses_that_class():
    from rsgeo_prune.train.metrics import precision_recall

    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(150, 4)), rng.normal(size=(150, 4)) + 50.0  # two well-separated classes
    real = np.concatenate([a, b])
    labels = ["common"] * 150 + ["rare"] * 150
    fake = rng.normal(size=(300, 4))  # mode collapse onto "common"
    pr = precision_recall(real, fake, k=3, real_classes=labels)
    assert pr.precision > 0.9  # a k-NN manifold of 150 samples in 4-d misses a few tail samples
    assert 0.45 <= pr.recall <= 0.5
    assert pr.class_recall["rare"] == 0.0 and pr.class_recall["common"] > 0.9


def test_precision_recall_ball_rule_on_a_line():
    """Known answer by hand: real points 0,1,2,3,4 (k = 1: every radius 1); a fake at 5 lies in 4's ball,
    a fake at 5.5 in none; fakes 5 and 5.5 (k = 1: radius 0.5 each) cover real 5 only."""
    from rsgeo_prune.train.metrics import precision_recall

    real = np.array([[0.0], [1.0], [2.0], [3.0], [4.0]])
    fake = np.array([[5.0], [5.5]])
    pr = precision_recall(real, fake, k=1)
    assert pr.precision == 0.5 and pr.recall == 0.0
    pr2 = precision_recall(real, np.array([[4.0], [4.5]]), k=1)
    assert pr2.precision == 1.0 and pr2.recall == 0.2  # only real 4 within 0.5 of a fake


@pytest.mark.parametrize("k", [0, 5, 2.5])
def test_precision_recall_refuses_a_bad_k(k):
    from rsgeo_prune.train.metrics import precision_recall

    x = np.random.default_rng(3).normal(size=(5, 2))
    with pytest.raises(RSGeoPruneError, match="k "):
        precision_recall(x, x, k=k)
