"""Input hardening and interoperability: NaN as nodata, files given twice, manifest
values, gsd in metres. Tables of small cases; every raster is a few 32-px tiles."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from rsgeo_prune import RSGeoPruneError, TileConfig, describe_raster, resolve_inputs, tiles_stage
from rsgeo_prune.entropy import scene_histograms
from rsgeo_prune.tiling import nodata_fraction, tile_grid

T = 32  # tile edge, px


def _raster(path, data, *, crs="EPSG:26914", transform=None, nodata=None, mask=None):
    """Write ``data`` (C, H, W) as a tiled GeoTIFF; ``mask`` (H, W) bool adds a per-dataset mask band."""
    c, h, w = data.shape
    profile = dict(
        driver="GTiff",
        width=w,
        height=h,
        count=c,
        dtype=data.dtype.name,
        crs=crs,
        nodata=nodata,
        transform=transform or from_origin(600_000, 5_200_000, 1, 1),
        tiled=True,
        blockxsize=T,
        blockysize=T,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if mask is not None:
            dst.write_mask(mask.astype(np.uint8) * 255)
    return path


# ---------------------------------------------------------------------------------------------
# 1. NaN is nodata, in both paths (nodata_fraction and the entropy histograms)
# ---------------------------------------------------------------------------------------------


def _nan_scene(nodata=None):
    """3 bands, 2 x 3 tiles of 32 px, float32. Tile by tile (row-major):
    0 NaN in every band; 1 NaN in band 1 only; 2 NaN in bands 1-2, band 3 holds data;
    3 left half NaN in every band; 4 the nodata value in band 1 and NaN in bands 2-3; 5 data."""
    rng = np.random.default_rng(5)
    data = rng.random((3, 2 * T, 3 * T)).astype(np.float32) * 100 + 1  # never 0, never NaN
    data[:, :T, :T] = np.nan
    data[0, :T, T : 2 * T] = np.nan
    data[:2, :T, 2 * T :] = np.nan
    data[:, T:, : T // 2] = np.nan
    data[0, T:, T : 2 * T] = 0.0
    data[1:, T:, T : 2 * T] = np.nan
    return data


# expected nodata_frac per tile; tile 4 is nodata only where 0 is the declared nodata value
NAN_CASES = {
    "no nodata declared": (None, False, [1.0, 0.0, 0.0, 0.5, 0.0, 0.0]),
    "nodata 0 declared": (0.0, False, [1.0, 0.0, 0.0, 0.5, 1.0, 0.0]),
    "per-dataset mask band": (None, True, [1.0, 0.0, 0.0, 0.5, 0.0, 0.25]),
}


@pytest.mark.parametrize("entropy", [None, 0.0], ids=["plain", "with entropy"])
@pytest.mark.parametrize("case", NAN_CASES)
def test_nan_is_nodata_with_and_without_entropy(tmp_path, case, entropy):
    nodata, with_mask, want = NAN_CASES[case]
    mask = None
    if with_mask:  # the mask also hides the bottom-right tile's top quarter
        mask = np.ones((2 * T, 3 * T), bool)
        mask[T : T + T // 4, 2 * T :] = False
    path = _raster(tmp_path / "nan.tif", _nan_scene(), nodata=nodata, mask=mask)
    table = tiles_stage([path], TileConfig(tile_size=T, entropy_min=entropy), progress=False)
    assert table["nodata_frac"].tolist() == want
    assert not table["kept"].iloc[0] and table["pruned_by"].iloc[0] == "nodata"


@pytest.mark.parametrize("case", NAN_CASES)
def test_nodata_fraction_and_histograms_agree(tmp_path, case):
    nodata, with_mask, _ = NAN_CASES[case]
    mask = np.ones((2 * T, 3 * T), bool) if with_mask else None
    if with_mask:
        mask[T + 3 : T + 9, 2 * T + 5 :] = False
    scene = describe_raster(_raster(tmp_path / "nan.tif", _nan_scene(), nodata=nodata, mask=mask))
    table, _ = tile_grid(scene, T)
    r, c, h, w = (table[k].to_numpy() for k in ("row_off", "col_off", "height", "width"))
    hist = scene_histograms(scene, r, c, h, w, T)
    assert np.array_equal(nodata_fraction(scene, r, c, h, w, tile_size=T), 1.0 - hist[:, -1].sum(axis=1) / (h * w))


# ---------------------------------------------------------------------------------------------
# 2. Every file once; scene ids unique
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """tmp_path as the working folder, with data/a.tif, data/b.tif, other/a.tif, item.json (→ a.tif),
    a symlink to a.tif, and an image folder imgs/ with imgs/sub/."""
    (tmp_path / "data").mkdir()
    (tmp_path / "other").mkdir()
    img = np.full((3, T, T), 7, np.uint8)
    for p in ("data/a.tif", "data/b.tif", "other/a.tif"):
        _raster(tmp_path / p, img)
    os.symlink(tmp_path / "data" / "a.tif", tmp_path / "link.tif")
    item = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": "item-a",
        "geometry": None,
        "links": [],
        "properties": {"datetime": "2020-01-01T00:00:00Z"},
        "assets": {"image": {"href": "data/a.tif", "type": "image/tiff; application=geotiff", "roles": ["data"]}},
    }
    (tmp_path / "item.json").write_text(json.dumps(item))
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    for p in ("imgs/x.png", "imgs/sub/y.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / p)
    monkeypatch.chdir(tmp_path)
    return tmp_path


DUPLICATES = [
    # (inputs, error pattern)
    (
        ["data/a.tif", "data/a.tif"],
        r"data/a\.tif: given twice \(as 'data/a\.tif' and 'data/a\.tif'\); pass each raster once",
    ),
    (["data/a.tif", "data/*.tif"], r"data/a\.tif: given twice \(as 'data/a\.tif' and 'data/\*\.tif'\)"),
    (["data/*.tif", "*/b.tif"], r"data/b\.tif: given twice \(as 'data/\*\.tif' and '\*/b\.tif'\)"),
    (["item.json", "data/a.tif"], r"data/a\.tif: given twice \(as 'item\.json' and 'data/a\.tif'\)"),
    (["link.tif", "data/a.tif"], r"data/a\.tif: given twice \(as 'link\.tif' and 'data/a\.tif'\)"),
    (["imgs", "imgs/sub"], r"imgs/sub/y\.png: given twice \(as 'imgs' and 'imgs/sub'\); pass each image folder once"),
    (["data/a.tif", "other/a.tif"], r"other/a\.tif: scene id 'a' is also used by .*data/a\.tif, so their tile ids"),
]


@pytest.mark.parametrize("inputs, error", DUPLICATES, ids=[" ".join(i) for i, _ in DUPLICATES])
def test_each_file_once_and_unique_scene_ids(folder, inputs, error):
    with pytest.raises(RSGeoPruneError, match=error):
        resolve_inputs(inputs)


def test_distinct_files_pass_and_tile_ids_are_unique(folder):
    table = tiles_stage(["data/*.tif", "imgs"], TileConfig(tile_size=T), progress=False)
    assert table["tile_id"].is_unique and len(table) == 4


def test_images_differing_only_in_suffix_would_share_a_tile_id(folder):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "imgs" / "x.jpg")
    with pytest.raises(RSGeoPruneError, match=r"imgs/x\.png: same tile id as x\.jpg \('imgs/x/0_0'\)"):
        resolve_inputs(["imgs"])


# ---------------------------------------------------------------------------------------------
# 3. Manifest values
# ---------------------------------------------------------------------------------------------

MANIFESTS = [
    # (lon, lat, error pattern or None)
    (
        ["1.5", "abc"],
        ["2", "3"],
        r"manifest\.csv: row 2 \('y\.png'\): longitude 'abc' is not a number; "
        r"give degrees in \[-180, 180\]",
    ),
    (
        [1.5, 2.0],
        [2.0, 999.0],
        r"manifest\.csv: row 2 \('y\.png'\): latitude 999 is out of range; give degrees in \[-90, 90\]",
    ),
    ([-180.5, 2.0], [2.0, 3.0], r"row 1 \('x\.png'\): longitude -180\.5 is out of range"),
    (["inf", 2.0], [2.0, 3.0], r"row 1 \('x\.png'\): longitude '?inf'? is out of range"),
    ([1.5, None], [2.0, 3.0], r"row 2 \('y\.png'\) gives latitude without the other"),
    ([1.5, None], [2.0, None], None),  # both empty: no location
    ([-180.0, 180.0], [-90.0, 90.0], None),
]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("lon, lat, error", MANIFESTS)
def test_manifest_values_are_checked(tmp_path, fmt, lon, lat, error):
    root = tmp_path / "imgs"
    root.mkdir()
    for p in ("x.png", "y.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / p)
    table = pd.DataFrame({"path": ["x.png", "y.png"], "lon": lon, "lat": lat})
    if fmt == "csv":
        table.to_csv(root / "manifest.csv", index=False)
    else:
        table.astype({"lon": str, "lat": str} if isinstance(lon[0], str) else {}).to_parquet(root / "manifest.parquet")
        error = error and error.replace(r"manifest\.csv", r"manifest\.parquet")
    if error is not None:
        with pytest.raises(RSGeoPruneError, match=error):
            resolve_inputs([root])
        return
    (coll,) = resolve_inputs([root])
    want_lon = [np.nan if v is None else float(v) for v in lon]
    assert np.array_equal(coll.lon, want_lon, equal_nan=True)


# ---------------------------------------------------------------------------------------------
# 6. gsd in metres
# ---------------------------------------------------------------------------------------------

GSD = [
    # (crs, pixel size in CRS units, origin (x, y), gsd in metres, tolerance)
    ("EPSG:26914", 0.6, (600_000, 5_200_000), 0.6, 0.0),
    ("EPSG:2227", 3.0, (6_000_000, 2_000_000), 3.0 * 1200 / 3937, 1e-12),  # US survey feet
    # geographic: sqrt of the pixel's area on WGS84 (pyproj.Geod.polygon_area_perimeter gives
    # 1.109463 m at the equator, 0.788467 m at 60° N)
    ("EPSG:4326", 1e-5, (10.0, 0.0 + T * 1e-5 / 2), 1.109463, 1e-5),
    ("EPSG:4326", 1e-5, (10.0, 60.0 + T * 1e-5 / 2), 0.788467, 1e-5),
]


@pytest.mark.parametrize("crs, size, origin, want, tol", GSD, ids=[f"{g[0]} {g[3]}" for g in GSD])
def test_gsd_is_in_metres(tmp_path, crs, size, origin, want, tol):
    path = _raster(
        tmp_path / "g.tif", np.ones((1, T, T), np.uint8), crs=crs, transform=from_origin(*origin, size, size)
    )
    table, _ = tile_grid(describe_raster(path), T)
    assert table["gsd"].iloc[0] == pytest.approx(want, rel=tol, abs=0)
