"""The tile grid of a raster, in the raster's own CRS.

A tile is a window ``(row_off, col_off, height, width)`` in pixels. For each tile this module gives
its id, its own affine transform, its footprint (a polygon in the raster CRS for exact area work,
and in EPSG:4326 for the catalog, with densified edges so that reprojection stays faithful), and the
fraction of its pixels that are nodata.
"""

from __future__ import annotations

import logging
import math

import dask.array as dsa
import numba
import numpy as np
import pandas as pd
import shapely
from pyproj import Transformer

from .acquisition import UNKNOWN, time_columns
from .errors import InvalidOption, RSGeoPruneError
from .sources import RasterScene, dataset_mask_of_chunk, decode_errors, gsd_metres, open_raster

log = logging.getLogger(__name__)

#: Footprint edges are split into this many segments before reprojection to EPSG:4326.
DENSIFY_SEGMENTS = 16
#: Version of the values this module puts in a tile table for a given input. Bumped when they
#: change (2: NaN is nodata without a declared nodata value, ``gsd`` in metres, counter-clockwise
#: footprints; 3: the acquisition time columns), so that a run directory's cached tile table can be
#: keyed on it.
TILE_TABLE_VERSION = 3


def tile_offsets(
    scene: RasterScene, tile_size: int = 256, stride: int | None = None, partial: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Tile windows of a scene as arrays ``(row_off, col_off, height, width)``, row-major.

    Args:
        tile_size: tile edge in pixels.
        stride: step between tile origins in pixels (default ``tile_size``: no overlap, no gap).
        partial: keep the clipped tiles at the right and bottom edges (default: full tiles only;
            the dropped ones are counted in the log).
    """
    stride = tile_size if stride is None else stride
    if tile_size <= 0 or stride <= 0:
        raise InvalidOption(
            "tile_size", tile_size, f"tile size and stride ({stride}) must be positive pixel counts (e.g. 256)"
        )
    if not partial and (scene.height < tile_size or scene.width < tile_size):
        raise RSGeoPruneError(
            f"{scene.href}: raster is {scene.width}x{scene.height} px, smaller than one {tile_size}-px tile; "
            "use a smaller --tile-size or --partial"
        )

    def starts(extent: int) -> tuple[np.ndarray, int]:
        every = np.arange(0, extent, stride)
        full = every[every + tile_size <= extent]
        return (every if partial else full), len(every) - len(full)

    rows, drop_r = starts(scene.height)
    cols, drop_c = starts(scene.width)
    if not partial and (drop_r or drop_c):
        dropped = len(rows) * drop_c + drop_r * (len(cols) + drop_c)
        log.info("%s: %d partial edge tiles dropped (pass --partial to keep them)", scene.scene_id, dropped)
    r, c = np.meshgrid(rows, cols, indexing="ij")
    r, c = r.ravel(), c.ravel()
    h = np.minimum(tile_size, scene.height - r)
    w = np.minimum(tile_size, scene.width - c)
    return r, c, h, w


def tile_transforms(scene: RasterScene, row_off: np.ndarray, col_off: np.ndarray) -> np.ndarray:
    """Each tile's own affine transform, ``(N, 6)`` as ``(a, b, c, d, e, f)`` (rasterio order)."""
    t = scene.transform
    out = np.empty((len(row_off), 6))
    out[:, 0], out[:, 1], out[:, 3], out[:, 4] = t.a, t.b, t.d, t.e
    out[:, 2] = t.c + t.a * col_off + t.b * row_off
    out[:, 5] = t.f + t.d * col_off + t.e * row_off
    return out


def tile_polygons(scene: RasterScene, row_off, col_off, height, width) -> np.ndarray:
    """Tile footprints in the raster CRS as a shapely array (exact: four corners, any rotation)."""
    t = scene.transform
    cols = np.stack([col_off, col_off + width, col_off + width, col_off, col_off], axis=1).astype(float)
    rows = np.stack([row_off, row_off, row_off + height, row_off + height, row_off], axis=1).astype(float)
    x = t.a * cols + t.b * rows + t.c
    y = t.d * cols + t.e * rows + t.f
    # Corners in pixel order run clockwise on a north-up grid; RFC 7946 and GeoParquet want
    # counter-clockwise exterior rings (and a flipped or rotated grid may give either).
    return shapely.orient_polygons(shapely.polygons(np.stack([x, y], axis=-1)))


def to_wgs84(polygons: np.ndarray, crs, segment_length: float) -> np.ndarray:
    """Reproject polygons to EPSG:4326 after splitting edges into pieces of ``segment_length``.

    Straight edges in a projected CRS are curves in longitude/latitude; densifying first keeps the
    footprint faithful (the error shrinks with the square of the segment length).
    """
    dense = shapely.segmentize(polygons, segment_length)
    transformer = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    wgs84 = shapely.transform(dense, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1])))
    return shapely.orient_polygons(wgs84)  # a CRS with a flipped axis would turn the rings around


def tile_grid(
    scene: RasterScene, tile_size: int = 256, stride: int | None = None, partial: bool = False
) -> tuple[pd.DataFrame, np.ndarray]:
    """The tile table of one scene.

    Returns:
        ``(table, native)``: a DataFrame with the catalog columns ``tile_id, scene_id, href, row_off,
        col_off, height, width, crs, transform, gsd, bands, dtype, datetime, start_datetime,
        end_datetime, datetime_source, geometry`` (geometry in EPSG:4326, counter-clockwise rings;
        ``gsd`` in metres, see :func:`tile_gsd`; the scene's acquisition time on every tile) and the
        tile polygons in the raster CRS (shapely array, same order) for area work.
    """
    r, c, h, w = tile_offsets(scene, tile_size, stride, partial)
    native = tile_polygons(scene, r, c, h, w)
    geometry = to_wgs84(native, scene.crs, scene.pixel_size * tile_size / DENSIFY_SEGMENTS)
    table = pd.DataFrame(
        {
            "tile_id": [f"{scene.scene_id}/{a}_{b}" for a, b in zip(r.tolist(), c.tolist())],
            "scene_id": scene.scene_id,
            "href": scene.href,
            "row_off": r.astype(np.int64),
            "col_off": c.astype(np.int64),
            "height": h.astype(np.int64),
            "width": w.astype(np.int64),
            "crs": scene.crs_string,
            "transform": list(tile_transforms(scene, r, c)),
            "gsd": tile_gsd(scene, native),
            "bands": scene.count,
            "dtype": scene.dtype,
            **time_columns([scene.acquired] * len(r)),
            "geometry": geometry,
        }
    )
    return table, native


def tile_gsd(scene: RasterScene, native: np.ndarray) -> np.ndarray:
    """Ground sample distance of each tile in metres, ``(N,)`` float64.

    Projected CRSs: the pixel size converted from the CRS unit (feet, metres) to metres, the same
    for every tile. Geographic CRSs: the pixel's ground area at the tile's centre latitude, so tiles
    nearer a pole get their own, smaller value. See :func:`rsgeo_prune.sources.gsd_metres`.
    """
    b = shapely.bounds(native)
    return np.asarray(gsd_metres(scene.crs, abs(scene.transform.determinant), (b[:, 1] + b[:, 3]) / 2), np.float64)


@numba.njit(cache=True, nogil=True)
def _invalid_cell_counts(block, nodata, nan_is_nodata, cell):  # pragma: no cover - compiled
    # One pass over the pixels; band 0 decides for almost every pixel, so the inner loop reads
    # memory contiguously. nogil lets the dask threads run it in parallel.
    nb, h, w = block.shape
    out = np.zeros(((h + cell - 1) // cell, (w + cell - 1) // cell), np.int32)
    for y in range(h):
        cy = y // cell
        for x in range(w):
            bad = True
            for b in range(nb):
                v = block[b, y, x]
                if not (v == nodata or (nan_is_nodata and v != v)):
                    bad = False
                    break
            if bad:
                out[cy, x // cell] += 1
    return out


def _cell_counts(block: np.ndarray, nodata: float | None, cell: int) -> np.ndarray:
    """Invalid-pixel counts per ``cell x cell`` cell of one ``(C, H, W)`` chunk (last cells may be clipped)."""
    floating = np.issubdtype(block.dtype, np.floating)
    if not floating:
        info = np.iinfo(block.dtype)
        if nodata is None or nodata != int(nodata) or not info.min <= nodata <= info.max:
            return np.zeros(((block.shape[1] + cell - 1) // cell, (block.shape[2] + cell - 1) // cell), np.int32)
    value = block.dtype.type(np.nan if nodata is None else nodata)
    return _invalid_cell_counts(block, value, floating, cell)


def _sum_cells(bad: np.ndarray, cell: int) -> np.ndarray:
    """Counts of true pixels per ``cell x cell`` cell of a 2-D mask (the last cells may be clipped)."""
    bad = bad.astype(np.int32)
    rs = np.arange(0, bad.shape[0], cell)
    cs = np.arange(0, bad.shape[1], cell)
    return np.add.reduceat(np.add.reduceat(bad, rs, axis=0), cs, axis=1)


def _mask_cell_counts(block: np.ndarray, href: str, cell: int, block_info=None) -> np.ndarray:
    """Like :func:`_cell_counts` but from the file's per-dataset mask band (0 = nodata); a float
    pixel that is NaN in every band is nodata too (GDAL's mask does not see NaN without a nodata)."""
    bad = ~dataset_mask_of_chunk(href, block_info)
    if np.issubdtype(block.dtype, np.floating):
        bad |= np.isnan(block).all(axis=0)
    return _sum_cells(bad, cell)


def nodata_fraction(
    scene: RasterScene, row_off, col_off, height, width, *, tile_size: int = 256, stride: int | None = None
) -> np.ndarray:
    """Fraction of each tile's pixels that are nodata, ``(N,)`` float64 in [0, 1].

    A pixel is nodata when every band is nodata, a band being nodata where it equals the nodata
    value or is NaN (so a float pixel that is NaN in every band is nodata with or without a
    declared nodata value, and one that is NaN in some bands only is not); for files without a
    nodata value, also where the per-dataset mask band says so. Integer rasters with neither have
    no nodata. The same rule as :func:`rsgeo_prune.pixels.valid_pixels`.

    Exact for any stride: chunks hold whole tiles, so each chunk is reduced to invalid-pixel counts
    on a grid of ``g x g`` cells with ``g = gcd(tile_size, stride)`` (tile origins and edges fall on
    cell borders), and each tile sums its cells through a summed-area table. Only the cell grid
    (1/g² of the pixels) is ever in memory.
    """
    n = len(row_off)
    floating = np.issubdtype(np.dtype(scene.dtype), np.floating)
    if scene.nodata is None and not scene.has_mask and not floating:
        return np.zeros(n)
    stride = tile_size if stride is None else stride
    cell = math.gcd(tile_size, stride)
    da = open_raster(scene, tile_size)
    data = da.data
    out_chunks = tuple(tuple(math.ceil(c / cell) for c in ch) for ch in data.chunks[1:])
    if scene.nodata is None and scene.has_mask:
        counts = dsa.map_blocks(
            _mask_cell_counts, data, scene.href, cell, drop_axis=0, chunks=out_chunks, dtype=np.int32
        )
    else:  # a nodata value, or NaN alone (float rasters without one)
        counts = dsa.map_blocks(_cell_counts, data, scene.nodata, cell, drop_axis=0, chunks=out_chunks, dtype=np.int32)
    with decode_errors(scene.href):
        cells = counts.compute()
    return window_sums(cells, cell, row_off, col_off, height, width) / (height * width).astype(np.float64)


def window_sums(cells: np.ndarray, cell: int, row_off, col_off, height, width) -> np.ndarray:
    """Sum per tile window of a grid of per-cell values ``(ny, nx, ...)`` (cells of ``cell`` px).

    Window edges lie on cell borders, or on the raster's edge (the last, clipped cell). Where every
    window is one cell the cells are the answer; otherwise a summed-area table gives each window in
    four look-ups.
    """
    r0, c0 = row_off // cell, col_off // cell
    r1 = np.minimum(-(-(row_off + height) // cell), cells.shape[0])
    c1 = np.minimum(-(-(col_off + width) // cell), cells.shape[1])
    if np.all(r1 - r0 == 1) and np.all(c1 - c0 == 1):
        return cells[r0, c0]
    sat = np.zeros((cells.shape[0] + 1, cells.shape[1] + 1) + cells.shape[2:], np.int64)
    sat[1:, 1:] = cells.cumsum(0).cumsum(1)
    return sat[r1, c1] - sat[r0, c1] - sat[r1, c0] + sat[r0, c0]


def collection_grid(coll) -> pd.DataFrame:
    """The tile table of an image collection: one tile per image, located by its manifest point.

    ``tile_id`` is ``<collection>/<image path without suffix>/0_0``; ``geometry`` is the image's
    lon/lat point (EPSG:4326) or null when the manifest does not place it; ``href`` is the image;
    the acquisition time columns are the image's (manifest, else file name).
    """
    import shapely as _shp

    from .sources import image_size

    root = coll.root
    sizes = [image_size(f"{root}/{p}") for p in coll.images]
    located = np.isfinite(coll.lon) & np.isfinite(coll.lat)
    points = np.full(len(coll.images), None, dtype=object)
    points[located] = _shp.points(coll.lon[located], coll.lat[located])
    stems = [p.rsplit(".", 1)[0] for p in coll.images]
    return pd.DataFrame(
        {
            "tile_id": [f"{coll.collection_id}/{s}/0_0" for s in stems],
            "scene_id": [f"{coll.collection_id}/{s}" for s in stems],
            "href": [f"{root}/{p}" for p in coll.images],
            "row_off": np.zeros(len(stems), np.int64),
            "col_off": np.zeros(len(stems), np.int64),
            "height": np.array([s[1] for s in sizes], np.int64),
            "width": np.array([s[2] for s in sizes], np.int64),
            "crs": np.where(located, "EPSG:4326", None),
            "transform": [None] * len(stems),
            "gsd": np.nan,
            "bands": np.array([s[0] for s in sizes], np.int64),
            "dtype": [s[3] for s in sizes],
            **time_columns(coll.acquired or [UNKNOWN] * len(stems)),
            "geometry": points,
        }
    )
