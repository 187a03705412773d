"""Fréchet distance, KID and precision/recall between two tile sets in a named, digested feature space
(:mod:`rsgeo_prune.train.features`: what a tile set is, the spaces, their digests and noise floors).

Metrics (plain numpy, float64, deterministic)
---------------------------------------------
* :func:`frechet_distance` ``‖μa − μb‖² + tr Σa + tr Σb − 2 tr (Σa^½ Σb Σa^½)^½``; the cross term is a
  sum of singular values (of ``Xa Xbᵀ`` for n ≤ D, of ``Xb Σa^½`` otherwise; ``numpy.linalg``, no
  scipy), so singular covariances (n < D) need no regularisation; exactly symmetric in its arguments.
* :func:`kernel_inception_distance` unbiased MMD² with the polynomial kernel
  ``k(x, y) = (x·y / d + 1)^degree``, mean ± std over seeded subsets (Bińkowski et al. 2018).
* :func:`compare_sets` / :func:`compare_features` → :class:`MetricReport`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..errors import RSGeoPruneError

# the feature spaces, importable from here too (where the metrics were first documented)
from .features import (
    DEFAULT_FEATURE,
    FEATURE_SPACES,
    DefaultEmbedderFeatures,
    InceptionFeatures,  # noqa: F401
    RandomCNNConfig,
    RandomCNNFeatures,
    TorchFeatureModule,
    _le64,
    _space,
    as_uint8_tiles,
    feature_space,
)

log = logging.getLogger(__name__)


def _as_features(x, label: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise RSGeoPruneError(f"{label} features must be (N, D); got shape {x.shape}")
    if len(x) < 2:
        raise RSGeoPruneError(f"{label} has {len(x)} sample(s); a covariance needs at least 2, use more tiles")
    if not np.isfinite(x).all():
        raise RSGeoPruneError(f"{label} features hold NaN or inf; check the tiles (a diverged sampler?)")
    return x


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise RSGeoPruneError(
            f"feature dimensions differ ({a.shape[1]} vs {b.shape[1]}); compute both sets in one feature space"
        )


def _canonical_order(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pair in an order fixed by their bytes, so ``f(a, b)`` and ``f(b, a)`` run the same arithmetic
    (bit-exact symmetry instead of symmetry up to rounding)."""
    ka, kb = hashlib.sha256(_le64(a)).digest(), hashlib.sha256(_le64(b)).digest()
    return (a, b) if ka <= kb else (b, a)


def _clip_noise(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with the rounding noise set to zero: negatives, and positives below
    ``D · eps · max`` (their square roots, ~1e-8 each, would otherwise add up over hundreds of null
    directions of a singular covariance)."""
    floor = len(w) * np.finfo(np.float64).eps * max(float(np.abs(w).max(initial=0.0)), np.finfo(np.float64).tiny)
    return np.where(w > floor, w, 0.0)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root ``(D, D)`` of a PSD matrix (rounding-noise eigenvalues dropped)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(_clip_noise(w))) @ v.T


def _cross_trace(fa: np.ndarray, fb: np.ndarray, method: str) -> float:
    """``tr (Σa^½ Σb Σa^½)^½`` from centred, scaled factors ``fa (Na, D)``, ``fb (Nb, D)`` with
    ``Σa = faᵀ fa``, ``Σb = fbᵀ fb``.

    * ``"samples"``: the eigenvalues of ``Σa Σb`` that are not zero are those of ``(fa fbᵀ)(fa fbᵀ)ᵀ``,
      so the trace is the sum of the singular values of the ``(Na, Nb)`` matrix ``fa fbᵀ`` (its nuclear
      norm): exact for singular covariances, no square roots of rounding noise, cheap when N ≤ D.
    * ``"features"``: likewise the sum of the singular values of ``fb Σa^½`` ``(Nb, D)``: for N > D."""
    if method == "samples":
        return float(np.linalg.svd(fa @ fb.T, compute_uv=False).sum())
    return float(np.linalg.svd(fb @ _psd_sqrt(fa.T @ fa), compute_uv=False).sum())


def frechet_distance(a_feats, b_feats, *, method: str = "auto") -> float:
    """Fréchet distance between Gaussians fitted (mean, unbiased covariance) to ``(Na, D)`` and ``(Nb, D)``
    features; float64, in squared feature units. Exactly symmetric in its arguments; a set against
    itself gives 0 up to rounding (~1e-13 relative to ``tr Σ``).

    ``method``: ``"samples"`` (SVD of an ``(Na, Nb)`` matrix), ``"features"`` (``(D, D)`` eigen and SVD),
    or ``"auto"``: samples when ``min(Na, Nb) ≤ D``, the cheaper one; both give the same number."""
    a, b = _as_features(a_feats, "set a"), _as_features(b_feats, "set b")
    _check_pair(a, b)
    if method not in ("auto", "samples", "features"):
        raise RSGeoPruneError(f"method {method!r}: use auto, samples or features")
    a, b = _canonical_order(a, b)
    if method == "auto":
        method = "samples" if min(len(a), len(b)) <= a.shape[1] else "features"
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    fa = (a - mu_a) / np.sqrt(len(a) - 1)
    fb = (b - mu_b) / np.sqrt(len(b) - 1)
    diff = mu_a - mu_b
    tr_a, tr_b = float((fa * fa).sum()), float((fb * fb).sum())
    return float(diff @ diff + tr_a + tr_b - 2.0 * _cross_trace(fa, fb, method))


def _poly_kernel(x: np.ndarray, y: np.ndarray, degree: int) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** degree


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int) -> float:
    """Unbiased MMD² of two equal-size samples: off-diagonal means of K_xx and K_yy minus 2·mean K_xy."""
    m = len(x)
    kxx, kyy, kxy = _poly_kernel(x, x, degree), _poly_kernel(y, y, degree), _poly_kernel(x, y, degree)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2.0 * kxy.sum() / (m * m))


def kernel_inception_distance(
    a_feats, b_feats, subsets: int = 100, subset_size: int = 1000, degree: int = 3, seed: int = 0
) -> tuple[float, float, int]:
    """KID: unbiased MMD² with ``k(x, y) = (x·y / D + 1)^degree`` on ``subsets`` pairs of subsets of
    ``subset_size`` (capped at the smaller set) drawn without replacement with ``numpy`` seed ``seed``.

    Returns ``(mean, std, subset_size used)``; std is the population std over subsets, exactly 0 when each
    subset is a whole set (a subset's rows are taken in index order, so equal subsets are equal arrays and give
    equal scores, not scores that differ in the last bits). Symmetric in its arguments (the pair is put in a
    canonical order)."""
    a, b = _as_features(a_feats, "set a"), _as_features(b_feats, "set b")
    _check_pair(a, b)
    if subsets < 1:
        raise RSGeoPruneError(f"subsets {subsets!r}: must be ≥ 1")
    if degree < 1:
        raise RSGeoPruneError(f"degree {degree!r}: must be ≥ 1")
    m = min(int(subset_size), len(a), len(b))
    if m < 2:
        raise RSGeoPruneError(f"subset_size {subset_size!r}: must be ≥ 2")
    a, b = _canonical_order(a, b)
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(subsets):
        ia = np.sort(rng.permutation(len(a))[:m])
        ib = np.sort(rng.permutation(len(b))[:m])
        scores.append(_mmd2_unbiased(a[ia], b[ib], degree))
    return float(np.mean(scores)), float(np.std(scores)), m


def _pairwise_sq_dist(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(Nx, Ny)`` squared Euclidean distances in float64, by differences (no ``‖x‖² − 2x·y + ‖y‖²``
    cancellation: near-equal samples, the ones precision and recall count, keep their digits)."""
    out = np.empty((len(x), len(y)))
    # a few rows at a time, so that the (rows, Ny, D) differences stay in cache (~2 MB): 10-20x faster than
    # large blocks, and each entry is the same sum in the same order whatever the block
    rows = max(1, (1 << 18) // max(1, len(y) * x.shape[1]))
    for i in range(0, len(x), rows):
        d = x[i : i + rows, None, :] - y[None, :, :]
        out[i : i + rows] = np.einsum("ijk,ijk->ij", d, d)
    return out


def _knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Squared distance of each sample of ``x`` to its ``k``-th nearest other sample of ``x``."""
    d = _pairwise_sq_dist(x, x)
    np.fill_diagonal(d, np.inf)
    return np.partition(d, k - 1, axis=1)[:, k - 1]


@dataclass(frozen=True)
class PrecisionRecall:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of generated vs real features."""

    precision: float  # share of generated samples inside the real manifold (quality)
    recall: float  # share of real samples inside the generated manifold (coverage)
    k: int
    n_real: int
    n_fake: int
    class_recall: dict = field(default_factory=dict)  # {class: recall over the real samples of that class}

    def as_dict(self) -> dict:
        return asdict(self)


def precision_recall(real_feats, fake_feats, *, k: int = 3, real_classes=None) -> PrecisionRecall:
    """Improved precision and recall of ``fake_feats (Nf, D)`` against ``real_feats (Nr, D)``.

    Each set's manifold is the union of balls around its samples with radius the distance to the
    ``k``-th nearest neighbour in the same set. Precision: the share of fake samples inside the real
    manifold; recall: the share of real samples inside the fake manifold. With ``real_classes`` (one
    label per real sample), recall is also given per class (the rare class's coverage). Exact float64
    distances; the numbers depend on ``k`` and on the set sizes: compare at equal ``k`` and ``n``.
    """
    real, fake = _as_features(real_feats, "real set"), _as_features(fake_feats, "generated set")
    _check_pair(real, fake)
    if not (isinstance(k, (int, np.integer)) and 1 <= k < min(len(real), len(fake))):
        raise RSGeoPruneError(
            f"k {k!r}: must be a whole number from 1 to one less than the smaller set "
            f"({min(len(real), len(fake))} samples)"
        )
    cross = _pairwise_sq_dist(fake, real)  # (Nf, Nr); its transpose is real-to-fake, the same numbers
    inside_real = (cross <= _knn_radii(real, k)[None, :]).any(axis=1)
    covered = (cross <= _knn_radii(fake, k)[:, None]).any(axis=0)
    per_class = {}
    if real_classes is not None:
        labels = np.asarray(real_classes, dtype=object)
        if len(labels) != len(real):
            raise RSGeoPruneError(f"real_classes has {len(labels)} labels for {len(real)} real samples")
        per_class = {str(c): float(covered[labels == c].mean()) for c in sorted(set(labels.tolist()), key=str)}
    return PrecisionRecall(
        precision=float(inside_real.mean()),
        recall=float(covered.mean()),
        k=int(k),
        n_real=len(real),
        n_fake=len(fake),
        class_recall=per_class,
    )


# -------------------------------------------------------------------------------------------- reports
@dataclass(frozen=True)
class MetricReport:
    """FD and KID of set a vs set b in one feature space, with what is needed to compare numbers."""

    fd: float
    kid_mean: float
    kid_std: float
    feature: str  # feature space name
    digest: str  # sha256 hex of the feature space
    n_a: int
    n_b: int
    dim: int
    kid_subsets: int
    kid_subset_size: int

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"FD {self.fd:.6g}, KID {self.kid_mean:.4g} ± {self.kid_std:.2g} "
            f"({self.kid_subsets} subsets of {self.kid_subset_size}) in {self.feature} "
            f"[sha256:{self.digest[:16]}] {self.dim}-d, n_a={self.n_a}, n_b={self.n_b}"
        )


def compare_features(
    a_feats, b_feats, space, *, kid_subsets: int = 100, kid_subset_size: int = 1000, kid_degree: int = 3, seed: int = 0
) -> MetricReport:
    """FD and KID of precomputed features ``(Na, D)``, ``(Nb, D)`` of ``space`` (a feature-space object:
    its name, digest and dim go into the report). Compute a held-out reference's features once this way."""
    a, b = _as_features(a_feats, "set a"), _as_features(b_feats, "set b")
    for label, x in (("set a", a), ("set b", b)):
        if x.shape[1] != space.dim:
            raise RSGeoPruneError(
                f"{label} features are {x.shape[1]}-d but {space.name} is {space.dim}-d; compute them with {space.name}"
            )
    n_small = min(len(a), len(b))
    if n_small < space.dim:
        # n < D: rank-deficient covariances; FD still computes, but its noise floor is higher
        log.warning(
            "FD with %d samples in %d-d %s: covariances are singular (n < dim); compare only at equal n "
            "and mind the noise floor",
            n_small,
            space.dim,
            space.name,
        )
    fd = frechet_distance(a, b)
    kid_mean, kid_std, m = kernel_inception_distance(a, b, kid_subsets, kid_subset_size, kid_degree, seed)
    return MetricReport(
        fd=fd,
        kid_mean=kid_mean,
        kid_std=kid_std,
        feature=space.name,
        digest=space.digest,
        n_a=len(a),
        n_b=len(b),
        dim=space.dim,
        kid_subsets=kid_subsets,
        kid_subset_size=m,
    )


def _tile_shape_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise RSGeoPruneError(
            f"set a has {a.shape[1]} channels and set b {b.shape[1]}; compare tiles of the same "
            "bands (take [:, :3] of the 4-band set for RGB)"
        )
    if a.shape[2:] != b.shape[2:]:
        raise RSGeoPruneError(
            f"set a tiles are {a.shape[2]}x{a.shape[3]} px and set b {b.shape[2]}x{b.shape[3]}; "
            "resize or crop one set to the other's size"
        )


def compare_sets(
    a_tiles,
    b_tiles,
    feature="rsgeo-default",
    *,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    kid_degree: int = 3,
    seed: int = 0,
    threads: int | None = None,
) -> MetricReport:
    """FD and KID between tile sets ``(Na, C, H, W)`` and ``(Nb, C, H, W)`` (uint8, or floats in [-1, 1])
    in ``feature`` (a registry name or a feature-space object). Both sets need the same C, H, W."""
    a, b = as_uint8_tiles(a_tiles), as_uint8_tiles(b_tiles)
    _tile_shape_pair(a, b)
    for label, x in (("set a", a), ("set b", b)):
        if len(x) < 2:
            raise RSGeoPruneError(f"{label} has {len(x)} tile(s); FD needs at least 2 (hundreds for a usable number)")
    space = _space(feature, a.shape[1], threads)
    return compare_features(
        space(a),
        space(b),
        space,
        kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size,
        kid_degree=kid_degree,
        seed=seed,
    )


__all__ = [
    "DEFAULT_FEATURE",
    "FEATURE_SPACES",
    "DefaultEmbedderFeatures",
    "InceptionFeatures",
    "MetricReport",
    "PrecisionRecall",
    "precision_recall",
    "RandomCNNConfig",
    "RandomCNNFeatures",
    "TorchFeatureModule",
    "as_uint8_tiles",
    "compare_features",
    "compare_sets",
    "feature_space",
    "frechet_distance",
    "kernel_inception_distance",
]
