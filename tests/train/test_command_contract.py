"""The training commands' contract, as a new user meets it: every bad option or input is one line
(``rsgeo-prune <command>: …``), exit 2 and nothing written (one table per command); every artifact is keyed
by what made it (a changed raster is encoded again, a resume on another catalog or other latents is refused,
a new layout leaves no stale shard); a failure leaves nothing half-made (a NaN keeps the last good state,
Ctrl-C says what a rerun continues from, ``sample`` replaces its output as one)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from rsgeo_prune import atomic
from rsgeo_prune.catalog import write_geoparquet
from rsgeo_prune.cli import main
from rsgeo_prune.config import TileConfig
from rsgeo_prune.synth import write_scene
from rsgeo_prune.tile_table import tiles_stage

torch.set_num_threads(1)

VAE = ["--preset", "tiny", "--steps", "2", "--batch-size", "2", "--val-fraction", "0.3", "--val-every", "2", "--quiet"]
DIT = [
    "--model",
    "DiT-tiny/2",
    "--batch-size",
    "4",
    "--steps",
    "4",
    "--save-every",
    "2",
    "--sample-every",
    "0",
    "--device",
    "cpu",
    "--quiet",
]
SAMPLE = ["--n", "2", "--steps", "3", "--device", "cpu"]


def _run(capsys, *args):
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's own refusals (a bad choice or type), one line too
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _catalog(path: Path, rasters, tile_size: int = 64) -> Path:
    write_geoparquet(tiles_stage([str(r) for r in rasters], TileConfig(tile_size=tile_size), progress=False), path)
    return path


def _files(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    """Catalogs (4-band 64-px tiles, 12-px tiles, a 1-band raster, another scene), a tiny VAE run, its latents,
    latents of the other scene and a 4-step DiT run; built once (a few seconds)."""
    root = tmp_path_factory.mktemp("contract")
    scene = write_scene(root / "s.tif", rows=3, cols=4, tile_size=64, seed=5, nodata_rows=0).path
    other = write_scene(
        root / "o.tif", rows=3, cols=4, tile_size=64, seed=6, nodata_rows=0, origin=(610_000.0, 5_200_000.0)
    ).path
    with rasterio.open(scene) as src:
        profile, band = src.profile, src.read(1)
    with rasterio.open(root / "pan.tif", "w", **{**profile, "count": 1}) as dst:
        dst.write(band[None])
    w = {
        "root": root,
        "scene": scene,
        "cat": _catalog(root / "tiles.parquet", [scene]),
        "other_cat": _catalog(root / "other.parquet", [other]),
        "pan": _catalog(root / "pan.parquet", [root / "pan.tif"]),
        "t12": _catalog(root / "t12.parquet", [scene], tile_size=12),
        "vae": root / "vr",
        "lat": root / "lat",
        "other_lat": root / "lat_other",
        "dit": root / "dr",
    }
    assert main(["train-vae", str(w["cat"]), "--out", str(w["vae"]), *VAE]) == 0
    assert main(["encode", str(w["cat"]), "--vae", str(w["vae"]), "--out", str(w["lat"]), "--quiet"]) == 0
    assert main(["encode", str(w["other_cat"]), "--vae", str(w["vae"]), "--out", str(w["other_lat"]), "--quiet"]) == 0
    assert main(["train-dit", str(w["lat"]), "--out", str(w["dit"]), *DIT]) == 0
    bad = root / "bad_index"
    shutil.copytree(w["lat"], bad)
    (bad / "index.json").write_text('{"shards": [')
    w["bad_index"] = bad
    (root / "unfinished").mkdir()
    shutil.copy(w["vae"] / "state.pt", root / "unfinished" / "state.pt")
    used = root / "used"
    used.mkdir()
    (used / "notes.txt").write_text("not a sample output")
    w["used"] = used
    return w


def _expect_refusal(capsys, command: str, args: list, out: Path, needles: list[str], *, before=None):
    """Exit 2, one line naming the command and the needles, no traceback; ``out`` not created (or unchanged)."""
    code, _, err = _run(capsys, command, *args, "--out", out)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"rsgeo-prune {command}: "), err
    for n in needles:
        assert n in lines[0], lines[0]
    if before is None:
        assert not out.exists(), sorted(out.rglob("*"))
    else:
        assert _files(out) == before  # a refused resume touched nothing
    assert not list(out.parent.glob(f".{out.name}.*"))  # no temporary left beside it


# ---------------------------------------------------------------------------------------------
# train-vae
# ---------------------------------------------------------------------------------------------
def _train_vae_cases(w):
    cat = w["cat"]
    new = [cat, *VAE]
    resume = [cat, *VAE, "--resume"]
    return {
        "lr nan": (new + ["--lr", "nan"], ["--lr nan", "finite number > 0"]),
        "lr negative": (new + ["--lr", "-1"], ["--lr -1.0", "> 0"]),
        "kl-weight nan": (new + ["--kl-weight", "nan"], ["--kl-weight nan", "finite"]),
        "ssim-weight inf": (new + ["--ssim-weight", "inf"], ["--ssim-weight inf", "finite"]),
        "lpips-weight without a file": (new + ["--lpips-weight", "0.1"], ["--lpips-weight 0.1", "--lpips FILE"]),
        "minutes nan": (new + ["--minutes", "nan"], ["--minutes nan", "> 0"]),
        "seed negative": (new + ["--seed", "-1"], ["--seed -1", "whole number"]),
        "workers negative": (new + ["--workers", "-1"], ["--workers -1", ">= 0"]),
        "steps zero": (new + ["--steps", "0"], ["--steps 0", ">= 1"]),
        "val-fraction nan": (new + ["--val-fraction", "nan"], ["--val-fraction nan", "(0, 1)"]),
        "crop not a multiple of 8": (new + ["--crop", "30"], ["--crop 30", "multiple of 8", "--crop 24"]),
        "tiles not a multiple of 8": ([w["t12"], *VAE], ["12x12 px", "multiple of 8", "--crop 8"]),
        "duplicate bands": (new + ["--bands", "1,1,2,2"], ["--bands", "band 1 is given twice"]),
        "band out of range": (new + ["--bands", "1,5"], ["band 5: out of range"]),
        "unknown preset": (new + ["--preset", "huge"], ["--preset", "huge"]),
        "batch larger than the tiles": ([cat, *VAE, "--batch-size", "64"], ["fewer than one batch of 64"]),
        "resume without a run": (resume, ["no training state to resume from"]),
        "log not a choice": (new + ["--log", "wandb"], ["--log", "wandb"]),
    }


def _vae_resume_cases(w):
    resume = [w["cat"], *VAE, "--resume"]
    return {
        "resume with another seed": (resume + ["--seed", "3"], ["made with --seed 0, not with --seed 3"]),
        "resume with another crop": (resume + ["--crop", "32"], ["made without --crop, not with --crop 32"]),
        "resume with other jitter": (resume + ["--jitter-gain", "0.3"], ["--jitter-gain 0.15"]),
        "resume with another split": (resume + ["--val-by", "hash", "--val-fraction", "0.5"], ["--val-fraction 0.3"]),
        "resume on another catalog": ([w["other_cat"], *VAE, "--resume"], ["other tiles", "another catalog"]),
        "resume with fewer steps": (resume + ["--steps", "1"], ["--steps 1", "at step 2 already"]),
        "new run into a used folder": ([w["cat"], *VAE], ["holds a training run already", "--resume"]),
    }


TRAIN_VAE = [
    "lr nan",
    "lr negative",
    "kl-weight nan",
    "ssim-weight inf",
    "lpips-weight without a file",
    "minutes nan",
    "seed negative",
    "workers negative",
    "steps zero",
    "val-fraction nan",
    "crop not a multiple of 8",
    "tiles not a multiple of 8",
    "duplicate bands",
    "band out of range",
    "unknown preset",
    "batch larger than the tiles",
    "resume without a run",
    "log not a choice",
]
VAE_RESUME = [
    "resume with another seed",
    "resume with another crop",
    "resume with other jitter",
    "resume with another split",
    "resume on another catalog",
    "resume with fewer steps",
    "new run into a used folder",
]


@pytest.mark.parametrize("case", TRAIN_VAE + VAE_RESUME)
def test_train_vae_refuses_bad_input_in_one_line(case, w, tmp_path, capsys):
    if case in VAE_RESUME:
        args, needles = _vae_resume_cases(w)[case]
        _expect_refusal(capsys, "train-vae", args, w["vae"], needles, before=_files(w["vae"]))
    else:
        args, needles = _train_vae_cases(w)[case]
        _expect_refusal(capsys, "train-vae", args, tmp_path / "a" / "run", needles)


# ---------------------------------------------------------------------------------------------
# encode
# ---------------------------------------------------------------------------------------------
def _encode_cases(w):
    base = [w["cat"], "--vae", w["vae"], "--quiet"]
    return {
        "crop not a multiple of 8": (base + ["--crop", "30"], ["--crop 30", "multiple of 8"]),
        "tiles not a multiple of 8": ([w["t12"], "--vae", w["vae"], "--quiet"], ["12x12 px", "multiple of 8"]),
        "shard-size zero": (base + ["--shard-size", "0"], ["--shard-size 0", ">= 1"]),
        "batch-size zero": (base + ["--batch-size", "0"], ["--batch-size 0", ">= 1"]),
        "workers negative": (base + ["--workers", "-1"], ["--workers -1", ">= 0"]),
        "duplicate bands": (base + ["--bands", "1,2,2,3"], ["--bands", "band 2 is given twice"]),
        "bands the VAE does not take": (base + ["--bands", "1,2,3"], ["VAE takes 4 bands"]),
        "no VAE there": ([w["cat"], "--vae", w["root"] / "nothing", "--quiet"], ["nothing", "no VAE here"]),
        "an unfinished VAE run": (
            [w["cat"], "--vae", w["root"] / "unfinished", "--quiet"],
            ["no VAE here", "finished train-vae"],
        ),
    }


ENCODE = [
    "crop not a multiple of 8",
    "tiles not a multiple of 8",
    "shard-size zero",
    "batch-size zero",
    "workers negative",
    "duplicate bands",
    "bands the VAE does not take",
    "no VAE there",
    "an unfinished VAE run",
]


@pytest.mark.parametrize("case", ENCODE)
def test_encode_refuses_bad_input_in_one_line(case, w, tmp_path, capsys):
    args, needles = _encode_cases(w)[case]
    _expect_refusal(capsys, "encode", args, tmp_path / "lat", needles)


# ---------------------------------------------------------------------------------------------
# train-dit
# ---------------------------------------------------------------------------------------------
def _train_dit_cases(w):
    new = [w["lat"], *DIT]
    return {
        "lr nan": (new + ["--lr", "nan"], ["--lr nan", "> 0"]),
        "lr negative": (new + ["--lr", "-1"], ["--lr -1.0", "> 0"]),
        "weight-decay nan": (new + ["--weight-decay", "nan"], ["--weight-decay nan", "finite"]),
        "grad-clip nan": (new + ["--grad-clip", "nan"], ["--grad-clip nan", "finite"]),
        "minutes nan": (new + ["--minutes", "nan"], ["--minutes nan", "> 0"]),
        "seed negative": (new + ["--seed", "-1"], ["--seed -1", "whole number"]),
        "ema-decay one": (new + ["--ema-decay", "1"], ["--ema-decay 1.0", "[0, 1)"]),
        "logit-normal time with ddpm": (
            new + ["--time-sampling", "logit_normal"],
            ["--time-sampling 'logit_normal'", "--diffusion flow only"],
        ),
        "sample-steps past the ddpm's": (new + ["--sample-steps", "2000"], ["--sample-steps 2000", "at most 1000"]),
        "corrupt index.json": ([w["bad_index"], *DIT], ["index.json: not a readable latent index", "encode again"]),
        "no VAE at --vae": (new + ["--vae", w["root"] / "nothing"], ["nothing", "no VAE here"]),
        "log not a choice": (new + ["--log", "wandb"], ["--log", "wandb"]),
    }


def _dit_resume_cases(w):
    resume = [*DIT, "--resume"]
    return {
        "resume on other latents of the same VAE": ([w["other_lat"], *resume], ["latents of another catalog"]),
        "resume with fewer steps": (
            [w["lat"], *resume[:-1], "--steps", "1", "--resume"],
            ["--steps 1", "at step 4 already"],
        ),
        "resume with another seed": ([w["lat"], *resume, "--seed", "3"], ["another config (--seed 0"]),
    }


TRAIN_DIT = [
    "lr nan",
    "lr negative",
    "weight-decay nan",
    "grad-clip nan",
    "minutes nan",
    "seed negative",
    "ema-decay one",
    "logit-normal time with ddpm",
    "sample-steps past the ddpm's",
    "corrupt index.json",
    "no VAE at --vae",
    "log not a choice",
]
DIT_RESUME = ["resume on other latents of the same VAE", "resume with fewer steps", "resume with another seed"]


@pytest.mark.parametrize("case", TRAIN_DIT + DIT_RESUME)
def test_train_dit_refuses_bad_input_in_one_line(case, w, tmp_path, capsys):
    if case in DIT_RESUME:
        args, needles = _dit_resume_cases(w)[case]
        _expect_refusal(capsys, "train-dit", args, w["dit"], needles, before=_files(w["dit"]))
    else:
        args, needles = _train_dit_cases(w)[case]
        _expect_refusal(capsys, "train-dit", args, tmp_path / "run", needles)


# ---------------------------------------------------------------------------------------------
# sample
# ---------------------------------------------------------------------------------------------
def _sample_cases(w):
    base = [w["dit"] / "state.pt", "--vae", w["vae"], *SAMPLE]
    return {
        "eta nan": (base + ["--sampler", "ddim", "--eta", "nan"], ["--eta nan", "[0, 1]"]),
        "eta negative": (base + ["--sampler", "ddim", "--eta", "-1"], ["--eta -1.0", "[0, 1]"]),
        "eta with the ddpm sampler": (base + ["--eta", "0.5"], ["--eta 0.5", "--sampler ddim only"]),
        "steps past the ddpm's": (base + ["--steps", "2000"], ["--steps 2000", "at most 1000"]),
        "n zero": (base + ["--n", "0"], ["--n 0", ">= 1"]),
        "batch-size zero": (base + ["--batch-size", "0"], ["--batch-size 0", ">= 1"]),
        "seed negative": (base + ["--seed", "-1"], ["--seed -1", "whole number"]),
        "euler on a ddpm model": (base + ["--sampler", "euler"], ["choose ddpm or ddim"]),
        "no VAE there": ([w["dit"] / "state.pt", "--vae", w["root"] / "nothing", *SAMPLE], ["no VAE here"]),
        "a VAE state is not a DiT checkpoint": ([w["vae"] / "state.pt", "--vae", w["vae"], *SAMPLE], ["not train-dit"]),
    }


SAMPLE_CASES = [
    "eta nan",
    "eta negative",
    "eta with the ddpm sampler",
    "steps past the ddpm's",
    "n zero",
    "batch-size zero",
    "seed negative",
    "euler on a ddpm model",
    "no VAE there",
    "a VAE state is not a DiT checkpoint",
]


@pytest.mark.parametrize("case", SAMPLE_CASES)
def test_sample_refuses_bad_input_in_one_line(case, w, tmp_path, capsys):
    args, needles = _sample_cases(w)[case]
    _expect_refusal(capsys, "sample", args, tmp_path / "s", needles)


@pytest.mark.parametrize("command", ["train-vae", "train-dit"])
def test_tensorboard_logs_without_the_package_are_refused_before_anything_is_written(
    command, w, tmp_path, capsys, monkeypatch
):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    args = [w["cat"], *VAE] if command == "train-vae" else [w["lat"], *DIT]
    _expect_refusal(
        capsys,
        command,
        args + ["--log", "tensorboard"],
        tmp_path / "run",
        ["--log 'tensorboard'", "needs the tensorboard package"],
    )


def test_sample_refuses_a_folder_of_other_files(w, capsys):
    _expect_refusal(
        capsys,
        "sample",
        [w["dit"] / "state.pt", "--vae", w["vae"], *SAMPLE],
        w["used"],
        ["holds other files"],
        before=_files(w["used"]),
    )


def test_the_case_tables_are_complete(w):
    assert sorted(TRAIN_VAE) == sorted(_train_vae_cases(w)) and sorted(VAE_RESUME) == sorted(_vae_resume_cases(w))
    assert sorted(ENCODE) == sorted(_encode_cases(w))
    assert sorted(TRAIN_DIT) == sorted(_train_dit_cases(w)) and sorted(DIT_RESUME) == sorted(_dit_resume_cases(w))
    assert sorted(SAMPLE_CASES) == sorted(_sample_cases(w))


# ---------------------------------------------------------------------------------------------
# keyed artifacts
# ---------------------------------------------------------------------------------------------
def test_a_raster_changed_in_place_is_encoded_again_and_the_dit_run_on_it_is_not_resumed(w, tmp_path, capsys):
    scene = tmp_path / "s.tif"
    shutil.copy(w["scene"], scene)
    cat = _catalog(tmp_path / "tiles.parquet", [scene])
    enc = ["encode", cat, "--vae", w["vae"], "--shard-size", "5", "--quiet"]
    assert _run(capsys, *enc, "--out", tmp_path / "a")[0] == 0
    assert _run(capsys, *enc, "--out", tmp_path / "b")[0] == 0
    first = _files(tmp_path / "a")
    assert first == _files(tmp_path / "b")  # two encodes: the same bytes
    assert {oct(p.stat().st_mode & 0o777) for p in (tmp_path / "a").iterdir()} == {oct(0o666 & ~atomic._UMASK)}
    assert _run(capsys, "train-dit", tmp_path / "a", "--out", tmp_path / "dit", *DIT)[0] == 0
    # rewrite the raster in place: other pixels, the same size and modification time
    st = scene.stat()
    with rasterio.open(scene, "r+") as dst:
        dst.write(255 - dst.read())
    os.utime(scene, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert scene.stat().st_size == st.st_size and scene.stat().st_mtime_ns == st.st_mtime_ns
    assert _run(capsys, *enc, "--out", tmp_path / "a")[0] == 0
    again = _files(tmp_path / "a")
    assert again["shard-00000.safetensors"] != first["shard-00000.safetensors"]
    assert _run(capsys, *enc, "--out", tmp_path / "c")[0] == 0
    assert again == _files(tmp_path / "c")  # the re-encoded folder is exactly a fresh encode
    before = _files(tmp_path / "dit")
    code, _, err = _run(
        capsys, "train-dit", tmp_path / "a", "--out", tmp_path / "dit", *DIT, "--steps", "6", "--resume"
    )
    assert (
        code == 2 and "latents of another version of the source rasters" in err and _files(tmp_path / "dit") == before
    )


def test_a_new_layout_leaves_no_stale_shard_and_a_killed_reencode_no_index(w, tmp_path, capsys, monkeypatch):
    from rsgeo_prune.train import latents as lat

    out = tmp_path / "z"
    enc = ["encode", w["cat"], "--vae", w["vae"], "--out", out, "--quiet"]
    assert _run(capsys, *enc, "--shard-size", "5")[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["index.json"] + [lat.shard_name(k) for k in range(3)]
    assert _run(capsys, *enc, "--shard-size", "8")[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["index.json"] + [lat.shard_name(k) for k in range(2)]
    assert lat.LatentShards(out).tile_ids == lat.LatentShards(w["lat"]).tile_ids

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(lat, "write_shard", killed)
    code, _, err = _run(capsys, *enc, "--shard-size", "5")
    assert code == 130 and "finished shards" in err and "rerun the same command" in err
    assert not (out / "index.json").exists()  # never an index over shards of two layouts
    monkeypatch.undo()
    assert _run(capsys, *enc, "--shard-size", "5")[0] == 0 and len(lat.LatentShards(out)) == 12


# ---------------------------------------------------------------------------------------------
# nothing half-made
# ---------------------------------------------------------------------------------------------
def _nan_after(monkeypatch, owner, name: str, step: int):
    """Wrap ``owner.name`` (called once per optimiser step: the VAE's loss terms, the DiT's step) so that the loss
    of every step from ``step`` on is NaN."""
    real, calls = getattr(owner, name), []

    def poisoned(*a, **k):
        out = real(*a, **k)
        calls.append(1)
        if len(calls) < step:
            return out
        if isinstance(out, dict):
            return {**out, "loss": out["loss"] * float("nan")}
        loss, gnorm = out
        return loss * float("nan"), gnorm

    monkeypatch.setattr(owner, name, poisoned)


def test_a_nan_loss_stops_train_vae_with_the_last_good_state(w, tmp_path, capsys, monkeypatch):
    from rsgeo_prune.train import vae

    out = tmp_path / "run"
    args = ["train-vae", w["cat"], "--out", out, *VAE, "--steps", "6", "--save-every", "2", "--val-every", "6"]
    _nan_after(monkeypatch, vae, "_loss_terms", 3)
    code, _, err = _run(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "loss became NaN at step 3" in lines[0], err
    assert "state of step 2" in lines[0] and "--resume" in lines[0]
    assert torch.load(out / "state.pt", weights_only=True)["step"] == 2 and not (out / "vae").exists()
    monkeypatch.undo()
    assert _run(capsys, *args, "--resume")[0] == 0 and (out / "vae" / "config.json").exists()
    # before any saved state: nothing is left
    _nan_after(monkeypatch, vae, "_loss_terms", 1)
    code, _, err = _run(capsys, "train-vae", w["cat"], "--out", tmp_path / "new", *VAE)
    assert code == 2 and "loss became NaN at step 1; nothing was saved" in err and not (tmp_path / "new").exists()


def test_a_nan_loss_stops_train_dit_with_the_last_good_state(w, tmp_path, capsys, monkeypatch):
    from rsgeo_prune.train import trainer

    out = tmp_path / "run"
    _nan_after(monkeypatch, trainer.TrainStep, "__call__", 3)
    code, _, err = _run(capsys, "train-dit", w["lat"], "--out", out, *DIT)
    assert code == 2 and "loss became NaN at step 3" in err and "state of step 2" in err, err
    assert torch.load(out / "state.pt", weights_only=True)["step"] == 2
    monkeypatch.undo()
    assert _run(capsys, "train-dit", w["lat"], "--out", out, *DIT, "--resume")[0] == 0


def test_one_band_rasters_train_evaluate_and_encode(w, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(capsys, "train-vae", w["pan"], "--out", out, *VAE)[0] == 0
    report = json.loads((out / "vae" / "rsgeo_vae.json").read_text())
    assert report["bands"] == [1] and report["validation"]["vae"]["sam_deg"] is None
    assert len(report["validation"]["vae"]["ssim_band"]) == 1 and not (out / "best").exists()
    assert _run(capsys, "encode", w["pan"], "--vae", out, "--out", tmp_path / "lat", "--quiet")[0] == 0
    assert json.loads((tmp_path / "lat" / "index.json").read_text())["latent_shape"] == [4, 8, 8]


def test_ctrl_c_says_what_a_rerun_continues_from(w, tmp_path, capsys, monkeypatch):
    """A real SIGINT after train-vae's first saved state: exit 130, one line naming --resume, which then works;
    one before anything was saved leaves no folder and says to rerun the command as it was."""
    from rsgeo_prune.train import loop, vae

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        real = loop.save_state

        def save_then_interrupt(*a, **k):
            real(*a, **k)
            os.kill(os.getpid(), signal.SIGINT)

        out = tmp_path / "run"
        args = ["train-vae", w["cat"], "--out", out, *VAE, "--steps", "4", "--save-every", "2", "--val-every", "4"]
        monkeypatch.setattr(loop, "save_state", save_then_interrupt)
        code, _, err = _run(capsys, *args)
        lines = err.strip().splitlines()
        assert code == 130 and len(lines) == 1 and "interrupted" in lines[0] and "with --resume" in lines[0], err
        monkeypatch.setattr(loop, "save_state", real)
        assert _run(capsys, *args, "--resume")[0] == 0

        def interrupt(*a, **k):
            os.kill(os.getpid(), signal.SIGINT)

        monkeypatch.setattr(vae, "_loss_terms", interrupt)
        code, _, err = _run(capsys, "train-vae", w["cat"], "--out", tmp_path / "new", *VAE)
        assert code == 130 and "nothing was saved; rerun the same command" in err and not (tmp_path / "new").exists()
    finally:
        signal.signal(signal.SIGINT, previous)


def test_sample_replaces_an_earlier_output_as_one(w, tmp_path, capsys):
    out = tmp_path / "s"
    assert _run(capsys, "sample", w["dit"] / "state.pt", "--vae", w["vae"], *SAMPLE, "--n", "4", "--out", out)[0] == 0
    assert sorted(p.name for p in (out / "tiles").iterdir()) == [f"sample-{k:05d}.npy" for k in range(4)]
    before = _files(out)
    code, _, err = _run(
        capsys, "sample", w["dit"] / "state.pt", "--vae", w["vae"], *SAMPLE, "--eta", "0.5", "--out", out
    )
    assert code == 2 and _files(out) == before  # a refused run leaves the earlier output as it was
    assert (
        _run(capsys, "sample", w["dit"] / "state.pt", "--vae", w["vae"], *SAMPLE, "--format", "tif", "--out", out)[0]
        == 0
    )
    assert sorted(p.name for p in (out / "tiles").iterdir()) == ["sample-00000.tif", "sample-00001.tif"]
    assert json.loads((out / "samples.json").read_text())["n"] == 2
    assert np.load(out / "latents.npy").shape[0] == 2 and not list(tmp_path.glob(".s.*"))
