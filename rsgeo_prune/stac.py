"""STAC output of a run: the kept tiles as STAC Items (docs/stac.md).

* ``RUN_DIR/stac/`` — a self-contained static catalog (pystac): one Item per kept tile with its
  footprint geometry and bbox, ``bands`` with ``eo:common_name``, ``rsgeo:entropy``,
  ``rsgeo:cluster``, ``rsgeo:similarity``, ``rsgeo:rank``, and one ``data`` asset. Projection
  extension v2 fields (``proj:code``, ``proj:shape``, ``proj:transform``) describe that asset, and
  ``rsgeo:window`` = ``[col_off, row_off, width, height]`` is the tile within it: without
  ``export_tiles`` the asset is the source raster (its own shape and transform; the window is the
  tile's), with ``export_tiles`` it is the tile's own COG (the window is all of it). Asset hrefs are
  relative to the Item file.
* ``RUN_DIR/items.parquet`` — the same Items as stac-geoparquet, GeoParquet 1.1, zstd (images
  without a location, which STAC allows with a null geometry, are left out of this one: GeoParquet
  needs a geometry); asset hrefs relative to the run folder. With no Item it is still GeoParquet:
  the columns, no rows.
* ``RUN_DIR/tiles/`` — with ``export_tiles``, one COG per kept tile, listed in
  ``tiles/.rsgeo_prune-export.json``. A later write removes the listed COGs its Items no longer
  use (written without ``export_tiles``, or a tile no longer kept), and nothing else in the folder.

Geometries have counter-clockwise exterior rings (RFC 7946).

An Item's time is the tile's acquisition time from the tile table (:mod:`rsgeo_prune.acquisition`):
an instant is ``datetime`` (with ``start_datetime`` and ``end_datetime`` equal to it), a range
(a date without a time of day) is ``datetime: null`` with ``start_datetime``/``end_datetime``;
``datetime_source`` says where it came from. An unknown time is ``datetime: null``, the range of
all RFC 3339 years (:data:`UNKNOWN_RANGE`, "any time": STAC needs a datetime or a range, and this
one invents nothing) and ``datetime_source: null`` (docs/stac.md).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_output
from .errors import RSGeoPruneError
from .pixels import PixelReader

PROJECTION_V2 = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
EO_V2 = "https://stac-extensions.github.io/eo/v2.0.0/schema.json"
COMMON_NAMES = {3: ["red", "green", "blue"], 4: ["red", "green", "blue", "nir"]}
TILES_DIR = "tiles"
#: The COGs a write exported, in ``TILES_DIR``: a later write removes those and only those.
EXPORT_RECORD = ".rsgeo_prune-export.json"


def item_id(tile_id: str) -> str:
    """STAC Item id of a tile: ``/`` (a path separator in a static catalog) becomes ``__``."""
    return tile_id.replace("/", "__")


def _bands(n: int, data_type: str | None = None, nodata=None) -> list[dict]:
    """STAC 1.1 ``bands``: names (with ``eo:common_name`` for RGB/RGBN), and the pixel ``data_type`` and
    ``nodata`` (loaders such as odc-stac read them to keep the raster's own type)."""
    names = COMMON_NAMES.get(n)
    bands = (
        [{"name": f"b{i + 1}"} for i in range(n)]
        if names is None
        else [{"name": name, "eo:common_name": name} for name in names]
    )
    for b in bands:
        if data_type:
            b["data_type"] = data_type
        if nodata is not None and not (isinstance(nodata, float) and np.isnan(nodata)):
            b["nodata"] = float(nodata) if isinstance(nodata, float) and not nodata.is_integer() else int(nodata)
    return bands


def _value(v):
    if v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and np.isnan(v)):
        return None
    return v


def _utc(v) -> dt.datetime | None:
    """A table's timestamp cell as an aware UTC datetime (None for null)."""
    v = _value(v)
    if v is None:
        return None
    ts = pd.Timestamp(v)
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).to_pydatetime()


#: The range an Item of unknown acquisition time states: all of RFC 3339's years, i.e. "any time".
#: STAC needs a datetime or a range; this one invents nothing, is valid, and is easy to recognise.
UNKNOWN_RANGE = (
    dt.datetime(1, 1, 1, tzinfo=dt.timezone.utc),
    dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc),
)


def _time_fields(row) -> tuple[dt.datetime | None, dict]:
    """``(datetime, properties)`` of a tile's acquisition time (docs/stac.md): an instant has
    ``datetime`` and ``start_datetime == end_datetime == datetime``; a range has ``datetime`` null and
    its two ends; an unknown time has ``datetime`` null, :data:`UNKNOWN_RANGE` and ``datetime_source`` null."""
    when = _utc(getattr(row, "datetime", None))
    start, end = _utc(getattr(row, "start_datetime", None)), _utc(getattr(row, "end_datetime", None))
    if start is None or end is None:
        when, (start, end) = None, UNKNOWN_RANGE
    return when, {
        "start_datetime": start,
        "end_datetime": end,
        "datetime_source": _value(getattr(row, "datetime_source", None)),
    }


def tile_item(row, href: str, *, media_type: str = "image/tiff; application=geotiff", asset_grid=None, nodata=None):
    """One kept tile as a pystac Item (the asset ``href`` is given by the caller).

    Args:
        asset_grid: ``(height, width, transform)`` of the raster the asset is, when that is the
            tile's source raster (the tile is then the window ``rsgeo:window`` of it); None when the
            asset is the tile itself (an exported COG, or a collection image).
        nodata: the raster's nodata value, if it has one.
    """
    import pystac
    import shapely
    from pystac.utils import datetime_to_str

    geom = shapely.orient_polygons(row.geometry) if row.geometry is not None else None  # CCW (RFC 7946)
    if asset_grid is None:  # the asset is the tile
        shape, transform = [int(row.height), int(row.width)], row.transform
        window = [0, 0, int(row.width), int(row.height)]
    else:
        shape, transform = [int(asset_grid[0]), int(asset_grid[1])], asset_grid[2]
        window = [int(row.col_off), int(row.row_off), int(row.width), int(row.height)]
    when, time_props = _time_fields(row)
    props = {
        "proj:code": row.crs,
        "proj:shape": shape,
        "rsgeo:tile_id": row.tile_id,
        "rsgeo:window": window,
        "rsgeo:entropy": _value(getattr(row, "entropy", None)),
        "rsgeo:cluster": _value(getattr(row, "cluster", None)),
        "rsgeo:similarity": _value(getattr(row, "similarity", None)),
        "rsgeo:rank": _value(getattr(row, "rank", None)),
    }
    if transform is not None:
        props["proj:transform"] = [float(v) for v in list(transform)[:6]]
    props = {
        k: (int(v) if isinstance(v, (np.integer,)) else float(v) if isinstance(v, np.floating) else v)
        for k, v in props.items()
    }
    times = {k: datetime_to_str(v) if isinstance(v, dt.datetime) else v for k, v in time_props.items()}
    item = pystac.Item(
        id=item_id(row.tile_id),
        geometry=shapely.geometry.mapping(geom) if geom is not None else None,
        bbox=list(geom.bounds) if geom is not None else None,
        datetime=when,
        properties={**props, **times},
        stac_extensions=[PROJECTION_V2, EO_V2],
    )
    asset = pystac.Asset(
        href=href,
        media_type=media_type,
        roles=["data"],
        extra_fields={"bands": _bands(int(row.bands), _value(getattr(row, "dtype", None)), nodata)},
    )
    item.add_asset("data", asset)
    return item


def export_tile_cog(row, path: Path, reader: PixelReader | None = None) -> Path:
    """Write one tile's window of its source raster, raw values, as a Cloud-Optimised GeoTIFF
    (atomically), read through :class:`~rsgeo_prune.pixels.PixelReader` (pass one to reuse its handles)."""
    import rasterio
    from affine import Affine

    reader = PixelReader() if reader is None else reader
    data = reader.read(row, with_valid=False).data
    facts = reader.profile(row)
    profile = dict(
        driver="COG",
        width=int(row.width),
        height=int(row.height),
        count=facts["count"],
        dtype=facts["dtype"],
        crs=facts["crs"],
        transform=Affine(*row.transform),
        nodata=facts["nodata"],
        compress="deflate",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(data)
    return path


def write_stac(
    catalog: pd.DataFrame, run_dir: str | Path, *, export_tiles: bool = False, title: str = "rsgeo_prune kept tiles"
) -> tuple[Path, Path]:
    """Write ``run_dir/stac/`` (self-contained static catalog) and ``run_dir/items.parquet``.

    With ``export_tiles`` each kept tile is also written to ``run_dir/tiles/<item id>.tif`` (COG)
    and its Item points there. COGs an earlier write exported that these Items no longer use are
    removed once the new STAC is in place.

    Raises:
        RSGeoPruneError: a ``tile_id`` that appears more than once among the kept tiles.
    """
    run_dir = Path(run_dir)
    kept = _kept_tiles(catalog)
    tiles_dir = run_dir / TILES_DIR
    previous = _previous_exports(run_dir)
    exported = (
        {f"{item_id(t)}.tif" for t, tr in zip(kept["tile_id"], kept["transform"]) if tr is not None}
        if export_tiles
        else set()
    )
    if exported:  # listed before writing, so that a crash midway leaves no COG unaccounted for
        _record_exports(tiles_dir, previous | exported)
    items = _write_static_catalog(kept, run_dir, export_tiles=export_tiles, title=title)
    parquet = _write_items_parquet(items, run_dir)
    _remove_stale_exports(tiles_dir, previous - exported, exported)
    return run_dir / "stac", parquet


def _kept_tiles(catalog: pd.DataFrame) -> pd.DataFrame:
    kept = catalog[catalog["kept"].astype(bool)]
    dup = kept["tile_id"][kept["tile_id"].duplicated()]
    if len(dup):
        raise RSGeoPruneError(
            f"tile_id {dup.iloc[0]!r} appears more than once in the catalog; each tile must "
            "appear once (was one raster given twice?), so rebuild the tile table"
        )
    return kept


def _write_static_catalog(kept: pd.DataFrame, run_dir: Path, *, export_tiles: bool, title: str) -> list:
    """Build every Item (exporting COGs if asked), save the catalog beside ``stac/``, swap it in."""
    import pystac

    stac_dir = run_dir / "stac"
    tmp_dir = run_dir / "stac_partial"  # renamed to stac/ once complete
    shutil.rmtree(tmp_dir, ignore_errors=True)
    root = pystac.Catalog(
        id="rsgeo-prune", description=f"{title}: {len(kept)} tiles selected by rsgeo_prune", title=title
    )
    items = []
    reader = PixelReader()
    grids: dict[str, tuple] = {}
    for row in kept.itertuples(index=False):
        iid = item_id(row.tile_id)
        source_grid = nodata = None  # (height, width, transform) of a source raster, and its nodata
        if row.transform is not None:
            *source_grid, nodata = grids.get(row.href) or grids.setdefault(row.href, _raster_grid(row.href))
        # hrefs relative to the Item's folder: the run folder can move (with its inputs, kept beside it)
        if export_tiles and row.transform is not None:  # the asset is the tile's own COG
            cog = export_tile_cog(row, run_dir / TILES_DIR / f"{iid}.tif", reader)
            item = tile_item(row, os.path.relpath(cog, stac_dir / iid), media_type=pystac.MediaType.COG, nodata=nodata)
        else:  # the asset is the source raster (the tile a window of it), or a collection image
            media = "image/tiff; application=geotiff" if row.transform is not None else _image_media_type(row.href)
            item = tile_item(
                row, os.path.relpath(row.href, stac_dir / iid), media_type=media, asset_grid=source_grid, nodata=nodata
            )
        items.append(item)
        root.add_item(item)
    root.normalize_hrefs(str(tmp_dir) + "/")
    root.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    shutil.rmtree(stac_dir, ignore_errors=True)
    os.replace(tmp_dir, stac_dir)
    return items


def _raster_grid(href: str) -> tuple[int, int, tuple, float | None]:
    """``(height, width, transform, nodata)`` of a source raster, from its header."""
    import rasterio

    try:
        with rasterio.open(href) as src:
            return src.height, src.width, tuple(src.transform)[:6], src.nodata
    except rasterio.errors.RasterioIOError as exc:
        raise RSGeoPruneError(
            f"{href}: source raster cannot be opened ({exc}); the catalog's href no longer "
            "resolves: restore the file or rebuild the catalog"
        ) from exc


def _image_media_type(href: str) -> str:
    suffix = Path(href).suffix.lower()
    return {".png": "image/png", ".tif": "image/tiff", ".tiff": "image/tiff"}.get(suffix, "image/jpeg")


def _write_items_parquet(items: list, run_dir: Path) -> Path:
    """``run_dir/items.parquet``: the placed Items as stac-geoparquet (GeoParquet 1.1, zstd)."""
    import stac_geoparquet.arrow as sga

    dicts = []
    for it in items:
        if it.geometry is None:  # stac-geoparquet needs a geometry; unplaced images stay in stac/ only
            continue
        d = it.to_dict(include_self_link=False, transform_hrefs=False)
        d["links"] = []
        d["assets"]["data"]["href"] = os.path.normpath(os.path.join("stac", it.id, d["assets"]["data"]["href"]))
        dicts.append(d)
    # No Item: the schema of a stand-in Item with no rows, so the file is still GeoParquet.
    table = (
        sga.parse_stac_items_to_arrow(dicts)
        if dicts
        else sga.parse_stac_items_to_arrow([_STAND_IN_ITEM]).read_all().slice(0, 0)
    )
    parquet = run_dir / "items.parquet"
    with atomic_output(parquet) as tmp:
        sga.to_parquet(table, tmp, schema_version="1.1.0", compression="zstd")
    return parquet


_STAND_IN_ITEM = {
    "type": "Feature",
    "stac_version": "1.1.0",
    "stac_extensions": [PROJECTION_V2, EO_V2],
    "id": "",
    "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]},
    "bbox": [0.0, 0.0, 1.0, 1.0],
    "links": [],
    "properties": {"datetime": "2000-01-01T00:00:00Z", "proj:code": "EPSG:4326", "rsgeo:tile_id": ""},
    "assets": {"data": {"href": "", "type": "image/tiff; application=geotiff", "roles": ["data"]}},
}


def _previous_exports(run_dir: Path) -> set[str]:
    """File names (in ``tiles/``) of the COGs earlier writes exported: the export record, or for a
    run directory from before the record, the ``tiles/`` hrefs of its ``items.parquet``."""
    record = run_dir / TILES_DIR / EXPORT_RECORD
    if record.exists():
        try:
            names = json.loads(record.read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            names = []
    else:
        names = _legacy_exports(run_dir / "items.parquet")
    # only plain .tif names: the record must never reach outside the tiles folder
    return {n for n in names if isinstance(n, str) and n == Path(n).name and n.endswith(".tif")}


def _legacy_exports(items_parquet: Path) -> list[str]:
    if not items_parquet.exists():
        return []
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(items_parquet, columns=["id", "assets"]).to_pydict()
    except Exception:  # not a file this package wrote (or no such columns): nothing is ours
        return []
    names = []
    for iid, assets in zip(table["id"], table["assets"]):
        data = (assets or {}).get("data") or {}
        href = Path(data.get("href") or "")
        # an exported COG, not a source raster that happens to lie in tiles/: <item id>.tif, COG type
        cog = "cloud-optimized" in (data.get("type") or "")
        if cog and href.parent == Path(TILES_DIR) and href.name == f"{iid}.tif":
            names.append(href.name)
    return names


def _record_exports(tiles_dir: Path, names: set[str]) -> None:
    with atomic_output(tiles_dir / EXPORT_RECORD) as tmp:
        tmp.write_text(json.dumps({"files": sorted(names)}, indent=0))


def _remove_stale_exports(tiles_dir: Path, stale: set[str], exported: set[str]) -> None:
    """Delete the COGs of earlier exports that the new Items do not use; keep the record current."""
    for name in stale:
        (tiles_dir / name).unlink(missing_ok=True)
    if exported:
        _record_exports(tiles_dir, exported)
        return
    (tiles_dir / EXPORT_RECORD).unlink(missing_ok=True)
    if tiles_dir.is_dir() and not any(tiles_dir.iterdir()):
        tiles_dir.rmdir()  # the package's own folder, now empty
