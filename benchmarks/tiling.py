"""Tiling benchmark: prints a table (no assertions; targets in the last column).

1. A NAIP-sized synthetic scene (4 x 7575 x 5893 uint8, deflate, 512-px blocks): plain rasterio read
   of the whole raster vs the tiles stage (grid + footprints + nodata fraction + urban fraction) on
   the same file, in the same run. Target: tiles stage ≤ 1.5x the read.
2. Urban fraction of 100,000 tiles against 10,000 polygons. Target: < 10 s.

Usage: python benchmarks/tiling.py [--repeat 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import rasterio
import shapely
from _common import best_of, naip_sized_scene, print_table

from rsgeo_prune import TileConfig, tiles_stage, urban_fraction


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="rsgeo-bench-"))
    path = naip_sized_scene(work)
    urban = path.with_name(f"{path.stem}_urban.gpkg")

    def plain_read():
        with rasterio.open(path) as src:
            src.read()

    def stage():
        tiles_stage([path], TileConfig(mask=str(urban)), progress=False)

    t_read = best_of(plain_read, args.repeat)
    t_stage = best_of(stage, args.repeat)
    n_tiles = 29 * 23

    rng = np.random.default_rng(0)
    side = int(np.ceil(np.sqrt(100_000)))
    x0, y0 = np.meshgrid(np.arange(side) * 256.0, np.arange(side) * 256.0)
    tiles = shapely.box(
        x0.ravel()[:100_000], y0.ravel()[:100_000], x0.ravel()[:100_000] + 256, y0.ravel()[:100_000] + 256
    )
    extent = side * 256.0
    centres = shapely.points(rng.random((10_000, 2)) * extent)
    polys = shapely.buffer(centres, rng.uniform(50, 1500, 10_000), quad_segs=8)
    t_urban = best_of(lambda: urban_fraction(tiles, polys), args.repeat)

    rows = [
        ("plain rasterio read, 4x7575x5893 uint8", f"{t_read:.2f} s", "baseline"),
        (
            f"tiles stage ({n_tiles} tiles: grid, footprints, nodata, urban)",
            f"{t_stage:.2f} s",
            f"{t_stage / t_read:.2f}x read (target <= 1.5x)",
        ),
        ("urban fraction, 100,000 tiles x 10,000 polygons", f"{t_urban:.2f} s", "target < 10 s"),
    ]
    print_table(rows)
    print(f"tiling_vs_read={t_stage / t_read:.3f}")
    print(f"urban_100k_x_10k_s={t_urban:.3f}")


if __name__ == "__main__":
    main()
