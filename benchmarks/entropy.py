"""Stage I (entropy) benchmark: prints a table, then two ratio lines (no assertions).

1. In-memory 256 x 256 x 4 uint8 tiles (synthetic scene tiles of every class): the compiled
   kernel (numba, both cores) vs a plain copy of the same bytes (np.copyto into a ready buffer),
   vs skimage.measure.shannon_entropy per tile (gray + 4 bands), vs a vectorised numpy bincount.
   ``entropy_vs_memcpy`` = kernel time / memcpy time. Target ≤ 2.5.
2. The whole stage from a deflate-compressed, 512-px block-tiled GeoTIFF (4 x 7575 x 5893) vs a
   plain rasterio read of the same file. ``entropy_vs_decode`` = stage throughput / decode
   throughput. Target ≥ 0.8.

Usage: python benchmarks/entropy.py [--tiles 512] [--repeat 5] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from _common import best_of, naip_sized_scene, print_table

from rsgeo_prune import describe_raster
from rsgeo_prune.entropy import entropy_from_histograms, scene_histograms, tile_histograms
from rsgeo_prune.tiling import tile_offsets


def bincount_histograms(tiles: np.ndarray) -> np.ndarray:
    """Vectorised numpy baseline: one bincount over (tile, level) keys per band and for gray."""
    n, c = tiles.shape[:2]
    t = tiles.astype(np.int64)
    gray = (77 * t[:, 0] + 150 * t[:, 1] + 29 * t[:, 2] + 128) >> 8
    planes = [t[:, b] for b in range(c)] + [gray]
    offs = (np.arange(n) * 256)[:, None, None]
    return np.stack([np.bincount((p + offs).ravel(), minlength=n * 256).reshape(n, 256) for p in planes], axis=1)


def skimage_entropies(tiles: np.ndarray) -> None:
    from skimage.measure import shannon_entropy

    for t in tiles:
        gray = ((77 * t[0].astype(np.int32) + 150 * t[1] + 29 * t[2] + 128) >> 8).astype(np.uint8)
        shannon_entropy(gray, base=2)
        for band in t:
            shannon_entropy(band, base=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="rsgeo-bench-"))
    path = naip_sized_scene(work)

    with rasterio.open(path) as src:  # realistic tiles: the synthetic scene's classes, nodata collar excluded
        px = src.read(window=((0, 27 * 256), (0, 23 * 256)))
    pool = px.reshape(4, 27, 256, 23, 256).transpose(1, 3, 0, 2, 4).reshape(-1, 4, 256, 256)
    tiles = np.ascontiguousarray(pool[np.arange(args.tiles) % len(pool)])
    dst = np.empty_like(tiles)
    tile_histograms(tiles[:2])  # compile outside the timing

    t_kernel = best_of(lambda: entropy_from_histograms(tile_histograms(tiles)), args.repeat)
    t_copy = best_of(lambda: np.copyto(dst, tiles), args.repeat)
    t_bincount = best_of(lambda: bincount_histograms(tiles), max(1, args.repeat // 2))
    sub = tiles[:16]
    t_skimage = best_of(lambda: skimage_entropies(sub), 1) * len(tiles) / len(sub)

    scene = describe_raster(path)
    r, c, h, w = tile_offsets(scene)

    def plain_read():
        with rasterio.open(path) as src:
            src.read()

    def stage():
        entropy_from_histograms(scene_histograms(scene, r, c, h, w))

    t_read = best_of(plain_read, 3)
    t_stage = best_of(stage, 3)

    n = len(tiles)
    per = lambda t: f"{n / t:,.0f} tiles/s"  # noqa: E731
    rows = [
        (f"memcpy of {n} tiles (256x256x4 uint8)", per(t_copy), "baseline"),
        ("entropy kernel (numba, gray + 4 bands)", per(t_kernel), f"{t_kernel / t_copy:.2f}x memcpy (target <= 2.5)"),
        ("numpy bincount, vectorised", per(t_bincount), f"{t_bincount / t_copy:.1f}x memcpy"),
        ("skimage shannon_entropy per tile (16 timed)", per(t_skimage), f"{t_skimage / t_copy:.0f}x memcpy"),
        ("plain rasterio read, 4x7575x5893 deflate", f"{t_read:.2f} s", "baseline"),
        (
            f"entropy stage from the file ({len(r)} tiles)",
            f"{t_stage:.2f} s",
            f"throughput {t_read / t_stage:.2f}x decode (target >= 0.8)",
        ),
    ]
    print_table(rows)
    print(f"entropy_vs_memcpy={t_kernel / t_copy:.3f}")
    print(f"entropy_vs_decode={t_read / t_stage:.3f}")


if __name__ == "__main__":
    main()
