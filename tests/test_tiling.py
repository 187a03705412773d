import logging

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from rasterio.windows import bounds as window_bounds

from rsgeo_prune import RSGeoPruneError, describe_raster, nodata_fraction, tile_grid
from rsgeo_prune.sources import aligned_chunk, open_raster
from rsgeo_prune.tiling import tile_offsets


def test_full_tiles_only_and_partial_edges_are_counted(scene, caplog):
    s = describe_raster(scene.path)
    with caplog.at_level(logging.INFO):
        table, native = tile_grid(s)
    assert len(table) == 6 * 8
    # 7 rows x 9 cols of origins, of which the last row and column are partial: 63 - 48 = 15
    assert "15 partial edge tiles dropped" in caplog.text
    assert table["tile_id"].iloc[9] == "scene/256_256"
    assert (table["height"] == 256).all() and (table["width"] == 256).all()
    partial, _ = tile_grid(s, partial=True)
    assert len(partial) == 63 and partial["height"].min() == 100 and partial["width"].min() == 50


def test_tile_transform_places_the_tile(scene):
    s = describe_raster(scene.path)
    table, native = tile_grid(s)
    row = table.iloc[11]
    a, b, c, d, e, f = row["transform"]
    assert (a, e) == (1.0, -1.0)
    assert (c, f) == s.transform * (row["col_off"], row["row_off"])
    assert native[11].bounds == (c, f - 256, c + 256, f)


def test_footprint_matches_rasterio_bounds(scene):
    s = describe_raster(scene.path)
    table, _ = tile_grid(s)
    for i in (0, 13, 47):
        r = table.iloc[i]
        with rasterio.open(scene.path) as src:
            wb = window_bounds(Window(r["col_off"], r["row_off"], 256, 256), src.transform)
            expected = transform_bounds(src.crs, "EPSG:4326", *wb, densify_pts=21)
        assert np.allclose(r["geometry"].bounds, expected, atol=1e-9)


def test_nodata_fraction_is_exact_for_any_stride(scene):
    s = describe_raster(scene.path)
    with rasterio.open(scene.path) as src:
        bad = (src.read() == 0).all(axis=0)
    for tile, stride in ((256, 256), (256, 128), (200, 75), (128, 256)):
        r, c, h, w = tile_offsets(s, tile, stride, partial=True)
        got = nodata_fraction(s, r, c, h, w, tile_size=tile, stride=stride)
        want = np.array([bad[a : a + hh, b : b + ww].mean() for a, b, hh, ww in zip(r, c, h, w)])
        assert np.allclose(got, want, atol=0, rtol=0), (tile, stride)
        assert got.max() > 0.5  # the nodata collar
        if tile % stride and stride % tile:  # windows straddling the collar edge: fractions in (0, 1)
            assert ((got > 0) & (got < 1)).any()


def test_nodata_fraction_counts_partial_nodata(tmp_path):
    from rsgeo_prune.synth import write_scene

    sc = write_scene(tmp_path / "holes.tif", rows=2, cols=2, nodata_rows=0, seed=1)
    with rasterio.open(sc.path, "r+") as dst:
        dst.write(np.zeros((4, 64, 32), np.uint8), window=Window(10, 300, 32, 64))  # 2048 px in tile (256, 0)
        dst.write(np.zeros((3, 10, 10), np.uint8), indexes=[1, 2, 3], window=Window(300, 0, 10, 10))  # NIR valid
    s = describe_raster(sc.path)
    r, c, h, w = tile_offsets(s)
    frac = nodata_fraction(s, r, c, h, w)
    assert frac.tolist() == [0.0, 0.0, 2048 / 65536, 0.0]


def test_no_nodata_value_means_no_nodata(tmp_path):
    path = tmp_path / "plain.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=512,
        height=512,
        count=1,
        dtype="uint8",
        crs="EPSG:32618",
        transform=rasterio.transform.from_origin(500_000, 4_000_000, 1, 1),
    ) as dst:
        dst.write(np.zeros((1, 512, 512), np.uint8))
    s = describe_raster(path)
    assert s.nodata is None
    r, c, h, w = tile_offsets(s)
    assert nodata_fraction(s, r, c, h, w).tolist() == [0.0] * 4
    # ... unless the user says which value is nodata (NAIP: 0)
    s0 = describe_raster(path, nodata=0)
    assert nodata_fraction(s0, r, c, h, w).tolist() == [1.0] * 4


def test_chunks_hold_whole_tiles_and_whole_blocks(scene):
    assert aligned_chunk(256, 512, 10_000) % 512 == 0
    assert aligned_chunk(256, 512, 10_000) % 256 == 0
    assert aligned_chunk(256, 3, 10_000) % 256 == 0  # strips of 3 rows: tiles win
    assert aligned_chunk(128, 383, 383) % 128 == 0  # block as wide as the raster imposes nothing
    da = open_raster(describe_raster(scene.path))
    assert all(ch % 256 == 0 for ch in da.chunks[1][:-1]) and all(ch % 256 == 0 for ch in da.chunks[2][:-1])
    assert da.chunks[0] == (4,)


@pytest.mark.parametrize("size,stride", [(0, None), (-5, None), (256, 0)])
def test_bad_tile_size(scene, size, stride):
    with pytest.raises(RSGeoPruneError, match="must be positive"):
        tile_offsets(describe_raster(scene.path), size, stride)


def test_raster_smaller_than_a_tile(scene):
    with pytest.raises(RSGeoPruneError, match="smaller than one 4096-px tile"):
        tile_offsets(describe_raster(scene.path), 4096)


def test_float_raster_nan_is_nodata(tmp_path):
    path = tmp_path / "float.tif"
    px = np.ones((2, 256, 512), np.float32)
    px[:, :64, :256] = np.nan  # a quarter of tile 0
    px[0, 100:110, 300:310] = np.nan  # band 0 only: still valid
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=512,
        height=256,
        count=2,
        dtype="float32",
        nodata=np.nan,
        crs="EPSG:32618",
        transform=rasterio.transform.from_origin(500_000, 4_000_000, 10, 10),
    ) as dst:
        dst.write(px)
    s = describe_raster(path)
    r, c, h, w = tile_offsets(s)
    assert nodata_fraction(s, r, c, h, w).tolist() == [0.25, 0.0]


def test_mask_band_marks_nodata_when_there_is_no_nodata_value(tmp_path):
    """A file with an internal (per-dataset) mask and no nodata value: masked pixels are nodata for
    the nodata fraction and are left out of the entropy histograms."""
    from rsgeo_prune import TileConfig, tiles_stage

    path = tmp_path / "masked.tif"
    px = np.random.default_rng(0).integers(1, 255, (3, 256, 512), dtype=np.uint8)
    px[:, :, 256:] = 7  # the right tile is constant where it is valid ...
    mask = np.full((256, 512), 255, np.uint8)
    mask[:128, :256] = 0  # half of tile 0 masked
    mask[:, 384:] = 0  # ... and half of tile 1 masked
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(
            path,
            "w",
            driver="GTiff",
            width=512,
            height=256,
            count=3,
            dtype="uint8",
            tiled=True,
            crs="EPSG:32618",
            transform=rasterio.transform.from_origin(500_000, 4_000_000, 1, 1),
        ) as dst:
            dst.write(px)
            dst.write_mask(mask)
    s = describe_raster(path)
    assert s.nodata is None and s.has_mask
    r, c, h, w = tile_offsets(s)
    assert nodata_fraction(s, r, c, h, w).tolist() == [0.5, 0.5]
    table = tiles_stage([path], TileConfig(entropy_min=0.0), progress=False)
    assert table["nodata_frac"].tolist() == [0.5, 0.5]
    assert table["entropy"].iloc[1] == 0.0  # only the constant, valid half counts
    assert table["entropy"].iloc[0] > 7


def test_footprints_are_counter_clockwise(scene):
    # RFC 7946 / GeoParquet: exterior rings counter-clockwise, in the raster CRS and in EPSG:4326
    import shapely

    table, native = tile_grid(describe_raster(scene.path))
    assert shapely.is_ccw(shapely.get_exterior_ring(native)).all()
    assert shapely.is_ccw(shapely.get_exterior_ring(table["geometry"].to_numpy())).all()
    assert np.allclose(shapely.area(native), 256.0 * 256.0)  # same squares, turned around only
