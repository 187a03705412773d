"""The ``rsgeo-prune`` command.

Errors from bad input print one line on stderr (the file and the fix) and exit with code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from .dedup import DEFAULT_COSINE, DEFAULT_MAX_PER_PLACE
from .errors import ArgumentParser, RSGeoPruneError, one_line
from .places import DEFAULT_IOU
from .rundir import package_version
from .select import METHODS
from .status import ENTROPY, PRE_FILTERS, summary_line
from .viz import COLOR_BY


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in [0, 1]")
    return value


def _add_tile_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tiling")
    g.add_argument("--tile-size", type=int, default=256, metavar="N", help="tile edge in pixels")
    g.add_argument(
        "--stride",
        type=int,
        default=None,
        metavar="N",
        help="step between tile origins in pixels (default: the tile size, i.e. no overlap)",
    )
    g.add_argument(
        "--partial",
        action="store_true",
        help="keep clipped tiles at the right/bottom edges (default: full tiles only; the dropped "
        "ones are counted in the log)",
    )
    g.add_argument(
        "--nodata",
        type=float,
        default=None,
        metavar="V",
        help="nodata value for rasters that declare none (NAIP quarter-quads use 0); a file's own nodata always wins",
    )
    g.add_argument(
        "--datetime",
        default=None,
        metavar="WHEN",
        help="acquisition time of every input, before any they carry (manifest column, STAC Item, "
        "time tag, dated file name): an instant 2020-08-31T17:08:51Z, a day 2020-08-31, or a "
        "range START/END; no zone means UTC (docs/stac.md)",
    )
    f = p.add_argument_group("pre-filters")
    f.add_argument(
        "--max-nodata",
        type=_fraction,
        default=0.5,
        metavar="F",
        help="prune tiles whose nodata fraction exceeds F (pruned_by='nodata')",
    )
    f.add_argument(
        "--mask",
        default=None,
        metavar="VECTOR",
        help="urban-boundary polygons (GeoPackage, Shapefile, GeoJSON, GeoParquet; any CRS, "
        "reprojected to each raster's CRS); adds the urban_frac column",
    )
    f.add_argument(
        "--min-urban",
        type=_fraction,
        default=None,
        metavar="F",
        help="prune tiles whose urban fraction is below F (pruned_by='mask'); needs --mask; default: off",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="rsgeo-prune",
        formatter_class=_Formatter,
        description="Curate remote-sensing tile corpora for diffusion training (RS-Prune).\n\n"
        "Stages: tiles (grid, nodata and urban fractions, pre-filters) → entropy (Stage I) → "
        "embed/assign/select (Stage II) → catalog (GeoParquet + STAC).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tiles = sub.add_parser(
        "tiles",
        formatter_class=_Formatter,
        help="tile rasters or image folders into a GeoParquet tile table",
        description="Tile rasters (GeoTIFF/COG paths, globs, or STAC Item JSON) or image folders (one image = "
        "one tile, optional manifest.csv/.parquet with lon/lat) and write a GeoParquet 1.1 table "
        "with one row per tile: tile_id, window, transform, EPSG:4326 footprint, gsd, bands, "
        "nodata_frac, urban_frac, kept, pruned_by ('nodata', 'mask' or null).",
    )
    tiles.add_argument(
        "inputs", nargs="+", metavar="RASTER", help="raster file, quoted glob, STAC Item .json, or image folder"
    )
    tiles.add_argument("--out", required=True, metavar="PATH", help="output GeoParquet file (written atomically)")
    _add_tile_options(tiles)
    _add_entropy_options(tiles)
    tiles.add_argument("--quiet", action="store_true", help="no progress bar or summary")

    ent = sub.add_parser(
        "entropy",
        formatter_class=_Formatter,
        help="Stage I: add grayscale and per-band entropy to a tile table, optionally filter",
        description="Re-read the rasters of a tile table made by `rsgeo-prune tiles` and add `entropy` (bits, "
        "256-level grayscale: BT.601 luma of bands 1-3) and `entropy_bands` (per band). Nodata pixels "
        "are left out; uint16/float rasters are stretched to 256 levels per scene (2nd-98th "
        "percentile). With a filter, pruned tiles get pruned_by='entropy'.",
    )
    ent.add_argument("table", metavar="TILES.parquet", help="tile table from `rsgeo-prune tiles`")
    ent.add_argument("--out", required=True, metavar="PATH", help="output GeoParquet file (written atomically)")
    ent.add_argument(
        "--nodata",
        type=float,
        default=None,
        metavar="V",
        help="nodata value for rasters that declare none (as given to `tiles`)",
    )
    _add_entropy_options(ent)
    ent.add_argument("--quiet", action="store_true", help="no progress bar or summary")

    cen = sub.add_parser(
        "centroids",
        formatter_class=_Formatter,
        help="Stage II: embed reference scene sets and cluster them into a centroid bank",
        description="Embed reference scene-classification sets in ImageFolder layout (<class>/<image>: UCM, "
        "NWPU-RESISC45, AID, WHU-RS19, RSD46), cluster them with seeded spherical k-means and save a "
        "CentroidBank (.npz: centroids, embedder spec, reference digest, per-centroid class counts).",
    )
    cen.add_argument(
        "refs",
        nargs="+",
        metavar="REF_DIR",
        help="ImageFolder reference set(s), or catalogs (Parquet/CSV with href and a class column); "
        "classes are merged by name",
    )
    cen.add_argument("--out", required=True, metavar="BANK.npz", help="output bank (written atomically)")
    _add_model_options(cen)
    cen.add_argument("--quiet", action="store_true", help="no summary")

    run = sub.add_parser(
        "run",
        formatter_class=_Formatter,
        help="the whole pipeline: tiles → masks → entropy → embed → assign → select → catalog",
        description="Run RS-Prune end to end in a resumable run directory: RUN_DIR/catalog.parquet (GeoParquet 1.1, "
        "every tile with kept, pruned_by, cluster, similarity, rank), embeddings.parquet, tiles.parquet, "
        "bank.npz (when built here), the kept tiles as a STAC catalog (stac/) and as stac-geoparquet "
        "(items.parquet), and run.json. A rerun skips the stages whose inputs and config are unchanged; "
        "a run killed at any point resumes.",
    )
    run.add_argument(
        "inputs",
        nargs="+",
        metavar="RASTER_OR_FOLDER",
        help="raster file, quoted glob, STAC Item .json, or image folder",
    )
    run.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory")
    run.add_argument(
        "--reference",
        nargs="+",
        default=[],
        metavar="REF",
        help="ImageFolder reference set(s) or reference catalogs (as for `centroids`), or one saved "
        "bank .npz (needed by rs-prune, water-filling, moderate)",
    )
    _add_tile_options(run)
    _add_entropy_options(run)
    sel = run.add_argument_group("Stage II (selection)")
    b = sel.add_mutually_exclusive_group()
    b.add_argument(
        "--budget",
        type=_fraction,
        default=0.15,
        metavar="F",
        help="keep this fraction of the tiles that passed the nodata and mask filters (the paper's "
        "85 %% pruning is 0.15)",
    )
    b.add_argument("--budget-count", type=int, default=None, metavar="N", help="keep exactly N tiles instead")
    sel.add_argument(
        "--method",
        default="rs-prune",
        choices=list(METHODS),
        help="selection: " + "; ".join(f"{m.name}: {m.summary}" for m in METHODS.values()),
    )
    dup = run.add_argument_group("copies (rs-prune, rs-prune-dedup)")
    dup.add_argument(
        "--dedup-cosine",
        type=float,
        default=None,
        metavar="TAU",
        help="skip exact copies (equal pixel digests) and tiles whose cosine to a chosen tile of their "
        "cluster is >= TAU, in (0, 1]; their slots go to the next distinct tiles "
        f"(pruned_by='duplicate', duplicate_of=the copied tile); default: off ({DEFAULT_COSINE} with "
        "rs-prune-dedup)",
    )
    dup.add_argument(
        "--max-per-place",
        type=int,
        default=None,
        metavar="N",
        help="keep at most N tiles of one place: tiles of different files whose footprints overlap by "
        "IoU >= --place-iou (ties: most recent acquisition first); default: off "
        f"({DEFAULT_MAX_PER_PLACE} with rs-prune-dedup)",
    )
    dup.add_argument(
        "--place-iou",
        type=float,
        default=DEFAULT_IOU,
        metavar="F",
        help="footprint intersection over union that makes two tiles one place, in (0, 1]",
    )
    _add_model_options(run)
    scale = run.add_argument_group("scale and output")
    scale.add_argument(
        "--scheduler",
        default="threads",
        metavar="S",
        help="dask scheduler: threads, processes, synchronous, or tcp://HOST:PORT of a running "
        "dask.distributed cluster (the catalog is byte-identical on each)",
    )
    scale.add_argument("--chunk", type=int, default=4096, metavar="N", help="tiles per embedding/assignment task")
    scale.add_argument(
        "--export-tiles",
        action="store_true",
        help="also write each kept tile as a COG under RUN_DIR/tiles/ and point its STAC asset at it",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar or summary")

    mp = sub.add_parser(
        "map",
        formatter_class=_Formatter,
        help="one standalone HTML map of a run's tiles (draws offline)",
        description="Write one self-contained HTML file (Leaflet and the tiles inlined as GeoJSON) that maps every "
        "tile of RUN_DIR/catalog.parquet, coloured by status (kept or why pruned), cluster or entropy, "
        "with a tooltip per tile. It draws with no network; an OpenStreetMap basemap shows when online.",
    )
    mp.add_argument("run_dir", metavar="RUN_DIR", help="run directory (or a catalog .parquet)")
    mp.add_argument("--out", required=True, metavar="MAP.html", help="output HTML file")
    mp.add_argument("--color-by", default="status", choices=list(COLOR_BY), help="fill colour")

    rp = sub.add_parser(
        "report",
        formatter_class=_Formatter,
        help="one self-contained HTML report of a run",
        description="Per-stage counts, entropy histogram with the cut, tiles per cluster before/after selection, "
        "similarity distribution, class mix (with --labels), contact sheets of kept and pruned tiles "
        "(RGB and NIR false colour), the config, and a comparison with a random subset of the same size.",
    )
    rp.add_argument("run_dir", metavar="RUN_DIR", help="run directory")
    rp.add_argument("--out", required=True, metavar="REPORT.html", help="output HTML file")
    rp.add_argument(
        "--labels",
        default=None,
        metavar="CSV",
        help="optional CSV with tile_id and class columns (adds the class-mix plot)",
    )
    rp.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the random comparison subset")
    for name, run in {
        "tiles": _cmd_tiles,
        "entropy": _cmd_entropy,
        "centroids": _cmd_centroids,
        "run": _cmd_run,
        "map": _cmd_map,
        "report": _cmd_report,
    }.items():
        sub.choices[name].set_defaults(func=run)
    _add_training_commands(sub)
    return parser


def _add_training_commands(sub) -> None:
    """The training wing's sub-commands; their options live beside their code in ``rsgeo_prune.train``."""
    from .train.commands import add_encode_arguments, add_train_vae_arguments, run_encode, run_train_vae
    from .train.dit_commands import add_sample_arguments, add_train_dit_arguments, run_sample, run_train_dit

    add_train_vae_arguments(
        sub.add_parser(
            "train-vae",
            formatter_class=_Formatter,
            help="train the 4-channel KL VAE from scratch on a catalog's tiles",
            description="Train a diffusers AutoencoderKL (4 bands in and out, 4 latent channels, 8x down) on the kept "
            "tiles "
            "of a catalog; keep the checkpoint with the lowest validation loss (whole scenes held out by "
            "default, --val-by) in OUT/vae/ (save_pretrained format, with the measured per-channel latent "
            "mean and std), with per-band PSNR, SSIM and SAM on the validation split; --resume continues a "
            "stopped run; --log tensorboard adds TensorBoard event files.",
        )
    ).set_defaults(func=_cmd_training, run=run_train_vae)
    add_encode_arguments(
        sub.add_parser(
            "encode",
            formatter_class=_Formatter,
            help="encode a catalog's tiles once to latent shards for the DiT",
            description="Encode every selected tile to its posterior mean and log-variance (fp16) in safetensors "
            "shards "
            "keyed by tile_id, with the VAE and catalog digests; a killed run continues where it stopped.",
        )
    ).set_defaults(func=_cmd_training, run=run_encode)
    add_train_dit_arguments(
        sub.add_parser(
            "train-dit",
            formatter_class=_Formatter,
            help="train an unconditional DiT on latent shards",
            description="Train a DiT (written from Peebles & Xie 2023; --model from the registry) on the latent shards "
            "of "
            "`encode`: AdamW, EMA, gradient clipping, bf16 on GPU, exact --resume, EMA sample grids and the "
            "Fréchet distance every --sample-every steps, --log tensorboard. When the run ends it writes "
            "OUT/export/ (config.json, ema.safetensors, model.safetensors), which loads with "
            "rsgeo_prune.train.load_dit or plain torch. Multi-GPU: torchrun --nproc_per_node N -m "
            "rsgeo_prune train-dit ... (--batch-size is the global batch).",
        )
    ).set_defaults(func=_cmd_training, run=run_train_dit)
    add_sample_arguments(
        sub.add_parser(
            "sample",
            formatter_class=_Formatter,
            help="sample tiles from a DiT checkpoint's EMA weights",
            description="Sample from the EMA weights of a train-dit checkpoint or export folder, decode with the VAE "
            "and "
            "write 4-band arrays (.npy, or plain TIFF with band names, no georeference), the latents, RGB "
            "and NIR-R-G false-colour grids and samples.json (bands, dtype, value range, sampler, seed); "
            "seedable.",
        )
    ).set_defaults(func=_cmd_training, run=run_sample)


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("embedding and clustering")
    g.add_argument(
        "--embedder",
        default="default",
        metavar="SPEC",
        help="default (weights-free), openclip:<arch>:<checkpoint-path>, or siglip:<local-dir>",
    )
    g.add_argument(
        "--nir-view",
        default="none",
        choices=["none", "concat", "mean"],
        help="4-band tiles with RGB models: also embed the (NIR, R, G) false-colour view and concatenate or average",
    )
    g.add_argument(
        "--k",
        type=int,
        default=None,
        metavar="K",
        help="number of centroids (spherical k-means); default: 200, or the K of a given bank",
    )
    g.add_argument("--seed", type=int, default=0, metavar="S", help="seed of k-means and random baselines")


def _add_entropy_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Stage I (entropy)").add_mutually_exclusive_group()
    g.add_argument(
        "--entropy-min",
        type=float,
        default=None,
        metavar="TAU",
        help="keep tiles whose grayscale entropy is >= TAU bits (0-8); default: off",
    )
    g.add_argument(
        "--entropy-keep",
        type=_fraction,
        default=None,
        metavar="P",
        help="keep exactly round(P x N) of the N tiles still kept, those with the highest entropy "
        "(ties by tile_id; the paper keeps 0.3); default: off",
    )


def _tile_config(args):
    from .config import TileConfig

    return TileConfig(
        tile_size=args.tile_size,
        stride=args.stride,
        partial=args.partial,
        mask=args.mask,
        min_urban=args.min_urban,
        max_nodata=args.max_nodata,
        nodata=args.nodata,
        entropy_min=args.entropy_min,
        entropy_keep=args.entropy_keep,
        datetime=args.datetime,
    )


def _cmd_tiles(args) -> int:
    from .atomic import check_writable
    from .catalog import write_geoparquet
    from .tile_table import tiles_stage

    cfg = _tile_config(args)
    check_writable(args.out)
    table = tiles_stage(args.inputs, cfg, progress=not args.quiet)
    write_geoparquet(table, args.out)
    if not args.quiet:
        print(_summary(table, args.out))
    return 0


def _summary(table, out) -> str:
    stages = PRE_FILTERS + ((ENTROPY,) if "entropy" in table else ())  # Stage I only when it ran
    return f"{len(table)} tiles → {out}: " + summary_line(table, reasons=stages)


def _cmd_entropy(args) -> int:
    from .atomic import check_writable
    from .catalog import read_catalog, write_geoparquet
    from .tile_table import entropy_stage

    check_writable(args.out)
    table = entropy_stage(
        read_catalog(args.table),
        nodata=args.nodata,
        entropy_min=args.entropy_min,
        entropy_keep=args.entropy_keep,
        progress=not args.quiet,
        source=args.table,
    )
    write_geoparquet(table, args.out)
    if not args.quiet:
        print(_summary(table, args.out))
    return 0


def _cmd_centroids(args) -> int:
    from .atomic import check_writable
    from .centroids import build_centroid_bank, check_reference
    from .config import RunConfig
    from .embed import load_embedder

    cfg = RunConfig(k=args.k, seed=args.seed, embedder=args.embedder, nir_view=args.nir_view)  # validates them
    check_writable(args.out)
    embedder = load_embedder(args.embedder, nir_view=args.nir_view)
    check_reference(args.refs, embedder.spec, k=cfg.k_or_default)
    bank = build_centroid_bank(args.refs, embedder, k=cfg.k_or_default, seed=args.seed)
    bank.save(args.out)
    if not args.quiet:
        print(
            f"{bank.k} centroids from {int(bank.class_counts.sum())} images of {len(bank.classes)} classes "
            f"→ {args.out} (embedder {bank.embedder}, reference digest {bank.reference_digest[:12]})"
        )
    return 0


def _cmd_run(args) -> int:
    from .config import RunConfig
    from .pipeline import run_pipeline

    tile_cfg = _tile_config(args)
    run_cfg = RunConfig(
        budget=args.budget,
        budget_count=args.budget_count,
        k=args.k,
        embedder=args.embedder,
        nir_view=args.nir_view,
        method=args.method,
        seed=args.seed,
        chunk=args.chunk,
        export_tiles=args.export_tiles,
        dedup_cosine=args.dedup_cosine,
        max_per_place=args.max_per_place,
        place_iou=args.place_iou,
    )
    catalog, counts = run_pipeline(
        args.inputs, args.out, args.reference, tile_cfg, run_cfg, scheduler=args.scheduler, progress=not args.quiet
    )
    if not args.quiet:
        from .status import DUPLICATE, pruned_counts

        print(f"{counts['tiles']} tiles → {args.out}/catalog.parquet ({args.method}):")
        for stage, n in pruned_counts(catalog).items():
            if stage == DUPLICATE and not run_cfg.removes_copies:
                continue
            kinds = ", ".join(f"{counts[k]} {k}" for k in counts if k.endswith(" copies")) if stage == DUPLICATE else ""
            print(f"  pruned by {stage:<9} {n:>8}" + (f"  ({kinds})" if kinds else ""))
        print(f"  kept               {counts['selected']:>8}")
    return 0


def _cmd_map(args) -> int:
    from pathlib import Path

    from .catalog import read_catalog
    from .tile_table import require_tile_table
    from .viz import write_map_html

    src = Path(args.run_dir)
    src = src / "catalog.parquet" if src.is_dir() else src
    if not src.exists():
        raise RSGeoPruneError(f"{src}: no catalog here; give a run directory made by `rsgeo-prune run`")
    catalog = read_catalog(src)
    require_tile_table(catalog, str(src))
    write_map_html(catalog, args.out, color_by=args.color_by, title=f"rsgeo_prune: {src}")
    placed = int(catalog.geometry.notna().sum())
    unplaced = f" ({len(catalog) - placed} without a location left out)" if placed < len(catalog) else ""
    print(f"{placed} tiles mapped → {args.out}{unplaced}")
    return 0


def _cmd_report(args) -> int:
    from .viz import write_report

    classes = None
    if args.labels:
        import pandas as pd

        try:
            labels = pd.read_csv(args.labels)
            classes = labels.set_index("tile_id")["class"]
        except (OSError, KeyError, ValueError) as exc:
            raise RSGeoPruneError(f"{args.labels}: need a CSV with tile_id and class columns ({exc})") from exc
    write_report(args.run_dir, args.out, classes=classes, seed=args.seed)
    print(f"report → {args.out}")
    return 0


def _cmd_training(args) -> int:
    """train-vae, encode, train-dit, sample: run functions beside their code in ``rsgeo_prune.train``, whose
    errors and Ctrl-C are one line naming the command (``rsgeo-prune train-vae: …``), as under ``python -m``."""
    from .train.commands import run_command

    return run_command(args.command, args.run, args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except RSGeoPruneError as exc:  # the library names the value; one_line adds an option's flag
        print(f"rsgeo-prune: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # every output is written atomically: what finished is kept, and a rerun resumes from it
        print("rsgeo-prune: interrupted; finished stages are kept, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
