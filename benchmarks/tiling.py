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
import time
from pathlib import Path

import numpy as np
import rasterio
import shapely

from rsgeo_prune import TileConfig, tiles_stage, urban_fraction
from rsgeo_prune.synth import write_scene


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="rsgeo-bench-"))
    path = work / "naip_sized.tif"
    if not path.exists():
        print(f"writing {path} ...", flush=True)
        write_scene(path, rows=29, cols=23, extra_px=(151, 5), blocksize=512, seed=0, nodata_rows=2)
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
    tiles = shapely.box(x0.ravel()[:100_000], y0.ravel()[:100_000], x0.ravel()[:100_000] + 256, y0.ravel()[:100_000] + 256)
    extent = side * 256.0
    centres = shapely.points(rng.random((10_000, 2)) * extent)
    polys = shapely.buffer(centres, rng.uniform(50, 1500, 10_000), quad_segs=8)
    t_urban = best_of(lambda: urban_fraction(tiles, polys), args.repeat)

    rows = [
        ("plain rasterio read, 4x7575x5893 uint8", f"{t_read:.2f} s", "baseline"),
        (f"tiles stage ({n_tiles} tiles: grid, footprints, nodata, urban)", f"{t_stage:.2f} s",
         f"{t_stage / t_read:.2f}x read (target <= 1.5x)"),
        ("urban fraction, 100,000 tiles x 10,000 polygons", f"{t_urban:.2f} s", "target < 10 s"),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"\n{'benchmark':<{w}}  {'time':>9}  note")
    for name, t, note in rows:
        print(f"{name:<{w}}  {t:>9}  {note}")
    print(f"tiling_vs_read={t_stage / t_read:.3f}")
    print(f"urban_100k_x_10k_s={t_urban:.3f}")


if __name__ == "__main__":
    main()
