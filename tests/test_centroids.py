import numpy as np
import pytest

from rsgeo_prune import RSGeoPruneError
from rsgeo_prune.centroids import CentroidBank, build_centroid_bank, read_reference_sets
from rsgeo_prune.embed import load_embedder
from rsgeo_prune.synth import CLASSES, write_reference_set


def test_bank_from_image_folders_round_trips(tmp_path):
    ref_a = write_reference_set(tmp_path / "a", per_class=3, size=64, seed=1)
    ref_b = write_reference_set(tmp_path / "b", per_class=2, size=64, seed=2, classes=("forest", "water"))
    ref = read_reference_sets([ref_a, ref_b])
    assert ref.classes == tuple(sorted(CLASSES)) and len(ref.paths) == 3 * len(CLASSES) + 4
    bank = build_centroid_bank([ref_a, ref_b], load_embedder("default"), k=len(CLASSES), seed=0)
    assert bank.centroids.shape == (len(CLASSES), load_embedder("default").dim)
    assert bank.class_counts.sum() == len(ref.paths)
    # each centroid is one synthetic class: the classes are well separated
    assert (bank.class_counts.max(axis=1) == bank.class_counts.sum(axis=1)).all()
    path = bank.save(tmp_path / "bank.npz")
    back = CentroidBank.load(path)
    assert np.array_equal(back.centroids, bank.centroids) and back.embedder == "default"
    assert back.reference_digest == bank.reference_digest and back.classes == bank.classes
    before = read_reference_sets([ref_a, ref_b]).digest()
    (tmp_path / "a" / "forest" / "forest_0.png").write_bytes(b"changed")
    assert read_reference_sets([ref_a, ref_b]).digest() != before


def test_bank_from_a_catalog_of_tiles(scene, tmp_path):
    """A labelled tile catalog (here: the synthetic scene's tiles with their classes) is a reference set too."""
    import pandas as pd

    from rsgeo_prune import tiles_stage

    table = tiles_stage([scene.path], progress=False)
    table = table.merge(scene.labels[["tile_id", "class"]], on="tile_id")
    table = table[table["class"] != "nodata"]
    table.to_parquet(tmp_path / "ref.parquet")
    bank = build_centroid_bank([tmp_path / "ref.parquet"], load_embedder("default"), k=7, seed=0)
    assert bank.class_counts.sum() == len(table) and set(bank.classes) == set(CLASSES)
    purity = bank.class_counts.max(axis=1).sum() / bank.class_counts.sum()
    assert purity > 0.9
    pd.DataFrame({"path": ["x.png"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(RSGeoPruneError, match="bad.csv: reference catalog has no href column"):
        build_centroid_bank([tmp_path / "bad.csv"], load_embedder("default"), k=1)


def test_bad_reference_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RSGeoPruneError, match="no images in <class>/<image> layout"):
        read_reference_sets([tmp_path / "empty"])
    ref = write_reference_set(tmp_path / "r", per_class=1, size=32)
    with pytest.raises(RSGeoPruneError, match="k 50.*is larger than the 7 reference images"):
        build_centroid_bank([ref], load_embedder("default"), k=50)
    (tmp_path / "junk.npz").write_bytes(b"nope")
    with pytest.raises(RSGeoPruneError, match="not a readable centroid bank"):
        CentroidBank.load(tmp_path / "junk.npz")
