"""Stage I — information content: 256-level Shannon entropy of every tile, grayscale and per band.

One compiled pass over the pixels (numba, ``nogil``) fills, for each tile, the 256-bin histogram of
every band and of the grayscale image; ``entropy`` (gray) and ``entropy_bands`` (per band), in
bits, follow from the histograms: ``H = -Σ p_k log2 p_k``.

Rules (documented once, used everywhere):

* **Grayscale** is BT.601 luma of bands 1, 2, 3 taken as R, G, B (NAIP order: R, G, B, NIR — NIR
  is not used), in exact integer arithmetic on the 256 levels:
  ``gray = (77 R + 150 G + 29 B + 128) >> 8`` (weights 0.299, 0.587, 0.114 in 1/256 steps). A
  raster with fewer than three bands uses band 1 as its gray.
* **Nodata**: a pixel that is nodata in every band is left out of every histogram, a band being
  nodata where it equals the nodata value or is NaN (NaN counts with or without a declared nodata
  value), or, for files without a nodata value, where the per-dataset mask band says so — the rule
  of :func:`rsgeo_prune.tiling.nodata_fraction`. A NaN in some bands only leaves the pixel valid, its
  NaN bands at level 0. A tile with no valid pixel has no entropy (NaN → null).
* **Levels**: uint8 is used as is. Any other dtype is mapped to 256 levels per scene with a
  2nd–98th percentile stretch per band, ``level = round(255 * clip((v - p2) / (p98 - p2), 0, 1))``,
  the percentiles taken once per scene from a decimated read (at most ~1024 px on the long side;
  GDAL uses the overviews when the file has them), nodata excluded — the same mapping for every
  tile of the scene. The mapping is :mod:`rsgeo_prune.pixels`' (``stretch_levels``,
  ``scene_percentiles``), so the levels counted here are the ones every pixel reader sees.
"""

from __future__ import annotations

import logging
import math

import dask.array as dsa
import numba
import numpy as np

from ._parallel import map_slices
from .errors import InvalidOption, RSGeoPruneError
from .exact import portable_log2
from .pixels import percentile_range, scene_percentiles, stretch_levels, valid_pixels
from .tiling import window_sums

log = logging.getLogger(__name__)

LEVELS = 256
LUMA_WEIGHTS = (77, 150, 29)  # BT.601 in 1/256 steps; they sum to 256


# ---------------------------------------------------------------------------------------------
# The kernel
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True, inline="always")
def _row_flags(levels, valid, use_valid, nodata, has_nodata, y, x0, x1, flags):  # pragma: no cover
    # flags[x] = 1 where pixel (y, x0 + x) counts; returns how many do. Band 1 is scanned first
    # (a branch-free, vectorised count): a row where band 1 never holds the nodata value is valid
    # throughout, and only the rare other rows pay for the per-pixel, all-band test.
    w = x1 - x0
    if use_valid:
        n = 0
        for x in range(w):
            f = 1 if valid[y, x0 + x] != 0 else 0
            flags[x] = f
            n += f
        return n
    if not has_nodata:
        return w
    hits = 0
    for x in range(w):
        hits += levels[0, y, x0 + x] == nodata
    if hits == 0:
        return w
    flags[:] = 0
    for b in range(levels.shape[0]):
        for x in range(w):
            flags[x] |= levels[b, y, x0 + x] != nodata
    n = 0
    for x in range(w):
        n += flags[x]
    return n


@numba.njit(cache=True, nogil=True, inline="always")
def _accumulate(levels, valid, use_valid, nodata, has_nodata, y0, y1, x0, x1, hist):  # pragma: no cover
    # hist: (C + 1, 256) int64 — bands, then gray. Rows are read contiguously, band by band. Runs of
    # one value (clouds, water) would serialise on one counter, so four neighbouring pixels go to
    # four counter sets that are added at the end.
    nb = levels.shape[0]
    w = x1 - x0
    acc = np.zeros((4, nb + 1, 256), np.int32)
    flags = np.empty(w, np.uint8)
    gray = np.empty(w, np.uint8)
    for y in range(y0, y1):
        nvalid = _row_flags(levels, valid, use_valid, nodata, has_nodata, y, x0, x1, flags)
        if nvalid == 0:
            continue
        if nb >= 3:
            for x in range(w):
                gray[x] = (
                    77 * np.int32(levels[0, y, x0 + x])
                    + 150 * np.int32(levels[1, y, x0 + x])
                    + 29 * np.int32(levels[2, y, x0 + x])
                    + 128
                ) >> 8
        else:
            for x in range(w):
                gray[x] = levels[0, y, x0 + x]
        for band in range(nb + 1):
            row = gray if band == nb else levels[band, y, x0:x1]
            if 2 * nvalid >= w:  # count every pixel fast, then take the few invalid ones back
                x = 0
                while x + 3 < w:
                    acc[0, band, row[x]] += 1
                    acc[1, band, row[x + 1]] += 1
                    acc[2, band, row[x + 2]] += 1
                    acc[3, band, row[x + 3]] += 1
                    x += 4
                while x < w:
                    acc[0, band, row[x]] += 1
                    x += 1
                if nvalid < w:
                    for x in range(w):
                        if flags[x] == 0:
                            acc[0, band, row[x]] -= 1
            else:
                for x in range(w):
                    acc[x & 3, band, row[x]] += flags[x]
    for band in range(nb + 1):
        for v in range(256):
            hist[band, v] += acc[0, band, v] + acc[1, band, v] + acc[2, band, v] + acc[3, band, v]


@numba.njit(cache=True, nogil=True)
def _cell_histograms(levels, valid, use_valid, nodata, has_nodata, cell):  # pragma: no cover
    nb, h, w = levels.shape
    ny, nx = (h + cell - 1) // cell, (w + cell - 1) // cell
    out = np.zeros((ny, nx, nb + 1, 256), np.int64)
    for i in range(ny):
        for j in range(nx):
            _accumulate(
                levels,
                valid,
                use_valid,
                nodata,
                has_nodata,
                i * cell,
                min(h, (i + 1) * cell),
                j * cell,
                min(w, (j + 1) * cell),
                out[i, j],
            )
    return out


@numba.njit(cache=True, nogil=True)
def _batch_histograms_serial(tiles, valid, use_valid, nodata, has_nodata):  # pragma: no cover
    n, nb, h, w = tiles.shape
    out = np.zeros((n, nb + 1, 256), np.int64)
    for i in range(n):
        _accumulate(tiles[i], valid[i] if use_valid else valid[0], use_valid, nodata, has_nodata, 0, h, 0, w, out[i])
    return out


def _batch_histograms(tiles, nodata, has_nodata, threads=None):
    dummy = np.zeros((1, 1, 1), np.uint8)
    parts = map_slices(
        lambda a, b: _batch_histograms_serial(tiles[a:b], dummy, False, nodata, has_nodata), len(tiles), threads
    )
    return np.concatenate(parts)


def _batch_histograms_masked(tiles, valid, threads=None):
    parts = map_slices(
        lambda a, b: _batch_histograms_serial(tiles[a:b], valid[a:b], True, np.uint8(0), False), len(tiles), threads
    )
    return np.concatenate(parts)


#: Σ h log2 h is summed in fixed point (integers add exactly, in any order), then scaled back:
#: entropy values are then the same bits on every CPU and thread count.
#: Per term the rounding is 2^-33 (table) or 2^-25 (larger counts); H moves by < 1e-10 bits.
_FIXED_SCALE = 2.0**32  # 65536 · log2(65536) · 2^32 = 2^52: no int64 overflow
_FIXED_SCALE_LARGE = 2.0**24  # counts up to 2^28 per bin stay below 2^63
#: round(k log2 k · 2^32) for every count a 256 x 256 tile can hold: the sum becomes a table look-up.
_XLOG2X = np.rint(np.arange(65537) * portable_log2(np.maximum(np.arange(65537), 1)) * _FIXED_SCALE).astype(np.int64)


def entropy_from_histograms(hist: np.ndarray) -> np.ndarray:
    """Shannon entropy in bits of each histogram along the last axis; NaN where the histogram is empty.

    Uses ``H = log2(n) - (1/n) Σ h_k log2 h_k`` (n = Σ h_k), the same quantity as ``-Σ p log2 p``.
    The sum is an exact integer sum of ``h log2 h`` in fixed point (2^-32 per term) and ``log2`` is
    :func:`~rsgeo_prune.exact.portable_log2`, so the result does not depend on the CPU, numpy's SIMD
    paths or the order of the bins.

    Args:
        hist: ``(..., 256)`` counts.
    Returns:
        ``(...)`` float64.
    """
    hist = np.asarray(hist, dtype=np.int64)
    total = hist.sum(axis=-1)
    if hist.size and hist.max() < len(_XLOG2X):
        fixed, scale = _XLOG2X[hist].sum(axis=-1), _FIXED_SCALE
    else:  # counts beyond a 256 x 256 tile: the same fixed point, computed per bin
        scale = _FIXED_SCALE_LARGE
        hf = np.maximum(hist, 1).astype(np.float64)
        fixed = np.rint(hist * portable_log2(hf) * scale).astype(np.int64).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = portable_log2(np.maximum(total, 1)) - (fixed.astype(np.float64) / scale) / total
    h = np.maximum(h, 0.0)  # rounding can leave -1e-16
    h[hist.max(axis=-1, initial=0) == total] = 0.0  # a single level: exactly 0 bits
    h[total == 0] = np.nan
    return h


# ---------------------------------------------------------------------------------------------
# Histograms of tiles: numpy batches, dask-backed rasters
# ---------------------------------------------------------------------------------------------


def tile_histograms(tiles: np.ndarray, nodata: float | None = None, *, lo=None, hi=None) -> np.ndarray:
    """Histograms of in-memory tiles.

    Args:
        tiles: ``(N, C, H, W)`` array (uint8 used as is; other dtypes stretched with ``lo``/``hi``,
            by default the 2–98 % percentiles of ``tiles`` itself).
        nodata: value that marks nodata when every band holds it.
    Returns:
        ``(N, C + 1, 256)`` int64 counts: bands 1..C, then gray.
    """
    tiles = np.asarray(tiles)
    if tiles.ndim != 4:
        raise RSGeoPruneError(f"tiles must be (N, C, H, W); got shape {tiles.shape}")
    if tiles.dtype == np.uint8 and not (nodata is not None and not float(nodata).is_integer()):
        has = nodata is not None and 0 <= nodata <= 255
        return _batch_histograms(np.ascontiguousarray(tiles), np.uint8(nodata if has else 0), has)
    valid = (
        np.stack([valid_pixels(t, nodata) for t in tiles]) if len(tiles) else np.zeros((0,) + tiles.shape[2:], np.uint8)
    )
    if lo is None or hi is None:
        side_by_side = np.concatenate(list(tiles), axis=2) if len(tiles) else tiles[:0].reshape(tiles.shape[1], 0, 0)
        lo, hi = percentile_range(side_by_side, nodata)
    levels = np.stack([stretch_levels(t, lo, hi) for t in tiles]) if len(tiles) else tiles.astype(np.uint8)
    return _batch_histograms_masked(levels, valid)


def tile_entropy(tiles: np.ndarray, nodata: float | None = None, **stretch) -> tuple[np.ndarray, np.ndarray]:
    """Entropy of in-memory tiles ``(N, C, H, W)``: ``(gray (N,), bands (N, C))`` in bits (NaN if no data)."""
    h = entropy_from_histograms(tile_histograms(tiles, nodata, **stretch))
    return h[:, -1], h[:, :-1]


def _chunk_histograms(block: np.ndarray, nodata, cell: int, lo, hi, mask_href, block_info=None) -> np.ndarray:
    if mask_href is not None:
        from .sources import dataset_mask_of_chunk

        valid = dataset_mask_of_chunk(mask_href, block_info).astype(np.uint8)
        if np.issubdtype(block.dtype, np.floating):  # NaN is nodata, as in tiling.nodata_fraction
            valid &= valid_pixels(block, None)
        levels = block if block.dtype == np.uint8 else stretch_levels(block, lo, hi)
        return _cell_histograms(levels, valid, True, np.uint8(0), False, cell)
    if block.dtype == np.uint8:
        has = nodata is not None and float(nodata).is_integer() and 0 <= nodata <= 255
        return _cell_histograms(block, np.zeros((1, 1), np.uint8), False, np.uint8(nodata if has else 0), has, cell)
    return _cell_histograms(stretch_levels(block, lo, hi), valid_pixels(block, nodata), True, np.uint8(0), False, cell)


def raster_histograms(
    data: dsa.Array, row_off, col_off, height, width, *, nodata=None, lo=None, hi=None, mask_href: str | None = None
) -> np.ndarray:
    """Histograms of tile windows of a dask-backed ``(C, H, W)`` raster, ``(N, C + 1, 256)`` int64.

    Works for any grid: each chunk is reduced to histograms of ``g x g`` cells, ``g`` the gcd of all
    tile offsets and sizes (for the default grid, one cell = one tile), and each tile adds its cells.
    Chunks must be whole multiples of ``g`` (those of :func:`rsgeo_prune.sources.open_raster` are).
    """
    row_off, col_off, height, width = (np.asarray(a, np.int64) for a in (row_off, col_off, height, width))
    nb = data.shape[0]
    if len(row_off) == 0:
        return np.zeros((0, nb + 1, LEVELS), np.int64)
    # Tile edges on the raster's own edge (partial tiles) fall in the last, clipped cell anyway.
    H, W = data.shape[1:]
    inner = [height[row_off + height < H], width[col_off + width < W]]
    cell = int(np.gcd.reduce(np.concatenate([row_off, col_off, *inner, [0]])))
    cell = cell or int(max(H, W))  # a single tile
    if cell < 8:
        raise RSGeoPruneError(
            f"tile offsets and sizes share only a {cell}-px grid; use a stride that shares a "
            "factor of at least 8 px with the tile size"
        )
    for ch in data.chunks[1:]:
        if any(c % cell for c in ch[:-1]):
            data = data.rechunk(
                {1: max(cell, (data.chunks[1][0] // cell) * cell), 2: max(cell, (data.chunks[2][0] // cell) * cell)}
            )
            break
    out_chunks = tuple(tuple(math.ceil(c / cell) for c in ch) for ch in data.chunks[1:]) + ((nb + 1,), (LEVELS,))
    cells = dsa.map_blocks(
        _chunk_histograms,
        data,
        nodata,
        cell,
        lo,
        hi,
        mask_href,
        chunks=out_chunks,
        drop_axis=0,
        new_axis=[2, 3],
        dtype=np.int64,
        meta=np.empty((0, 0, 0, 0), np.int64),
    )
    return window_sums(cells.compute(), cell, row_off, col_off, height, width)


def scene_histograms(scene, row_off, col_off, height, width, tile_size: int = 256) -> np.ndarray:
    """Histograms ``(N, C + 1, 256)`` of the given tile windows of a :class:`~rsgeo_prune.sources.RasterScene`."""
    from .sources import decode_errors, open_raster

    lo = hi = None
    if scene.dtype != "uint8":
        lo, hi = scene_percentiles(scene.href, scene.nodata)
    mask_href = scene.href if (scene.nodata is None and scene.has_mask) else None
    data = open_raster(scene, tile_size).data
    with decode_errors(scene.href):
        return raster_histograms(
            data, row_off, col_off, height, width, nodata=scene.nodata, lo=lo, hi=hi, mask_href=mask_href
        )


def image_histograms(paths) -> np.ndarray:
    """Histograms ``(N, C + 1, 256)`` of collection images (one tile each; every image its own stretch)."""
    from .sources import read_image

    paths = list(paths)
    return stack_histograms([([i], tile_histograms(read_image(p)[None])) for i, p in enumerate(paths)], len(paths))


def stack_histograms(parts, n: int) -> np.ndarray:
    """One ``(n, C + 1, 256)`` array from ``(row positions, histograms (k, c + 1, 256))`` parts of
    varying band counts ``c``: bands in place, gray always last, a part's missing bands empty."""
    nb = max((h.shape[1] for _, h in parts), default=1)
    out = np.zeros((n, nb, LEVELS), np.int64)
    for idx, h in parts:
        out[idx, : h.shape[1] - 1] = h[:, :-1]
        out[idx, -1] = h[:, -1]
    return out


# ---------------------------------------------------------------------------------------------
# Filters
# ---------------------------------------------------------------------------------------------


def entropy_filter(
    entropy: np.ndarray,
    tile_id,
    candidates: np.ndarray,
    *,
    entropy_min: float | None = None,
    entropy_keep: float | None = None,
) -> np.ndarray:
    """Which candidates Stage I prunes, ``(N,)`` bool.

    Args:
        entropy: gray entropy per tile (NaN for tiles without data).
        tile_id: tile ids (the tie-break of the ranking).
        candidates: tiles still kept before Stage I.
        entropy_min: keep candidates with ``entropy >= entropy_min``.
        entropy_keep: keep exactly ``round(P x N)`` candidates (round half up) with the highest
            entropy among the ``N`` candidates; an exact global ranking, ties broken by ``tile_id``.
    """
    entropy = np.asarray(entropy, np.float64)
    candidates = np.asarray(candidates, bool)
    pruned = np.zeros(len(entropy), bool)
    if entropy_min is not None and entropy_keep is not None:
        raise InvalidOption("entropy_min", entropy_min, "give either a threshold or a keep fraction, not both")
    if entropy_min is not None:
        pruned = candidates & ~(entropy >= entropy_min)
    elif entropy_keep is not None:
        if not 0.0 <= entropy_keep <= 1.0:
            raise InvalidOption("entropy_keep", entropy_keep, "must be a fraction in [0, 1] (e.g. 0.3 keeps 30 %)")
        idx = np.flatnonzero(candidates)
        n_keep = int(math.floor(entropy_keep * len(idx) + 0.5))
        score = np.where(np.isnan(entropy[idx]), -np.inf, entropy[idx])
        order = np.lexsort((np.asarray(tile_id, dtype=object)[idx].astype(str), -score))
        pruned[idx[order[n_keep:]]] = True
    return pruned
