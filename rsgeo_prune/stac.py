"""STAC output of a run: the kept tiles as STAC Items.

* ``RUN_DIR/stac/`` — a self-contained static catalog (pystac): one Item per kept tile with its
  footprint geometry and bbox, projection extension v2 fields of the tile itself (``proj:code``,
  ``proj:shape``, ``proj:transform``), ``bands`` with ``eo:common_name``, the tile window and
  ``rsgeo:entropy``, ``rsgeo:cluster``, ``rsgeo:similarity``, ``rsgeo:rank`` in its properties, and
  a ``data`` asset pointing at the source raster by a relative href (or at the tile's own COG with
  ``export_tiles``).
* ``RUN_DIR/items.parquet`` — the same Items as stac-geoparquet (images without a location, which
  STAC allows with a null geometry, are left out of this one: GeoParquet needs a geometry).

An Item's ``datetime`` is the source file's modification time (UTC): rasters seldom carry their
acquisition time in a standard place, and this keeps reruns identical.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_output

PROJECTION_V2 = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
EO_V2 = "https://stac-extensions.github.io/eo/v2.0.0/schema.json"
COMMON_NAMES = {3: ["red", "green", "blue"], 4: ["red", "green", "blue", "nir"]}


def item_id(tile_id: str) -> str:
    """STAC Item id of a tile: ``/`` (a path separator in a static catalog) becomes ``__``."""
    return tile_id.replace("/", "__")


def _bands(n: int) -> list[dict]:
    names = COMMON_NAMES.get(n)
    if names is None:
        return [{"name": f"b{i + 1}"} for i in range(n)]
    return [{"name": name, "eo:common_name": name} for name in names]


def _value(v):
    return None if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA else v


def tile_item(row, href: str, *, media_type: str = "image/tiff; application=geotiff"):
    """One kept tile as a pystac Item (the asset ``href`` is given by the caller)."""
    import pystac
    import shapely

    geom = row.geometry
    mtime = dt.datetime.fromtimestamp(os.stat(row.href).st_mtime, tz=dt.timezone.utc).replace(microsecond=0)
    props = {
        "proj:code": row.crs,
        "proj:shape": [int(row.height), int(row.width)],
        "rsgeo:tile_id": row.tile_id,
        "rsgeo:window": {"row_off": int(row.row_off), "col_off": int(row.col_off), "height": int(row.height),
                         "width": int(row.width)},
        "rsgeo:entropy": _value(getattr(row, "entropy", None)),
        "rsgeo:cluster": _value(getattr(row, "cluster", None)),
        "rsgeo:similarity": _value(getattr(row, "similarity", None)),
        "rsgeo:rank": _value(getattr(row, "rank", None)),
    }
    if row.transform is not None:
        props["proj:transform"] = [float(v) for v in row.transform]
    props = {k: (int(v) if isinstance(v, (np.integer,)) else float(v) if isinstance(v, np.floating) else v)
             for k, v in props.items()}
    item = pystac.Item(id=item_id(row.tile_id), geometry=shapely.geometry.mapping(geom) if geom is not None else None,
                       bbox=list(geom.bounds) if geom is not None else None, datetime=mtime, properties=props,
                       stac_extensions=[PROJECTION_V2, EO_V2])
    asset = pystac.Asset(href=href, media_type=media_type, roles=["data"],
                         extra_fields={"bands": _bands(int(row.bands))})
    item.add_asset("data", asset)
    return item


def export_tile_cog(row, path: Path) -> Path:
    """Write one tile's window of its source raster as a Cloud-Optimised GeoTIFF (atomically)."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    with rasterio.open(row.href) as src:
        data = src.read(window=Window(int(row.col_off), int(row.row_off), int(row.width), int(row.height)))
        profile = dict(driver="COG", width=int(row.width), height=int(row.height), count=src.count,
                       dtype=src.dtypes[0], crs=src.crs, transform=Affine(*row.transform), nodata=src.nodata,
                       compress="deflate")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(data)
    return path


def write_stac(catalog: pd.DataFrame, run_dir: str | Path, *, export_tiles: bool = False,
               title: str = "rsgeo_prune kept tiles") -> tuple[Path, Path]:
    """Write ``run_dir/stac/`` (self-contained static catalog) and ``run_dir/items.parquet``."""
    import pystac
    import stac_geoparquet.arrow as sga

    run_dir = Path(run_dir)
    stac_dir = run_dir / "stac"
    tmp_dir = run_dir / "stac_partial"  # renamed to stac/ once complete
    shutil.rmtree(tmp_dir, ignore_errors=True)
    kept = catalog[catalog["kept"].astype(bool)]
    root = pystac.Catalog(id="rsgeo-prune", description=f"{title}: {len(kept)} tiles selected by rsgeo_prune",
                          title=title)
    items = []
    for row in kept.itertuples(index=False):
        iid = item_id(row.tile_id)
        if export_tiles and row.transform is not None:
            cog = export_tile_cog(row, run_dir / "tiles" / f"{iid}.tif")
            href = os.path.relpath(cog, stac_dir / iid)
            media = pystac.MediaType.COG
        else:
            href = os.path.relpath(row.href, stac_dir / iid)  # relative: the run directory can move
            media = "image/tiff; application=geotiff" if row.transform is not None else "image/jpeg"
        item = tile_item(row, href, media_type=media)
        items.append(item)
        root.add_item(item)
    root.normalize_hrefs(str(tmp_dir) + "/")
    root.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    shutil.rmtree(stac_dir, ignore_errors=True)
    os.replace(tmp_dir, stac_dir)

    dicts = []
    for it in items:
        if it.geometry is None:  # stac-geoparquet needs a geometry; unplaced images stay in stac/ only
            continue
        d = it.to_dict(include_self_link=False, transform_hrefs=False)
        d["links"] = []
        d["assets"]["data"]["href"] = os.path.normpath(os.path.join("stac", it.id, d["assets"]["data"]["href"]))
        dicts.append(d)
    parquet = run_dir / "items.parquet"
    with atomic_output(parquet) as tmp:
        if dicts:
            sga.to_parquet(sga.parse_stac_items_to_arrow(dicts), tmp)
        else:
            pd.DataFrame({"id": pd.Series([], dtype=str)}).to_parquet(tmp)
    return stac_dir, parquet
