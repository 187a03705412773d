"""The training wing through the `rsgeo-prune` command: train-vae then encode on a tiny catalog,
and one-line errors with exit 2."""

import json

import pytest

from rsgeo_prune.catalog import write_geoparquet
from rsgeo_prune.cli import main
from rsgeo_prune.config import TileConfig
from rsgeo_prune.synth import write_scene
from rsgeo_prune.tile_table import tiles_stage


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_cli")
    scene = write_scene(root / "s.tif", rows=3, cols=4, tile_size=64, seed=5, nodata_rows=0)
    path = root / "tiles.parquet"
    write_geoparquet(tiles_stage([scene.path], TileConfig(tile_size=64), progress=False), path)
    return path


def test_train_vae_then_encode(catalog, tmp_path, capsys):
    out = tmp_path / "vae_run"
    assert main(["train-vae", str(catalog), "--out", str(out), "--preset", "tiny", "--steps", "3", "--batch-size", "4",
                 "--val-fraction", "0.3", "--val-every", "3", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 3 and (out / "vae" / "config.json").exists()
    lat = tmp_path / "latents"
    assert main(["encode", str(catalog), "--vae", str(out), "--out", str(lat), "--quiet"]) == 0
    index = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert index["tiles"] == 12 and index["latent_shape"] == [4, 8, 8]


def test_missing_raster_is_one_line(catalog, tmp_path, capsys):
    import geopandas as gpd

    moved = tmp_path / "moved.parquet"
    table = gpd.read_parquet(catalog)
    table["href"] = str(tmp_path / "gone.tif")
    table.to_parquet(moved)
    code = main(["train-vae", str(moved), "--out", str(tmp_path / "o"), "--preset", "tiny", "--steps", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "gone.tif" in err[0]
    assert not (tmp_path / "o" / "vae").exists()
