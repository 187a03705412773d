"""CatalogDataset: windows equal direct rasterio reads, nodata mask, dihedral flips, workers, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from rasterio.windows import Window

from rsgeo_prune import TileConfig, tiles_stage
from rsgeo_prune.errors import RSGeoPruneError
from rsgeo_prune.pixels import scene_percentiles
from rsgeo_prune.train.dataset import CatalogDataset, dihedral, hash_split

torch.set_num_threads(1)


def _raster(path, dtype, bands, nodata, seed=0, size=(96, 128)):
    rng = np.random.default_rng(seed)
    hi = 255 if dtype == "uint8" else 4000
    data = rng.integers(1, hi, (bands, *size)).astype(dtype)
    data[:, :10, :20] = nodata  # a nodata corner, in every band
    data[0, 50, 50] = nodata  # nodata in one band only: still a valid pixel
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=size[1],
        height=size[0],
        count=bands,
        dtype=dtype,
        crs="EPSG:32614",
        transform=from_origin(500000, 5000000, 1, 1),
        nodata=nodata,
        tiled=True,
        blockxsize=32,
        blockysize=32,
    ) as dst:
        dst.write(data)
    return path


@pytest.mark.parametrize("dtype,bands", [("uint8", 3), ("uint8", 4), ("uint16", 3), ("uint16", 4)])
def test_windows_equal_direct_rasterio_reads(tmp_path, dtype, bands):
    path = _raster(tmp_path / f"r_{dtype}_{bands}.tif", dtype, bands, nodata=0 if dtype == "uint8" else 9999)
    table = tiles_stage([path], TileConfig(tile_size=32, max_nodata=1.0), progress=False)
    ds = CatalogDataset(table)
    assert len(ds) == 12 and ds.bands == list(range(1, bands + 1))
    with rasterio.open(path) as src:
        nodata = src.nodata
        lo, hi = scene_percentiles(str(path), nodata) if dtype != "uint8" else (None, None)
        for i in range(len(ds)):
            r = table.iloc[i]
            raw = src.read(window=Window(r.col_off, r.row_off, r.width, r.height)).astype(np.float64)
            valid = ~(raw == nodata).all(axis=0)
            if dtype == "uint8":
                unit = raw / 255.0
            else:
                unit = np.clip(
                    (raw - np.reshape(lo, (-1, 1, 1))) / (np.reshape(hi, (-1, 1, 1)) - np.reshape(lo, (-1, 1, 1))), 0, 1
                )
            expected = np.where(valid, unit * 2 - 1, -1.0)
            s = ds[i]
            assert s["tile_id"] == r.tile_id
            assert s["image"].dtype == torch.float32 and s["image"].shape == (bands, 32, 32)
            np.testing.assert_array_equal(s["valid"].numpy(), valid)
            np.testing.assert_allclose(s["image"].numpy(), expected, atol=2e-6)
    first = ds[0]
    assert not first["valid"][:10, :20].any() and first["valid"][10:, 20:].all()
    assert (first["image"][:, :10, :20] == -1).all()


def test_band_selection_and_fill(tmp_path):
    path = _raster(tmp_path / "r.tif", "uint8", 4, nodata=0)
    table = tiles_stage([path], TileConfig(tile_size=32, max_nodata=1.0), progress=False)
    ds = CatalogDataset(table, bands=[4, 1], fill=0.0)
    with rasterio.open(path) as src:
        raw = src.read([4, 1], window=Window(0, 0, 32, 32)).astype(np.float32)
    s = ds[0]["image"].numpy()
    np.testing.assert_allclose(s[:, 10:, 20:], raw[:, 10:, 20:] / 255 * 2 - 1, atol=2e-6)
    assert (s[:, :10, :20] == 0).all()


def test_naip_default_band_order_from_descriptions(scene):
    table = tiles_stage([scene.path], TileConfig(), progress=False)
    ds = CatalogDataset(table)
    assert ds.bands == [1, 2, 3, 4]  # synth names its bands red, green, blue, nir


def test_dihedral_keeps_the_pixel_multiset_and_forms_the_group():
    a = np.arange(2 * 5 * 5).reshape(2, 5, 5)
    outs = [dihedral(a, k) for k in range(8)]
    for o in outs:
        assert sorted(o.ravel()) == sorted(a.ravel())
    assert len({o.tobytes() for o in outs}) == 8  # all eight are distinct on an asymmetric array
    np.testing.assert_array_equal(dihedral(a, 1), np.rot90(a, 1, axes=(1, 2)))
    np.testing.assert_array_equal(dihedral(a, 4), a[:, :, ::-1])


def test_dihedral_and_crop_samples_are_pure_functions_of_seed_epoch_index(scene):
    table = tiles_stage([scene.path], TileConfig(), progress=False)
    ds = CatalogDataset(table, crop=64, dihedral=True, seed=3)
    plain = CatalogDataset(table, seed=3)
    a, b = ds[5]["image"], ds[5]["image"]
    assert torch.equal(a, b) and a.shape == (4, 64, 64)
    full = plain[5]["image"].numpy()
    # the crop is a window of the tile, up to one of the eight transforms
    sub = a.numpy()
    found = any(
        (dihedral(sub, k)[..., :, :] == full[:, y : y + 64, x : x + 64]).all()
        for k in range(8)
        for y in range(0, 193)
        for x in range(0, 193)
        if np.isclose(dihedral(sub, k)[0, 0, 0], full[0, y, x])
    )
    assert found
    ds.set_epoch(1)
    assert not torch.equal(ds[5]["image"], a)  # a new epoch draws anew


def test_two_worker_loader_returns_the_same_tiles(scene):
    table = tiles_stage([scene.path], TileConfig(), progress=False)
    ds = CatalogDataset(table, crop=32)
    ds[0]  # the parent opens its handles first: forked workers must not share them (file offsets)
    one = {t: img for b in torch.utils.data.DataLoader(ds, batch_size=4) for t, img in zip(b["tile_id"], b["image"])}
    two = {
        t: img
        for b in torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
        for t, img in zip(b["tile_id"], b["image"])
    }
    assert sorted(one) == sorted(two) == sorted(ds.tile_ids) and len(one) == len(ds)
    assert all(torch.equal(one[t], two[t]) for t in one)


def test_selection_by_query_and_tile_ids(scene):
    table = tiles_stage([scene.path], TileConfig(), progress=False)
    ids = table["tile_id"].tolist()[:3][::-1]
    assert CatalogDataset(table, select=ids).tile_ids == ids
    assert len(CatalogDataset(table, select="all")) == len(table)
    assert len(CatalogDataset(table, select="row_off == 0")) == 8
    with pytest.raises(RSGeoPruneError, match="not in catalog"):
        CatalogDataset(table, select=["nope/0_0"])


def test_hash_split_is_per_tile_and_near_the_fraction():
    ids = [f"s/{i}_{j}" for i in range(40) for j in range(50)]
    v = hash_split(ids, 0.1)
    assert 0.08 < v.mean() < 0.12
    np.testing.assert_array_equal(hash_split(ids[::7], 0.1), v[::7])  # independent of the other tiles


def test_bad_input_gives_one_clear_error(tmp_path, scene):
    table = pd.DataFrame(tiles_stage([scene.path], TileConfig(), progress=False))
    moved = table.assign(href=str(tmp_path / "gone.tif"))
    with pytest.raises(RSGeoPruneError, match="gone.tif: raster not found"):
        CatalogDataset(moved)
    with pytest.raises(RSGeoPruneError, match="no kept tiles"):
        CatalogDataset(table.assign(kept=False))
    with pytest.raises(RSGeoPruneError, match="band 5: out of range"):
        CatalogDataset(table, bands=[1, 5])
    with pytest.raises(RSGeoPruneError, match="crop 300: larger"):
        CatalogDataset(table, crop=300)


# -- output="raw" + to_model_range, mask skipping -------------------------------------------------
@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
@pytest.mark.parametrize("crop,dihedral_", [(None, False), (24, True)])
def test_raw_output_then_batch_transform_equals_the_float_output(tmp_path, dtype, crop, dihedral_):
    path = _raster(tmp_path / f"r_{dtype}.tif", dtype, 4, nodata=0 if dtype == "uint8" else 9999)
    table = tiles_stage([path], TileConfig(tile_size=32, max_nodata=1.0), progress=False)
    kw = dict(crop=crop, dihedral=dihedral_, seed=5, fill=-0.5)
    flt, raw = CatalogDataset(table, **kw), CatalogDataset(table, output="raw", **kw)
    batch = next(iter(torch.utils.data.DataLoader(raw, batch_size=len(raw))))
    assert batch["image"].dtype == (torch.uint8 if dtype == "uint8" else torch.int32)
    assert batch["stretch"].shape == (len(raw), 4, 3) and batch["stretch"].dtype == torch.float64
    out = raw.to_model_range(batch)
    expected = torch.stack([flt[i]["image"] for i in range(len(flt))])
    assert out["image"].dtype == torch.float32 and torch.equal(out["image"], expected)  # bit for bit
    assert torch.equal(out["valid"], batch["valid"]) and "stretch" not in out
    assert out["tile_id"] == flt.tile_ids
    assert (out["image"][0][:, ~out["valid"][0]] == -0.5).all() and not out["valid"][0].all()
    assert raw.to_model_range(out) is out  # a batch in model range (a float dataset's) passes through
    # one sample through the transform, and its raw values are the file's (nodata pixels included)
    one = raw.to_model_range(raw[0])
    assert torch.equal(one["image"], flt[0]["image"])
    if crop is None:
        with rasterio.open(path) as src:
            r = table.iloc[0]
            direct = src.read(window=Window(r.col_off, r.row_off, r.width, r.height)).astype(np.int64)
        np.testing.assert_array_equal(raw[0]["image"].numpy().astype(np.int64), direct)


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_model_range_is_the_documented_rule(tmp_path, dtype):
    """The previous float path's numpy arithmetic, bit for bit: uint8 ``v * float32(2/255) - 1``;
    other dtypes ``Stretch.to_unit`` (float64) then ``* 2 - 1`` in float32; invalid pixels ``fill``."""
    path = _raster(tmp_path / "r.tif", dtype, 3, nodata=0 if dtype == "uint8" else 9999)
    table = tiles_stage([path], TileConfig(tile_size=32, max_nodata=1.0), progress=False)
    flt = CatalogDataset(table, select="all")
    for i in (0, 4):
        tile = flt.reader.read(flt._rows[i])
        if dtype == "uint8":
            ref = np.multiply(tile.data, np.float32(2.0 / 255.0), dtype=np.float32)
        else:
            ref = tile.stretch.to_unit(tile.data)
            ref *= np.float32(2.0)
        ref -= np.float32(1.0)
        ref[:, ~tile.valid] = -1.0
        np.testing.assert_array_equal(flt[i]["image"].numpy(), ref)


def _plain(path, data, **profile):
    c, h, w = data.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=w,
        height=h,
        count=c,
        dtype=data.dtype.name,
        crs="EPSG:32614",
        transform=from_origin(500000, 5000000, 1, 1),
        tiled=True,
        blockxsize=32,
        blockysize=32,
        **profile,
    ) as dst:
        dst.write(data)
    return path


def test_valid_mask_is_skipped_only_when_no_pixel_can_be_nodata(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 255, (3, 64, 64)).astype("uint8")
    data[:, :8, :8] = 0  # zeros, but no nodata value: valid
    plain = _plain(tmp_path / "plain.tif", data)
    ds = CatalogDataset(tiles_stage([plain], TileConfig(tile_size=32, max_nodata=1.0), progress=False))
    assert all(ds[i]["valid"].all() for i in range(len(ds)))
    assert ds.reader._all_valid == {str(plain): True}  # the per-raster fact: no mask read, none computed

    # the run's nodata option makes the zeros nodata
    ds0 = CatalogDataset(tiles_stage([plain], TileConfig(tile_size=32, max_nodata=1.0), progress=False), nodata=0)
    assert not ds0[0]["valid"][:8, :8].any() and ds0[0]["valid"][8:, 8:].all()
    assert ds0.reader._all_valid == {str(plain): False}

    # an internal mask band speaks for a file without a nodata value
    masked = tmp_path / "masked.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        _plain(masked, data)
        with rasterio.open(masked, "r+") as dst:
            m = np.full((64, 64), 255, np.uint8)
            m[40:, 40:] = 0
            dst.write_mask(m)
    dsm = CatalogDataset(tiles_stage([masked], TileConfig(tile_size=32, max_nodata=1.0), progress=False), select="all")
    last = dsm[len(dsm) - 1]["valid"]  # the bottom-right tile
    assert not last[8:, 8:].any() and last[:8].all() and dsm.reader._all_valid == {str(masked): False}

    # a float raster can hold NaN: its mask is computed
    fdata = data.astype("float32")
    fdata[:, 20:24, 20:24] = np.nan
    fpath = _plain(tmp_path / "float.tif", fdata)
    dsf = CatalogDataset(
        tiles_stage([fpath], TileConfig(tile_size=32, max_nodata=1.0), progress=False), select="all", output="raw"
    )
    v = dsf[0]["valid"]
    assert not v[20:24, 20:24].any() and int(v.sum()) == 32 * 32 - 16
    assert dsf.reader._all_valid == {str(fpath): False}
    assert torch.isfinite(dsf.to_model_range(dsf[0])["image"]).all()


def test_unknown_output_is_a_clear_error(scene):
    table = tiles_stage([scene.path], TileConfig(), progress=False)
    with pytest.raises(RSGeoPruneError, match="output 'uint8'"):
        CatalogDataset(table, output="uint8")


def test_to_model_range_moves_the_batch_to_a_device(tmp_path):
    path = _raster(tmp_path / "r.tif", "uint8", 4, nodata=0)
    table = tiles_stage([path], TileConfig(tile_size=32, max_nodata=1.0), progress=False)
    flt, raw = CatalogDataset(table), CatalogDataset(table, output="raw")
    batch = next(iter(torch.utils.data.DataLoader(raw, batch_size=4)))
    out = raw.to_model_range(batch, device="cpu")
    assert out["image"].device.type == "cpu"
    assert torch.equal(out["image"], torch.stack([flt[i]["image"] for i in range(4)]))
    fb = next(iter(torch.utils.data.DataLoader(flt, batch_size=4)))
    assert torch.equal(flt.to_model_range(fb, device="cpu")["image"], fb["image"])


def test_raw_batch_of_mixed_dtypes_is_still_exact(tmp_path):
    """uint8 and uint16 samples collate to int32 (torch.stack promotes): each keeps its own rule."""
    a = _raster(tmp_path / "a.tif", "uint8", 4, nodata=0, seed=1)
    b = _raster(tmp_path / "b.tif", "uint16", 4, nodata=9999, seed=2)
    table = pd.concat(
        [tiles_stage([p], TileConfig(tile_size=32, max_nodata=1.0), progress=False) for p in (a, b)], ignore_index=True
    )
    flt, raw = CatalogDataset(table, select="all"), CatalogDataset(table, select="all", output="raw")
    batch = next(iter(torch.utils.data.DataLoader(raw, batch_size=len(raw))))
    assert batch["image"].dtype == torch.int32
    out = raw.to_model_range(batch)
    assert torch.equal(out["image"], torch.stack([flt[i]["image"] for i in range(len(flt))]))


def _split_table():
    rows = []
    for year, day in (("2010", "0629"), ("2012", "0731"), ("2014", "0720"), ("2016", "0816")):
        for k in range(25):
            rows.append(
                {
                    "tile_id": f"m_1_{year}{day}/{k}",
                    "scene_id": f"m_1_{year}{day}",
                    "href": f"/data/m_4709963_se_14_1_{year}{day}.tif",
                }
            )
    return pd.DataFrame(rows)


def test_acquisition_year_from_a_datetime_column_or_the_file_name():
    from rsgeo_prune.train.dataset import acquisition_year

    assert acquisition_year({"href": "/x/m_4709963_se_14_1_20200831.tif"}) == 2020
    assert acquisition_year({"href": "/x/m_4709963_se_14_1_20200831.tif", "datetime": "2019-05-01T00:00:00Z"}) == 2019
    assert acquisition_year({"href": "/x/scene_123456789.tif"}) is None  # nine digits: not a date
    assert acquisition_year({"href": "/x/LC08_20201399.tif"}) is None  # month 13: not a date


def test_split_validation_holds_out_whole_scenes_and_years():
    from rsgeo_prune.train.dataset import split_validation

    table = _split_table()
    for by in ("scene", "year"):
        v = split_validation(table, by, 0.05)
        held = set(table["scene_id"][v])
        assert len(held) == 1 and v.sum() == 25  # one whole acquisition, however small the fraction
        assert not (set(table["scene_id"][~v]) & held)
        np.testing.assert_array_equal(v, split_validation(table.iloc[::-1], by, 0.05)[::-1])  # order-free
    assert split_validation(table, "scene", 0.3).sum() == 50  # two scenes reach 30 %
    assert split_validation(table, "scene", 0.99).sum() == 75  # never every scene
    per_tile = split_validation(table, "hash", 0.3)
    assert 0 < per_tile.sum() < 100 and len(set(table["scene_id"][per_tile])) > 1


def test_split_validation_bad_input_names_the_problem():
    from rsgeo_prune.train.dataset import split_validation

    table = _split_table()
    with pytest.raises(RSGeoPruneError, match="one scene"):
        split_validation(table[table["scene_id"] == table["scene_id"][0]], "scene", 0.1)
    undated = table.assign(href="/data/scene.tif")
    with pytest.raises(RSGeoPruneError, match="no acquisition date"):
        split_validation(undated, "year", 0.1)
    with pytest.raises(RSGeoPruneError, match="val-by 'month'"):
        split_validation(table, "month", 0.1)


# -- where the pixels lie: crs and bounds ----------------------------------------------------------
def test_samples_carry_the_crs_and_the_bounds_of_their_pixels(tmp_path):
    path = _raster(tmp_path / "r.tif", "uint8", 3, nodata=0)  # EPSG:32614, origin (500000, 5000000), 1 m
    table = tiles_stage([path], TileConfig(tile_size=32, max_nodata=1.0), progress=False)
    ds = CatalogDataset(table, select="all")
    i = ds.tile_ids.index(table.loc[(table.row_off == 32) & (table.col_off == 64), "tile_id"].item())
    s = ds[i]
    assert s["crs"] == "EPSG:32614" and ds.tile_crs(i) == "EPSG:32614"
    assert s["bounds"].dtype == torch.float64
    assert s["bounds"].tolist() == [500064.0, 4999936.0, 500096.0, 4999968.0]  # (minx, miny, maxx, maxy)
    np.testing.assert_array_equal(ds.tile_bounds(i), s["bounds"].numpy())
    # a centred crop of 16 px: the window 8 px in from the tile's corner
    centred = CatalogDataset(table, select="all", crop=16, random_crop=False)[i]
    assert centred["bounds"].tolist() == [500072.0, 4999944.0, 500088.0, 4999960.0]
    # a random crop: a 16 m box inside the tile, on the pixel grid
    b = CatalogDataset(table, select="all", crop=16, seed=4)[i]["bounds"].numpy()
    assert b[2] - b[0] == 16 and b[3] - b[1] == 16 and b[0] >= 500064 and b[2] <= 500096 and b[0] == int(b[0])


def test_bounds_follow_a_rotated_transform(tmp_path):
    path = _raster(tmp_path / "r.tif", "uint8", 3, nodata=0)
    table = pd.DataFrame(tiles_stage([path], TileConfig(tile_size=32, max_nodata=1.0), progress=False))
    table["transform"] = [np.array([0.0, 2.0, 100.0, -2.0, 0.0, 200.0])] * len(table)  # a quarter turn, 2 m pixels
    s = CatalogDataset(table, select="all")[0]
    # x = 2 row + 100, y = -2 col + 200 over rows, cols in [0, 32]
    assert s["bounds"].tolist() == [100.0, 136.0, 164.0, 200.0]


def test_crs_and_bounds_collate_and_stay_on_the_cpu(tmp_path):
    path = _raster(tmp_path / "r.tif", "uint8", 3, nodata=0)
    table = tiles_stage([path], TileConfig(tile_size=32, max_nodata=1.0), progress=False)
    for output in ("float", "raw"):
        ds = CatalogDataset(table, select="all", output=output)
        batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
        assert batch["crs"] == ["EPSG:32614"] * 5
        assert batch["bounds"].shape == (5, 4) and batch["bounds"].dtype == torch.float64
        np.testing.assert_array_equal(batch["bounds"].numpy(), np.stack([ds.tile_bounds(k) for k in range(5)]))
        out = ds.to_model_range(batch, device="meta")  # a device other than the CPU, present everywhere
        assert out["image"].device.type == "meta" and out["valid"].device.type == "meta"
        assert out["bounds"].device.type == "cpu" and out["crs"] == batch["crs"]


def test_collection_images_have_a_point_or_no_location(tmp_path):
    from PIL import Image

    from rsgeo_prune.sources import describe_image_collection
    from rsgeo_prune.tiling import collection_grid

    rng = np.random.default_rng(0)
    for name in ("located", "unplaced"):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3)).astype("uint8")).save(tmp_path / f"{name}.png")
    (tmp_path / "manifest.csv").write_text("path,lon,lat\nlocated.png,-97.5,47.25\n")
    ds = CatalogDataset(collection_grid(describe_image_collection(tmp_path)), select="all")
    by_id = {t.split("/")[-2]: ds[k] for k, t in enumerate(ds.tile_ids)}
    assert by_id["located"]["crs"] == "EPSG:4326"
    assert by_id["located"]["bounds"].tolist() == [-97.5, 47.25, -97.5, 47.25]
    assert by_id["unplaced"]["crs"] == "" and torch.isnan(by_id["unplaced"]["bounds"]).all()


def test_acquisition_year_reads_the_datetime_then_the_range_then_the_file_name():
    from rsgeo_prune.train.dataset import acquisition_year

    day = pd.Timestamp("2014-07-20", tz="UTC")
    assert acquisition_year({"datetime": pd.NaT, "start_datetime": day, "href": "m_1_20100101.tif"}) == 2014
    assert acquisition_year({"datetime": pd.Timestamp("2016-01-02", tz="UTC"), "start_datetime": day}) == 2016
    assert acquisition_year({"datetime": pd.NaT, "start_datetime": pd.NaT, "href": "m_1_20100101.tif"}) == 2010
    assert acquisition_year({"href": "scene.tif"}) is None
