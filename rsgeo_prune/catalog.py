"""Catalog files: the GeoParquet 1.1 tile table (see DESIGN.md "Catalog contract").

Every writer is atomic (temporary file, then rename).
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import pandas as pd

from .atomic import atomic_output

#: Column order of the catalog (DESIGN.md); columns a stage has not computed yet are left out.
CATALOG_COLUMNS = (
    "tile_id", "scene_id", "href", "row_off", "col_off", "height", "width", "crs", "transform",
    "geometry", "gsd", "bands", "dtype", "nodata_frac", "urban_frac", "entropy", "entropy_bands",
    "cluster", "similarity", "kept", "pruned_by", "rank",
)


def to_geodataframe(table: pd.DataFrame) -> gpd.GeoDataFrame:
    """Order the columns as the contract says and attach the EPSG:4326 geometry."""
    cols = [c for c in CATALOG_COLUMNS if c in table.columns]
    cols += [c for c in table.columns if c not in cols]
    return gpd.GeoDataFrame(table[cols].reset_index(drop=True), geometry="geometry", crs="EPSG:4326")


def write_geoparquet(table: pd.DataFrame, path: str | Path) -> Path:
    """Write a tile table as GeoParquet 1.1 (WKB, bbox covering column, zstd), atomically."""
    gdf = table if isinstance(table, gpd.GeoDataFrame) else to_geodataframe(table)
    with atomic_output(path) as tmp:
        gdf.to_parquet(tmp, index=False, schema_version="1.1.0", write_covering_bbox=True, compression="zstd")
    return Path(path)


def read_catalog(path: str | Path) -> gpd.GeoDataFrame:
    """Read a catalog written by :func:`write_geoparquet` (or any GeoParquet tile table)."""
    from .errors import RSGeoPruneError

    try:
        return gpd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for missing or bad files
        raise RSGeoPruneError(f"{path}: not a readable GeoParquet catalog ({exc}); rerun `rsgeo-prune tiles`") from exc
