"""The stages, run in order over all inputs.

Today: tiles → nodata fraction → urban fraction → pre-filters (``tiles_stage``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import shapely
from tqdm.auto import tqdm

from .catalog import to_geodataframe
from .errors import RSGeoPruneError
from .masks import mask_filter, polygons_in_crs, read_vector, urban_fraction
from .sources import ImageCollection, RasterScene, resolve_inputs
from .tiling import collection_grid, nodata_fraction, tile_grid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileConfig:
    """Options of the tiling stage (defaults are the CLI's)."""

    tile_size: int = 256
    stride: int | None = None
    partial: bool = False
    mask: str | None = None
    min_urban: float | None = None
    max_nodata: float = 0.5
    nodata: float | None = None

    def __post_init__(self):
        if self.tile_size <= 0 or (self.stride is not None and self.stride <= 0):
            raise RSGeoPruneError(
                f"--tile-size {self.tile_size} and --stride {self.stride} must be positive pixel counts (e.g. 256)")
        # Validate the filter options now, before hours of tiling, with the filter's own checks.
        mask_filter(np.zeros(0), np.zeros(0) if self.mask else None, max_nodata=self.max_nodata,
                    min_urban=self.min_urban)

    def as_dict(self) -> dict:
        return asdict(self)


def _scene_tiles(scene: RasterScene, cfg: TileConfig, urban_polys) -> pd.DataFrame:
    table, native = tile_grid(scene, cfg.tile_size, cfg.stride, cfg.partial)
    r, c, h, w = (table[k].to_numpy() for k in ("row_off", "col_off", "height", "width"))
    table["nodata_frac"] = nodata_fraction(scene, r, c, h, w, tile_size=cfg.tile_size, stride=cfg.stride)
    if urban_polys is not None:
        table["urban_frac"] = urban_fraction(native, urban_polys(scene.crs, shapely.total_bounds(native)))
    return table


def _collection_tiles(coll: ImageCollection, urban_polys) -> pd.DataFrame:
    table = collection_grid(coll)
    table["nodata_frac"] = 0.0  # plain images carry no nodata
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


def tiles_stage(inputs: Sequence[str | Path], cfg: TileConfig = TileConfig(), *, progress: bool = True):
    """Tile every input, measure nodata and urban fractions, and apply the pre-filters.

    Returns:
        GeoDataFrame (EPSG:4326) with the catalog columns known at this stage, ``kept`` and
        ``pruned_by`` (``"nodata"``, ``"mask"`` or null).
    """
    sources = resolve_inputs(inputs, nodata=cfg.nodata)
    urban_polys = None
    if cfg.mask:
        vector = read_vector(cfg.mask)

        def urban_polys(crs, bounds):
            return polygons_in_crs(vector, crs, bounds)

    tables = []
    # disable=None: a bar only on a terminal, so logs and captured stderr stay clean
    for src in tqdm(sources, desc="tiling", unit="scene", disable=None if progress else True):
        if isinstance(src, RasterScene):
            tables.append(_scene_tiles(src, cfg, urban_polys))
        else:
            tables.append(_collection_tiles(src, urban_polys))
    table = pd.concat(tables, ignore_index=True)
    if "urban_frac" not in table:
        table["urban_frac"] = np.nan
    why = mask_filter(table["nodata_frac"].to_numpy(), table["urban_frac"].to_numpy() if cfg.mask else None,
                      max_nodata=cfg.max_nodata, min_urban=cfg.min_urban)
    table["kept"] = pd.isna(why)
    table["pruned_by"] = pd.array(why, dtype="string")
    counts = pd.Series(why).value_counts()
    log.info("tiles: %d in total, %d pruned by nodata, %d by mask, %d kept", len(table),
             counts.get("nodata", 0), counts.get("mask", 0), int(table["kept"].sum()))
    return to_geodataframe(table)
