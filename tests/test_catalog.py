"""Catalog files: GeoParquet 1.1 rules, round trips, counter-clockwise rings, zstd, empty tables."""

from __future__ import annotations

import json
import os

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely

from rsgeo_prune.catalog import (
    catalog_metadata,
    read_catalog,
    read_embeddings,
    write_catalog,
    write_embeddings,
    write_geoparquet,
)


def _table(n: int = 4) -> pd.DataFrame:
    """A tile table with clockwise footprints (as pixel-order corners give on a north-up grid)."""
    cw = [shapely.Polygon([(x, 0), (x + 1, 0), (x + 1, -1), (x, -1)]) for x in range(n)]
    assert not any(p.exterior.is_ccw for p in cw)
    return pd.DataFrame(
        {
            "tile_id": [f"s/0_{i}" for i in range(n)],
            "scene_id": "s",
            "href": "/data/s.tif",
            "row_off": np.zeros(n, np.int64),
            "col_off": np.arange(n, dtype=np.int64) * 256,
            "height": np.full(n, 256, np.int64),
            "width": np.full(n, 256, np.int64),
            "crs": "EPSG:26914",
            "transform": [np.array([1.0, 0, 600_000 + 256 * i, 0, -1, 5_200_000]) for i in range(n)],
            "geometry": cw,
            "gsd": 0.6,
            "bands": 4,
            "dtype": "uint8",
            "nodata_frac": np.linspace(0, 1, n),
            "kept": np.arange(n) % 2 == 0,
        }
    )


def _geo(path) -> dict:
    return json.loads(pq.read_schema(path).metadata[b"geo"])


def _compressions(path) -> set[str]:
    meta = pq.ParquetFile(path).metadata
    return {
        meta.row_group(g).column(c).compression for g in range(meta.num_row_groups) for c in range(meta.num_columns)
    }


@pytest.mark.parametrize("rows", [4, 0], ids=["tiles", "empty"])
def test_geoparquet_1_1_rules(tmp_path, rows):
    path = write_geoparquet(_table(rows), tmp_path / "t.parquet")
    geo = _geo(path)
    col = geo["columns"][geo["primary_column"]]
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    assert col["encoding"] == "WKB" and col["orientation"] == "counterclockwise"
    assert col["crs"]["id"] == {"authority": "EPSG", "code": 4326}
    assert col["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    schema = pq.read_schema(path)
    assert pa.types.is_binary(schema.field("geometry").type) or pa.types.is_large_binary(schema.field("geometry").type)
    assert pa.types.is_struct(schema.field("bbox").type)
    assert _compressions(path) <= {"ZSTD"}
    assert len(read_catalog(path)) == rows


def test_round_trip_keeps_values_and_turns_rings_counter_clockwise(tmp_path):
    table = _table()
    back = read_catalog(write_geoparquet(table, tmp_path / "t.parquet"))
    assert list(back.columns) == [
        c
        for c in (
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
            "nodata_frac",
            "kept",
        )
    ]
    assert back.crs.to_epsg() == 4326
    pd.testing.assert_frame_equal(
        pd.DataFrame(back.drop(columns=["geometry", "transform"])),
        table.drop(columns=["geometry", "transform"]),
        check_dtype=False,
    )
    assert all(np.array_equal(a, b) for a, b in zip(back["transform"], table["transform"]))
    assert all(g.equals(t) for g, t in zip(back.geometry, table["geometry"]))  # the same shapes ...
    assert all(g.exterior.is_ccw for g in back.geometry)  # ... wound counter-clockwise


def test_run_catalog_metadata_and_order(tmp_path):
    path = write_catalog(_table().iloc[::-1], tmp_path / "catalog.parquet", config={"k": 7}, bank_digest="ab")
    meta = catalog_metadata(path)
    assert meta["config"] == {"k": 7} and meta["centroid_bank_digest"] == "ab" and meta["version"]
    again = write_catalog(_table(), tmp_path / "again.parquet", config={"k": 7}, bank_digest="ab")
    assert read_catalog(path)["tile_id"].tolist() == read_catalog(again)["tile_id"].tolist()  # spatial, not input order
    assert path.read_bytes() == again.read_bytes()
    assert _compressions(path) <= {"ZSTD"}


def test_unplaced_rows_are_valid_geoparquet(tmp_path):
    table = _table(2)
    table["geometry"] = [shapely.Point(1, 2), None]
    back = read_catalog(
        write_geoparquet(gpd.GeoDataFrame(table, geometry="geometry", crs="EPSG:4326"), tmp_path / "t.parquet")
    )
    assert back.geometry.iloc[0] == shapely.Point(1, 2) and back.geometry.iloc[1] is None


@pytest.mark.parametrize("n", [3, 0])
def test_embeddings_round_trip(tmp_path, n):
    z = np.random.default_rng(0).random((n, 5)).astype(np.float32)
    path = write_embeddings([f"t{i}" for i in range(n)], z, tmp_path / "e.parquet", source=["a"] * n)
    ids, back = read_embeddings(path)
    assert ids.tolist() == [f"t{i}" for i in range(n)] and np.array_equal(back, z)
    assert _compressions(path) <= {"ZSTD"}


def test_hrefs_are_stored_relative_to_the_file_and_read_back_absolute(tmp_path):
    """A catalog names its sources relative to its own folder (a moved folder still resolves);
    read_catalog gives absolute paths back; absolute hrefs of older files are read as they are."""
    src = tmp_path / "inputs" / "s.tif"
    run = tmp_path / "runs" / "r"
    path = write_geoparquet(_table(2).assign(href=[str(src), "/data/other.tif"]), run / "catalog.parquet")
    stored = pq.read_table(path, columns=["href"]).column("href").to_pylist()
    assert stored == ["../../inputs/s.tif", os.path.relpath("/data/other.tif", os.path.realpath(run))]
    assert read_catalog(path)["href"].tolist() == [os.path.realpath(src), "/data/other.tif"]
    old = tmp_path / "old.parquet"
    gpd.GeoDataFrame(_table(1), geometry="geometry", crs="EPSG:4326").to_parquet(old)  # absolute, as before
    assert read_catalog(old)["href"].tolist() == ["/data/s.tif"]
