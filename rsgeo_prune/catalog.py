"""Catalog files: the GeoParquet 1.1 tile table and the embeddings table (the column contract: docs/catalog.md).

* ``catalog.parquet`` — one row per tile, the columns of docs/catalog.md, GeoParquet 1.1 (``geo`` metadata
  version 1.1.0, WKB geometry in EPSG:4326 with counter-clockwise rings, a ``bbox`` covering
  column, zstd; an empty table too). Run catalogs are in a spatial order: the Hilbert index
  (level 16, over the whole EPSG:4326 world, so that adding a scene never reorders the others) of
  each footprint's centre, then ``tile_id``; tiles without a location come last. The file
  metadata key ``rsgeo_prune`` holds the package version, the full config and the centroid-bank
  digest.
* ``href`` (the source raster or image of each tile) is written relative to the folder that holds
  the file, so a run folder moved together with its inputs (keeping their relative position) still
  resolves; :func:`read_catalog` turns it back into an absolute path (absolute hrefs of older files
  are read as they are).
* ``datetime``, ``start_datetime``, ``end_datetime`` (timestamp, UTC) and ``datetime_source``
  (string): each tile's acquisition time and where it came from (docs/stac.md).
* ``embeddings.parquet`` — ``tile_id`` and a fixed-size list of float32 per tile.

Tile tables written by ``rsgeo-prune tiles``/``entropy`` keep the grid order (scene by scene,
row-major). Every writer is atomic (temporary file, then rename).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import atomic_output
from .errors import RSGeoPruneError

#: Column order of the catalog (docs/catalog.md); columns a stage has not computed yet are left out.
CATALOG_COLUMNS = (
    "tile_id",
    "scene_id",
    "href",
    "row_off",
    "col_off",
    "height",
    "width",
    "crs",
    "transform",
    "geometry",
    "gsd",
    "bands",
    "dtype",
    "datetime",
    "start_datetime",
    "end_datetime",
    "datetime_source",
    "nodata_frac",
    "urban_frac",
    "entropy",
    "entropy_bands",
    "cluster",
    "similarity",
    "kept",
    "pruned_by",
    "duplicate_of",
    "rank",
)
METADATA_KEY = b"rsgeo_prune"
WORLD = (-180.0, -90.0, 180.0, 90.0)


def to_geodataframe(table: pd.DataFrame) -> gpd.GeoDataFrame:
    """Order the columns as the contract says and attach the EPSG:4326 geometry."""
    cols = [c for c in CATALOG_COLUMNS if c in table.columns]
    cols += [c for c in table.columns if c not in cols]
    return gpd.GeoDataFrame(table[cols].reset_index(drop=True), geometry="geometry", crs="EPSG:4326")


def spatial_order(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Rows by Hilbert index of the footprint centre (world bounds, level 16), then ``tile_id``."""
    placed = gdf.geometry.notna() & ~gdf.geometry.is_empty
    h = np.full(len(gdf), np.iinfo(np.int64).max, np.int64)
    if placed.any():
        b = gdf.geometry[placed].bounds  # the bbox centre: no planar centroid of lon/lat polygons
        centres = gpd.GeoSeries(gpd.points_from_xy((b.minx + b.maxx) / 2, (b.miny + b.maxy) / 2), crs=gdf.crs)
        h[placed.to_numpy()] = centres.hilbert_distance(total_bounds=WORLD, level=16).to_numpy()
    order = np.lexsort((gdf["tile_id"].to_numpy().astype(str), h))
    return gdf.iloc[order].reset_index(drop=True)


def write_geoparquet(table: pd.DataFrame, path: str | Path, *, metadata: dict | None = None) -> Path:
    """Write a tile table as GeoParquet 1.1 (WKB, bbox covering column, zstd), atomically.

    Polygon rings are written counter-clockwise (exterior; holes clockwise), as RFC 7946 and the
    GeoParquet spec recommend, and the ``geo`` metadata says so (``orientation``). An empty table
    is still GeoParquet (``geo`` metadata, WKB geometry column). ``metadata`` (JSON-serialisable)
    is stored under the file-level key ``rsgeo_prune``. ``href`` is written relative to the file's
    folder (see the module doc).
    """
    from geopandas.io.arrow import _geopandas_to_arrow  # the table geopandas' own to_parquet writes

    gdf = _oriented(table if isinstance(table, gpd.GeoDataFrame) else to_geodataframe(table))
    if "href" in gdf:
        gdf["href"] = relative_hrefs(gdf["href"], Path(path).parent)
    arrow = _geopandas_to_arrow(
        gdf, index=False, geometry_encoding="WKB", schema_version="1.1.0", write_covering_bbox=True
    )
    meta = dict(arrow.schema.metadata or {})
    geo = json.loads(meta[b"geo"])
    geo["columns"][geo["primary_column"]]["orientation"] = "counterclockwise"
    meta[b"geo"] = json.dumps(geo).encode()
    if metadata is not None:
        meta[METADATA_KEY] = json.dumps(metadata, sort_keys=True, default=str).encode()
    arrow = arrow.replace_schema_metadata(meta)
    with atomic_output(path) as tmp:
        pq.write_table(arrow, tmp, compression="zstd")
    return Path(path)


def _oriented(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """A copy with counter-clockwise exterior rings (tables read from older files may be clockwise)."""
    import shapely

    out = gdf.copy()
    out[gdf.geometry.name] = gpd.GeoSeries(
        shapely.orient_polygons(gdf.geometry.to_numpy()), index=gdf.index, crs=gdf.crs
    )
    return out


def write_catalog(
    table: pd.DataFrame, path: str | Path, *, config: dict, bank_digest: str | None = None, copies: dict | None = None
) -> Path:
    """The run catalog: spatial row order and file metadata (version, config, bank digest, and the
    copies skipped by kind when the selection removed copies)."""
    gdf = spatial_order(table if isinstance(table, gpd.GeoDataFrame) else to_geodataframe(table))
    metadata = {"version": _package_version(), "config": config, "centroid_bank_digest": bank_digest}
    if copies is not None:
        metadata["copies"] = copies
    return write_geoparquet(gdf, path, metadata=metadata)


def _package_version() -> str:
    # As rsgeo_prune.__version__; no stage imports the package root (the import rule), so it is read here.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rsgeo_prune")
    except PackageNotFoundError:
        return "0+unknown"


def read_catalog(path: str | Path) -> gpd.GeoDataFrame:
    """Read a catalog written by :func:`write_geoparquet` (or any GeoParquet tile table), with
    ``href`` resolved against the file's folder (absolute hrefs stay as they are)."""
    try:
        gdf = gpd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for missing or bad files
        raise RSGeoPruneError(f"{path}: not a readable GeoParquet catalog ({exc}); rerun `rsgeo-prune tiles`") from exc
    if "href" in gdf:
        gdf["href"] = absolute_hrefs(gdf["href"], Path(path).parent)
    return gdf


def relative_hrefs(hrefs: pd.Series, folder: Path) -> pd.Series:
    """``hrefs`` (absolute, or relative to the working directory) relative to ``folder``, POSIX style.

    Both sides are taken with symbolic links resolved, so that :func:`absolute_hrefs` of the result
    from the same folder gives each href back exactly.
    """
    base = os.path.realpath(folder)
    values = hrefs.astype(object).to_numpy()
    distinct = {
        h: Path(os.path.relpath(os.path.realpath(h), base)).as_posix() for h in set(values) if isinstance(h, str)
    }
    return pd.Series([distinct.get(h, h) for h in values], index=hrefs.index, dtype=hrefs.dtype)


def absolute_hrefs(hrefs: pd.Series, folder: Path) -> pd.Series:
    """Relative ``hrefs`` resolved against ``folder``; absolute ones (files from before relative
    hrefs) as they are."""
    base = os.path.realpath(folder)
    values = hrefs.astype(object).to_numpy()
    distinct = {h: os.path.normpath(os.path.join(base, h)) for h in set(values) if isinstance(h, str)}
    return pd.Series([distinct.get(h, h) for h in values], index=hrefs.index, dtype=hrefs.dtype)


def catalog_metadata(path: str | Path) -> dict:
    """The ``rsgeo_prune`` file metadata of a catalog (``{}`` if absent)."""
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else {}


def write_embeddings(
    tile_id,
    embeddings: np.ndarray,
    path: str | Path,
    *,
    source=None,
    pixel_digest=None,
    metadata: dict[bytes, bytes] | None = None,
) -> Path:
    """``tile_id`` + ``embedding`` (fixed-size list of float32) [+ ``source``] [+ ``pixel_digest``,
    nullable], zstd, atomically."""
    z = np.ascontiguousarray(embeddings, np.float32)
    values = pa.array(z.reshape(-1), pa.float32())
    columns = {
        "tile_id": pa.array(list(map(str, tile_id)), pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(values, z.shape[1] if z.ndim == 2 else 0),
    }
    if source is not None:  # identity of the file each tile was read from (reuse across runs)
        columns["source"] = pa.array(list(map(str, source)), pa.string())
    if pixel_digest is not None:  # sha256 of the tile's levels (exact copies), null where not computed
        columns["pixel_digest"] = pa.array(list(pixel_digest), pa.string())
    table = pa.table(columns).replace_schema_metadata(metadata)
    with atomic_output(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return Path(path)


def read_embeddings(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(tile_id (N,) str, embeddings (N, D) float32)`` from :func:`write_embeddings`."""
    table = pq.read_table(path)
    col = table.column("embedding").combine_chunks()
    d = col.type.list_size
    z = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, d)
    return np.asarray(table.column("tile_id").to_pylist(), dtype=object), z
