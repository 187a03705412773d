"""Urban-boundary coverage of tiles: ``urban_frac = area(tile ∩ ∪ polygons) / area(tile)``.

Exact in the raster CRS and vectorised with shapely 2: the polygons are dissolved into disjoint
parts (so overlaps are not counted twice), an STRtree pairs every tile with the parts it touches,
tiles lying inside a part count whole without any clipping, and only the tiles on a boundary are
intersected. No Python loop runs per tile.
"""

from __future__ import annotations

import logging
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely

from .errors import InvalidOption, RSGeoPruneError
from .status import MASK, NODATA

log = logging.getLogger(__name__)


def read_vector(path: str | Path) -> gpd.GeoDataFrame:
    """Read any vector file geopandas reads (GeoPackage, Shapefile, GeoJSON, GeoParquet).

    Raises:
        RSGeoPruneError: unreadable file, no CRS, or no polygons.
    """
    path = Path(path)
    if not path.exists():
        raise InvalidOption("mask", str(path), "no such vector file; check the path")
    try:
        if path.suffix.lower() in (".parquet", ".geoparquet"):
            gdf = gpd.read_parquet(path)
        else:
            gdf = gpd.read_file(path)
    except Exception as exc:  # pyogrio/fiona/pyarrow raise many types for a bad file
        raise RSGeoPruneError(
            f"{path}: not a readable vector file ({exc}); give a GeoPackage, Shapefile, GeoJSON or GeoParquet"
        ) from exc
    if gdf.crs is None:
        raise RSGeoPruneError(
            f"{path}: vector file has no CRS; set one (e.g. `ogr2ogr -a_srs EPSG:4326 fixed.gpkg {path.name}`)"
        )
    polygonal = gdf.geometry.notna() & gdf.geom_type.isin(["Polygon", "MultiPolygon"])
    if not polygonal.any():
        raise RSGeoPruneError(f"{path}: vector file holds no polygons; give urban-boundary polygons")
    return gdf[polygonal]


def dissolve_to_parts(polygons: np.ndarray, extent: shapely.Geometry | None = None) -> np.ndarray:
    """Disjoint polygon parts covering the union of ``polygons`` (clipped to ``extent`` if given)."""
    polygons = shapely.make_valid(np.asarray(polygons))
    if extent is not None:
        polygons = polygons[np.sort(shapely.STRtree(polygons).query(extent, predicate="intersects"))]
        if len(polygons) == 0:
            return np.empty(0, dtype=object)
    union = shapely.union_all(polygons)
    if extent is not None:
        union = shapely.intersection(union, extent)
    parts = shapely.get_parts(union)
    return parts[shapely.get_type_id(parts) == 3]  # polygons only (drop slivers of lower dimension)


def urban_fraction(tiles: np.ndarray, polygons: np.ndarray) -> np.ndarray:
    """Fraction of each tile's area covered by the union of ``polygons``, ``(N,)`` in [0, 1].

    Args:
        tiles: tile footprints (shapely polygons) in the raster CRS.
        polygons: urban polygons already in the same CRS.
    """
    tiles = np.asarray(tiles)
    n = len(tiles)
    if n == 0 or len(polygons) == 0:
        return np.zeros(n)
    extent = shapely.box(*shapely.total_bounds(tiles))
    parts = dissolve_to_parts(polygons, extent)
    if len(parts) == 0:
        return np.zeros(n)
    shapely.prepare(parts)
    tree = shapely.STRtree(parts)
    ti, pi = tree.query(tiles, predicate="intersects")
    tile_area = shapely.area(tiles)
    covered = np.zeros(len(ti))
    inside = shapely.contains(parts[pi], tiles[ti])  # prepared parts: cheap test, no clipping
    covered[inside] = tile_area[ti[inside]]
    edge = ~inside
    covered[edge] = shapely.area(shapely.intersection(tiles[ti[edge]], parts[pi[edge]]))
    frac = np.bincount(ti, weights=covered, minlength=n) / tile_area
    return np.clip(frac, 0.0, 1.0)


def polygons_in_crs(gdf: gpd.GeoDataFrame, crs, bounds: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """The polygons of ``gdf`` reprojected to ``crs`` (a vector in another CRS is reprojected, not rejected).

    With ``bounds`` (in ``crs``), only the polygons near that box are reprojected: a global layer
    such as Natural Earth's urban areas cannot be projected whole into a UTM zone (far-away
    polygons become infinite), and it would be wasted work.
    """
    if bounds is not None:
        from rasterio.warp import transform_bounds

        near = transform_bounds(crs, gdf.crs, *bounds, densify_pts=21)
        gdf = gdf.iloc[np.sort(gdf.sindex.query(shapely.box(*near), predicate="intersects"))]
    if gdf.crs != crs:
        gdf = gdf.to_crs(crs)
    return np.asarray(gdf.geometry.values)


def mask_filter(
    nodata_frac: np.ndarray, urban_frac: np.ndarray | None, *, max_nodata: float = 0.5, min_urban: float | None = None
) -> np.ndarray:
    """Why each tile is pruned by the pre-filters: ``"nodata"``, ``"mask"`` or ``None`` (kept).

    A tile is pruned as ``nodata`` when ``nodata_frac > max_nodata``; otherwise as ``mask`` when
    ``min_urban`` is set and ``urban_frac < min_urban`` (a tile without a location has no urban
    fraction and is pruned by ``min_urban``).
    """
    if not 0.0 <= max_nodata <= 1.0:
        raise InvalidOption("max_nodata", max_nodata, "must lie in [0, 1]")
    why = np.full(len(nodata_frac), None, dtype=object)
    if min_urban is not None:
        if not 0.0 <= min_urban <= 1.0:
            raise InvalidOption("min_urban", min_urban, "must lie in [0, 1]")
        if urban_frac is None:
            raise InvalidOption("min_urban", min_urban, "needs the urban polygons (a mask vector file)")
        urban = np.asarray(urban_frac, dtype=float)
        why[~(urban >= min_urban)] = MASK  # NaN (no location) fails the test too
    why[np.asarray(nodata_frac) > max_nodata] = NODATA
    return why
