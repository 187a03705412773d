"""The one pixel reader: the same levels as Stage I, raw windows equal to rasterio, the stretch for
uint16, band selection, nodata masks, image rows, pickling, and clear errors."""

import pickle

import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from rsgeo_prune import RSGeoPruneError, TileConfig, tiles_stage
from rsgeo_prune.pixels import (
    PixelReader,
    Stretch,
    percentile_range,
    read_tile_pixels,
    scene_percentiles,
    stretch_levels,
    valid_pixels,
)

from .conftest import shared


def _uint16_raster(path, nodata=None):
    rng = np.random.default_rng(5)
    data = rng.integers(100, 4000, size=(4, 64, 96)).astype(np.uint16)
    data[:, :32, :32] = nodata if nodata is not None else 0
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=96,
        height=64,
        count=4,
        dtype="uint16",
        crs="EPSG:32614",
        transform=from_origin(500_000, 5_000_000, 1, 1),
        nodata=nodata,
    ) as dst:
        dst.write(data)
    return data


def test_levels_equal_a_direct_read_of_uint8_windows(scene):
    table = pd.DataFrame(tiles_stage([scene.path], progress=False))
    seen = 0
    with rasterio.open(scene.path) as src:
        for pos, tiles in read_tile_pixels(table, batch=5):
            for i, t in zip(pos, tiles):
                r = table.iloc[i]
                assert np.array_equal(t, src.read(window=Window(r.col_off, r.row_off, r.width, r.height)))
                seen += 1
    assert seen == len(table)


def test_uint16_gets_the_scene_stretch_of_stage_one(tmp_path):
    path = tmp_path / "u16.tif"
    data = _uint16_raster(path, nodata=0)
    table = pd.DataFrame(tiles_stage([path], TileConfig(tile_size=32, max_nodata=1.0), progress=False))
    reader = PixelReader()
    lo, hi = scene_percentiles(str(path), 0)
    row = table.iloc[1]  # a tile with data
    expected = stretch_levels(data[:, row.row_off : row.row_off + 32, row.col_off : row.col_off + 32], lo, hi)
    assert np.array_equal(reader.read_levels(row), expected)
    unit, valid = reader.read_unit(row)
    assert unit.dtype == np.float32 and 0.0 <= unit.min() and unit.max() <= 1.0 and valid.all()
    assert np.abs(unit * 255 - expected).max() <= 0.5 + 1e-4  # the levels are the rounded unit values
    first = table.iloc[0]  # the nodata corner
    unit, valid = reader.read_unit(first)
    assert not valid.any() and (unit == 0).all()


def test_band_selection_and_raw_values(scene):
    table = pd.DataFrame(tiles_stage([scene.path], progress=False))
    row = table.iloc[3]
    raw = PixelReader(bands=[4, 1]).read(row)
    with rasterio.open(scene.path) as src:
        direct = src.read([4, 1], window=Window(row.col_off, row.row_off, row.width, row.height))
    assert np.array_equal(raw.data, direct) and raw.valid.shape == direct.shape[1:]
    with pytest.raises(RSGeoPruneError, match="band 5 is out of range; the file has bands 1..4"):
        PixelReader(bands=[1, 5]).read(row)


def test_reader_pickles_without_its_handles(scene):
    table = pd.DataFrame(tiles_stage([scene.path], progress=False))
    reader = PixelReader(bands=[1, 2, 3])
    first = reader.read_levels(table.iloc[0])
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._handles == {} and clone.bands == [1, 2, 3]
    assert np.array_equal(clone.read_levels(table.iloc[0]), first)


def test_missing_raster_names_the_file(scene, tmp_path):
    row = pd.DataFrame(tiles_stage([scene.path], progress=False)).iloc[0].copy()
    row["href"] = str(tmp_path / "gone.tif")
    with pytest.raises(RSGeoPruneError, match="gone.tif.*no longer resolves"):
        PixelReader().read(row)


def test_real_uint16_naip_block_masks_its_nodata():
    path = shared("naip", "napa_block_1m_uint16.tif")
    table = pd.DataFrame(tiles_stage([path], TileConfig(tile_size=64, max_nodata=1.0), progress=False))
    reader = PixelReader()
    fractions = []
    for row in table.itertuples(index=False):
        unit, valid = reader.read_unit(row)
        assert unit.shape[0] == 4 and 0.0 <= unit.min() and unit.max() <= 1.0
        fractions.append(1.0 - valid.mean())
    # the reader's nodata mask agrees with the tile table's nodata fraction
    assert np.allclose(fractions, table["nodata_frac"].to_numpy(), atol=1e-9)


def test_stretch_levels_known_answers():
    """``round(255 * clip((v - lo) / (hi - lo), 0, 1))`` per band; NaN → 0; a flat band (hi == lo)
    splits at lo."""
    block = np.array([[[-5.0, 0.0, 25.0, 50.2, 100.0, 150.0, np.nan]], [[9.0, 10.0, 11.0, 10.0, 10.0, 10.0, 10.0]]])
    levels = stretch_levels(block, [0.0, 10.0], [100.0, 10.0])
    assert levels.dtype == np.uint8
    assert levels.tolist() == [[[0, 0, 64, 128, 255, 255, 0]], [[0, 0, 255, 0, 0, 0, 0]]]


def test_valid_pixels_known_answers():
    """A pixel is nodata only when every band is nodata or NaN."""
    block = np.array([[[0.0, np.nan, 0.0, 5.0]], [[0.0, 3.0, np.nan, np.nan]]])
    assert valid_pixels(block, 0).tolist() == [[0, 1, 0, 1]]
    assert valid_pixels(block, None).tolist() == [[1, 1, 1, 1]]
    assert valid_pixels(block, float("nan")).tolist() == [[1, 1, 1, 1]]
    assert valid_pixels(np.array([[[7, 0]]], np.uint16), 0).dtype == np.uint8


def test_percentile_range_known_answers():
    """2nd/98th percentiles per band over valid pixels; NaN left out; a flat band gets hi = lo + 1;
    a band without data gets (0, 1)."""
    band0 = np.concatenate([np.arange(101.0), [np.nan, -9999.0, -9999.0]])
    band1 = np.concatenate([np.full(102, 7.0), [-9999.0, -9999.0]])
    lo, hi = percentile_range(np.stack([band0, band1])[:, None, :], -9999)
    assert lo.tolist() == [2.0, 7.0] and hi.tolist() == [98.0, 8.0]
    lo, hi = percentile_range(np.full((1, 2, 2), -9999.0), -9999)
    assert lo.tolist() == [0.0] and hi.tolist() == [1.0]


def test_scene_percentiles_and_unit_scaling_known_answers(tmp_path):
    path = tmp_path / "ramp.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=10,
        height=10,
        count=1,
        dtype="uint16",
        crs="EPSG:32614",
        transform=from_origin(500_000, 5_000_000, 1, 1),
    ) as dst:
        dst.write(np.arange(100, dtype=np.uint16).reshape(1, 10, 10))
    lo, hi = scene_percentiles(str(path), None)
    assert lo == pytest.approx([1.98], abs=1e-12) and hi == pytest.approx([97.02], abs=1e-12)
    stretch = Stretch(np.array([0.0]), np.array([100.0]))
    assert stretch.to_unit(np.array([[[-5.0, 50.0, 150.0, np.nan]]])).tolist() == [[[0.0, 0.5, 1.0, 0.0]]]
    assert stretch.to_levels(np.array([[[-5.0, 50.0, 150.0, np.nan]]])).tolist() == [[[0, 128, 255, 0]]]
    identity = Stretch()
    assert identity.to_unit(np.array([[[0, 51, 255]]], np.uint8)).tolist() == [[[0.0, np.float32(0.2), 1.0]]]
