"""Real imagery from ../shared/data (skipped with a reason when the folder is absent)."""

import numpy as np
import rasterio
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from rasterio.windows import bounds as window_bounds

from rsgeo_prune import TileConfig, describe_raster, tile_grid, tiles_stage
from tests.conftest import shared

ND_2018 = ("naip", "m_4709963_se_14_1_20180716.tif")


def test_naip_footprints_match_rasterio():
    path = shared(*ND_2018)
    table, _ = tile_grid(describe_raster(path))
    assert len(table) == (724 // 256) * (934 // 256) == 6
    with rasterio.open(path) as src:
        for _, row in table.iterrows():
            wb = window_bounds(Window(row.col_off, row.row_off, 256, 256), src.transform)
            expected = transform_bounds(src.crs, "EPSG:4326", *wb, densify_pts=21)
            assert np.allclose(row.geometry.bounds, expected, atol=1e-9)
    assert table["crs"].unique().tolist() == ["EPSG:26914"] and table["gsd"].iloc[0] == 5.0


def test_rural_north_dakota_is_not_urban():
    urban = shared("urban", "ne_50m_urban_areas.geojson")
    naip = [shared("naip", n) for n in ("m_4709963_se_14_1_20100629.tif", "m_4709963_se_14_1_20200831.tif")]
    table = tiles_stage(naip, TileConfig(mask=str(urban), min_urban=0.01), progress=False)
    assert len(table) == 12
    assert (table["urban_frac"] == 0).all()
    assert not table["kept"].any() and (table["pruned_by"] == "mask").all()


def test_colorado_springs_is_fully_urban():
    path = shared("scenes", "usgs_hro_colorado_springs.tif")
    urban = shared("urban", "ne_50m_urban_areas.geojson")
    table = tiles_stage([path], TileConfig(tile_size=128, mask=str(urban), min_urban=0.99), progress=False)
    assert len(table) == (232 // 128) * (383 // 128) == 2
    assert np.allclose(table["urban_frac"], 1.0) and table["kept"].all()


def test_recife_is_partly_urban():
    path = shared("scenes", "landsat7_etm_6band_recife.tif")
    urban = shared("urban", "ne_50m_urban_areas.geojson")
    table = tiles_stage([path], TileConfig(tile_size=64, mask=str(urban)), progress=False)
    assert table["bands"].iloc[0] == 6
    assert (table["urban_frac"] == 1).any() and (table["urban_frac"] == 0).any()
    assert ((table["urban_frac"] > 0) & (table["urban_frac"] < 1)).any()


def test_napa_uint16_nodata():
    path = shared("naip", "napa_block_1m_uint16.tif")
    scene = describe_raster(path)
    assert scene.dtype == "uint16" and scene.nodata == 256
    table = tiles_stage([path], TileConfig(tile_size=64, partial=True, max_nodata=0.5), progress=False)
    with rasterio.open(path) as src:
        px = src.read()
    bad = (px == 256).all(axis=0)
    assert 0.2 < bad.mean() < 0.4  # about 29 % of this block is nodata
    want = [
        bad[r : r + h, c : c + w].mean() for r, c, h, w in table[["row_off", "col_off", "height", "width"]].to_numpy()
    ]
    assert np.allclose(table["nodata_frac"], want, rtol=0, atol=0)
    assert set(table.loc[table["nodata_frac"] > 0.5, "pruned_by"]) == {"nodata"}
    assert (table["nodata_frac"] > 0.5).any() and (table["nodata_frac"] <= 0.5).any()
