"""The 4-channel VAE: shapes, learning, exact resume, saved format, metrics with known answers, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from rsgeo_prune import TileConfig, synth, tiles_stage
from rsgeo_prune.errors import RSGeoPruneError
from rsgeo_prune.train.checkpoint import load_state
from rsgeo_prune.train.dataset import CatalogDataset
from rsgeo_prune.train.rng import seed_everything
from rsgeo_prune.train.runlog import read_metrics
from rsgeo_prune.train.vae import (
    PRESETS,
    ReconMetrics,
    VAETrainConfig,
    bicubic_x8,
    build_vae,
    load_vae,
    train_vae,
    vae_digest,
    validation_loss,
)

from .helpers import interrupt_after

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae")
    sc = synth.write_scene(root / "s.tif", rows=4, cols=4, tile_size=64, seed=2, nodata_rows=0)
    return tiles_stage([sc.path], TileConfig(tile_size=64), progress=False)


def _killed_after(monkeypatch, ds, out, cfg, steps: int) -> None:
    """``train_vae`` interrupted after ``steps`` steps, as a kill would end it: no final save, no report."""
    from rsgeo_prune.train import vae

    with monkeypatch.context() as m:
        interrupt_after(m, vae, "_loss_terms", steps)
        with pytest.raises(KeyboardInterrupt):
            train_vae(ds, ds, out, cfg, progress=False)


def _cfg(**kw):
    base = dict(preset="tiny", batch_size=4, steps=8, val_every=4, save_every=4, log_every=2, val_tiles=8)
    return VAETrainConfig(**{**base, **kw})


def test_presets_map_64px_tiles_to_4x8x8_latents_and_back():
    for name in ("tiny", "small"):
        vae = build_vae(name).eval()
        x = torch.rand(2, 4, 64, 64) * 2 - 1
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mode()
            y = vae.decode(z).sample
        assert z.shape == (2, 4, 8, 8) and y.shape == (2, 4, 64, 64)
    assert vae.config.scaling_factor == 1.0  # not Stable Diffusion's 0.18215
    assert build_vae("tiny", downsample=4).encode(torch.zeros(1, 4, 64, 64)).latent_dist.mean.shape == (1, 4, 16, 16)
    assert set(PRESETS) >= {"tiny", "small", "sd"}
    with pytest.raises(RSGeoPruneError, match="preset 'huge'"):
        build_vae("huge")


def test_thirty_steps_lower_the_reconstruction_loss(tiles, tmp_path):
    ds = CatalogDataset(tiles)
    cfg = _cfg(steps=30, val_every=30, save_every=30, val_tiles=16, lr=2e-3)
    seed_everything(cfg.seed)
    before = validation_loss(build_vae("tiny"), ds, cfg, "cpu")  # the same initial weights train_vae draws
    res = train_vae(ds, ds, tmp_path / "run", cfg, progress=False)
    assert res.step == 30 and res.best_val < 0.85 * before
    l1 = [r["l1"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "l1" in r]
    assert len(l1) == 15 and all(v > 0 for v in l1)  # one record per log_every=2 steps


def test_killed_then_resumed_run_ends_with_the_same_weights(tiles, tmp_path, monkeypatch):
    ds = CatalogDataset(tiles, crop=32, dihedral=True)
    train_vae(ds, ds, tmp_path / "a", _cfg(), progress=False)
    _killed_after(monkeypatch, ds, tmp_path / "b", _cfg(), 6)  # state saved at step 4
    assert torch.load(tmp_path / "b" / "state.pt", weights_only=True)["step"] == 4
    assert not (tmp_path / "b" / "recon.png").exists()
    with pytest.raises(RSGeoPruneError, match="pass --resume"):
        train_vae(ds, ds, tmp_path / "b", _cfg(), progress=False)
    train_vae(ds, ds, tmp_path / "b", _cfg(), resume=True, progress=False)
    a, b = build_vae("tiny"), build_vae("tiny")
    sa = load_state(tmp_path / "a" / "state.pt", model=a)
    sb = load_state(tmp_path / "b" / "state.pt", model=b)
    assert sa["step"] == sb["step"] == 8
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert vae_digest(tmp_path / "a") == vae_digest(tmp_path / "b")


def test_saved_vae_loads_in_diffusers_with_its_latent_scale_and_report(tiles, tmp_path):
    from diffusers import AutoencoderKL

    ds = CatalogDataset(tiles)
    train_vae(ds, ds, tmp_path / "run", _cfg(), progress=False)
    vae = AutoencoderKL.from_pretrained(tmp_path / "run" / "vae")
    assert len(vae.config.latents_mean) == 4 and all(s > 0 for s in vae.config.latents_std)
    assert (tmp_path / "run" / "vae" / "diffusion_pytorch_model.safetensors").exists()
    report = json.loads((tmp_path / "run" / "vae" / "rsgeo_vae.json").read_text())
    assert len(report["validation"]["vae"]["psnr_band"]) == 4 and "bicubic_x8" in report["validation"]
    assert report["best_step"] in (4, 8) and report["bands"] == [1, 2, 3, 4]
    from PIL import Image

    assert Image.open(tmp_path / "run" / "recon.png").size == (8 * 64, 4 * 64)  # 8 tiles; RGB and NIR-R-G rows
    assert load_vae(tmp_path / "run").config.in_channels == 4


def test_metrics_known_answers():
    x = torch.rand(3, 4, 32, 32) * 0.8 + 0.1
    m = ReconMetrics(4)
    m.update(x, x)
    r = m.compute()
    assert r["psnr"] == 100.0 and r["sam_deg"] < 0.1 and min(r["ssim_band"]) > 0.999
    m = ReconMetrics(4)
    m.update((x + 0.1).clamp(0, 1), x)  # MSE 0.01 → 20 dB
    assert abs(m.compute()["psnr_band"][0] - 20.0) < 0.01
    m = ReconMetrics(4)
    m.update(x * 0.5, x)  # the same spectrum, darker: no spectral angle
    assert m.compute()["sam_deg"] < 0.1
    flat = torch.full((1, 4, 64, 64), 0.3)
    assert torch.allclose(bicubic_x8(flat), flat, atol=1e-6)


def test_bad_output_folder_leaves_nothing(tiles, tmp_path):
    ds = CatalogDataset(tiles)
    (tmp_path / "afile").write_text("a file where the run folder's parent should be")
    with pytest.raises(RSGeoPruneError, match="cannot be created"):
        train_vae(ds, ds, tmp_path / "afile" / "run", _cfg(), progress=False)
    with pytest.raises(RSGeoPruneError, match="fewer than one batch"):
        train_vae(
            CatalogDataset(tiles, select=tiles["tile_id"][:2].tolist()), ds, tmp_path / "x", _cfg(), progress=False
        )
    assert not (tmp_path / "x" / "state.pt").exists() and not (tmp_path / "x" / "vae").exists()


def test_learning_rate_warms_up_then_decays_by_steps_or_by_the_clock():
    from rsgeo_prune.train.vae import lr_factor

    cfg = VAETrainConfig(steps=1000, warmup_steps=100, min_lr_ratio=0.1)
    assert lr_factor(cfg, 0) == pytest.approx(0.01) and lr_factor(cfg, 99) == pytest.approx(1.0)
    assert lr_factor(cfg, 100) == pytest.approx(1.0) and lr_factor(cfg, 550) == pytest.approx(0.55)
    assert lr_factor(cfg, 1000) == pytest.approx(0.1)
    assert lr_factor(VAETrainConfig(steps=30, warmup_steps=100), 3) == pytest.approx(1.0)  # warm-up <= steps / 10
    timed = VAETrainConfig(steps=10**7, minutes=10, warmup_steps=100, min_lr_ratio=0.0)
    assert lr_factor(timed, 5000, elapsed_s=300) == pytest.approx(0.5)  # half the clock: half way down
    assert lr_factor(VAETrainConfig(lr_schedule="constant"), 1900) == 1.0


def test_precision_auto_is_fp32_without_amx_and_refuses_unknown_names(monkeypatch):
    from rsgeo_prune.train import device

    monkeypatch.setattr(device, "cpu_has_amx", lambda: False)
    assert device.resolve_precision("auto", torch.device("cpu")) == "fp32"
    monkeypatch.setattr(device, "cpu_has_amx", lambda: True)
    assert device.resolve_precision("auto", torch.device("cpu")) == "bf16"
    assert device.resolve_precision("fp32", torch.device("cpu")) == "fp32"
    with pytest.raises(RSGeoPruneError, match="precision 'fp16'"):
        device.resolve_precision("fp16", torch.device("cpu"))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_is_exact_with_jitter_in_either_precision(tiles, tmp_path, precision, monkeypatch):
    ds = CatalogDataset(tiles, dihedral=True)
    cfg = dict(precision=precision, jitter_gain=0.3, jitter_offset=0.1, jitter_gamma=0.3)
    train_vae(ds, ds, tmp_path / "a", _cfg(**cfg), progress=False)
    _killed_after(monkeypatch, ds, tmp_path / "b", _cfg(**cfg), 6)
    train_vae(ds, ds, tmp_path / "b", _cfg(**cfg), resume=True, progress=False)
    a, b = build_vae("tiny"), build_vae("tiny")
    load_state(tmp_path / "a" / "state.pt", model=a)
    load_state(tmp_path / "b" / "state.pt", model=b)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_monitor_sets_are_logged_and_reported_but_never_choose_the_checkpoint(tiles, tmp_path):
    ds = CatalogDataset(tiles)
    other = CatalogDataset(tiles, select=tiles["tile_id"][:4].tolist())
    res = train_vae(ds, ds, tmp_path / "run", _cfg(), progress=False, monitor={"held": other})
    logged = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "val_loss" in r]
    assert len(logged) == 2 and all("held_psnr" in r and "held_sam_deg" in r for r in logged)
    assert res.monitor["held"]["tiles"] == 4 and "bicubic_x8" in res.monitor["held"]
    report = json.loads((tmp_path / "run" / "vae" / "rsgeo_vae.json").read_text())
    assert report["monitor"]["held"]["vae"]["psnr"] == res.monitor["held"]["vae"]["psnr"]


def test_spectral_angle_term_is_one_minus_cosine_on_valid_pixels():
    from rsgeo_prune.train.vae import _loss_terms

    seed_everything(0)
    vae = build_vae("tiny").eval()
    x = torch.rand(2, 4, 32, 32) * 2 - 1
    valid = torch.ones(2, 32, 32, dtype=torch.bool)
    valid[:, :8] = False
    cfg = VAETrainConfig(preset="tiny", sam_weight=10.0, kl_weight=1e-6)
    seed_everything(1)
    terms = _loss_terms(vae, x, valid, cfg)
    assert 0 < float(terms["sam"]) < 1
    torch.testing.assert_close(terms["loss"], terms["l1"] + 1e-6 * terms["kl"] + 10.0 * terms["sam"])
    assert "sam" not in _loss_terms(vae, x, valid, VAETrainConfig(preset="tiny"))


def test_tensorboard_log_holds_losses_validation_and_reconstructions_and_a_resume_replaces_what_it_redoes(
    tiles, tmp_path, monkeypatch
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ds = CatalogDataset(tiles)
    cfg = _cfg(log="tensorboard")
    _killed_after(monkeypatch, ds, tmp_path / "run", cfg, 6)  # saved at step 4
    train_vae(ds, ds, tmp_path / "run", cfg, resume=True, progress=False)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/l1", "train/kl", "train/tiles_per_s", "eval/val_loss"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6, 8]  # the first run's step 6 was dropped
    assert [e.step for e in events.Scalars("eval/val_loss")] == [4, 8]
    assert [e.step for e in events.Images("recon/input_over_output")] == [4, 8]
    jsonl = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in jsonl if "loss" in r] == [2, 4, 6, 6, 8]  # the JSONL log keeps both runs' lines


def test_tensorboard_without_the_package_is_refused(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(RSGeoPruneError, match="needs the tensorboard package"):
        _cfg(log="tensorboard")
    with pytest.raises(RSGeoPruneError, match="choose one of jsonl, tensorboard"):
        _cfg(log="wandb")
