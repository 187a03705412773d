"""Front-end glue of the training wing: argparse registration and run functions for the
``train-vae`` and ``encode`` sub-commands, and :func:`run_command`, which runs any training command the
way the front end (``rsgeo-prune``, ``python -m rsgeo_prune``) does: bad input is one line on stderr
(``rsgeo-prune <command>: …``) and exit code 2, Ctrl-C one line saying what a rerun continues from
and exit code 130. Every option is checked before any output folder is created.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from ..errors import RSGeoPruneError, check_number, one_line


def _bands(text: str) -> list[int]:
    try:
        bands = [int(b) for b in text.split(",") if b.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1-based band indexes such as 1,2,3,4") from exc
    twice = next((b for k, b in enumerate(bands) if b in bands[:k]), None)
    if twice is not None:
        raise argparse.ArgumentTypeError(f"{text!r}: band {twice} is given twice; give distinct bands such as 1,2,3,4")
    return bands


def _add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("catalog", help="tiles.parquet or catalog.parquet (one row per tile)")
    p.add_argument(
        "--select",
        default="kept",
        help="which tiles: 'kept' (default), 'all', or a pandas query such as \"kept and entropy > 5\"",
    )
    p.add_argument("--tile-ids", default=None, help="a text file of tile_ids, one per line (overrides --select)")
    p.add_argument(
        "--bands",
        type=_bands,
        default=None,
        help="1-based bands, e.g. 1,2,3,4 (default: R,G,B,NIR when the raster names them, else all)",
    )
    p.add_argument("--crop", type=int, default=None, help="train on crops of this many pixels (default: whole tiles)")
    p.add_argument("--nodata", type=float, default=None, help="nodata value for rasters that declare none")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: the best available)")
    p.add_argument("--out", required=True, help="output folder")


def add_train_vae_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``rsgeo-prune train-vae CATALOG --out DIR``."""
    from .dataset import VAL_BY
    from .device import PRECISIONS
    from .runlog import LOGS
    from .vae import LR_SCHEDULES, PRESETS, VAETrainConfig

    d = VAETrainConfig()
    _add_data_arguments(p)
    p.add_argument("--preset", default=d.preset, choices=sorted(PRESETS), help=f"model size (default {d.preset})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimiser steps (default {d.steps})")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget; the state is saved when it runs out")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--kl-weight", type=float, default=d.kl_weight)
    p.add_argument("--ssim-weight", type=float, default=d.ssim_weight)
    p.add_argument(
        "--sam-weight",
        type=float,
        default=d.sam_weight,
        help="weight of a spectral-angle term, mean (1 - cos) of pixel spectra (default 0: off)",
    )
    p.add_argument("--lpips", default=None, help="local TorchScript LPIPS file (nothing is downloaded)")
    p.add_argument("--lpips-weight", type=float, default=0.0)
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.05,
        help="share of tiles held out for validation (whole scenes or years: at least one)",
    )
    p.add_argument(
        "--val-by",
        choices=VAL_BY,
        default="scene",
        help="hold out whole scenes (default; a catalog of one scene falls back to hash), whole acquisition "
        "years (from a datetime column or a YYYYMMDD file name), or tiles by id hash. With scene or "
        "year, a hash split of the training scenes is reported next to it (val_hash)",
    )
    p.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default=d.lr_schedule,
        help=f"after {d.warmup_steps} warm-up steps (at most a tenth of --steps): cosine decay to "
        f"{d.min_lr_ratio} x lr at --steps or at the end of --minutes, or constant",
    )
    p.add_argument(
        "--jitter-gain",
        type=float,
        default=d.jitter_gain,
        help=f"per-band gain jitter of training tiles, log-uniform in [1/(1+g), 1+g] (default {d.jitter_gain}; 0: off)",
    )
    p.add_argument(
        "--jitter-offset",
        type=float,
        default=d.jitter_offset,
        help=f"per-band offset jitter in [0, 1] units (default {d.jitter_offset}; 0: off)",
    )
    p.add_argument(
        "--jitter-gamma",
        type=float,
        default=d.jitter_gamma,
        help=f"per-tile gamma jitter, log-uniform in [1/(1+g), 1+g] (default {d.jitter_gamma}; 0: off)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=d.precision,
        help="auto: bf16 autocast on CUDA and on CPUs with AMX, fp32 elsewhere",
    )
    p.add_argument("--val-every", type=int, default=d.val_every)
    p.add_argument("--save-every", type=int, default=d.save_every)
    p.add_argument(
        "--log",
        choices=LOGS,
        default=d.log,
        help="jsonl: metrics.jsonl; tensorboard: metrics.jsonl and TensorBoard event files in tensorboard/ "
        "(losses, tiles/s, validation metrics, the reconstruction grid of each validation)",
    )
    p.add_argument("--no-dihedral", action="store_true", help="no random rotations and flips")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def add_encode_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``rsgeo-prune encode CATALOG --vae DIR --out DIR``."""
    _add_data_arguments(p)
    p.add_argument("--vae", required=True, help="the --out of train-vae (or its vae/ folder)")
    p.add_argument("--shard-size", type=int, default=1024, help="tiles per shard")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def config_from_args(cls, args: argparse.Namespace, **renamed: str):
    """The config dataclass ``cls`` of a command's parsed options: each field from the option of the same name
    (``renamed``: field → option, where they differ), fields without an option at their defaults."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values.update({field: getattr(args, option) for field, option in renamed.items()})
    return cls(**values)


def _selection(args):
    if args.tile_ids:
        path = Path(args.tile_ids)
        if not path.exists():
            raise RSGeoPruneError(f"{path}: tile-id list not found")
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return args.select


def _check_data_options(args) -> None:
    """The options every command reading a catalog shares (the datasets check bands and crop against the tiles)."""
    if args.crop is not None:
        check_number("crop", args.crop, 1, whole=True, example=64)
    check_number("workers", args.workers, 0, whole=True, example=2)


def run_train_vae(args) -> dict:
    """Train the VAE; returns (and prints) a summary with the validation metrics."""
    from .dataset import CatalogDataset, hash_split, load_table, select_rows, split_validation
    from .vae import VAETrainConfig, train_vae

    cfg = config_from_args(VAETrainConfig, args, num_workers="workers")  # checks every value
    _check_data_options(args)
    check_number("val_fraction", args.val_fraction, 0, 1, open_low=True, open_high=True, example=0.05)
    table = select_rows(load_table(args.catalog), _selection(args), source=str(args.catalog))
    val_by = args.val_by
    if val_by != "hash" and table["scene_id" if "scene_id" in table else "href"].nunique() < 2:
        val_by = "hash"  # one scene: nothing to hold out whole (the summary's val_by says so)
    is_val = split_validation(table, val_by, args.val_fraction)
    # next to whole held-out scenes, a hash split of the training scenes: the number that measures memorisation
    is_hash = (
        ~is_val & hash_split(table["tile_id"].astype(str), args.val_fraction)
        if val_by != "hash"
        else np.zeros(len(table), bool)
    )
    if is_val.all() or not is_val.any() or (is_val | is_hash).all():
        raise RSGeoPruneError(
            f"{args.catalog}: {len(table)} tiles give an empty training or validation split; "
            "select more tiles or change --val-fraction"
        )
    # raw file values cross the DataLoader (4x fewer bytes for uint8); the trainer scales on its device
    common = dict(bands=args.bands, crop=args.crop, nodata=args.nodata, seed=args.seed, output="raw")
    train_ds = CatalogDataset(table[~is_val & ~is_hash], select="all", dihedral=not args.no_dihedral, **common)
    val_ds = CatalogDataset(table[is_val], select="all", random_crop=False, **common)
    monitor = (
        {"val_hash": CatalogDataset(table[is_hash], select="all", random_crop=False, **common)} if is_hash.any() else {}
    )
    res = train_vae(
        train_ds,
        val_ds,
        args.out,
        cfg,
        resume=args.resume,
        progress=not args.quiet,
        monitor=monitor,
        split={"val_by": val_by, "val_fraction": args.val_fraction},
    )
    summary = {
        "out": str(args.out),
        "step": res.step,
        "best_step": res.best_step,
        "best_val_loss": res.best_val,
        "val_by": val_by,
        "train_tiles": len(train_ds),
        "val_tiles": len(val_ds),
        "val_hash_tiles": int(is_hash.sum()),
        **res.metrics,
        **({"val_hash": res.monitor["val_hash"]} if "val_hash" in res.monitor else {}),
    }
    print(json.dumps(summary))
    return summary


def run_encode(args) -> dict:
    """Encode the selected tiles to latent shards; returns (and prints) the index."""
    from .dataset import CatalogDataset
    from .latents import encode_catalog

    _check_data_options(args)
    for name in ("shard_size", "batch_size"):
        check_number(name, getattr(args, name), 1, whole=True)
    ds = CatalogDataset(
        args.catalog,
        select=_selection(args),
        bands=args.bands,
        crop=args.crop,
        random_crop=False,
        nodata=args.nodata,
        output="raw",
    )
    index = encode_catalog(
        ds,
        args.vae,
        args.out,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        device=args.device,
        num_workers=args.workers,
        progress=not args.quiet,
    )
    print(
        json.dumps(
            {
                "out": str(args.out),
                "tiles": index["tiles"],
                "shards": len(index["shards"]),
                "latent_shape": index["latent_shape"],
            }
        )
    )
    return index


def interrupt_hint(command: str, args) -> str:
    """What a rerun continues from after Ctrl-C, and the command line that does it."""
    out = Path(args.out)
    if command in ("train-vae", "train-dit"):
        if (out / "state.pt").exists():
            again = "rerun the same command" if args.resume else "rerun the same command with --resume"
            return f"the last saved state in {out} is kept; {again} to continue from it"
        return "nothing was saved; rerun the same command"
    if command == "encode" and any(out.glob("shard-*.safetensors")):
        return f"finished shards in {out} are kept; rerun the same command to continue"
    return "nothing was written; rerun the same command"


def run_command(command: str, run, args) -> int:
    """Run one training command: 0, or one line on stderr and 2 (bad input) or 130 (Ctrl-C)."""
    try:
        run(args)
    except RSGeoPruneError as exc:
        print(f"rsgeo-prune {command}: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rsgeo-prune {command}: interrupted; {interrupt_hint(command, args)}", file=sys.stderr)
        return 130
    return 0
