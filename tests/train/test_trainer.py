"""The DiT trainer and sampler on CPU: learning, exact resume, two-process DDP (gloo), deterministic sampling,
and one clear error for each kind of bad input. DiT-tiny/2 on 48 synthetic 4x8x8 latents; a tiny VAE decodes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rsgeo_prune.cli import main
from rsgeo_prune.train.latents import write_synthetic_latents
from rsgeo_prune.train.runlog import read_metrics

from .helpers import interrupt_after, weights_digest

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[2]
TRAIN = [
    "--model",
    "DiT-tiny/2",
    "--batch-size",
    "16",
    "--lr",
    "2e-3",
    "--log-every",
    "1",
    "--save-every",
    "5",
    "--sample-every",
    "0",
    "--device",
    "cpu",
    "--quiet",
]
STEPS = 30


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny saved VAE, latents 'encoded' by it (its digest), latents of another VAE, and a 30-step run."""
    from rsgeo_prune.train.vae import build_vae, save_vae, vae_digest

    root = tmp_path_factory.mktemp("dit")
    torch.manual_seed(0)
    save_vae(build_vae("tiny"), root / "vae")
    torch.manual_seed(1)
    save_vae(build_vae("tiny"), root / "other_vae")
    digest = vae_digest(root / "vae")
    lat = write_synthetic_latents(root / "lat", n=48, shape=(4, 8, 8), vae_digest=digest)
    other = write_synthetic_latents(
        root / "lat_other", n=48, shape=(4, 8, 8), vae_digest=vae_digest(root / "other_vae")
    )
    run = root / "run"
    # the reference run also draws decoded EMA grids at step 15 and 30: evaluation must not disturb training
    assert (
        main(
            [
                "train-dit",
                str(lat),
                "--out",
                str(run),
                "--steps",
                str(STEPS),
                *TRAIN,
                "--vae",
                str(root / "vae"),
                "--sample-every",
                "15",
                "--sample-n",
                "4",
                "--sample-steps",
                "4",
                "--fd-n",
                "6",
            ]
        )
        == 0
    )
    return {"root": root, "lat": lat, "other": other, "vae": root / "vae", "other_vae": root / "other_vae", "run": run}


def _state(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _assert_same_tensors(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_thirty_steps_lower_the_loss_and_write_the_run(world):
    recs = read_metrics(world["run"] / "metrics.jsonl")
    head = recs[0]
    assert head["event"] == "start" and head["world_size"] == 1 and head["per_gpu_batch"] == head["global_batch"] == 16
    losses = [r["loss"] for r in recs if "loss" in r]
    assert len(losses) == STEPS
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])  # from ~1 (the zero-initialised output) down
    assert all(r["images_per_s"] > 0 for r in recs if "loss" in r)
    state = _state(world["run"] / "state.pt")
    assert state["step"] == STEPS and state["extra"]["kind"] == "rsgeo-dit/1"
    assert {"model", "ema", "latents", "config"} <= set(state["extra"]) | set(state)
    assert state["extra"]["config"]["model"] == "DiT-tiny/2"
    # the EMA lags the weights (warm-up decay ~0.77 at step 30: close, not equal)
    key = "final_layer.linear.weight"
    assert not torch.equal(state["model"][key], state["extra"]["ema"][key])
    fd = [r for r in recs if "fd" in r or "fd_error" in r]
    if fd:  # rsgeo_prune.train.metrics is there: FD of 6 decoded EMA samples vs 6 decoded training latents
        assert [r["step"] for r in fd] == [15, 30] and all(r["fd"] >= 0 and r["fd_n_samples"] == 6 for r in fd), fd
    pics = sorted(p.name for p in (world["run"] / "samples").iterdir())
    assert pics == [
        "step-0000015-tiles_nirrg.png",
        "step-0000015-tiles_rgb.png",
        "step-0000030-tiles_nirrg.png",
        "step-0000030-tiles_rgb.png",
    ]


def _killed_after(monkeypatch, args, steps: int) -> None:
    """``train-dit args`` interrupted after ``steps`` steps (Ctrl-C's exit code); the state on disk is the last
    saved."""
    from rsgeo_prune.train import trainer

    with monkeypatch.context() as m:
        interrupt_after(m, trainer.TrainStep, "__call__", steps)
        assert main(args) == 130


def test_killed_then_resumed_run_ends_with_the_same_weights(world, tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = ["train-dit", str(world["lat"]), "--out", str(out), "--steps", str(STEPS), *TRAIN]
    _killed_after(monkeypatch, args, 13)  # the last save was at step 10
    assert _state(out / "state.pt")["step"] == 10
    assert main(args + ["--resume"]) == 0
    got, ref = _state(out / "state.pt"), _state(world["run"] / "state.pt")
    for key in ("model", "optimizer", "step", "epoch", "position"):
        _assert_same_tensors(got[key], ref[key], key)
    _assert_same_tensors(got["extra"]["ema"], ref["extra"]["ema"], "ema")


def test_a_checkpoint_with_settings_this_version_does_not_know_resumes(world, tmp_path):
    """Settings an older version stored (its test hooks ``stop_at`` and ``digest_file``) are ignored on resume."""
    from rsgeo_prune.train.checkpoint import config_from_saved
    from rsgeo_prune.train.trainer import DiTTrainConfig

    out = tmp_path / "run"
    args = ["train-dit", str(world["lat"]), "--out", str(out), *TRAIN]
    assert main(args + ["--steps", "5"]) == 0
    state = _state(out / "state.pt")
    state["extra"]["config"].update(stop_at=3, digest_file=None)
    torch.save(state, out / "state.pt")
    assert main(args + ["--steps", "6", "--resume"]) == 0 and _state(out / "state.pt")["step"] == 6
    assert config_from_saved(DiTTrainConfig, {"model": "DiT-S/2", "stop_at": 3}) == DiTTrainConfig(model="DiT-S/2")


@pytest.mark.slow
def test_two_torchrun_processes_on_gloo_keep_identical_weights(world, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(Path(__file__).with_name("ddp_digest.py")),
        str(tmp_path / "rank{rank}.sha256"),
        "train-dit",
        str(world["lat"]),
        "--out",
        str(out),
        "--steps",
        "4",
        *TRAIN,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    d0, d1 = (tmp_path / "rank0.sha256").read_text(), (tmp_path / "rank1.sha256").read_text()
    assert d0 == d1
    head = read_metrics(out / "metrics.jsonl")[0]
    assert head["world_size"] == 2 and head["per_gpu_batch"] == 8 and head["global_batch"] == 16
    # rank 0 alone wrote the state, and it holds the weights both ranks ended with
    from rsgeo_prune.train.dit import build_dit

    state = _state(out / "state.pt")
    model, ema = build_dit("DiT-tiny/2", input_size=8), build_dit("DiT-tiny/2", input_size=8)
    model.load_state_dict(state["model"])
    ema.load_state_dict(state["extra"]["ema"])
    assert weights_digest(model, ema) == d0 and state["step"] == 4 and state["extra"]["world_size"] == 2
    assert json.loads(proc.stdout.strip().splitlines()[-1])["world_size"] == 2  # one summary line (rank 0's)


def _files(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "samples.json"
    }


def test_sampling_is_deterministic_for_a_seed(world, tmp_path):
    ckpt, vae = str(world["run"] / "state.pt"), str(world["vae"])
    base = ["sample", ckpt, "--vae", vae, "--n", "5", "--steps", "6", "--batch-size", "3", "--device", "cpu"]
    for name, extra in (("a", []), ("b", []), ("c", ["--seed", "1"]), ("t", ["--format", "tif", "--sampler", "ddim"])):
        assert main(base + ["--out", str(tmp_path / name), *extra]) == 0
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b and a.keys() == c.keys() and a["latents.npy"] != c["latents.npy"]
    assert {"grid_rgb.png", "grid_nirrg.png", "latents.npy", "tiles/sample-00004.npy"} <= set(a)
    tile = np.load(tmp_path / "a" / "tiles" / "sample-00000.npy")
    assert tile.shape == (4, 64, 64) and tile.dtype == np.float32 and -1 <= tile.min() <= tile.max() <= 1
    assert np.load(tmp_path / "a" / "latents.npy").shape == (5, 4, 8, 8)
    summary = json.loads((tmp_path / "a" / "samples.json").read_text())
    assert summary["sampler"] == "ddpm" and summary["step"] == STEPS and summary["seed"] == 0
    import rasterio

    with rasterio.open(tmp_path / "t" / "tiles" / "sample-00000.tif") as src:
        assert src.count == 4 and src.dtypes[0] == "uint8" and src.crs is None


def _bad(world, tmp_path):
    lat, other, run, vae, other_vae = (str(world[k]) for k in ("lat", "other", "run", "vae", "other_vae"))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    data = (Path(run) / "state.pt").read_bytes()
    (corrupt / "state.pt").write_bytes(data[: len(data) // 2])
    resume = ["--steps", "40", *TRAIN, "--resume"]
    return {
        "latents of another VAE than --vae": (
            ["train-dit", other, "--out", str(tmp_path / "n1"), *TRAIN, "--vae", vae],
            "not the VAE that encoded",
        ),
        "resume on latents of another VAE": (["train-dit", other, "--out", run, *resume], "latents from another VAE"),
        "resume with another model": (
            ["train-dit", lat, "--out", run, *resume, "--model", "DiT-tiny/4"],
            "checkpoint of another config (--model DiT-tiny/2",
        ),
        "resume with another seed": (
            ["train-dit", lat, "--out", run, *resume, "--seed", "3"],
            "checkpoint of another config (--seed 0",
        ),
        "resume from a corrupt checkpoint": (
            ["train-dit", lat, "--out", str(corrupt), *resume],
            "not a readable checkpoint",
        ),
        "new run into a used folder": (["train-dit", lat, "--out", run, *TRAIN], "holds a training run already"),
        "sample a corrupt checkpoint": (
            ["sample", str(corrupt / "state.pt"), "--vae", vae, "--out", str(tmp_path / "s1")],
            "not a readable checkpoint",
        ),
        "sample with another VAE": (
            ["sample", f"{run}/state.pt", "--vae", other_vae, "--out", str(tmp_path / "s2")],
            "not the VAE the model's latents were encoded with",
        ),
        "euler on a ddpm model": (
            ["sample", f"{run}/state.pt", "--vae", vae, "--sampler", "euler", "--out", str(tmp_path / "s3")],
            "choose ddpm or ddim",
        ),
        "a VAE state is not a DiT checkpoint": (
            ["sample", str(tmp_path / "vae_state.pt"), "--vae", vae, "--out", str(tmp_path / "s4")],
            "not train-dit",
        ),
    }


def test_bad_input_gives_one_clear_error(world, tmp_path, capsys):
    from rsgeo_prune.train.checkpoint import save_state

    save_state(tmp_path / "vae_state.pt", model=torch.nn.Linear(2, 2), step=0, epoch=0, position=0)
    before = _files(world["run"])
    for name, (argv, expected) in _bad(world, tmp_path).items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, f"{name}: {err}"
    assert _files(world["run"]) == before  # refused resumes touched nothing
    shutil.rmtree(tmp_path / "corrupt")


def test_bf16_autocast_path_learns_and_resumes_exactly(world, tmp_path, monkeypatch):
    """The GPU's mixed-precision step (bf16 autocast, fp32 master weights, optimiser and EMA), run on the CPU."""
    args = ["train-dit", str(world["lat"]), "--steps", str(STEPS), *TRAIN, "--precision", "bf16"]
    assert main(args + ["--out", str(tmp_path / "full")]) == 0
    recs = read_metrics(tmp_path / "full" / "metrics.jsonl")
    assert recs[0]["precision"] == "bf16 autocast"
    losses = [r["loss"] for r in recs if "loss" in r]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    full = _state(tmp_path / "full" / "state.pt")
    assert {t.dtype for t in full["model"].values()} == {torch.float32}
    assert {t.dtype for t in full["extra"]["ema"].values()} == {torch.float32}
    fp32 = _state(world["run"] / "state.pt")["model"]["final_layer.linear.weight"]
    assert not torch.equal(full["model"]["final_layer.linear.weight"], fp32)  # autocast did run
    _killed_after(monkeypatch, args + ["--out", str(tmp_path / "cut")], 13)
    assert main(args + ["--out", str(tmp_path / "cut"), "--resume"]) == 0
    got = _state(tmp_path / "cut" / "state.pt")
    for key in ("model", "optimizer", "step"):
        _assert_same_tensors(got[key], full[key], key)
    _assert_same_tensors(got["extra"]["ema"], full["extra"]["ema"], "ema")


def test_compiled_training_matches_eager_and_saves_plain_weights(world, tmp_path):
    """--compile (inductor, C++ on the CPU): the same steps as eager to float tolerance, and a checkpoint whose
    keys are the bare model's (no ``_orig_mod.``), which ``sample`` reads."""
    args = ["train-dit", str(world["lat"]), "--steps", "6", *TRAIN, "--save-every", "6"]
    assert main(args + ["--out", str(tmp_path / "eager")]) == 0
    assert main(args + ["--out", str(tmp_path / "compiled"), "--compile"]) == 0
    eager, compiled = _state(tmp_path / "eager" / "state.pt"), _state(tmp_path / "compiled" / "state.pt")
    assert eager["model"].keys() == compiled["model"].keys() == compiled["extra"]["ema"].keys()
    for key in eager["model"]:
        torch.testing.assert_close(compiled["model"][key], eager["model"][key], atol=2e-5, rtol=1e-4)
    assert read_metrics(tmp_path / "compiled" / "metrics.jsonl")[0]["compile"] is True
    assert (
        main(
            [
                "sample",
                str(tmp_path / "compiled" / "state.pt"),
                "--vae",
                str(world["vae"]),
                "--n",
                "2",
                "--steps",
                "3",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "s"),
            ]
        )
        == 0
    )
