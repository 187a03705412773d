"""The weights-free default embedder: colour, texture and vegetation statistics of a tile.

For a tile ``(C, H, W)`` in [0, 1], pooled by an integer factor so that its side is 128–255 px:

1. **Colour** — the joint R, G, B histogram on 16 x 16 x 16 levels (4,096 bins), fourth root of the
   frequencies (a power normalisation that keeps rare colours visible), projected to 1,024
   dimensions by a fixed seeded Gaussian matrix (Johnson–Lindenstrauss: cosines are kept).
2. **Texture** — histograms of log gradient magnitude (8 bins from 2^-8 to 1) of the BT.601 gray
   image at 3 scales (pooled 1x, 2x, 4x), square-rooted: 24 dimensions.
3. **Vegetation** (≥ 4 bands, band 4 = NIR) — the NDVI histogram, 16 bins over [-1, 1],
   square-rooted; zeros for RGB input, so that RGB reference images and RGBN tiles share one
   space (the block only rescales every tile's similarity to RGB centroids by one constant, which
   changes neither the nearest centroid nor any ranking).

Each block is ℓ2-normalised and weighted (1, 0.5, 0.5) before the whole vector is normalised.
Leave-one-out 1-NN accuracy on the 120 real AID samples: about 0.64 (chance 0.03).
"""

from __future__ import annotations

import numba
import numpy as np

from .._parallel import map_slices
from . import as_unit_float, l2_normalise

COLOR_LEVELS = 16
COLOR_DIM = 1024
GRAD_BINS = 8
GRAD_SCALES = 3
NDVI_BINS = 16
BLOCK_WEIGHTS = (1.0, 0.5, 0.5)
PROJECTION_SEED = 20261122
TARGET_SIDE = 128


@numba.njit(cache=True, nogil=True)
def _pool(img, f, scale):  # pragma: no cover - compiled
    # f x f block means, times ``scale`` (1/255 for uint8): float32 (C, H/f, W/f) in [0, 1]
    c, h, w = img.shape
    ho, wo = h // f, w // f
    out = np.zeros((c, ho, wo), np.float32)
    inv = np.float32(scale / (f * f))
    for b in range(c):
        for y in range(ho * f):
            for x in range(wo * f):
                out[b, y // f, x // f] += img[b, y, x]
        for y in range(ho):
            for x in range(wo):
                out[b, y, x] *= inv
    return out


@numba.njit(cache=True, nogil=True)
def _grad_hist(gray, out, offset):  # pragma: no cover - compiled
    h, w = gray.shape
    n = 0
    for y in range(1, h - 1):
        for x in range(1, w - 1):
            gx = 0.5 * (gray[y, x + 1] - gray[y, x - 1])
            gy = 0.5 * (gray[y + 1, x] - gray[y - 1, x])
            m = np.sqrt(gx * gx + gy * gy)
            b = int((np.log2(m + 1.0 / 256.0) + 8.0) * (8 / 8.0))
            b = min(max(b, 0), 7)
            out[offset + b] += 1.0
            n += 1
    for k in range(8):
        out[offset + k] /= max(n, 1)


@numba.njit(cache=True, nogil=True)
def _halve(gray):  # pragma: no cover - compiled
    h, w = gray.shape[0] // 2, gray.shape[1] // 2
    out = np.empty((h, w), np.float32)
    for y in range(h):
        for x in range(w):
            out[y, x] = 0.25 * (gray[2 * y, 2 * x] + gray[2 * y + 1, 2 * x] + gray[2 * y, 2 * x + 1] + gray[2 * y + 1, 2 * x + 1])
    return out


@numba.njit(cache=True, nogil=True)
def _statistics(tiles, target, scale):  # pragma: no cover - compiled
    n, c, h, w = tiles.shape
    colour = np.zeros((n, 4096), np.float32)
    grad = np.zeros((n, 24), np.float32)
    ndvi = np.zeros((n, 16), np.float32)
    f = max(1, min(h, w) // target)
    for i in range(n):
        img = _pool(tiles[i], f, scale)
        hh, ww = img.shape[1], img.shape[2]
        gray = np.empty((hh, ww), np.float32)
        cnt = 0
        for y in range(hh):
            for x in range(ww):
                r = img[0, y, x]
                g = img[1, y, x] if c >= 3 else r
                b = img[2, y, x] if c >= 3 else r
                qr = min(int(r * 16), 15)
                qg = min(int(g * 16), 15)
                qb = min(int(b * 16), 15)
                colour[i, qr * 256 + qg * 16 + qb] += 1.0
                gray[y, x] = 0.299 * r + 0.587 * g + 0.114 * b
                if c >= 4:
                    nir = img[3, y, x]
                    v = (nir - r) / (nir + r + 1e-6)
                    k = min(max(int((v + 1.0) * 8.0), 0), 15)
                    ndvi[i, k] += 1.0
                cnt += 1
        for k in range(4096):
            colour[i, k] /= cnt
        if c >= 4:
            for k in range(16):
                ndvi[i, k] /= cnt
        level = gray
        for s in range(3):
            _grad_hist(level, grad[i], 8 * s)
            if s < 2:
                level = _halve(level)
    return colour, grad, ndvi


class DefaultEmbedder:
    """Weights-free scene descriptor (see the module docstring). ``dim`` = 1,024 + 24 + 16."""

    spec = "default"
    dim = COLOR_DIM + GRAD_BINS * GRAD_SCALES + NDVI_BINS

    def __init__(self, threads: int | None = None):
        """``threads``: how many threads share a batch (default: every core; the pipeline's dask
        tasks use 1, as dask already runs them in parallel)."""
        self.threads = threads
        rng = np.random.default_rng(PROJECTION_SEED)
        self.projection = (rng.standard_normal((COLOR_LEVELS ** 3, COLOR_DIM)) / np.sqrt(COLOR_DIM)).astype(np.float32)

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        tiles = np.asarray(tiles)
        # uint8 is read as is by the kernel (no 4x larger float copy of the batch)
        x = tiles if tiles.dtype == np.uint8 and tiles.ndim == 4 else as_unit_float(tiles)
        if len(x) == 0:
            return np.zeros((0, self.dim), np.float32)
        scale = np.float32(1.0 / 255.0 if x.dtype == np.uint8 else 1.0)
        x = np.ascontiguousarray(x)
        parts = map_slices(lambda a, b: _statistics(x[a:b], TARGET_SIDE, scale), len(x), self.threads)
        colour, grad, ndvi = (np.concatenate([p[j] for p in parts]) for j in range(3))
        colour = l2_normalise(l2_normalise(np.sqrt(np.sqrt(colour))) @ self.projection)
        blocks = [colour, l2_normalise(np.sqrt(grad)), l2_normalise(np.sqrt(ndvi))]
        blocks[2][ndvi.sum(axis=1) == 0] = 0.0  # RGB input: no vegetation block
        z = np.concatenate([w * b for w, b in zip(BLOCK_WEIGHTS, blocks)], axis=1)
        return l2_normalise(z)
