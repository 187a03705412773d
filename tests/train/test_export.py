"""What train-dit and sample write opens with outside tools: the DiT export (``load_dit`` and the plain-torch
recipe of docs/training.md in a process that cannot import this package give the trained EMA's output), TensorBoard
event files, and sample files whose bands, dtype and range are named. DiT-tiny/2 on 48 synthetic 4x8x8 latents; a
tiny VAE."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rsgeo_prune import atomic
from rsgeo_prune.cli import main
from rsgeo_prune.errors import InvalidOption, RSGeoPruneError

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
    "2",
    "--save-every",
    "5",
    "--device",
    "cpu",
    "--quiet",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny VAE, latents 'encoded' by it and a 10-step run logged to TensorBoard with grids at steps 5 and 10."""
    from rsgeo_prune.train.latents import write_synthetic_latents
    from rsgeo_prune.train.vae import build_vae, save_vae, vae_digest

    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    save_vae(build_vae("tiny"), root / "vae")
    lat = write_synthetic_latents(root / "lat", n=48, shape=(4, 8, 8), vae_digest=vae_digest(root / "vae"))
    out = root / "run"
    assert (
        main(
            [
                "train-dit",
                str(lat),
                "--out",
                str(out),
                "--steps",
                "10",
                *TRAIN,
                "--vae",
                str(root / "vae"),
                "--sample-every",
                "5",
                "--sample-n",
                "4",
                "--sample-steps",
                "3",
                "--fd-n",
                "0",
                "--log",
                "tensorboard",
            ]
        )
        == 0
    )
    return {"root": root, "lat": lat, "out": out, "export": out / "export", "vae": root / "vae"}


def _trained_ema(run):
    from rsgeo_prune.train.sampling import ema_model, read_checkpoint

    return ema_model(read_checkpoint(run["out"] / "state.pt"))[0]


def _inputs():
    g = torch.Generator().manual_seed(3)
    return torch.randn(5, 4, 8, 8, generator=g), torch.tensor([0.0, 1.0, 250.0, 731.0, 999.0])


def test_the_export_holds_every_field_and_loads_with_load_dit(run):
    from rsgeo_prune.train import load_dit, read_export
    from rsgeo_prune.train.dit import DIT_ARGS

    folder = run["export"]
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "ema.safetensors", "model.safetensors"]
    assert {oct(p.stat().st_mode & 0o777) for p in folder.iterdir()} == {oct(0o666 & ~atomic._UMASK)}
    cfg = read_export(folder)
    arch, dif, lat = cfg["architecture"], cfg["diffusion"], cfg["latents"]
    assert {k: arch[k] for k in DIT_ARGS} == {
        "input_size": 8,
        "patch_size": 2,
        "in_channels": 4,
        "hidden_size": 64,
        "depth": 2,
        "num_heads": 4,
        "mlp_ratio": 4.0,
        "num_classes": None,
    }
    assert arch["out_channels"] == 4 and arch["learn_sigma"] is False and arch["frequency_embedding_size"] == 256
    assert (dif["kind"], dif["prediction"], dif["num_timesteps"], dif["beta_start"], dif["beta_end"]) == (
        "ddpm",
        "epsilon",
        1000,
        1e-4,
        0.02,
    )
    assert lat["shape"] == [4, 8, 8] and len(lat["mean"]) == len(lat["std"]) == 4
    assert cfg["training"]["step"] == 10 and cfg["model"] == "DiT-tiny/2"
    for name, entry in cfg["weights"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == entry["sha256"]

    state = torch.load(run["out"] / "state.pt", weights_only=True)
    x, t = _inputs()
    rng = torch.get_rng_state()
    ema = load_dit(folder)
    assert torch.equal(torch.get_rng_state(), rng)  # built on the meta device: no random draws
    assert not ema.training and not any(p.requires_grad for p in ema.parameters())
    with torch.no_grad():
        assert torch.equal(ema(x, t), _trained_ema(run)(x, t))
    trained = load_dit(folder, weights="model")
    for k, v in state["model"].items():
        assert torch.equal(trained.state_dict()[k], v), k


def test_export_dit_of_the_checkpoint_gives_the_same_bytes_and_sample_reads_the_folder(run, tmp_path):
    from rsgeo_prune.train import export_dit

    again = export_dit(run["out"] / "state.pt", tmp_path / "again")
    assert {p.name: p.read_bytes() for p in again.iterdir()} == {
        p.name: p.read_bytes() for p in run["export"].iterdir()
    }
    common = ["--vae", str(run["vae"]), "--n", "3", "--steps", "4", "--device", "cpu"]
    assert main(["sample", str(run["out"] / "state.pt"), *common, "--out", str(tmp_path / "a")]) == 0
    assert main(["sample", str(run["export"]), *common, "--out", str(tmp_path / "b")]) == 0
    assert np.array_equal(np.load(tmp_path / "a" / "latents.npy"), np.load(tmp_path / "b" / "latents.npy"))


def test_load_dit_refuses_what_is_not_an_export(run, tmp_path):
    from rsgeo_prune.train import load_dit

    with pytest.raises(RSGeoPruneError, match="no DiT export here"):
        load_dit(tmp_path)
    with pytest.raises(InvalidOption, match="choose one of ema, model"):
        load_dit(run["export"], weights="best")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_bytes((run["export"] / "config.json").read_bytes())
    (broken / "ema.safetensors").write_bytes((run["export"] / "ema.safetensors").read_bytes()[:100])
    with pytest.raises(RSGeoPruneError, match="weights not readable"):
        load_dit(broken)
    edited = json.loads((run["export"] / "config.json").read_text())
    edited["architecture"]["depth"] = 3
    (broken / "config.json").write_text(json.dumps(edited))
    (broken / "ema.safetensors").write_bytes((run["export"] / "ema.safetensors").read_bytes())
    with pytest.raises(RSGeoPruneError, match="do not fit DiT-tiny/2"):
        load_dit(broken)


def _docs_recipe() -> str:
    """The first python block after the heading "Loading the DiT elsewhere" of docs/training.md."""
    text = (ROOT / "docs" / "training.md").read_text()
    start = text.index("## Loading the DiT elsewhere")
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


def test_the_docs_recipe_runs_without_this_package_and_gives_the_same_output(run, tmp_path):
    """The plain-torch block of docs/training.md, its paths replaced, in a process where ``import rsgeo_prune``
    fails: its forward pass equals the trained EMA's, and its DDIM samples and decoded tiles equal the package's."""
    from safetensors.torch import load_file, save_file

    from rsgeo_prune.train import load_dit, read_export
    from rsgeo_prune.train.diffusion import diffusion_from_config
    from rsgeo_prune.train.sampling import decode_latents, denormalise
    from rsgeo_prune.train.vae import load_vae

    x, t = _inputs()
    save_file({"x": x, "t": t}, str(tmp_path / "inputs.safetensors"))
    recipe = (
        _docs_recipe().replace("runs/nd/dit/export", str(run["export"])).replace("runs/nd/vae_run/vae", str(run["vae"]))
    )
    script = tmp_path / "recipe.py"
    script.write_text(
        "import sys\nsys.modules['rsgeo_prune'] = None  # any import of the package fails\n"
        + recipe
        + f"""
from safetensors.torch import load_file as _load, save_file as _save
_in = _load({str(tmp_path / "inputs.safetensors")!r})
with torch.no_grad():
    _out = dit(_in["x"], _in["t"])
assert not any(m.startswith("rsgeo_prune.") for m in sys.modules)
_save({{"forward": _out, "x": x.contiguous(), "z": z.contiguous(), "tiles": tiles.contiguous()}},
      {str(tmp_path / "outputs.safetensors")!r})
"""
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = load_file(str(tmp_path / "outputs.safetensors"))

    ema = _trained_ema(run)
    with torch.no_grad():
        assert torch.equal(got["forward"], ema(x, t))
    cfg = read_export(run["export"])
    diffusion = diffusion_from_config(cfg["diffusion"])
    ours = diffusion.sample(
        load_dit(run["export"]), (8, 4, 8, 8), steps=50, sampler="ddim", generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(got["x"], ours)
    z = denormalise(ours, {"latents_mean": cfg["latents"]["mean"], "latents_std": cfg["latents"]["std"]})
    assert torch.equal(got["z"], z)
    assert torch.equal(got["tiles"], decode_latents(load_vae(run["vae"]), z, batch_size=8))


def test_tensorboard_event_files_hold_the_scalars_and_the_sample_grids(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = run["out"] / "tensorboard"
    assert [p.name.startswith("events.out.tfevents.") for p in folder.iterdir()] == [True]
    events = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/images_per_s", "train/grad_norm", "train/lr"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6, 8, 10]
    jsonl = [r["loss"] for r in map(json.loads, (run["out"] / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(jsonl, rel=1e-6)
    assert {"samples/tiles_rgb", "samples/tiles_nirrg"} <= set(tags["images"])
    assert [e.step for e in events.Images("samples/tiles_rgb")] == [5, 10]


def test_fd_reaches_tensorboard(run, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "fd"
    assert (
        main(
            [
                "train-dit",
                str(run["lat"]),
                "--out",
                str(out),
                "--steps",
                "2",
                *TRAIN,
                "--vae",
                str(run["vae"]),
                "--sample-every",
                "2",
                "--sample-n",
                "2",
                "--sample-steps",
                "2",
                "--fd-n",
                "4",
                "--log",
                "tensorboard",
            ]
        )
        == 0
    )
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"eval/fd", "eval/kid"} <= set(events.Tags()["scalars"])


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_tif_samples_name_their_bands_and_open_in_pillow(run, tmp_path):
    import rasterio
    from PIL import Image

    out = tmp_path / "s"
    small = ["--vae", str(run["vae"]), "--n", "2", "--steps", "3", "--device", "cpu"]
    assert main(["sample", str(run["out"] / "state.pt"), *small, "--format", "tif", "--out", str(out)]) == 0
    summary = json.loads((out / "samples.json").read_text())
    assert [b["name"] for b in summary["bands"]] == ["red", "green", "blue", "nir"]
    assert [b["source_band"] for b in summary["bands"]] == [1, 2, 3, 4] and summary["band_names_from"] == "convention"
    assert (summary["dtype"], summary["value_range"], summary["sampler"], summary["seed"]) == (
        "uint8",
        [0, 255],
        "ddpm",
        0,
    )
    assert summary["latents"]["file"] == "latents.npy" and summary["latents"]["shape"] == [2, 4, 8, 8]
    path = out / "tiles" / "sample-00000.tif"
    with rasterio.open(path) as src:
        levels = src.read()
        assert src.descriptions == ("red", "green", "blue", "nir")
        assert [c.name for c in src.colorinterp] == ["red", "green", "blue", "undefined"]
    picture = np.asarray(Image.open(path))
    assert picture.shape == (64, 64, 3) and np.array_equal(picture.transpose(2, 0, 1), levels[:3])
    npy = out / "n"
    assert main(["sample", str(run["out"] / "state.pt"), *small, "--out", str(npy)]) == 0
    summary = json.loads((npy / "samples.json").read_text())
    assert (summary["dtype"], summary["value_range"]) == ("float32", [-1.0, 1.0])
    tile = np.load(npy / "tiles" / "sample-00000.npy")
    assert np.array_equal(((tile + 1) * 127.5).round().astype(np.uint8), levels)  # the same levels in both formats


def test_band_names_come_from_the_source_rasters_when_they_name_them():
    from rsgeo_prune.train.sampling import sample_bands

    named = {"bands": [4, 1, 2], "band_names": ["nir", "red", "green"]}
    assert sample_bands(named, 3) == (
        [
            {"band": 1, "source_band": 4, "name": "nir"},
            {"band": 2, "source_band": 1, "name": "red"},
            {"band": 3, "source_band": 2, "name": "green"},
        ],
        "source rasters",
    )
    bands, origin = sample_bands({"bands": [1, 2], "band_names": [None, None]}, 2)
    assert [b["name"] for b in bands] == ["band 1", "band 2"] and origin == "none"
