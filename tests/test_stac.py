"""STAC output: Items linked once each, counter-clockwise geometries, items.parquet as zstd
GeoParquet (empty too), and exported COGs that never outlive the Items that use them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pystac
import pytest
import rasterio
import stac_geoparquet.arrow as sga
from rasterio.transform import from_origin

from rsgeo_prune import RSGeoPruneError, TileConfig, tiles_stage
from rsgeo_prune.stac import EXPORT_RECORD, write_stac

T = 32


@pytest.fixture(scope="module")
def tiles(tmp_path_factory) -> pd.DataFrame:
    """The tile table of a 2 x 3-tile, 3-band raster (32-px tiles), every tile kept."""
    path = tmp_path_factory.mktemp("stac") / "scene.tif"
    data = np.random.default_rng(1).integers(1, 255, (3, 2 * T, 3 * T), dtype=np.uint8)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=3 * T,
        height=2 * T,
        count=3,
        dtype="uint8",
        crs="EPSG:26914",
        transform=from_origin(600_000, 5_200_000, 1, 1),
    ) as dst:
        dst.write(data)
    table = pd.DataFrame(tiles_stage([path], TileConfig(tile_size=T), progress=False))
    assert table["kept"].all() and len(table) == 6
    return table


def _keep(table, n):
    out = table.copy()
    out["kept"] = np.arange(len(out)) < n
    return out


def _items(run):
    return list(pystac.Catalog.from_file(str(run / "stac" / "catalog.json")).get_items(recursive=True))


def test_each_item_is_linked_once(tiles, tmp_path):
    write_stac(tiles, tmp_path)
    links = json.loads((tmp_path / "stac" / "catalog.json").read_text())["links"]
    hrefs = [link["href"] for link in links if link["rel"] == "item"]
    assert len(hrefs) == len(set(hrefs)) == 6
    back = pq.read_table(tmp_path / "items.parquet")
    assert sorted(back.column("id").to_pylist()) == sorted(i.id for i in _items(tmp_path))
    assert len(set(back.column("id").to_pylist())) == 6


def test_a_tile_id_twice_is_an_error(tiles, tmp_path):
    twice = pd.concat([tiles, tiles.iloc[:1]], ignore_index=True)
    with pytest.raises(RSGeoPruneError, match=r"tile_id 'scene/0_0' appears more than once"):
        write_stac(twice, tmp_path)
    assert not (tmp_path / "stac").exists()


def test_geometries_are_counter_clockwise(tiles, tmp_path):
    import shapely

    write_stac(tiles, tmp_path)
    for item in _items(tmp_path):
        ring = shapely.geometry.shape(item.geometry).exterior
        assert ring.is_ccw and item.bbox == list(shapely.geometry.shape(item.geometry).bounds)
    for geom in sga.stac_table_to_items(pq.read_table(tmp_path / "items.parquet")):
        assert shapely.geometry.shape(geom["geometry"]).exterior.is_ccw


@pytest.mark.parametrize("kept", [6, 0], ids=["items", "no item"])
def test_items_parquet_is_zstd_geoparquet(tiles, tmp_path, kept):
    _, parquet = write_stac(_keep(tiles, kept), tmp_path)
    meta = pq.ParquetFile(parquet).metadata
    geo = json.loads(pq.read_schema(parquet).metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    assert geo["columns"]["geometry"]["encoding"] == "WKB"
    assert str(pq.read_schema(parquet).field("geometry").type) in ("binary", "large_binary")
    assert meta.num_rows == kept
    assert {
        meta.row_group(g).column(c).compression for g in range(meta.num_row_groups) for c in range(meta.num_columns)
    } <= {"ZSTD"}


def _cogs(run):
    return sorted(p.name for p in (run / "tiles").glob("*.tif")) if (run / "tiles").exists() else []


def test_exported_cogs_follow_the_items(tiles, tmp_path):
    write_stac(tiles, tmp_path, export_tiles=True)
    assert len(_cogs(tmp_path)) == 6 and (tmp_path / "tiles" / EXPORT_RECORD).exists()
    (tmp_path / "tiles" / "mine.tif").write_bytes(b"not the package's")  # a user's file stays

    write_stac(_keep(tiles, 2), tmp_path, export_tiles=True)  # fewer kept tiles: their COGs go
    assert _cogs(tmp_path) == ["mine.tif", "scene__0_0.tif", "scene__0_32.tif"]
    hrefs = {i.assets["data"].get_absolute_href() for i in _items(tmp_path)}
    assert hrefs == {str(tmp_path / "tiles" / n) for n in ("scene__0_0.tif", "scene__0_32.tif")}

    write_stac(tiles, tmp_path)  # no export: every exported COG goes, the STAC points at the source
    assert _cogs(tmp_path) == ["mine.tif"] and not (tmp_path / "tiles" / EXPORT_RECORD).exists()
    assert all(i.assets["data"].get_absolute_href() == tiles["href"].iloc[0] for i in _items(tmp_path))
    (tmp_path / "tiles" / "mine.tif").unlink()
    write_stac(tiles, tmp_path)
    assert not (tmp_path / "tiles").exists()  # the package's own folder, emptied, is removed


def test_cogs_of_a_run_dir_without_export_record_are_found_from_items_parquet(tiles, tmp_path):
    write_stac(tiles, tmp_path, export_tiles=True)
    (tmp_path / "tiles" / EXPORT_RECORD).unlink()  # as written before the record existed
    write_stac(tiles, tmp_path)
    assert _cogs(tmp_path) == []
