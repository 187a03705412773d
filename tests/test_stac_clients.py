"""STAC and catalogs as clients use them: a search by date returns exactly that year's tiles, odc-stac
loads a tile's exact pixels, and a run folder moved with its inputs still resolves."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pystac
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

from rsgeo_prune import TileConfig, tiles_stage
from rsgeo_prune.catalog import read_catalog, write_catalog
from rsgeo_prune.pixels import PixelReader
from rsgeo_prune.stac import UNKNOWN_RANGE, write_stac
from tests.conftest import shared

#: The acquisition dates of the eight NAIP files in the shared sample data.
NAIP_DATES = ("20100629", "20120731", "20140720", "20150926", "20160816", "20170827", "20180716", "20200831")
T = 32


def naip_name(date: str) -> str:
    return f"m_4709963_se_14_1_{date}.tif"


def write_naip_like(folder, date, seed, size=2 * T):
    """A tiny 4-band uint8 raster with a NAIP file name (no time tags): its date is the name's."""
    data = np.random.default_rng(seed).integers(1, 255, (4, size, size + T), dtype=np.uint8)
    path = folder / naip_name(date)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=size + T,
        height=size,
        count=4,
        dtype="uint8",
        crs="EPSG:26914",
        nodata=0,
        transform=Affine(5, 0, 485900 + seed, 0, -5, 5209245),
    ) as dst:
        dst.write(data)
    return path


def build_run(inputs, run, *, tile_size=T, export_tiles=False):
    """The curation side's outputs of a run: ``catalog.parquet``, ``stac/`` and ``items.parquet``."""
    table = tiles_stage([str(p) for p in inputs], TileConfig(tile_size=tile_size), progress=False)
    run.mkdir(parents=True, exist_ok=True)
    write_catalog(table, run / "catalog.parquet", config={"test": True})
    write_stac(read_catalog(run / "catalog.parquet"), run, export_tiles=export_tiles)
    return table


def stac_items(run) -> list[pystac.Item]:
    return list(pystac.Catalog.from_file(str(run / "stac" / "catalog.json")).get_items(recursive=True))


def year_bounds(year: int) -> tuple[dt.datetime, dt.datetime]:
    return (
        dt.datetime(year, 1, 1, tzinfo=dt.timezone.utc),
        dt.datetime(year, 12, 31, 23, 59, 59, 999999, tzinfo=dt.timezone.utc),
    )


def stac_search_by_year(items, year) -> set[str]:
    """What a STAC API's ``datetime=YYYY-01-01/YYYY-12-31`` does: Items whose time (instant, or
    ``start_datetime``..``end_datetime``) intersects the interval."""
    lo, hi = year_bounds(year)
    found = set()
    for item in pystac.ItemCollection(items):
        start = item.datetime or pystac.utils.str_to_datetime(item.properties["start_datetime"])
        end = item.datetime or pystac.utils.str_to_datetime(item.properties["end_datetime"])
        if start <= hi and end >= lo:
            found.add(item.id)
    return found


def check_search_by_year(inputs, run, dates, tile_size=T):
    table = build_run(inputs, run, tile_size=tile_size)
    items = stac_items(run)
    assert len(items) == len(table)
    catalog = gpd.read_parquet(run / "catalog.parquet")  # plain geopandas: the schema is still GeoParquet
    assert str(catalog["start_datetime"].dtype) == "datetime64[us, UTC]"
    stac_parquet = gpd.read_parquet(run / "items.parquet")
    geo = json.loads(pq.read_schema(run / "catalog.parquet").metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["columns"]["geometry"]["encoding"] == "WKB"
    for date in dates:
        year = int(date[:4])
        stem = naip_name(date)[:-4]
        expected = set(table.loc[table["scene_id"] == stem, "tile_id"])
        assert expected and len(expected) == len(table) // len(dates)
        # 1. STAC Items, as a STAC API search by datetime interval
        assert stac_search_by_year(items, year) == {i.replace("/", "__") for i in expected}
        # 2. the catalog GeoParquet's columns (geopandas)
        lo, hi = (pd.Timestamp(b) for b in year_bounds(year))
        hit = catalog[(catalog["start_datetime"] <= hi) & (catalog["end_datetime"] >= lo)]
        assert set(hit["tile_id"]) == expected
        # 3. stac-geoparquet items.parquet (geopandas on its columns)
        hit = stac_parquet[(stac_parquet["start_datetime"] <= hi) & (stac_parquet["end_datetime"] >= lo)]
        assert set(hit["id"]) == {i.replace("/", "__") for i in expected}
    # a NAIP date is a day: a range, no instant
    assert catalog["datetime"].isna().all() and (catalog["datetime_source"] == "filename:naip").all()
    assert all(i.datetime is None and i.properties["datetime_source"] == "filename:naip" for i in items)
    one = catalog[catalog["scene_id"] == naip_name("20200831")[:-4]].iloc[0]
    assert one["start_datetime"] == pd.Timestamp("2020-08-31T00:00:00Z")
    assert one["end_datetime"] == pd.Timestamp("2020-08-31T23:59:59.999999Z")


def test_search_by_year_on_eight_naip_named_rasters(tmp_path):
    (tmp_path / "in").mkdir()
    inputs = [write_naip_like(tmp_path / "in", d, k + 1) for k, d in enumerate(NAIP_DATES)]
    check_search_by_year(inputs, tmp_path / "run", NAIP_DATES)


def test_search_by_year_on_the_real_naip_years(tmp_path):
    inputs = [shared("naip", naip_name(d)) for d in NAIP_DATES]
    check_search_by_year(inputs, tmp_path / "run", NAIP_DATES, tile_size=256)  # 6 tiles a year


def test_unknown_time_is_said_not_invented(tmp_path):
    path = tmp_path / "in" / "scene.tif"
    path.parent.mkdir()
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=T,
        height=T,
        count=3,
        dtype="uint8",
        crs="EPSG:26914",
        transform=Affine(1, 0, 600_000, 0, -1, 5_200_000),
    ) as dst:
        dst.write(np.full((3, T, T), 5, np.uint8))
    build_run([path], tmp_path / "run")
    (item,) = stac_items(tmp_path / "run")  # pystac reads it back: valid STAC
    assert item.datetime is None and item.properties["datetime_source"] is None
    assert item.properties["start_datetime"] == "0001-01-01T00:00:00Z"
    assert item.properties["end_datetime"] == "9999-12-31T23:59:59Z"
    assert UNKNOWN_RANGE[0].year == 1
    row = read_catalog(tmp_path / "run" / "catalog.parquet").iloc[0]
    assert pd.isna(row["datetime"]) and pd.isna(row["start_datetime"]) and pd.isna(row["datetime_source"])


def odc_tile_pixels(item: pystac.Item, row) -> np.ndarray:
    """``(C, H, W)`` pixels odc-stac loads for a tile: the Item's asset on the tile's own grid."""
    import odc.stac
    from odc.geo.geobox import GeoBox

    geobox = GeoBox((int(row["height"]), int(row["width"])), Affine(*row["transform"]), row["crs"])
    ds = odc.stac.load([item], geobox=geobox, resampling="nearest", chunks=None)
    return np.stack([ds[v].isel(time=0).to_numpy() for v in sorted(ds.data_vars)])


def rasterio_window(href, row) -> np.ndarray:
    with rasterio.open(href) as src:
        return src.read(window=Window(*(int(row[k]) for k in ("col_off", "row_off", "width", "height"))))


@pytest.mark.parametrize("export_tiles", [False, True])
def test_odc_stac_loads_the_tile_exactly(tmp_path, export_tiles):
    (tmp_path / "in").mkdir()
    src = write_naip_like(tmp_path / "in", "20200831", 3, size=3 * T)
    table = build_run([src], tmp_path / "run", export_tiles=export_tiles).set_index("tile_id")
    items = {i.properties["rsgeo:tile_id"]: i for i in stac_items(tmp_path / "run")}
    assert len(items) == len(table) == 3 * 4
    for tile_id in ("m_4709963_se_14_1_20200831/0_0", "m_4709963_se_14_1_20200831/64_96"):
        item, row = items[tile_id], table.loc[tile_id]
        want = rasterio_window(src, row)
        got = odc_tile_pixels(item, row)
        assert got.dtype == np.uint8 and np.array_equal(got, want)
        # the projection fields describe the asset; rsgeo:window is the tile within it
        with rasterio.open(item.assets["data"].get_absolute_href()) as asset:
            assert item.properties["proj:shape"] == [asset.height, asset.width]
            assert item.properties["proj:transform"] == list(asset.transform)[:6]
            col, r, w, h = item.properties["rsgeo:window"]
            assert np.array_equal(asset.read(window=Window(col, r, w, h)), want)
        if export_tiles:
            assert item.properties["rsgeo:window"] == [0, 0, T, T]
        else:
            assert item.properties["rsgeo:window"] == [int(row["col_off"]), int(row["row_off"]), T, T]
            assert item.properties["proj:shape"] == [3 * T, 4 * T]


def test_a_moved_run_folder_still_resolves(tmp_path):
    project = tmp_path / "project"
    (project / "inputs").mkdir(parents=True)
    src = write_naip_like(project / "inputs", "20180716", 5)
    run = project / "runs" / "r1"
    build_run([src], run)
    assert (
        pq.read_table(run / "catalog.parquet", columns=["href"]).column("href")[0].as_py()
        == "../../inputs/m_4709963_se_14_1_20180716.tif"
    )
    stac_json = json.loads(next((run / "stac").glob("*/*.json")).read_text())
    assert not stac_json["assets"]["data"]["href"].startswith("/")
    assert all(not link["href"].startswith("/") for link in stac_json["links"])
    moved = tmp_path / "elsewhere" / "project2"
    moved.parent.mkdir()
    shutil.move(project, moved)
    assert not src.exists()
    catalog = read_catalog(moved / "runs" / "r1" / "catalog.parquet")
    assert set(catalog["href"]) == {str((moved / "inputs" / src.name).resolve())}
    row = catalog.sort_values("tile_id").iloc[-1]
    pixels = PixelReader().read(row, with_valid=False).data
    assert np.array_equal(pixels, rasterio_window(moved / "inputs" / src.name, row))
    items = {i.properties["rsgeo:tile_id"]: i for i in stac_items(moved / "runs" / "r1")}
    item = items[row["tile_id"]]
    assert item.assets["data"].get_absolute_href() == str((moved / "inputs" / src.name).resolve())
    assert np.array_equal(odc_tile_pixels(item, row), pixels)
    parquet_items = gpd.read_parquet(moved / "runs" / "r1" / "items.parquet")
    assert set(parquet_items["assets"].map(lambda a: a["data"]["href"])) == {"../../inputs/" + src.name}


def test_old_catalogs_with_absolute_hrefs_still_read(tmp_path):
    (tmp_path / "in").mkdir()
    src = write_naip_like(tmp_path / "in", "20100629", 2)
    table = tiles_stage([str(src)], TileConfig(tile_size=T), progress=False)
    old = tmp_path / "elsewhere" / "old.parquet"
    old.parent.mkdir()
    table.to_parquet(old)  # as files were written before: absolute hrefs
    back = read_catalog(old)
    assert set(back["href"]) == {str(src.resolve())}
