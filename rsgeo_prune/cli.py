"""The ``rsgeo-prune`` command.

Errors from bad input print one line on stderr (the file and the fix) and exit with code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from . import __version__
from .errors import RSGeoPruneError


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
    g.add_argument("--stride", type=int, default=None, metavar="N",
                   help="step between tile origins in pixels (default: the tile size, i.e. no overlap)")
    g.add_argument("--partial", action="store_true",
                   help="keep clipped tiles at the right/bottom edges (default: full tiles only; the dropped "
                        "ones are counted in the log)")
    g.add_argument("--nodata", type=float, default=None, metavar="V",
                   help="nodata value for rasters that declare none (NAIP quarter-quads use 0); a file's own "
                        "nodata always wins")
    f = p.add_argument_group("pre-filters")
    f.add_argument("--max-nodata", type=_fraction, default=0.5, metavar="F",
                   help="prune tiles whose nodata fraction exceeds F (pruned_by='nodata')")
    f.add_argument("--mask", default=None, metavar="VECTOR",
                   help="urban-boundary polygons (GeoPackage, Shapefile, GeoJSON, GeoParquet; any CRS, "
                        "reprojected to each raster's CRS); adds the urban_frac column")
    f.add_argument("--min-urban", type=_fraction, default=None, metavar="F",
                   help="prune tiles whose urban fraction is below F (pruned_by='mask'); needs --mask; "
                        "default: off")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rsgeo-prune", formatter_class=_Formatter,
        description="Curate remote-sensing tile corpora for diffusion training (RS-Prune).\n\n"
                    "Stages: tiles (grid, nodata and urban fractions, pre-filters) → entropy (Stage I) → "
                    "embed/assign/select (Stage II) → catalog (GeoParquet + STAC).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tiles = sub.add_parser(
        "tiles", formatter_class=_Formatter,
        help="tile rasters or image folders into a GeoParquet tile table",
        description="Tile rasters (GeoTIFF/COG paths, globs, or STAC Item JSON) or image folders (one image = "
                    "one tile, optional manifest.csv/.parquet with lon/lat) and write a GeoParquet 1.1 table "
                    "with one row per tile: tile_id, window, transform, EPSG:4326 footprint, gsd, bands, "
                    "nodata_frac, urban_frac, kept, pruned_by ('nodata', 'mask' or null).")
    tiles.add_argument("inputs", nargs="+", metavar="RASTER",
                       help="raster file, quoted glob, STAC Item .json, or image folder")
    tiles.add_argument("--out", required=True, metavar="PATH", help="output GeoParquet file (written atomically)")
    _add_tile_options(tiles)
    _add_entropy_options(tiles)
    tiles.add_argument("--quiet", action="store_true", help="no progress bar or summary")

    ent = sub.add_parser(
        "entropy", formatter_class=_Formatter,
        help="Stage I: add grayscale and per-band entropy to a tile table, optionally filter",
        description="Re-read the rasters of a tile table made by `rsgeo-prune tiles` and add `entropy` (bits, "
                    "256-level grayscale: BT.601 luma of bands 1-3) and `entropy_bands` (per band). Nodata pixels "
                    "are left out; uint16/float rasters are stretched to 256 levels per scene (2nd-98th "
                    "percentile). With a filter, pruned tiles get pruned_by='entropy'.")
    ent.add_argument("table", metavar="TILES.parquet", help="tile table from `rsgeo-prune tiles`")
    ent.add_argument("--out", required=True, metavar="PATH", help="output GeoParquet file (written atomically)")
    ent.add_argument("--nodata", type=float, default=None, metavar="V",
                     help="nodata value for rasters that declare none (as given to `tiles`)")
    _add_entropy_options(ent)
    ent.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return parser


def _add_entropy_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Stage I (entropy)").add_mutually_exclusive_group()
    g.add_argument("--entropy-min", type=float, default=None, metavar="TAU",
                   help="keep tiles whose grayscale entropy is >= TAU bits (0-8); default: off")
    g.add_argument("--entropy-keep", type=_fraction, default=None, metavar="P",
                   help="keep exactly round(P x N) of the N tiles still kept, those with the highest entropy "
                        "(ties by tile_id; the paper keeps 0.3); default: off")


def _cmd_tiles(args) -> int:
    from .atomic import check_writable
    from .catalog import write_geoparquet
    from .pipeline import TileConfig, tiles_stage

    cfg = TileConfig(tile_size=args.tile_size, stride=args.stride, partial=args.partial, mask=args.mask,
                     min_urban=args.min_urban, max_nodata=args.max_nodata, nodata=args.nodata,
                     entropy_min=args.entropy_min, entropy_keep=args.entropy_keep)
    check_writable(args.out)
    table = tiles_stage(args.inputs, cfg, progress=not args.quiet)
    write_geoparquet(table, args.out)
    if not args.quiet:
        print(_summary(table, args.out))
    return 0


def _summary(table, out) -> str:
    why = table["pruned_by"].value_counts()
    parts = [f"{int(why.get(k, 0))} pruned by {k}" for k in ("nodata", "mask", "entropy") if k in why or k != "entropy"]
    return f"{len(table)} tiles → {out}: {int(table['kept'].sum())} kept, " + ", ".join(parts)


def _cmd_entropy(args) -> int:
    from .atomic import check_writable
    from .catalog import read_catalog, write_geoparquet
    from .pipeline import entropy_stage

    check_writable(args.out)
    table = entropy_stage(read_catalog(args.table), nodata=args.nodata, entropy_min=args.entropy_min,
                          entropy_keep=args.entropy_keep, progress=not args.quiet)
    write_geoparquet(table, args.out)
    if not args.quiet:
        print(_summary(table, args.out))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return {"tiles": _cmd_tiles, "entropy": _cmd_entropy}[args.command](args)
    except RSGeoPruneError as exc:
        print(f"rsgeo-prune: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
