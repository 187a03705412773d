"""VAE quality on real data: train a preset on the NAIP years of ../shared/data/naip, holding one year
out, within a wall-clock budget; report PSNR, SSIM and SAM on the held-out year next to the baseline
with the same number of values per tile (bicubic downsampling by 8 and back). Prints a table.

Target (the 60-minute run, small preset, 2 CPU cores): the VAE beats bicubic x8 by >= 1 dB PSNR and
has a lower SAM on the held-out year.

Usage: python benchmarks/vae.py [--minutes 60] [--preset small] [--holdout 20200831] [--threads 2]
"""

from __future__ import annotations

import sys


import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from _common import print_table
from rsgeo_prune import TileConfig, tiles_stage
from rsgeo_prune.train.dataset import CatalogDataset, hash_split
from rsgeo_prune.train.vae import VAETrainConfig, evaluate, load_vae, train_vae

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "naip"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--holdout", default="20200831", help="date of the NAIP year held out")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--tile-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--val-every", type=int, default=250)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--out", default=None, help="run folder (default: a new temporary folder)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    files = sorted(Path(args.data).glob("m_*.tif"))
    if not files:
        sys.exit(f"no NAIP files under {args.data} (the ../shared/data folder ships only with the dev checkout)")
    table = tiles_stage(files, TileConfig(tile_size=args.tile_size, nodata=0), progress=False)
    table = table[table["kept"]]
    held = table["scene_id"].str.endswith(args.holdout).to_numpy()
    if not held.any():
        sys.exit(f"no scene of year {args.holdout}; choose --holdout among {[f.stem[-8:] for f in files]}")
    train_rows = table[~held]
    is_val = hash_split(train_rows["tile_id"].astype(str), 0.05)
    train_ds = CatalogDataset(train_rows[~is_val], select="all", dihedral=True)
    val_ds = CatalogDataset(train_rows[is_val], select="all")
    test_ds = CatalogDataset(table[held], select="all")
    out = Path(args.out or tempfile.mkdtemp(prefix="rsgeo-vae-bench-"))
    cfg = VAETrainConfig(preset=args.preset, batch_size=args.batch_size, lr=args.lr, steps=10**7,
                         minutes=args.minutes, val_every=args.val_every, save_every=args.val_every,
                         num_workers=args.workers, val_tiles=len(val_ds))
    print(f"training {args.preset} on {len(train_ds)} tiles ({len(files) - 1} years), validating on {len(val_ds)}, "
          f"testing on {len(test_ds)} tiles of {args.holdout}; {args.minutes} min; run folder {out}", flush=True)
    t0 = time.perf_counter()
    res = train_vae(train_ds, val_ds, out, cfg, progress=False)
    wall = time.perf_counter() - t0
    metrics = evaluate(load_vae(out), test_ds, cfg)
    (out / "benchmark.json").write_text(json.dumps({"args": vars(args), "steps": res.step, "best_step": res.best_step,
                                                    "wall_s": wall, "holdout": metrics}, indent=2))
    v, b = metrics["vae"], metrics["bicubic_x8"]
    bands = "/".join(f"{p:.1f}" for p in v["psnr_band"])
    bands_b = "/".join(f"{p:.1f}" for p in b["psnr_band"])
    rows = [
        (f"{args.preset} VAE, {res.step} steps in {wall / 60:.1f} min (best at {res.best_step})",
         f"{v['psnr']:.2f} dB", f"SAM {v['sam_deg']:.2f} deg, SSIM {sum(v['ssim_band']) / 4:.3f}, R/G/B/NIR {bands} dB"),
        ("bicubic x8 down and back (same 4x8x8 values)", f"{b['psnr']:.2f} dB",
         f"SAM {b['sam_deg']:.2f} deg, SSIM {sum(b['ssim_band']) / 4:.3f}, R/G/B/NIR {bands_b} dB"),
        ("VAE - bicubic", f"{v['psnr'] - b['psnr']:+.2f} dB",
         f"SAM {v['sam_deg'] - b['sam_deg']:+.2f} deg (target >= +1 dB and lower SAM)"),
    ]
    print(f"\nheld-out year {args.holdout}: {metrics['tiles']} tiles of 4 x {args.tile_size} x {args.tile_size}; "
          f"{res.step / wall:.2f} steps/s, batch {args.batch_size}, {args.threads} threads")
    print_table(rows)
    print(f"vae_minus_bicubic_db={v['psnr'] - b['psnr']:.3f}")
    print(f"vae_sam_minus_bicubic_deg={v['sam_deg'] - b['sam_deg']:.3f}")


if __name__ == "__main__":
    main()
