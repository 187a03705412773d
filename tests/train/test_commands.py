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
    assert (
        main(
            [
                "train-vae",
                str(catalog),
                "--out",
                str(out),
                "--preset",
                "tiny",
                "--steps",
                "3",
                "--batch-size",
                "4",
                "--val-fraction",
                "0.3",
                "--val-every",
                "3",
                "--quiet",
            ]
        )
        == 0
    )
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


@pytest.fixture(scope="module")
def two_year_catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_cli_years")
    paths = [
        write_scene(root / f"m_4709963_se_14_1_{d}.tif", rows=2, cols=4, tile_size=64, seed=s, nodata_rows=0).path
        for s, d in ((1, "20160816"), (2, "20180716"), (3, "20200831"))
    ]
    path = root / "tiles.parquet"
    write_geoparquet(tiles_stage(paths, TileConfig(tile_size=64), progress=False), path)
    return path


@pytest.mark.parametrize("val_by", ["year", "scene"])
def test_train_vae_holds_out_a_whole_acquisition_and_reports_the_hash_split_beside_it(
    two_year_catalog, tmp_path, capsys, val_by
):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train-vae",
                str(two_year_catalog),
                "--out",
                str(out),
                "--preset",
                "tiny",
                "--steps",
                "2",
                "--batch-size",
                "2",
                "--val-by",
                val_by,
                "--val-fraction",
                "0.3",
                "--val-every",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["val_by"] == val_by and summary["val_tiles"] == 8  # one whole acquisition of 8 tiles
    assert summary["train_tiles"] + summary["val_hash_tiles"] == 16 and summary["val_hash_tiles"] > 0
    assert summary["val_hash"]["tiles"] == summary["val_hash_tiles"] and "psnr" in summary["val_hash"]["vae"]


def test_train_vae_on_one_scene_falls_back_to_the_hash_split(catalog, tmp_path, capsys):
    assert (
        main(
            [
                "train-vae",
                str(catalog),
                "--out",
                str(tmp_path / "r"),
                "--preset",
                "tiny",
                "--steps",
                "1",
                "--batch-size",
                "2",
                "--val-fraction",
                "0.3",
                "--val-every",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["val_by"] == "hash" and summary["val_hash_tiles"] == 0


@pytest.mark.parametrize("flag,value", [("--jitter-gain", "nan"), ("--jitter-offset", "-0.1"), ("--jitter-gamma", "2")])
def test_bad_jitter_is_one_line(catalog, tmp_path, capsys, flag, value):
    code = main(["train-vae", str(catalog), "--out", str(tmp_path / "o"), "--preset", "tiny", flag, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and flag in err[0]
    assert not (tmp_path / "o").exists()
