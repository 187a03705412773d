"""`rsgeo-prune run` end to end on a synthetic scene with known classes (RS-Prune at 85 % pruning)."""

import numpy as np
import pandas as pd
import pytest

from rsgeo_prune import RSGeoPruneError
from rsgeo_prune.cli import main
from rsgeo_prune.pipeline import RunConfig, TileConfig, run_pipeline
from rsgeo_prune.select import select_random
from rsgeo_prune.synth import write_reference_set, write_scene


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    scene = write_scene(root / "scene.tif", rows=10, cols=12, rare_tiles=2, seed=3)
    ref = write_reference_set(root / "ref", per_class=8, seed=4)
    return root, scene, ref


def test_rs_prune_keeps_the_rare_class_and_drops_clouds(world, capsys):
    root, scene, ref = world
    code = main(
        [
            "run",
            str(scene.path),
            "--out",
            str(root / "rs"),
            "--reference",
            str(ref),
            "--k",
            "7",
            "--entropy-keep",
            "0.7",
            "--budget",
            "0.15",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "pruned by selection" in out and "kept" in out
    cat = pd.read_parquet(root / "rs" / "catalog.parquet")
    cls = cat["tile_id"].map(scene.labels.set_index("tile_id")["class"])
    passed = (~cat["pruned_by"].isin(["nodata", "mask"])).sum()
    budget = int(np.floor(0.15 * passed + 0.5))
    assert cat["kept"].sum() == budget  # exactly B
    assert cat.loc[cls == "solar_farm", "kept"].all()  # every rare tile survives
    assert not cat.loc[cls == "cloud", "kept"].any()
    candidates = set(cls[cat["pruned_by"].isna() | (cat["pruned_by"] == "selection")])
    assert candidates <= set(cls[cat["kept"]])  # every class among the candidates is represented
    assert set(cat.loc[cat["pruned_by"] == "selection", "cluster"].notna()) == {True}
    assert cat["rank"].dropna().min() == 0 and (root / "rs" / "bank.npz").exists()

    # random subsets of the same size miss the rare class most of the time
    cand = np.flatnonzero(cat["pruned_by"].isna() | (cat["pruned_by"] == "selection"))
    rare = cls.to_numpy()[cand] == "solar_farm"
    misses = sum(not rare[select_random(len(cand), budget, seed=s)].all() for s in range(20))
    print(f"random subsets of {budget} tiles missed a rare tile in {misses}/20 draws; RS-Prune kept all")
    assert misses > 10


@pytest.mark.parametrize("method", ["water-filling", "random", "entropy", "moderate", "cluster-nearest", "full-kmeans"])
def test_every_method_keeps_exactly_the_budget(world, method):
    root, scene, ref = world
    cat, counts = run_pipeline(
        [scene.path],
        root / method,
        [ref],
        TileConfig(entropy_keep=0.7),
        RunConfig(budget_count=12, k=7, method=method),
        progress=False,
    )
    assert cat["kept"].sum() == 12 == counts["selected"]
    assert set(cat["pruned_by"].dropna()) <= {"nodata", "entropy", "selection"}


def test_saved_bank_and_budget_larger_than_candidates(world):
    root, scene, ref = world
    assert main(["centroids", str(ref), "--k", "7", "--out", str(root / "bank.npz"), "--quiet"]) == 0
    cat, counts = run_pipeline(
        [scene.path],
        root / "big",
        [root / "bank.npz"],
        TileConfig(entropy_keep=0.5),
        RunConfig(budget_count=10_000, k=7),
        progress=False,
    )
    assert counts["selected"] == counts["after entropy"]  # all candidates when B > N
    from dataclasses import replace

    from rsgeo_prune.centroids import CentroidBank

    other = replace(CentroidBank.load(root / "bank.npz"), embedder="siglip:/models/Git-RSCLIP").save(root / "other.npz")
    with pytest.raises(RSGeoPruneError, match="bank was made with embedder 'siglip:/models/Git-RSCLIP', not 'default'"):
        run_pipeline([scene.path], root / "x", [other], TileConfig(), RunConfig(k=7), progress=False)


def test_same_inputs_same_catalog_bytes(world):
    root, scene, ref = world
    for name in ("a", "b"):
        run_pipeline([scene.path], root / name, [ref], TileConfig(entropy_keep=0.7), RunConfig(k=7), progress=False)
    assert (root / "a" / "catalog.parquet").read_bytes() == (root / "b" / "catalog.parquet").read_bytes()


def test_run_on_an_image_collection(world, tmp_path):
    """Git-10M/RS5M style: a folder of images, some placed by a manifest; all the outputs still work."""
    import pystac
    from PIL import Image

    from rsgeo_prune.synth import CLASSES, render_tile

    root, _, ref = world
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(28):
        Image.fromarray(np.moveaxis(render_tile(CLASSES[i % 7], rng, 96)[:3], 0, -1)).save(images / f"im_{i:02d}.png")
    pd.DataFrame(
        {"path": [f"im_{i:02d}.png" for i in range(0, 28, 2)], "lon": np.arange(14) * 0.01 - 97, "lat": 47.0}
    ).to_csv(images / "manifest.csv", index=False)
    cat, counts = run_pipeline(
        [images], tmp_path / "run", [ref], TileConfig(entropy_keep=0.75), RunConfig(budget_count=7, k=7), progress=False
    )
    assert counts["selected"] == 7 and cat["cluster"].notna().sum() == counts["after entropy"]
    stac = list(pystac.Catalog.from_file(str(tmp_path / "run" / "stac" / "catalog.json")).get_items(recursive=True))
    assert len(stac) == 7
    assert main(["map", str(tmp_path / "run"), "--out", str(tmp_path / "map.html")]) == 0


def test_entropy_method_without_stage_one_is_refused(world, tmp_path):
    """Without an entropy option no entropy is computed: the entropy baseline would silently rank by
    tile id (found by the convergence benchmark)."""
    root, scene, ref = world
    with pytest.raises(RSGeoPruneError, match="ranks by Stage I entropy"):
        run_pipeline(
            [scene.path], tmp_path / "e", [], TileConfig(), RunConfig(budget_count=5, method="entropy"), progress=False
        )
    assert not (tmp_path / "e" / "tiles.parquet").exists()
    cat, _ = run_pipeline(
        [scene.path],
        tmp_path / "e",
        [],
        TileConfig(entropy_min=0.0),
        RunConfig(budget_count=5, method="entropy"),
        progress=False,
    )
    kept = cat.loc[cat["kept"], "entropy"].astype(float)
    others = cat.loc[cat["pruned_by"] == "selection", "entropy"].astype(float)
    assert len(kept) == 5 and kept.min() >= others.max()
