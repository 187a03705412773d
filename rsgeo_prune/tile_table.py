"""The tile table: Stage 0 (grid, nodata and urban fractions, pre-filters) and Stage I (entropy).

:func:`tiles_stage` tiles every input into one table; :func:`entropy_stage` (re)computes Stage I
on an existing table. Both return a GeoDataFrame with the catalog columns known at that point.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import shapely
from tqdm.auto import tqdm

from .catalog import to_geodataframe
from .config import TileConfig
from .entropy import entropy_filter, entropy_from_histograms, image_histograms, scene_histograms, stack_histograms
from .errors import RSGeoPruneError
from .masks import mask_filter, polygons_in_crs, read_vector, urban_fraction
from .pixels import is_image_row
from .sources import ImageCollection, RasterScene, describe_raster, resolve_inputs
from .status import ENTROPY, PRE_FILTERS, summary_line
from .tiling import collection_grid, nodata_fraction, tile_grid

log = logging.getLogger(__name__)

TILE_COLUMNS = (
    "tile_id",
    "scene_id",
    "href",
    "row_off",
    "col_off",
    "height",
    "width",
    "transform",
    "bands",
    "kept",
    "pruned_by",
)


def _scene_tiles(scene: RasterScene, cfg: TileConfig, urban_polys) -> pd.DataFrame:
    table, native = tile_grid(scene, cfg.tile_size, cfg.stride, cfg.partial)
    r, c, h, w = (table[k].to_numpy() for k in ("row_off", "col_off", "height", "width"))
    if cfg.wants_entropy:  # one pass over the pixels gives both: valid pixels = gray histogram total
        hist = scene_histograms(scene, r, c, h, w, cfg.tile_size)
        table["nodata_frac"] = 1.0 - hist[:, -1].sum(axis=1) / (h * w)
        set_entropy_columns(table, hist)
    else:
        table["nodata_frac"] = nodata_fraction(scene, r, c, h, w, tile_size=cfg.tile_size, stride=cfg.stride)
    if urban_polys is not None:
        table["urban_frac"] = urban_fraction(native, urban_polys(scene.crs, shapely.total_bounds(native)))
    return table


def _collection_tiles(coll: ImageCollection, urban_polys, with_entropy: bool) -> pd.DataFrame:
    table = collection_grid(coll)
    table["nodata_frac"] = 0.0  # plain images carry no nodata
    if with_entropy:
        set_entropy_columns(table, image_histograms(table["href"]))
    if urban_polys is not None:
        # A point has no area: its urban fraction is 1 inside an urban polygon, 0 outside, NaN unplaced.
        polys = urban_polys("EPSG:4326", None)
        points = table["geometry"].to_numpy()
        frac = np.full(len(points), np.nan)
        placed = np.array([p is not None for p in points], dtype=bool)
        if placed.any():
            tree = shapely.STRtree(polys)
            hit, _ = tree.query(points[placed], predicate="intersects")
            inside = np.zeros(int(placed.sum()))
            inside[np.unique(hit)] = 1.0
            frac[placed] = inside
        table["urban_frac"] = frac
    return table


def tiles_stage(inputs: Sequence[str | Path], cfg: TileConfig = TileConfig(), *, progress: bool = True, sources=None):
    """Tile every input, measure nodata and urban fractions, and apply the pre-filters (and Stage I
    when ``cfg`` asks for it).

    Args:
        inputs: raster paths, globs, STAC Item files or image folders.
        sources: the inputs already resolved by :func:`~rsgeo_prune.sources.resolve_inputs` (a
            caller that validated them first passes them here, so they are resolved once).
    Returns:
        GeoDataFrame (EPSG:4326) with the catalog columns known at this stage, ``kept`` and
        ``pruned_by`` (``"nodata"``, ``"mask"``, ``"entropy"`` or null).
    """
    sources = resolve_inputs(inputs, nodata=cfg.nodata, datetime=cfg.datetime) if sources is None else sources
    urban_polys = _urban_polygons(cfg.mask)
    tables = []
    # disable=None: a bar only on a terminal, so logs and captured stderr stay clean
    for src in tqdm(sources, desc="tiling", unit="scene", disable=None if progress else True):
        if isinstance(src, RasterScene):
            tables.append(_scene_tiles(src, cfg, urban_polys))
        else:
            tables.append(_collection_tiles(src, urban_polys, cfg.wants_entropy))
    table = pd.concat(tables, ignore_index=True)
    if "urban_frac" not in table:
        table["urban_frac"] = np.nan
    _apply_pre_filters(table, cfg)
    if cfg.wants_entropy:
        apply_entropy_filter(table, entropy_min=cfg.entropy_min, entropy_keep=cfg.entropy_keep)
    return to_geodataframe(table)


def _urban_polygons(mask: str | None):
    """``(crs, bounds) -> polygons`` of the urban-boundary file in a scene's CRS, or None."""
    if not mask:
        return None
    vector = read_vector(mask)

    def urban_polys(crs, bounds):
        return polygons_in_crs(vector, crs, bounds)

    return urban_polys


def _apply_pre_filters(table: pd.DataFrame, cfg: TileConfig) -> None:
    why = mask_filter(
        table["nodata_frac"].to_numpy(),
        table["urban_frac"].to_numpy() if cfg.mask else None,
        max_nodata=cfg.max_nodata,
        min_urban=cfg.min_urban,
    )
    table["kept"] = pd.isna(why)
    table["pruned_by"] = pd.array(why, dtype="string")
    log.info("tiles: %d in total, %s", len(table), summary_line(table, reasons=PRE_FILTERS))


def set_entropy_columns(table: pd.DataFrame, hist: np.ndarray) -> None:
    """Add ``entropy`` (gray) and ``entropy_bands`` (list per tile) from ``(N, C + 1, 256)`` histograms.

    Tiles without a valid pixel get null in both.
    """
    h = entropy_from_histograms(hist)
    gray = h[:, -1]
    table["entropy"] = pd.array(np.where(np.isnan(gray), None, gray), dtype="Float64")
    table["entropy_bands"] = [
        None if np.isnan(g) else row[:n].tolist() for g, row, n in zip(gray, h[:, :-1], table["bands"].to_numpy())
    ]


def apply_entropy_filter(table: pd.DataFrame, *, entropy_min=None, entropy_keep=None) -> None:
    """Stage I filter on a tile table in place: candidates are the tiles still ``kept``."""
    entropy = table["entropy"].to_numpy(dtype=np.float64, na_value=np.nan)
    pruned = entropy_filter(
        entropy,
        table["tile_id"].to_numpy(),
        table["kept"].to_numpy(bool),
        entropy_min=entropy_min,
        entropy_keep=entropy_keep,
    )
    table.loc[pruned, "kept"] = False
    table.loc[pruned, "pruned_by"] = ENTROPY
    log.info("entropy: %d pruned, %d kept", int(pruned.sum()), int(table["kept"].sum()))


def entropy_stage(
    table: pd.DataFrame,
    *,
    nodata: float | None = None,
    entropy_min=None,
    entropy_keep=None,
    progress: bool = True,
    source: str = "the table",
):
    """(Re)compute Stage I on a tile table made by :func:`tiles_stage`, re-reading its rasters.

    Stage I starts again from the pre-filters: tiles pruned by an earlier entropy filter (or
    selection, on a catalog) are candidates again, and a catalog's Stage II columns are dropped,
    so the result depends only on the pre-filtered tiles and the new options.

    Raster tiles are grouped by scene and read in one pass per scene; image-collection tiles
    (rows without a ``transform``) are read image by image.
    """
    require_tile_table(table, source)
    TileConfig(nodata=nodata, entropy_min=entropy_min, entropy_keep=entropy_keep)  # validates the values
    table = _reset_after_pre_filters(table.copy())
    parts = []
    groups = list(table.groupby("href", sort=False).indices.items())
    for href, idx in tqdm(groups, desc="entropy", unit="scene", disable=None if progress else True):
        rows = table.iloc[idx]
        if is_image_row(rows.iloc[0]):
            parts.append((idx, image_histograms(rows["href"])))
            continue
        scene = describe_raster(href, nodata=nodata, scene_id=rows["scene_id"].iloc[0])
        r, c, h, w = (rows[k].to_numpy() for k in ("row_off", "col_off", "height", "width"))
        parts.append((idx, scene_histograms(scene, r, c, h, w, int(max(h.max(), w.max())))))
    set_entropy_columns(table, stack_histograms(parts, len(table)))
    if entropy_min is not None or entropy_keep is not None:
        apply_entropy_filter(table, entropy_min=entropy_min, entropy_keep=entropy_keep)
    return to_geodataframe(table)


def require_tile_table(table: pd.DataFrame, source: str) -> None:
    """Fail with one line when ``table`` is not a tile table or catalog (e.g. STAC ``items.parquet``)."""
    missing = [c for c in TILE_COLUMNS if c not in table]
    if missing:
        raise RSGeoPruneError(
            f"{source}: not an rsgeo_prune tile table (no {', '.join(missing[:3])} column); "
            "give the tiles.parquet or catalog.parquet of a run"
        )


def _reset_after_pre_filters(table: pd.DataFrame) -> pd.DataFrame:
    """Every tile that passed the pre-filters is kept again; Stage II columns are dropped."""
    passed = ~table["pruned_by"].astype("string").isin(list(PRE_FILTERS)).fillna(False).to_numpy(bool)
    table["kept"] = passed
    table["pruned_by"] = table["pruned_by"].astype("string").where(~passed, pd.NA)
    return table.drop(columns=[c for c in ("cluster", "similarity", "rank") if c in table])


__all__ = [
    "TILE_COLUMNS",
    "apply_entropy_filter",
    "entropy_stage",
    "require_tile_table",
    "set_entropy_columns",
    "tiles_stage",
]
