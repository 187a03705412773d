import numpy as np
import pandas as pd
import rasterio

from rsgeo_prune import synth


def test_scene_is_a_real_tiled_compressed_geotiff(scene):
    with rasterio.open(scene.path) as src:
        assert src.count == 4 and src.dtypes[0] == "uint8"
        assert src.crs.to_epsg() == 26914 and src.nodata == 0
        assert src.profile["tiled"] and src.block_shapes[0] == (256, 256)
        assert src.compression.name == "deflate"
        assert (src.height, src.width) == (6 * 256 + 100, 8 * 256 + 50)


def test_labels_cover_every_class_and_the_rare_one_once(scene):
    counts = scene.labels["class"].value_counts()
    assert set(synth.CLASSES) <= set(counts.index)
    assert counts[synth.RARE_CLASS] == 1
    assert counts[synth.NODATA_CLASS] == 8  # one bottom row of 8 tiles
    assert pd.read_csv(scene.path.with_name("scene_labels.csv")).equals(scene.labels)


def test_tiles_look_like_their_class(scene):
    with rasterio.open(scene.path) as src:
        px = src.read()
    by_class = {}
    for row in scene.labels.itertuples():
        t = px[:, row.row_off : row.row_off + 256, row.col_off : row.col_off + 256].astype(float)
        by_class.setdefault(row._2, []).append(t.reshape(4, -1).mean(axis=1))
    mean = {k: np.mean(v, axis=0) for k, v in by_class.items()}
    assert mean["cloud"][:3].min() > 230  # bright
    assert mean["water"][3] < 30  # dark NIR
    assert mean["forest"][3] > mean["forest"][0] + 100  # vegetation: NIR >> red
    assert np.all(mean["nodata"] == 0)


def test_same_seed_same_bytes(tmp_path):
    a = synth.write_scene(tmp_path / "a.tif", rows=2, cols=3, seed=3)
    b = synth.write_scene(tmp_path / "b.tif", rows=2, cols=3, seed=3)
    with rasterio.open(a.path) as sa, rasterio.open(b.path) as sb:
        assert np.array_equal(sa.read(), sb.read())
    assert list(a.labels["class"]) == list(b.labels["class"])


def test_reference_set_is_an_image_folder(tmp_path):
    root = synth.write_reference_set(tmp_path / "ref", per_class=2, size=64)
    assert sorted(p.name for p in root.iterdir()) == sorted(synth.CLASSES)
    assert len(list(root.glob("*/*.png"))) == 2 * len(synth.CLASSES)
