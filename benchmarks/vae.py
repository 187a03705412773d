"""VAE quality on acquisitions it never saw: train a preset on the NAIP years of ../shared/data/naip
with two whole years held out (default the first and the last, 2010 and 2020), within a wall-clock
budget on one thread; report PSNR, SSIM and SAM per band on the held-out years next to the baseline
with the same number of values per tile (bicubic downsampling by 8 and back), the step time of the
training configurations measured in the same run, and the held-out PSNR over time.

Checkpoints are chosen on a third whole year held out from the training years (``--val-by scene``, the
trainer's default); a hash split of the training years' tiles is reported next to it (what the older
per-tile split measured: memorisation of the training years' radiometry).

Target (``--minutes 60 --threads 1``, small preset): the VAE beats bicubic x8 by >= 1 dB PSNR and has a
lower SAM on the held-out years.

Usage: python benchmarks/vae.py [--minutes 60] [--threads 1] [--preset small] [--holdout 20100629,20200831]
       [--steps N] [--no-jitter] [--precision auto|bf16|fp32] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import cpu_name

from rsgeo_prune import TileConfig, tiles_stage
from rsgeo_prune.train.dataset import CatalogDataset, hash_split, split_validation
from rsgeo_prune.train.device import PRECISIONS, cpu_has_amx
from rsgeo_prune.train.vae import (
    VAETrainConfig,
    _loss_terms,
    build_vae,
    evaluate,
    load_vae,
    resolve_precision,
    train_vae,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "naip"


def step_time(preset: str, batch: int, tile: int, layout, precision: str, steps: int = 8) -> float:
    """Seconds per training step (forward, backward, AdamW) of a fresh model on random tiles."""
    torch.manual_seed(0)
    model = build_vae(preset).to(memory_format=layout)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = (torch.rand(batch, 4, tile, tile) * 2 - 1).contiguous(memory_format=layout)
    valid = torch.ones(batch, tile, tile, dtype=torch.bool)
    cfg = VAETrainConfig(preset=preset)
    times = []
    for k in range(steps + 3):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            terms = _loss_terms(model, x, valid, cfg)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()
        if k >= 3:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def spread(n: int, k: int) -> list[int]:
    """``k`` indexes spread evenly over ``range(n)`` (a monitor subset that covers every held-out year)."""
    return sorted({int(i) for i in np.linspace(0, n - 1, min(k, n))})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--holdout", default="20100629,20200831", help="dates of the NAIP years held out (comma-separated)")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--steps", type=int, default=None, help="a step budget instead of the time budget (ablations)")
    ap.add_argument("--tile-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--val-every", type=int, default=250)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--no-jitter", action="store_true", help="train without radiometric jitter")
    ap.add_argument("--sam-weight", type=float, default=0.0, help="weight of the spectral-angle loss term")
    ap.add_argument("--precision", choices=PRECISIONS, default="auto")
    ap.add_argument("--no-probe", action="store_true", help="skip the step-time table")
    ap.add_argument("--out", default=None, help="run folder (default: a new temporary folder)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    files = sorted(Path(args.data).glob("m_*.tif"))
    if not files:
        sys.exit(f"no NAIP files under {args.data} (the ../shared/data folder ships only with the dev checkout)")
    years = [y.strip() for y in args.holdout.split(",") if y.strip()]
    table = tiles_stage(files, TileConfig(tile_size=args.tile_size, nodata=0), progress=False)
    table = table[table["kept"]].reset_index(drop=True)
    held = table["scene_id"].str[-8:].isin(years).to_numpy()
    if set(years) - set(table["scene_id"].str[-8:]):
        sys.exit(f"--holdout {args.holdout}: choose dates among {[f.stem[-8:] for f in files]}")
    rest = table[~held].reset_index(drop=True)
    is_val = split_validation(rest, "scene", 0.05)  # one whole training-period year chooses the checkpoint
    is_hash = ~is_val & hash_split(rest["tile_id"].astype(str), 0.05)
    common = dict(select="all", output="raw")
    train_ds = CatalogDataset(rest[~is_val & ~is_hash], dihedral=True, **common)
    val_ds = CatalogDataset(rest[is_val], **common)
    hash_ds = CatalogDataset(rest[is_hash], **common)
    test_rows = table[held].reset_index(drop=True)
    test_ds = CatalogDataset(test_rows, **common)
    device = torch.device("cpu")
    precision = resolve_precision(args.precision, device)
    val_year = sorted(set(rest[is_val]["scene_id"].str[-8:]))

    probe = []
    if not args.no_probe:  # the configurations a step can run in, timed in this run
        cl, cf = torch.channels_last, torch.contiguous_format
        base = step_time(args.preset, args.batch_size, args.tile_size, cf, "fp32")
        for name, layout, prec in (
            ("fp32, NCHW (previous default)", cf, "fp32"),
            ("fp32, channels-last", cl, "fp32"),
            ("bf16 autocast, NCHW", cf, "bf16"),
            ("bf16 autocast, channels-last", cl, "bf16"),
        ):
            t = (
                base
                if (layout, prec) == (cf, "fp32")
                else step_time(args.preset, args.batch_size, args.tile_size, layout, prec)
            )
            probe.append({"config": name, "ms_per_step": 1000 * t, "steps_per_s": 1 / t, "speedup": base / t})
        print(
            f"\nstep time, {args.preset} preset, batch {args.batch_size} of 4 x {args.tile_size} x {args.tile_size}, "
            f"{args.threads} thread(s), {cpu_name()} (AMX: {cpu_has_amx()}):"
        )
        print_table(
            [
                (p["config"], f"{p['ms_per_step']:.0f} ms", f"{p['steps_per_s']:.2f} steps/s", f"{p['speedup']:.2f}x")
                for p in probe
            ]
        )

    out = Path(args.out or tempfile.mkdtemp(prefix="rsgeo-vae-bench-"))
    jitter = {} if not args.no_jitter else dict(jitter_gain=0.0, jitter_offset=0.0, jitter_gamma=0.0)
    cfg = VAETrainConfig(
        preset=args.preset,
        batch_size=args.batch_size,
        lr=args.lr,
        steps=args.steps or 10**7,
        minutes=None if args.steps else args.minutes,
        val_every=args.val_every,
        save_every=args.val_every,
        num_workers=args.workers,
        val_tiles=64,
        precision=args.precision,
        sam_weight=args.sam_weight,
        **jitter,
    )
    monitor = {"holdout": torch.utils.data.Subset(test_ds, spread(len(test_ds), 64)), "val_hash": hash_ds}
    monitor["holdout"].fill = test_ds.fill
    print(
        f"\ntraining {args.preset} ({precision}, jitter {'off' if args.no_jitter else 'on'}) on "
        f"{len(train_ds)} tiles of "
        f"{len(files) - len(years) - len(val_year)} years; checkpoints chosen on year {', '.join(val_year)} "
        f"({len(val_ds)} tiles); testing on {len(test_ds)} tiles of {', '.join(years)}; "
        f"{f'{args.steps} steps' if args.steps else f'{args.minutes} min'}; run folder {out}",
        flush=True,
    )
    t0 = time.perf_counter()
    res = train_vae(train_ds, val_ds, out, cfg, progress=False, monitor=monitor)
    wall = time.perf_counter() - t0
    vae = load_vae(out)
    metrics = evaluate(vae, test_ds, cfg)
    per_year = {}
    for y in years:
        rows = test_rows["scene_id"].str[-8:] == y
        per_year[y] = evaluate(vae, CatalogDataset(test_rows[rows.to_numpy()], **common), cfg)
    curve = [r for r in _records(out / "metrics.jsonl") if "holdout_psnr" in r]
    results = {
        "args": vars(args),
        "cpu": cpu_name(),
        "amx": cpu_has_amx(),
        "precision": precision,
        "steps": res.step,
        "best_step": res.best_step,
        "wall_s": wall,
        "train_s": wall,
        "steps_per_s": res.step / wall,
        "probe": probe,
        "holdout": metrics,
        "per_year": per_year,
        "val_scene": res.metrics,
        "val_hash": res.monitor.get("val_hash"),
        "curve": [
            {
                "minutes": round(r["elapsed_s"] / 60, 2),
                "step": r["step"],
                "psnr": r["holdout_psnr"],
                "sam_deg": r["holdout_sam_deg"],
            }
            for r in curve
        ],
    }
    (out / "benchmark.json").write_text(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    _report(args, results, years)


def print_table(rows: list[tuple]) -> None:
    """Left-aligned columns, as wide as their widest cell."""
    widths = [max(len(str(r[k])) for r in rows if k < len(r)) for k in range(max(len(r) for r in rows))]
    for r in rows:
        print("  ".join(f"{str(c):<{widths[k]}}" for k, c in enumerate(r)).rstrip())


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _report(args, r: dict, years: list[str]) -> None:
    def row(name, m):
        bands = "/".join(f"{p:.2f}" for p in m["psnr_band"])
        ssim = "/".join(f"{p:.3f}" for p in m["ssim_band"])
        return (name, f"{m['psnr']:.2f} dB", f"{m['sam_deg']:.2f} deg", f"R/G/B/NIR {bands} dB", f"SSIM {ssim}")

    v, b = r["holdout"]["vae"], r["holdout"]["bicubic_x8"]
    print(
        f"\nheld-out years {', '.join(years)}: {r['holdout']['tiles']} tiles of 4 x {args.tile_size} x "
        f"{args.tile_size}; "
        f"{r['steps']} steps in {r['wall_s'] / 60:.1f} min = {r['steps_per_s']:.2f} steps/s (best at "
        f"{r['best_step']}), "
        f"batch {args.batch_size}, {args.threads} thread(s), {r['precision']}, {r['cpu']}"
    )
    rows = [row(f"{args.preset} VAE, held-out years", v), row("bicubic x8, held-out years", b)]
    for y, m in r["per_year"].items():
        rows += [row(f"  VAE, {y}", m["vae"]), row(f"  bicubic x8, {y}", m["bicubic_x8"])]
    rows += [
        row("VAE, checkpoint-choice year", r["val_scene"]["vae"]),
        row("bicubic x8, checkpoint-choice year", r["val_scene"]["bicubic_x8"]),
    ]
    if r.get("val_hash"):
        rows += [
            row("VAE, hash split of training years", r["val_hash"]["vae"]),
            row("bicubic x8, hash split of training years", r["val_hash"]["bicubic_x8"]),
        ]
    print_table(rows)
    print(
        f"\nVAE - bicubic on the held-out years: {v['psnr'] - b['psnr']:+.2f} dB PSNR, "
        f"{v['sam_deg'] - b['sam_deg']:+.2f} deg "
        "SAM (target: >= +1 dB and lower SAM)"
    )
    print("\nheld-out PSNR over time (64 tiles spread over the held-out years):")
    print_table(
        [
            (f"{c['minutes']:.1f} min", f"step {c['step']}", f"{c['psnr']:.2f} dB", f"SAM {c['sam_deg']:.2f} deg")
            for c in r["curve"]
        ]
    )
    print(f"vae_minus_bicubic_db={v['psnr'] - b['psnr']:.3f}")
    print(f"vae_sam_minus_bicubic_deg={v['sam_deg'] - b['sam_deg']:.3f}")


if __name__ == "__main__":
    main()
