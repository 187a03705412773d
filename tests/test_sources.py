import json

import numpy as np
import pandas as pd
import pytest
import rasterio
from PIL import Image

from rsgeo_prune import RSGeoPruneError, TileConfig, resolve_inputs, tiles_stage
from rsgeo_prune.sources import ImageCollection, RasterScene


def _write(path, crs="EPSG:26914", size=512, nodata=None):
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint8",
        transform=rasterio.transform.from_origin(600_000, 5_200_000, 1, 1),
        nodata=nodata,
    )
    if crs:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full((3, size, size), 7, np.uint8))
    return path


def _item(path, href, **props):
    item = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": "item-1",
        "geometry": None,
        "properties": {"datetime": "2020-01-01T00:00:00Z", **props},
        "links": [],
        "assets": {
            "thumb": {"href": "thumb.png", "type": "image/png"},
            "image": {"href": href, "type": "image/tiff; application=geotiff", "roles": ["data"]},
        },
    }
    path.write_text(json.dumps(item))
    return path


@pytest.mark.parametrize("props", [{"proj:code": "EPSG:26914"}, {"proj:epsg": 26914}])
def test_stac_item_supplies_the_crs(tmp_path, props):
    _write(tmp_path / "nocrs.tif", crs=None)
    item = _item(tmp_path / "item.json", "nocrs.tif", **props)  # relative href
    (src,) = resolve_inputs([item])
    assert isinstance(src, RasterScene)
    assert src.scene_id == "item-1" and src.crs.to_epsg() == 26914
    assert src.href == str((tmp_path / "nocrs.tif").resolve())


def test_stac_item_crs_conflict(tmp_path):
    _write(tmp_path / "a.tif", crs="EPSG:32618")
    with pytest.raises(RSGeoPruneError, match="differs from the STAC Item"):
        resolve_inputs([_item(tmp_path / "item.json", "a.tif", **{"proj:code": "EPSG:26914"})])


def test_glob_and_duplicate_ids(tmp_path):
    for name in ("b.tif", "a.tif"):
        _write(tmp_path / name)
    srcs = resolve_inputs([str(tmp_path / "*.tif")])
    assert [s.scene_id for s in srcs] == ["a", "b"]
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub" / "a.tif")
    with pytest.raises(RSGeoPruneError, match="scene id 'a' is also used"):
        resolve_inputs([tmp_path / "a.tif", tmp_path / "sub" / "a.tif"])
    with pytest.raises(RSGeoPruneError, match="glob matched no files"):
        resolve_inputs([str(tmp_path / "*.jp2")])


def test_image_collection_with_manifest(tmp_path):
    root = tmp_path / "git10m"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("x.jpg", "y.png", "sub/z.png"):
        Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(root / name)
    pd.DataFrame({"image": ["x.jpg", "sub/z.png"], "Longitude": [-97.5, 2.35], "lat": [47.0, 48.85]}).to_csv(
        root / "manifest.csv", index=False
    )
    (coll,) = resolve_inputs([root])
    assert isinstance(coll, ImageCollection) and coll.images == ("sub/z.png", "x.jpg", "y.png")
    table = tiles_stage([root], progress=False)
    assert table["tile_id"].tolist() == ["git10m/sub/z/0_0", "git10m/x/0_0", "git10m/y/0_0"]
    assert (table["height"] == 64).all() and (table["width"] == 48).all() and (table["bands"] == 3).all()
    assert table.geometry.iloc[0].coords[0] == (2.35, 48.85)
    assert table.geometry.iloc[2] is None  # not in the manifest: no location
    assert table["kept"].all()


def test_image_collection_urban_points(tmp_path):
    import geopandas as gpd
    import shapely

    root = tmp_path / "imgs"
    root.mkdir()
    for name in ("in.png", "out.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / name)
    pd.DataFrame({"path": ["in.png", "out.png"], "lon": [0.5, 5.0], "lat": [0.5, 5.0]}).to_parquet(
        root / "manifest.parquet"
    )
    gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 1, 1)], crs="EPSG:4326").to_file(tmp_path / "u.geojson")
    table = tiles_stage([root], TileConfig(mask=str(tmp_path / "u.geojson"), min_urban=0.5), progress=False)
    assert table["urban_frac"].tolist() == [1.0, 0.0]
    assert table["pruned_by"].tolist()[1] == "mask"


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RSGeoPruneError, match="folder holds no images"):
        resolve_inputs([tmp_path / "empty"])
