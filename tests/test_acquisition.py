"""Acquisition time: each source in the priority order, with known answers; never the file's mtime."""

import datetime as dt
import json
import os

import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine

from rsgeo_prune.acquisition import UNKNOWN, from_filename, from_tags, parse_time
from rsgeo_prune.cli import main
from rsgeo_prune.config import TileConfig
from rsgeo_prune.errors import InvalidOption, RSGeoPruneError
from rsgeo_prune.sources import describe_image_collection, describe_raster, resolve_inputs
from rsgeo_prune.tile_table import tiles_stage

UTC = dt.timezone.utc


def write_raster(path, tags=None, size=64):
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint8",
        crs="EPSG:26914",
        transform=Affine(5, 0, 485900, 0, -5, 5209245),
    ) as dst:
        dst.write(np.full((3, size, size), 7, np.uint8))
        if tags:
            dst.update_tags(**tags)
    return path


def at(*args):
    return dt.datetime(*args, tzinfo=UTC)


def test_parse_time_instants_days_and_ranges():
    t = parse_time("2020-08-31T17:08:51Z", "argument")
    assert (t.datetime, t.start, t.end, t.source) == (at(2020, 8, 31, 17, 8, 51),) * 3 + ("argument",)
    assert parse_time("2020-08-31T19:08:51+02:00", "x").datetime == at(2020, 8, 31, 17, 8, 51)
    assert parse_time("2020-08-31 17:08:51", "x").datetime == at(2020, 8, 31, 17, 8, 51)  # no zone: UTC
    assert parse_time("2020:08:31 17:08:51", "x").datetime == at(2020, 8, 31, 17, 8, 51)  # TIFF style
    day = parse_time("2020-08-31", "x")  # a date is its UTC day, a range without an instant
    assert day.datetime is None and day.start == at(2020, 8, 31)
    assert day.end == at(2020, 8, 31, 23, 59, 59, 999999)
    assert parse_time("20200831", "x") == day
    span = parse_time("2020-06-01/2020-08-31", "x")
    assert span.datetime is None and span.start == at(2020, 6, 1) and span.end == at(2020, 8, 31, 23, 59, 59, 999999)
    for bad in ("yesterday", "2020-13-01", "2020-08-31/2020-01-01", ""):
        with pytest.raises(ValueError):
            parse_time(bad, "x")


@pytest.mark.parametrize(
    "name, source, start, instant",
    [
        ("m_4709963_se_14_1_20200831.tif", "filename:naip", at(2020, 8, 31), False),
        ("/data/naip/m_3807537_ne_18_060_20181104.TIF", "filename:naip", at(2018, 11, 4), False),
        (
            "S2A_MSIL2A_20200831T170851_N0214_R112_T14TNT_20200831T212122.tif",
            "filename:sentinel2",
            at(2020, 8, 31, 17, 8, 51),
            True,
        ),
        ("LC08_L2SP_027026_20200831_20200906_02_T1_SR_B4.TIF", "filename:landsat", at(2020, 8, 31), False),
        ("LE07_L2SP_214065_20000305_20200918_02_T1.tif", "filename:landsat", at(2000, 3, 5), False),
    ],
)
def test_file_name_conventions(name, source, start, instant):
    t = from_filename(name)
    assert t.source == source and t.start == start
    day = dt.timedelta(days=1, microseconds=-1)
    assert (t.datetime == start) if instant else (t.datetime is None and t.end - t.start == day)


@pytest.mark.parametrize(
    "name", ["scene.tif", "m_4709963_se_14_1_20201331.tif", "scene_123456789.tif", "20200831/plain.tif"]
)
def test_names_without_a_date_give_nothing(name):
    assert from_filename(name) == UNKNOWN


def test_tags_most_specific_first():
    assert from_tags({"TIFFTAG_DATETIME": "2021:05:04 10:11:12"}).datetime == at(2021, 5, 4, 10, 11, 12)
    assert from_tags({"TIFFTAG_DATETIME": "2021:05:04 10:11:12"}).source == "tag:TIFFTAG_DATETIME"
    both = from_tags({"TIFFTAG_DATETIME": "2021:05:04 10:11:12", "acquisitionDate": "2019-07-01"})
    assert both.source == "tag:ACQUISITIONDATE" and both.start == at(2019, 7, 1) and both.datetime is None
    landsat = from_tags({"DATE_ACQUIRED": "2020-08-31", "SCENE_CENTER_TIME": '"17:08:51.1234Z"'})
    assert landsat.datetime == at(2020, 8, 31, 17, 8, 51, 123400) and landsat.source == "tag:DATE_ACQUIRED"
    assert (
        from_tags({"ACQUISITION_DATE": "soon", "TIFFTAG_DATETIME": "2021:05:04 10:11:12"}).source
        == "tag:TIFFTAG_DATETIME"
    )  # an unreadable value is passed over
    assert from_tags({"AREA_OR_POINT": "Area"}) == UNKNOWN


def test_priority_argument_stac_tag_filename(tmp_path):
    named = write_raster(tmp_path / "m_4709963_se_14_1_20200831.tif")
    assert describe_raster(named).acquired.source == "filename:naip"
    tagged = write_raster(tmp_path / "m_4709963_se_14_1_20100629.tif", {"TIFFTAG_DATETIME": "2010:06:29 16:40:00"})
    assert describe_raster(tagged).acquired.datetime == at(2010, 6, 29, 16, 40)  # tag before file name
    item = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": "from-stac",
        "geometry": None,
        "properties": {"datetime": "2012-07-31T17:00:00Z"},
        "links": [],
        "assets": {"image": {"href": tagged.name, "type": "image/tiff; application=geotiff", "roles": ["data"]}},
    }
    (tmp_path / "item.json").write_text(json.dumps(item))
    from_stac = resolve_inputs([tmp_path / "item.json"])[0].acquired
    assert (from_stac.datetime, from_stac.source) == (at(2012, 7, 31, 17), "stac")  # STAC Item before the tag
    given = resolve_inputs([tmp_path / "item.json", named], datetime="2015-09-26T12:00:00Z")
    assert [s.acquired.source for s in given] == ["argument", "argument"]
    assert {s.acquired.datetime for s in given} == {at(2015, 9, 26, 12)}
    with pytest.raises(InvalidOption, match="datetime 'tomorrow'"):
        resolve_inputs([named], datetime="tomorrow")


def test_stac_item_range(tmp_path):
    write_raster(tmp_path / "scene.tif")
    item = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": "ranged",
        "geometry": None,
        "links": [],
        "properties": {
            "datetime": None,
            "start_datetime": "2020-06-01T00:00:00Z",
            "end_datetime": "2020-06-30T23:59:59Z",
        },
        "assets": {"image": {"href": "scene.tif", "roles": ["data"]}},
    }
    (tmp_path / "item.json").write_text(json.dumps(item))
    t = resolve_inputs([tmp_path / "item.json"])[0].acquired
    assert (t.datetime, t.start, t.end, t.source) == (None, at(2020, 6, 1), at(2020, 6, 30, 23, 59, 59), "stac")


def test_never_the_modification_time(tmp_path):
    path = write_raster(tmp_path / "scene.tif")
    os.utime(path, (1_600_000_000, 1_600_000_000))
    table = tiles_stage([path], TileConfig(tile_size=32), progress=False)
    assert table["datetime"].isna().all() and table["start_datetime"].isna().all()
    assert table["end_datetime"].isna().all() and table["datetime_source"].isna().all()
    assert str(table["start_datetime"].dtype) == "datetime64[us, UTC]"


def test_tile_table_columns_follow_the_source(tmp_path):
    path = write_raster(tmp_path / "S2B_MSIL2A_20210704T171849_N0301_R012_T14TNT_20210704T214501.tif")
    table = tiles_stage([path], TileConfig(tile_size=32), progress=False)
    assert len(table) == 4
    assert (table["datetime"] == pd.Timestamp("2021-07-04T17:18:49Z")).all()
    assert (table["start_datetime"] == table["datetime"]).all() and (table["end_datetime"] == table["datetime"]).all()
    assert (table["datetime_source"] == "filename:sentinel2").all()


def test_manifest_times_then_file_names(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    from PIL import Image

    for name in ("a.png", "b.png", "c_20190102.png", "d.png"):
        Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(folder / name)
    pd.DataFrame(
        {
            "path": ["a.png", "b.png", "d.png"],
            "lon": [10.0, None, None],
            "lat": [50.0, None, None],
            "datetime": ["2020-08-31T10:00:00Z", "2020-08-31", None],
        }
    ).to_csv(folder / "manifest.csv", index=False)
    coll = describe_image_collection(folder)
    got = [(t.datetime, t.start, t.source) for t in coll.acquired]
    assert got == [
        (at(2020, 8, 31, 10), at(2020, 8, 31, 10), "manifest"),
        (None, at(2020, 8, 31), "manifest"),
        (None, at(2019, 1, 2), "filename:naip"),
        (None, None, None),
    ]
    table = tiles_stage([folder], progress=False)
    assert table["datetime_source"].tolist()[:3] == ["manifest", "manifest", "filename:naip"]
    assert pd.isna(table["datetime_source"].iloc[3])
    pd.DataFrame({"path": ["a.png"], "start_datetime": ["2020-01-01"], "end_datetime": ["2020-12-31"]}).to_csv(
        folder / "manifest.csv", index=False
    )  # a range, and no location columns
    a = describe_image_collection(folder).acquired[0]
    assert (a.datetime, a.start, a.end) == (None, at(2020, 1, 1), at(2020, 12, 31, 23, 59, 59, 999999))
    pd.DataFrame({"path": ["a.png"], "datetime": ["last summer"]}).to_csv(folder / "manifest.csv", index=False)
    with pytest.raises(RSGeoPruneError, match=r"manifest.csv: row 1 \('a.png'\): acquisition time"):
        describe_image_collection(folder)


def test_cli_datetime_option(tmp_path, capsys):
    path = write_raster(tmp_path / "scene.tif")
    out = tmp_path / "tiles.parquet"
    assert (
        main(["tiles", str(path), "--out", str(out), "--tile-size", "32", "--datetime", "2016-08-16", "--quiet"]) == 0
    )
    import geopandas as gpd

    table = gpd.read_parquet(out)
    assert (table["datetime_source"] == "argument").all() and table["datetime"].isna().all()
    assert (table["start_datetime"] == pd.Timestamp("2016-08-16T00:00:00Z")).all()
    assert main(["tiles", str(path), "--out", str(out), "--datetime", "2016-31-08"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rsgeo-prune: error: --datetime '2016-31-08': ")
