"""The stages, run in order over all inputs.

Today: tiles → nodata fraction → urban fraction → pre-filters → Stage I entropy (``tiles_stage``),
and Stage I on an existing tile table (``entropy_stage``).
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
from .entropy import entropy_filter, entropy_from_histograms, image_histograms, scene_histograms
from .sources import ImageCollection, RasterScene, describe_raster, resolve_inputs
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
    entropy_min: float | None = None
    entropy_keep: float | None = None

    @property
    def wants_entropy(self) -> bool:
        return self.entropy_min is not None or self.entropy_keep is not None

    def __post_init__(self):
        if self.tile_size <= 0 or (self.stride is not None and self.stride <= 0):
            raise RSGeoPruneError(
                f"--tile-size {self.tile_size} and --stride {self.stride} must be positive pixel counts (e.g. 256)")
        # Validate the filter options now, before hours of tiling, with the filter's own checks.
        mask_filter(np.zeros(0), np.zeros(0) if self.mask else None, max_nodata=self.max_nodata,
                    min_urban=self.min_urban)
        entropy_filter(np.zeros(0), [], np.zeros(0, bool), entropy_min=self.entropy_min,
                       entropy_keep=self.entropy_keep)

    def as_dict(self) -> dict:
        return asdict(self)


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
            tables.append(_collection_tiles(src, urban_polys, cfg.wants_entropy))
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
    if cfg.wants_entropy:
        apply_entropy_filter(table, entropy_min=cfg.entropy_min, entropy_keep=cfg.entropy_keep)
    return to_geodataframe(table)


def set_entropy_columns(table: pd.DataFrame, hist: np.ndarray) -> None:
    """Add ``entropy`` (gray) and ``entropy_bands`` (list per tile) from ``(N, C + 1, 256)`` histograms.

    Tiles without a valid pixel get null in both.
    """
    h = entropy_from_histograms(hist)
    gray = h[:, -1]
    table["entropy"] = pd.array(np.where(np.isnan(gray), None, gray), dtype="Float64")
    table["entropy_bands"] = [None if np.isnan(g) else row[: n].tolist()
                              for g, row, n in zip(gray, h[:, :-1], table["bands"].to_numpy())]


def apply_entropy_filter(table: pd.DataFrame, *, entropy_min=None, entropy_keep=None) -> None:
    """Stage I filter on a tile table in place: candidates are the tiles still ``kept``."""
    entropy = table["entropy"].to_numpy(dtype=np.float64, na_value=np.nan)
    pruned = entropy_filter(entropy, table["tile_id"].to_numpy(), table["kept"].to_numpy(bool),
                            entropy_min=entropy_min, entropy_keep=entropy_keep)
    table.loc[pruned, "kept"] = False
    table.loc[pruned, "pruned_by"] = "entropy"
    log.info("entropy: %d pruned, %d kept", int(pruned.sum()), int(table["kept"].sum()))


def entropy_stage(table: pd.DataFrame, *, nodata: float | None = None, entropy_min=None, entropy_keep=None,
                  progress: bool = True):
    """Add the Stage I columns to a tile table made by :func:`tiles_stage`, re-reading its rasters.

    Raster tiles are grouped by scene and read in one pass per scene; image-collection tiles
    (rows without a ``transform``) are read image by image.
    """
    table = table.copy()
    parts = []
    groups = list(table.groupby("href", sort=False).indices.items())
    for href, idx in tqdm(groups, desc="entropy", unit="scene", disable=None if progress else True):
        rows = table.iloc[idx]
        if rows["transform"].iloc[0] is None:
            parts.append((idx, image_histograms(rows["href"])))
            continue
        scene = describe_raster(href, nodata=nodata, scene_id=rows["scene_id"].iloc[0])
        r, c, h, w = (rows[k].to_numpy() for k in ("row_off", "col_off", "height", "width"))
        parts.append((idx, scene_histograms(scene, r, c, h, w, int(max(h.max(), w.max())))))
    nb = max(p.shape[1] for _, p in parts)
    hist = np.zeros((len(table), nb, 256), np.int64)
    for idx, p in parts:  # scenes with fewer bands: their gray still goes last
        hist[idx, : p.shape[1] - 1] = p[:, :-1]
        hist[idx, -1] = p[:, -1]
    set_entropy_columns(table, hist)
    if entropy_min is not None or entropy_keep is not None:
        apply_entropy_filter(table, entropy_min=entropy_min, entropy_keep=entropy_keep)
    return to_geodataframe(table)
