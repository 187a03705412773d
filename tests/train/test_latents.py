"""Latent shards: round trip against a direct encode, resumable after a kill, digests, bad input."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from rsgeo_prune import TileConfig, synth, tiles_stage
from rsgeo_prune.errors import RSGeoPruneError
from rsgeo_prune.train import latents as lat
from rsgeo_prune.train.commands import add_encode_arguments, run_encode
from rsgeo_prune.train.dataset import CatalogDataset
from rsgeo_prune.train.vae import build_vae, save_vae, vae_digest

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lat")
    sc = synth.write_scene(root / "s.tif", rows=3, cols=4, tile_size=64, seed=4, nodata_rows=0)
    table = tiles_stage([sc.path], TileConfig(tile_size=64), progress=False)
    torch.manual_seed(0)
    vae = build_vae("tiny")
    vae.register_to_config(latents_mean=(0.1, 0.2, 0.3, 0.4), latents_std=(1.0, 2.0, 3.0, 4.0))
    save_vae(vae, root / "vae")
    return table, root / "vae", vae.eval()


def test_shards_round_trip_against_a_direct_encode(setup, tmp_path):
    table, vae_dir, vae = setup
    ds = CatalogDataset(table)
    index = lat.encode_catalog(ds, vae_dir, tmp_path / "z", shard_size=5, batch_size=4, progress=False)
    assert index["tiles"] == 12 and len(index["shards"]) == 3 and index["latent_shape"] == [4, 8, 8]
    assert index["vae_digest"] == vae_digest(vae_dir) and index["catalog_digest"] == ds.digest()
    shards = lat.LatentShards(tmp_path / "z")
    assert shards.tile_ids == ds.tile_ids and shards.mean.dtype == torch.float16
    with torch.no_grad():
        post = vae.encode(torch.stack([ds[i]["image"] for i in range(12)])).latent_dist
    torch.testing.assert_close(shards.mean[:].float(), post.mean, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(shards.logvar[:].float(), post.logvar, atol=2e-2, rtol=2e-3)
    ids, mean, logvar, meta = lat.read_shard(tmp_path / "z" / "shard-00001.safetensors")
    assert ids == ds.tile_ids[5:10] and mean.shape == (5, 4, 8, 8) and meta["shard"] == "1"
    z = torch.full((1, 4, 8, 8), 1.0)
    assert torch.allclose(shards.normalise(z)[0, :, 0, 0], torch.tensor([0.9, 0.4, 0.7 / 3, 0.15]))
    assert torch.allclose(shards.denormalise(shards.normalise(z)), z)


def _shard_tensors(root):
    from safetensors.torch import load_file

    index = json.loads((root / "index.json").read_text())
    parts = [load_file(str(root / name)) for name in index["shards"]]
    return torch.cat([p["mean"] for p in parts]), torch.cat([p["logvar"] for p in parts])


def test_memory_mapped_rows_equal_the_shards_for_every_kind_of_index(tmp_path):
    from rsgeo_prune.train.latents import write_synthetic_latents

    root = write_synthetic_latents(tmp_path / "z", n=23, shape=(4, 8, 8), seed=3, shard_size=5)  # 5 shards, last of 3
    mean, logvar = _shard_tensors(root)
    ds = lat.LatentShards(root)
    assert isinstance(ds.mean, lat.ShardedRows) and ds.mean.shape == (23, 4, 8, 8) and len(ds.logvar) == 23
    assert not any(isinstance(v, torch.Tensor) and v.numel() > 100 for v in vars(ds).values())  # nothing loaded
    cross = [22, 0, 7, 7, 19, 4, 5, -1]  # unsorted, repeated, negative, across every shard
    for index in (
        3,
        -23,
        slice(None),
        slice(4, 13, 3),
        cross,
        torch.tensor(cross),
        np.array(cross, dtype=np.int32),
        torch.tensor([], dtype=torch.long),
    ):
        assert torch.equal(ds.mean[index], mean[index if not isinstance(index, list) else torch.tensor(index)])
        assert torch.equal(ds.logvar[index], logvar[index if not isinstance(index, list) else torch.tensor(index)])
    assert torch.equal(ds[13]["mean"], mean[13]) and ds[13]["tile_id"] == "synthetic-000013"
    again = pickle.loads(pickle.dumps(ds))  # DataLoader workers: paths travel, the maps are opened again
    assert len(pickle.dumps(ds.mean)) < 4096 and torch.equal(again.mean[cross], mean[cross])
    whole = lat.LatentShards(root, in_memory=True)
    assert torch.equal(whole.mean, mean) and torch.equal(whole.logvar, logvar)
    with pytest.raises(IndexError):
        ds.mean[[23]]
    with pytest.raises(TypeError):
        ds.mean[torch.tensor([True, False])]


def test_a_shard_cut_short_is_named_when_the_latents_are_opened(tmp_path):
    from rsgeo_prune.train.latents import write_synthetic_latents

    root = write_synthetic_latents(tmp_path / "z", n=12, shape=(4, 8, 8), shard_size=5)
    path = root / "shard-00001.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(RSGeoPruneError, match="shard-00001.safetensors: .*encode again"):
        lat.LatentShards(root)


def test_a_killed_encode_resumes_and_keeps_finished_shards(setup, tmp_path, monkeypatch):
    table, vae_dir, _ = setup
    ds = CatalogDataset(table)
    out = tmp_path / "z"
    real = lat.write_shard
    calls = []

    def dies_on_second(path, *a, **k):
        calls.append(path.name)
        if len(calls) == 2:
            with open(path.with_name(f".{path.stem}.tmp-999{path.suffix}"), "wb") as fh:
                fh.write(b"half a shard")  # what a kill mid-write leaves
            raise KeyboardInterrupt
        return real(path, *a, **k)

    monkeypatch.setattr(lat, "write_shard", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        lat.encode_catalog(ds, vae_dir, out, shard_size=5, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [".shard-00001.tmp-999.safetensors", "shard-00000.safetensors"]
    first = (out / "shard-00000.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(lat, "write_shard", lambda path, *a, **k: calls.append(path.name) or real(path, *a, **k))
    calls.clear()
    lat.encode_catalog(ds, vae_dir, out, shard_size=5, progress=False)
    assert calls == ["shard-00001.safetensors", "shard-00002.safetensors"]  # shard 0 was kept
    assert (out / "shard-00000.safetensors").stat().st_mtime_ns == first
    assert sorted(p.name for p in out.iterdir()) == ["index.json"] + [lat.shard_name(k) for k in range(3)]
    assert lat.LatentShards(out).tile_ids == ds.tile_ids


def test_shards_of_another_vae_are_refused(setup, tmp_path):
    table, vae_dir, _ = setup
    ds = CatalogDataset(table)
    lat.encode_catalog(ds, vae_dir, tmp_path / "z", shard_size=5, progress=False)
    other = build_vae("tiny")
    save_vae(other, tmp_path / "other")
    with pytest.raises(RSGeoPruneError, match="shard of another vae"):
        lat.encode_catalog(ds, tmp_path / "other", tmp_path / "z", shard_size=5, progress=False)


def _encode_args(*argv):
    import argparse

    return add_encode_arguments(argparse.ArgumentParser()).parse_args(list(argv) + ["--quiet"])


def test_encode_command_bad_input_leaves_no_shard(setup, tmp_path):
    table, vae_dir, _ = setup
    cat = tmp_path / "tiles.parquet"
    table.to_parquet(cat)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RSGeoPruneError, match="cannot be created"):
        run_encode(_encode_args(str(cat), "--vae", str(vae_dir), "--out", str(tmp_path / "afile" / "z")))
    with pytest.raises(RSGeoPruneError, match="no VAE here"):
        run_encode(_encode_args(str(cat), "--vae", str(tmp_path), "--out", str(tmp_path / "z")))
    with pytest.raises(RSGeoPruneError, match="band 9: out of range"):
        run_encode(_encode_args(str(cat), "--vae", str(vae_dir), "--out", str(tmp_path / "z"), "--bands", "1,9"))
    table.assign(href=str(tmp_path / "moved.tif")).to_parquet(tmp_path / "moved.parquet")
    with pytest.raises(RSGeoPruneError, match="moved.tif: raster not found"):
        run_encode(_encode_args(str(tmp_path / "moved.parquet"), "--vae", str(vae_dir), "--out", str(tmp_path / "z")))
    with pytest.raises(RSGeoPruneError, match="VAE takes 4 bands"):
        run_encode(_encode_args(str(cat), "--vae", str(vae_dir), "--out", str(tmp_path / "z"), "--bands", "1,2,3"))
    assert not (tmp_path / "z").exists() or not any((tmp_path / "z").iterdir())
    index = run_encode(_encode_args(str(cat), "--vae", str(vae_dir), "--out", str(tmp_path / "z")))
    assert json.loads((tmp_path / "z" / "index.json").read_text())["tiles"] == index["tiles"] == 12


def test_cli_exit_code_two_with_one_line(setup, tmp_path, capsys):
    from rsgeo_prune.cli import main

    table, vae_dir, _ = setup
    table.assign(kept=False).to_parquet(tmp_path / "none.parquet")
    assert main(["train-vae", str(tmp_path / "none.parquet"), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no kept tiles" in err[0]
    assert not (tmp_path / "run" / "state.pt").exists()


def test_band_names_of_the_rasters_reach_the_index_and_the_sample_bands(setup, tmp_path):
    """A raster that describes its bands (NIR first): encode records the selection's names, which name the samples."""
    import shutil

    import rasterio

    from rsgeo_prune.train.sampling import sample_bands

    table, vae_dir, _ = setup
    src = tmp_path / "named.tif"
    shutil.copy(table["href"].iloc[0], src)
    with rasterio.open(src, "r+") as dst:
        for k, name in enumerate(["NIR", "Red", "Green", "Blue"], start=1):
            dst.set_band_description(k, name)
    named = table.assign(href=str(src))
    ds = CatalogDataset(named)
    assert ds.bands == [2, 3, 4, 1] and ds.band_names == ["red", "green", "blue", "nir"]
    assert CatalogDataset(named, bands=[1, 2]).band_names == ["nir", "red"]
    index = lat.encode_catalog(ds, vae_dir, tmp_path / "z", progress=False)
    assert index["bands"] == [2, 3, 4, 1] and index["band_names"] == ["red", "green", "blue", "nir"]
    bands, origin = sample_bands(index, 4)
    assert origin == "source rasters" and [(b["source_band"], b["name"]) for b in bands] == [
        (2, "red"),
        (3, "green"),
        (4, "blue"),
        (1, "nir"),
    ]
    with rasterio.open(src, "r+") as dst:
        dst.set_band_description(4, "")
    assert CatalogDataset(named, bands=[1, 4]).band_names == ["nir", None]  # a band of no name: None
