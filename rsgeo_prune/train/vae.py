"""A 4-channel KL autoencoder trained from scratch (RS-Prune §4.2: "a four-channel VAE trained from
scratch, the checkpoint with the lowest validation loss kept").

The architecture is diffusers' :class:`~diffusers.AutoencoderKL`, built from a config (nothing is
downloaded) and saved with ``save_pretrained``, so ``AutoencoderKL.from_pretrained(out / "vae")``
loads it as is. Its config carries the measured latent scale: per-channel ``latents_mean`` and
``latents_std`` of posterior samples on training tiles (``scaling_factor`` is 1): a diffusion model
trains on ``(z - latents_mean) / latents_std``, never on Stable Diffusion's 0.18215.

Loss per batch (images in [-1, 1], nodata pixels left out of the reconstruction terms)::

    L1(x̂, x) + sam_weight · (1 − cos ∠(x̂, x)) + ssim_weight · (1 − SSIM) + lpips_weight · LPIPS(RGB) + kl_weight · KL(q(z|x) ‖ N(0, I))

Run layout under ``out``: ``state.pt`` (training state for ``--resume``), ``vae/`` (best checkpoint
by validation loss, diffusers format), ``metrics.jsonl``, ``recon.png``, ``report.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import atomic_output, check_writable
from ..errors import RSGeoPruneError
from .dataset import to_model_range
from .augment import RadiometricJitter
from .state import (PRECISIONS, EpochSampler, MetricsLog, autocast, choose_device, load_state, progress_bar,
                    save_state, seed_everything)

#: Named sizes of the KL autoencoder (8x downsampling = 4 blocks). Step times: batch 16 of
#: 4 x 64 x 64 tiles, one CPU thread of this machine, forward + backward + AdamW.
PRESETS: dict[str, dict] = {
    # tests: 0.1 M params, ~0.03 s/step
    "tiny": dict(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4,
                 mid_block_add_attention=False),
    # CPU: 2.6 M params, 0.32 s/step (vs 0.93 s for 32-64-128-128 with attention, 3.9 M)
    "small": dict(block_out_channels=(16, 32, 64, 128), layers_per_block=1, norm_num_groups=8,
                  mid_block_add_attention=False),
    # one GPU, modest data: 20.9 M params
    "base": dict(block_out_channels=(64, 128, 256, 256), layers_per_block=2, norm_num_groups=32,
                 mid_block_add_attention=True),
    # Stable Diffusion's VAE shape: 83.7 M params, 271 GFLOP per 256-px encode
    "sd": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
               mid_block_add_attention=True),
}

VAE_DIR = "vae"
STATE_FILE = "state.pt"
REPORT_FILE = "rsgeo_vae.json"
#: Pixels are clamped to at least this (a quarter of one uint8 level) before the spectral angle, so
#: all-zero pixels (nodata, black) have a defined angle.
SAM_EPS = 1e-3
#: Per-tile PSNR cap in dB (an exactly reconstructed constant tile has infinite PSNR).
PSNR_CAP = 100.0



def _model_batch(batch: dict, ds, device) -> dict:
    """A DataLoader batch on ``device`` with ``image`` in [-1, 1]: datasets with ``output="raw"``
    send file values (uint8 is 4x smaller than float32) and are scaled here, where the model runs."""
    return to_model_range(batch, fill=getattr(ds, "fill", -1.0), device=device)

def build_vae(preset: str = "small", *, channels: int = 4, latent_channels: int = 4, downsample: int = 8,
              sample_size: int = 64):
    """A fresh :class:`~diffusers.AutoencoderKL` of a named preset.

    Args:
        channels: input and output bands.
        latent_channels: latent channels (4: a DiT trains on ``(latent, H/8, W/8)``).
        downsample: spatial factor, a power of two ≥ 2 (one block per halving, plus one).
    """
    from diffusers import AutoencoderKL

    if preset not in PRESETS:
        raise RSGeoPruneError(f"preset {preset!r}: unknown; choose one of {', '.join(PRESETS)}")
    if downsample < 2 or downsample & (downsample - 1):
        raise RSGeoPruneError(f"downsample {downsample}: must be a power of two >= 2 (8 is the default)")
    p = dict(PRESETS[preset])
    n_blocks = int(math.log2(downsample)) + 1
    chans = list(p.pop("block_out_channels"))
    chans = (chans + [chans[-1]] * n_blocks)[:n_blocks]  # trim, or repeat the widest block
    return AutoencoderKL(in_channels=channels, out_channels=channels, latent_channels=latent_channels,
                         down_block_types=("DownEncoderBlock2D",) * n_blocks,
                         up_block_types=("UpDecoderBlock2D",) * n_blocks, block_out_channels=tuple(chans),
                         sample_size=sample_size, scaling_factor=1.0, **p)


def load_vae(path: str | Path, device: str | torch.device = "cpu"):
    """The VAE saved by :func:`train_vae` (``out/vae`` or ``out``), in eval mode."""
    from diffusers import AutoencoderKL

    path = Path(path)
    if (path / VAE_DIR / "config.json").exists():
        path = path / VAE_DIR
    if not (path / "config.json").exists():
        raise RSGeoPruneError(f"{path}: no VAE here (config.json missing); give the --out of train-vae or its vae/ folder")
    try:
        vae = AutoencoderKL.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        raise RSGeoPruneError(f"{path}: VAE cannot be loaded ({exc}); retrain or restore the folder") from exc
    return vae.to(device).eval()


def vae_digest(path: str | Path) -> str:
    """sha256 of a saved VAE's config and weights (names the model in latent shards and reports)."""
    path = Path(path)
    if (path / VAE_DIR / "config.json").exists():
        path = path / VAE_DIR
    h = hashlib.sha256()
    for f in sorted(path.glob("*.json")) + sorted(path.glob("*.safetensors")):
        if f.name == REPORT_FILE:
            continue  # the report changes with evaluation, the model does not
        h.update(f.name.encode())
        if f.suffix == ".json":  # the config without the folder it was loaded from
            cfg = {k: v for k, v in json.loads(f.read_text()).items() if k != "_name_or_path"}
            h.update(json.dumps(cfg, sort_keys=True).encode())
        else:
            h.update(f.read_bytes())
    return h.hexdigest()


def latent_scale(vae) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, std)`` per latent channel stored in the VAE config, shaped ``(1, C, 1, 1)``."""
    cfg = vae.config
    if cfg.latents_mean is None or cfg.latents_std is None:
        c = cfg.latent_channels
        return torch.zeros(1, c, 1, 1), torch.ones(1, c, 1, 1)
    return (torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1),
            torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1))


# -- training -------------------------------------------------------------------------------------
@dataclass
class VAETrainConfig:
    """Settings of :func:`train_vae` (all plain values: they go into the report and the state)."""

    preset: str = "small"
    downsample: int = 8
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    kl_weight: float = 1e-6
    ssim_weight: float = 0.0
    sam_weight: float = 0.0  # spectral-angle term: mean (1 − cos) between predicted and true pixel spectra
    lpips_weight: float = 0.0
    lpips: str | None = None  # a local TorchScript file: f(x, y) on (N, 3, H, W) in [-1, 1] -> distances
    steps: int = 2000
    minutes: float | None = None  # wall-clock budget; the state is saved when it runs out
    val_every: int = 200
    val_tiles: int = 256  # validation tiles used during training (all for the final report)
    save_every: int = 200
    log_every: int = 10
    num_workers: int = 0
    seed: int = 0
    device: str | None = None
    # learning rate: linear warm-up over min(warmup_steps, steps // 10) steps, then ``cosine`` decay to
    # min_lr_ratio · lr at ``steps`` (or at the end of ``minutes``, whichever comes first), or ``constant``
    lr_schedule: str = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    # radiometric jitter of training batches (augment.RadiometricJitter; 0 turns a term off)
    jitter_gain: float = 0.15
    jitter_offset: float = 0.05
    jitter_gamma: float = 0.2
    # "auto": bf16 autocast on CUDA and on CPUs with AMX tiles (oneDNN's bf16 convolutions there are
    # ~1.8x faster than fp32), fp32 elsewhere; "bf16" / "fp32" force one. Evaluation is always fp32 on the CPU.
    precision: str = "auto"
    # NHWC activations: 1.04x in fp32 on one Xeon thread, 0.8x under bf16 autocast (benchmarks/vae.py)
    channels_last: bool = False
    stop_at: int | None = None  # stop (as if killed) after this step without a final save: tests of --resume


@dataclass
class VAETrainResult:
    step: int
    best_val: float
    best_step: int
    metrics: dict = field(default_factory=dict)
    out: Path | None = None
    monitor: dict = field(default_factory=dict)  # {name: metrics} of the monitor sets, as in the report


LR_SCHEDULES = ("cosine", "constant")


def lr_factor(cfg: VAETrainConfig, step: int, elapsed_s: float = 0.0) -> float:
    """The learning-rate multiplier before optimiser step ``step + 1``: warm-up, then the schedule's
    decay over the run's progress (steps done over ``steps``, or time spent over ``minutes``)."""
    warm = min(cfg.warmup_steps, cfg.steps // 10)
    if step < warm:
        return (step + 1) / warm
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = (step - warm) / max(cfg.steps - warm, 1)
    if cfg.minutes is not None:
        progress = max(progress, elapsed_s / (cfg.minutes * 60.0))
    progress = min(progress, 1.0)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"bf16"`` or ``"fp32"`` for ``precision`` on ``device`` (see :class:`VAETrainConfig`)."""
    if precision not in PRECISIONS:
        raise RSGeoPruneError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    return "bf16" if device.type == "cpu" and cpu_has_amx() else "fp32"


def cpu_has_amx() -> bool:
    """True on CPUs with AMX tiles (Intel Sapphire Rapids and later), where oneDNN runs bf16 on them."""
    try:
        return bool(torch._C._cpu._init_amx())
    except Exception:  # an older torch, or a platform without the probe
        return False


def jitter_of(cfg: VAETrainConfig) -> RadiometricJitter:
    return RadiometricJitter(gain=cfg.jitter_gain, offset=cfg.jitter_offset, gamma=cfg.jitter_gamma)


def train_vae(train_ds, val_ds, out: str | Path, cfg: VAETrainConfig = VAETrainConfig(), *, resume: bool = False,
              progress: bool = True, monitor: dict | None = None) -> VAETrainResult:
    """Train a VAE from scratch on ``train_ds``; keep the checkpoint with the lowest loss on ``val_ds``.

    Args:
        train_ds, val_ds: :class:`~rsgeo_prune.train.dataset.CatalogDataset` (or any dataset of
            ``{"image", "valid"}`` dicts with ``set_epoch``); images ``(C, H, W)`` in [-1, 1].
        out: run folder (see module docstring).
        resume: continue from ``out/state.pt`` (same data order, RNG and optimiser state).
        monitor: ``{name: dataset}`` also evaluated (PSNR, SAM; ``val_tiles`` tiles) at each validation and
            in full in the report, never used to choose the checkpoint: e.g. a hash split of the training
            scenes next to held-out scenes, or held-out years in the benchmark.
    Returns:
        the last step, the best validation loss and its step, and the final validation metrics.
    """
    out = Path(out)
    _check_out(out, resume)
    device = choose_device(cfg.device)
    seed_everything(cfg.seed)
    if len(train_ds) < cfg.batch_size:
        raise RSGeoPruneError(f"{len(train_ds)} training tiles: fewer than one batch of {cfg.batch_size}; "
                              "lower --batch-size or select more tiles")
    channels = int(train_ds[0]["image"].shape[0])
    model = build_vae(cfg.preset, channels=channels, downsample=cfg.downsample).to(device)
    precision = resolve_precision(cfg.precision, device)
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    jitter = jitter_of(cfg)
    monitor = dict(monitor or {})
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda")
    lpips = _load_lpips(cfg.lpips, device) if cfg.lpips_weight > 0 else None
    step, epoch, position, best_val, best_step, elapsed_before = 0, 0, 0, math.inf, -1, 0.0
    if resume:
        # to the CPU: the optimiser moves its state to the parameters' device itself, and a non-fused AdamW with
        # its step counts on the GPU would read them back to the host for every parameter, every step
        pos = load_state(out / STATE_FILE, model=model, optimizer=opt, map_location="cpu")
        step, epoch, position = pos["step"], pos["epoch"], pos["position"]
        best_val, best_step = pos["extra"].get("best_val", math.inf), pos["extra"].get("best_step", -1)
        elapsed_before = float(pos["extra"].get("elapsed_s", 0.0))
    log = MetricsLog(out / "metrics.jsonl")
    bar = progress_bar(cfg.steps, step, progress)
    t_start, tiles_seen, t_window = time.perf_counter(), 0, time.perf_counter()

    def checkpoint():
        save_state(out / STATE_FILE, model=model, optimizer=opt, step=step, epoch=epoch, position=position,
                   extra={"best_val": best_val, "best_step": best_step, "config": asdict(cfg),
                          "elapsed_s": elapsed_before + time.perf_counter() - t_start})

    stopped = False
    try:
        while step < cfg.steps and not stopped:
            loader = _epoch_loader(train_ds, cfg, epoch, position)
            for batch in loader:
                model.train()
                batch = _model_batch(batch, train_ds, device)
                x, valid = batch["image"], batch["valid"]
                x = jitter(x, valid, seed=cfg.seed, step=step, fill=getattr(train_ds, "fill", -1.0))
                x = x.contiguous(memory_format=layout)
                for group in opt.param_groups:
                    group["lr"] = cfg.lr * lr_factor(cfg, step, elapsed_before + time.perf_counter() - t_start)
                with autocast(device, precision):
                    terms = _loss_terms(model, x, valid, cfg, lpips)
                opt.zero_grad(set_to_none=True)
                terms["loss"].backward()
                opt.step()
                step += 1
                position += x.shape[0]
                tiles_seen += x.shape[0]
                if step % cfg.log_every == 0 or step == cfg.steps:
                    now = time.perf_counter()
                    rate = tiles_seen / max(now - t_window, 1e-9)
                    log.log(step=step, epoch=epoch, tiles_per_s=round(rate, 2), **{k: float(v.detach()) for k, v in terms.items()})
                    bar.set_postfix(loss=f"{float(terms['loss'].detach()):.4f}", tiles_s=f"{rate:.1f}")
                    tiles_seen, t_window = 0, now
                bar.update(1)
                if cfg.stop_at is not None and step >= cfg.stop_at:
                    stopped = True  # a simulated kill: no final save
                    return VAETrainResult(step, best_val, best_step, out=out)
                out_of_time = cfg.minutes is not None and time.perf_counter() - t_start > cfg.minutes * 60
                if step % cfg.val_every == 0 or step == cfg.steps or out_of_time:
                    val = validation_loss(model, val_ds, cfg, device)
                    extra = {}
                    for name, ds in monitor.items():
                        m = evaluate(model, ds, cfg, device, baseline=False, limit=cfg.val_tiles)["vae"]
                        extra[f"{name}_psnr"], extra[f"{name}_sam_deg"] = m["psnr"], m["sam_deg"]
                    log.log(step=step, val_loss=val, elapsed_s=round(elapsed_before + time.perf_counter() - t_start, 1),
                            lr=opt.param_groups[0]["lr"], **extra)
                    if val < best_val:
                        best_val, best_step = val, step
                        save_vae(model, out / VAE_DIR)
                if step % cfg.save_every == 0 or step == cfg.steps or out_of_time:
                    checkpoint()
                if step >= cfg.steps or out_of_time:
                    stopped = True
                    break
            else:  # the epoch ran out: the next one starts at its first sample
                epoch, position = epoch + 1, 0
    finally:
        bar.close()
        log.close()
    best = load_vae(out, device)
    finish_vae(best, train_ds, val_ds, out, cfg, device, step=step, best_step=best_step, best_val=best_val,
               monitor=monitor)
    report = json.loads((out / VAE_DIR / REPORT_FILE).read_text())
    return VAETrainResult(step, best_val, best_step, report["validation"], out, report.get("monitor", {}))


def finish_vae(vae, train_ds, val_ds, out: Path, cfg: VAETrainConfig, device, *, step: int, best_step: int,
               best_val: float, monitor: dict | None = None) -> None:
    """Measure the latent scale on training tiles, store it in the best checkpoint's config, and
    write the validation metrics (``vae/rsgeo_vae.json``) and the recon grid (``recon.png``)."""
    mean, std = measure_latent_scale(vae, train_ds, cfg, device)
    vae.register_to_config(latents_mean=tuple(mean.tolist()), latents_std=tuple(std.tolist()), scaling_factor=1.0)
    metrics = evaluate(vae, val_ds, cfg, device)
    monitored = {name: evaluate(vae, ds, cfg, device) for name, ds in (monitor or {}).items()}
    save_vae(vae, out / VAE_DIR, report={
        "preset": cfg.preset, "config": asdict(cfg), "step": step, "best_step": best_step, "best_val_loss": best_val,
        "bands": list(getattr(train_ds, "bands", [])), "train_tiles": len(train_ds), "val_tiles": len(val_ds),
        "train_digest": train_ds.digest() if hasattr(train_ds, "digest") else None,
        "latents_mean": mean.tolist(), "latents_std": std.tolist(), "validation": metrics, "monitor": monitored,
    })
    recon_grid(vae, val_ds, out / "recon.png", device)


def _check_out(out: Path, resume: bool) -> None:
    check_writable(out / STATE_FILE)
    if not resume and (out / STATE_FILE).exists():
        raise RSGeoPruneError(f"{out}: holds a training run already; pass --resume to continue it or choose a new --out")


def _epoch_loader(ds, cfg: VAETrainConfig, epoch: int, position: int):
    ds.set_epoch(epoch)
    sampler = EpochSampler(len(ds), cfg.seed, epoch, start=position)
    # our own generator: creating the iterator then leaves the global torch RNG untouched
    gen = torch.Generator().manual_seed(cfg.seed * 1000003 + epoch)
    return torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                                       num_workers=cfg.num_workers, generator=gen,
                                       persistent_workers=False, pin_memory=False)


def _loss_terms(model, x: torch.Tensor, valid: torch.Tensor, cfg: VAETrainConfig, lpips=None) -> dict:
    """Loss terms of one batch ``x (N, C, H, W)`` in [-1, 1] with ``valid (N, H, W)``."""
    post = model.encode(x).latent_dist
    y = model.decode(post.sample()).sample.float()
    x = x.float()
    w = valid.unsqueeze(1).to(y.dtype)
    denom = (w.sum() * x.shape[1]).clamp_min(1.0)
    l1 = ((y - x).abs() * w).sum() / denom
    kl = post.kl().float().mean() / x[0].numel()  # per pixel and band, so kl_weight does not depend on tile size
    terms = {"l1": l1, "kl": kl}
    loss = l1 + cfg.kl_weight * kl
    if cfg.sam_weight > 0:
        # in [0, 1] units, as SAM is reported; nodata pixels left out like the L1 term
        p01, t01 = ((y + 1) / 2).clamp_min(SAM_EPS), ((x + 1) / 2).clamp_min(SAM_EPS)
        cos = F.cosine_similarity(p01, t01, dim=1, eps=1e-8)
        sam = ((1 - cos) * valid.to(cos.dtype)).sum() / valid.sum().clamp_min(1)
        terms["sam"] = sam
        loss = loss + cfg.sam_weight * sam
    if cfg.ssim_weight > 0:
        from torchmetrics.functional.image import structural_similarity_index_measure as ssim

        s = ssim((y * w + x * (1 - w)).clamp(-1, 1), x, data_range=2.0)
        terms["ssim"] = s
        loss = loss + cfg.ssim_weight * (1 - s)
    if lpips is not None:
        d = lpips(y[:, :3].clamp(-1, 1), x[:, :3]).mean()
        terms["lpips"] = d
        loss = loss + cfg.lpips_weight * d
    terms["loss"] = loss
    return terms


def _load_lpips(path: str | None, device):
    """LPIPS only from a local file (a TorchScript module ``f(x, y)`` on RGB in [-1, 1]); nothing is downloaded."""
    if not path:
        raise RSGeoPruneError("lpips_weight > 0 needs a local LPIPS file (--lpips FILE); nothing is downloaded")
    p = Path(path)
    if not p.exists():
        raise RSGeoPruneError(f"{p}: LPIPS file not found; give a local TorchScript LPIPS module or drop --lpips")
    try:
        net = torch.jit.load(str(p), map_location=device).eval()
    except Exception as exc:
        raise RSGeoPruneError(f"{p}: not a TorchScript module ({exc}); export LPIPS with torch.jit.script") from exc
    for prm in net.parameters():
        prm.requires_grad_(False)
    return net


@torch.no_grad()
def validation_loss(model, val_ds, cfg: VAETrainConfig, device, limit: int | None = None) -> float:
    """Mean L1 (on valid pixels) + kl_weight · KL on the first ``cfg.val_tiles`` validation tiles,
    decoding the posterior mean (deterministic: leaves the RNG untouched)."""
    model.eval()
    limit = cfg.val_tiles if limit is None else limit
    total, n = 0.0, 0
    for batch in _plain_loader(val_ds, cfg.batch_size, limit):
        batch = _model_batch(batch, val_ds, device)
        x, valid = batch["image"], batch["valid"]
        with autocast(device):
            post = model.encode(x).latent_dist
            y = model.decode(post.mode()).sample.float()
        w = valid.unsqueeze(1).float()
        l1 = ((y - x).abs() * w).flatten(1).sum(1) / (w.flatten(1).sum(1) * x.shape[1]).clamp_min(1.0)
        kl = post.kl().float() / x[0].numel()
        total += float((l1 + cfg.kl_weight * kl).sum())
        n += x.shape[0]
    return total / max(n, 1)


def _plain_loader(ds, batch_size: int, limit: int | None = None):
    idx = list(range(len(ds) if limit is None else min(limit, len(ds))))
    ds.set_epoch(0) if hasattr(ds, "set_epoch") else None
    return torch.utils.data.DataLoader(torch.utils.data.Subset(ds, idx), batch_size=batch_size, shuffle=False,
                                       generator=torch.Generator().manual_seed(0))


# -- latents, saving ------------------------------------------------------------------------------
@torch.no_grad()
def measure_latent_scale(vae, ds, cfg: VAETrainConfig, device, max_tiles: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of posterior samples ``z ~ q(z|x)`` over up to ``max_tiles`` tiles
    (the distribution a diffusion model is trained on); fixed noise so the numbers are repeatable."""
    vae.eval()
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    s = s2 = None
    count = 0
    for batch in _plain_loader(ds, cfg.batch_size, max_tiles):
        with autocast(device):
            post = vae.encode(_model_batch(batch, ds, device)["image"]).latent_dist
        mean, std = post.mean.float().cpu(), post.std.float().cpu()
        z = (mean + std * torch.randn(mean.shape, generator=gen)).double()
        s = z.sum((0, 2, 3)) if s is None else s + z.sum((0, 2, 3))
        s2 = (z * z).sum((0, 2, 3)) if s2 is None else s2 + (z * z).sum((0, 2, 3))
        count += z.shape[0] * z.shape[2] * z.shape[3]
    mu = s / count
    sd = (s2 / count - mu * mu).clamp_min(1e-12).sqrt()
    return mu.float().numpy(), sd.float().numpy()


def save_vae(vae, path: Path, report: dict | None = None) -> Path:
    """``save_pretrained`` (safetensors) into a temporary folder, then swap it in for ``path``, so
    ``path`` always holds a whole checkpoint (the old one until the new one is complete)."""
    path = Path(path)
    check_writable(path / "config.json")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        vae.save_pretrained(tmp, safe_serialization=True)
        if report is not None:
            (tmp / REPORT_FILE).write_text(json.dumps(_jsonable(report), indent=2))
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except OSError as exc:
        raise RSGeoPruneError(f"{path}: checkpoint cannot be written ({exc.strerror or exc}); choose another --out") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return path


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.generic,)):
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


# -- evaluation -----------------------------------------------------------------------------------
def bicubic_x8(x: torch.Tensor, factor: int = 8) -> torch.Tensor:
    """The baseline with the VAE's number of latent values per band: bicubic (antialiased)
    downsampling by ``factor`` and bicubic upsampling back; ``(N, C, H, W)`` in, same out."""
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(h // factor, w // factor), mode="bicubic", antialias=True, align_corners=False)
    return F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)


class ReconMetrics:
    """Per-band PSNR and SSIM and the spectral angle, on images in [0, 1] (torchmetrics).

    PSNR is computed per tile (``dim=(1, 2, 3)``), capped at :data:`PSNR_CAP` dB (a constant tile
    reconstructed exactly would be infinite) and averaged; SSIM averages its per-tile maps; SAM is
    the mean angle between predicted and true pixel spectra, in degrees.
    """

    def __init__(self, channels: int):
        from torchmetrics.image import PeakSignalNoiseRatio, SpectralAngleMapper, StructuralSimilarityIndexMeasure

        self.channels = channels
        self.psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3), reduction="none")
        self.psnr_band = [PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3), reduction="none") for _ in range(channels)]
        self.ssim_band = [StructuralSimilarityIndexMeasure(data_range=1.0) for _ in range(channels)]
        self.sam = SpectralAngleMapper()

    def update(self, pred01: torch.Tensor, target01: torch.Tensor) -> None:
        pred01, target01 = pred01.float().clamp(0, 1).cpu(), target01.float().clamp(0, 1).cpu()
        self.psnr.update(pred01, target01)
        for b in range(self.channels):
            self.psnr_band[b].update(pred01[:, b:b + 1], target01[:, b:b + 1])
            self.ssim_band[b].update(pred01[:, b:b + 1], target01[:, b:b + 1])
        self.sam.update(pred01.clamp_min(SAM_EPS), target01.clamp_min(SAM_EPS))

    def compute(self) -> dict:
        def tile_mean(m):
            return float(m.compute().clamp(max=PSNR_CAP).mean())

        return {"psnr": tile_mean(self.psnr),
                "psnr_band": [tile_mean(m) for m in self.psnr_band],
                "ssim_band": [float(m.compute()) for m in self.ssim_band],
                "sam_deg": math.degrees(float(self.sam.compute()))}


@torch.no_grad()
def evaluate(vae, ds, cfg: VAETrainConfig | None = None, device="cpu", *, baseline: bool = True,
             limit: int | None = None) -> dict:
    """Reconstruction metrics of ``vae`` (posterior mean decoded) on ``ds`` and, with ``baseline``,
    of :func:`bicubic_x8` on the same tiles: ``{"vae": {...}, "bicubic_x8": {...}, "tiles": n}``."""
    vae.eval()
    batch_size = cfg.batch_size if cfg else 16
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    channels = vae.config.in_channels
    m_vae, m_bic = ReconMetrics(channels), ReconMetrics(channels)
    n = 0
    for batch in _plain_loader(ds, batch_size, limit):
        x = _model_batch(batch, ds, device)["image"]
        with autocast(device):
            y = vae.decode(vae.encode(x).latent_dist.mode()).sample.float()
        x01 = (x.float() + 1) / 2
        m_vae.update((y + 1) / 2, x01)
        if baseline:
            m_bic.update(bicubic_x8(x01.cpu(), factor), x01)
        n += x.shape[0]
    out = {"tiles": n, "vae": m_vae.compute()}
    if baseline:
        out["bicubic_x8"] = m_bic.compute()
    return out


@torch.no_grad()
def recon_grid(vae, ds, path: Path, device="cpu", n: int = 8) -> Path:
    """A PNG of ``n`` tiles: input above output, in RGB (bands 1-3) and, with 4+ bands, in NIR-R-G
    false colour (bands 4, 1, 2); each tile stretched as the data is (no per-tile rescale)."""
    from PIL import Image

    vae.eval()
    batch = next(iter(_plain_loader(ds, n, n)))
    x = _model_batch(batch, ds, device)["image"]
    y = vae.decode(vae.encode(x).latent_dist.mode()).sample.float().clamp(-1, 1)
    rows = []
    views = [(0, 1, 2)] if x.shape[1] < 4 else [(0, 1, 2), (3, 0, 1)]
    if x.shape[1] < 3:
        views = [(0, 0, 0)]
    for view in views:
        for img in (x, y):
            rows.append(torch.cat([img[k, list(view)] for k in range(img.shape[0])], dim=2))
    grid = torch.cat(rows, dim=1)
    arr = ((grid.cpu().numpy().transpose(1, 2, 0) + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    with atomic_output(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return path


__all__ = ["LR_SCHEDULES", "PRESETS", "ReconMetrics", "cpu_has_amx", "jitter_of", "lr_factor", "resolve_precision", "VAETrainConfig", "VAETrainResult", "bicubic_x8", "build_vae", "evaluate",
           "latent_scale", "load_vae", "measure_latent_scale", "recon_grid", "save_vae", "train_vae", "vae_digest",
           "validation_loss"]
