"""Training-data throughput: CatalogDataset through a DataLoader vs a bare rasterio window-read loop
over the same tiles, with 0 and 2 workers. Prints a table (no assertions; target ≥ 0.8x).

The bare loop opens each raster once (per worker) and reads the tile windows as uint8, nothing
else; the dataset also computes the nodata mask, scales to [-1, 1] float32 and makes tensors.

Usage: python benchmarks/train_data.py [--tiles 2000] [--tile-size 256] [--workdir DIR]
"""

from __future__ import annotations

import sys

sys.path.append(sys.path.pop(0))  # benchmarks/select.py must not shadow the standard library

import os

# --gdal-cachemax MB must reach GDAL before rasterio loads it: a small block cache makes both loops
# decode every tile (a training set larger than RAM), the default keeps this small set cache-hot.
if "--gdal-cachemax" in sys.argv:
    os.environ["GDAL_CACHEMAX"] = sys.argv[sys.argv.index("--gdal-cachemax") + 1]

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from _common import print_table
from rsgeo_prune import TileConfig, synth, tiles_stage
from rsgeo_prune.train.dataset import CatalogDataset


class BareWindows(torch.utils.data.Dataset):
    """The baseline: rasterio window reads, one handle per raster per worker, uint8 arrays out."""

    def __init__(self, rows):
        self.rows = rows
        self._handles = {}

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        href, r, c, h, w = self.rows[i]
        if getattr(self, "_pid", None) != os.getpid():  # a forked worker opens its own handles
            self._handles, self._pid = {}, os.getpid()
        src = self._handles.get(href)
        if src is None:
            src = self._handles[href] = rasterio.open(href)
        return torch.from_numpy(src.read(window=Window(c, r, w, h)))

    def __getstate__(self):
        return {"rows": self.rows, "_handles": {}}


def _rate(ds, workers: int, batch: int, repeat: int) -> float:
    best = 0.0
    for _ in range(repeat):
        loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, shuffle=False)
        t0 = time.perf_counter()
        n = sum(b["image"].shape[0] if isinstance(b, dict) else b.shape[0] for b in loader)
        best = max(best, n / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", type=int, default=2000, help="tiles read per pass")
    ap.add_argument("--tile-size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--gdal-cachemax", default=None, help="GDAL block cache in MB (default GDAL's, 5 %% of RAM)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="rsgeo-bench-"))
    side = int(np.ceil(np.sqrt(args.tiles)))
    path = work / f"train_data_{side}x{side}_{args.tile_size}.tif"
    if not path.exists():
        print(f"writing {path} ...", flush=True)
        synth.write_scene(path, rows=side, cols=side, tile_size=args.tile_size, seed=0, nodata_rows=0,
                          blocksize=args.tile_size)
    table = tiles_stage([path], TileConfig(tile_size=args.tile_size), progress=False).iloc[:args.tiles]
    ds = CatalogDataset(table, select="all")
    bare = BareWindows([(str(path), int(r.row_off), int(r.col_off), int(r.height), int(r.width))
                        for r in table.itertuples()])
    rows = []
    for workers in (0, 2):
        t_bare = _rate(bare, workers, args.batch, args.repeat)
        t_ds = _rate(ds, workers, args.batch, args.repeat)
        rows.append((f"bare rasterio windows, {workers} workers", f"{t_bare:,.0f} tiles/s", "baseline"))
        rows.append((f"CatalogDataset, {workers} workers", f"{t_ds:,.0f} tiles/s",
                     f"{t_ds / t_bare:.2f}x bare (target >= 0.8x)"))
        print(f"dataset_vs_bare_{workers}w={t_ds / t_bare:.3f}")
    print(f"\n{len(table)} tiles of 4 x {args.tile_size} x {args.tile_size} uint8 (deflate, {args.tile_size}-px blocks), "
          f"batch {args.batch}, GDAL_CACHEMAX {args.gdal_cachemax or 'default'}")
    print_table(rows)


if __name__ == "__main__":
    main()
