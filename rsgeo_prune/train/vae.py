"""Training the 4-channel KL autoencoder from scratch (RS-Prune §4.2: "a four-channel VAE trained from
scratch, the checkpoint with the lowest validation loss kept"), and its evaluation.

The model itself (presets, building, saving, loading, digest, latent scale) is :mod:`rsgeo_prune.train.vae_model`;
its names are importable from here too.

Loss per batch (images in [-1, 1], nodata pixels left out of the reconstruction terms)::

    L1(x̂, x) + sam_weight · (1 − cos ∠(x̂, x)) + ssim_weight · (1 − SSIM) + lpips_weight · LPIPS(RGB)
        + kl_weight · KL(q(z|x) ‖ N(0, I))

Run layout under ``out``: ``state.pt`` (training state for ``--resume``, with the run key),
``best/`` (the best checkpoint so far, while training), ``vae/`` (the finished model: the best
checkpoint by validation loss with its latent scale and report, diffusers format, written as a whole
at the end), ``metrics.jsonl``, ``recon.png`` and, with ``log="tensorboard"``, ``tensorboard/`` (the same scalars and
the reconstruction grid of each validation).

A run is keyed by what made it (:func:`run_key`: the tiles of each split, their source files'
identities, bands, crop, the validation split and the config); ``--resume`` continues only a run of
the same key, and every option is checked before anything is written.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import atomic_output
from ..errors import InvalidOption, RSGeoPruneError, check_number, check_seed
from .augment import RadiometricJitter
from .checkpoint import check_resume_steps, load_state, read_state
from .convert import band_views, to_levels

# cpu_has_amx and the model's names stay importable from here (benchmarks and notebooks use them)
from .device import PRECISIONS, autocast, choose_device, cpu_has_amx, resolve_precision  # noqa: F401
from .distributed import Dist
from .loop import STATE_FILE, Budget, Cadence, LossNotFinite, claim_out, run_folder, run_loop, saved_hint
from .rng import EpochSampler, seed_everything
from .runlog import MetricsLog, check_log, open_log
from .vae_model import (
    PRESETS,
    REPORT_FILE,
    VAE_DIR,
    build_vae,
    check_tile_size,
    latent_scale,  # noqa: F401
    load_vae,
    save_vae,
    vae_digest,
    vae_downsampling,
    vae_folder,
)

BEST_DIR = "best"
#: Pixels are clamped to at least this (a quarter of one uint8 level) before the spectral angle, so
#: all-zero pixels (nodata, black) have a defined angle.
SAM_EPS = 1e-3
#: Per-tile PSNR cap in dB (an exactly reconstructed constant tile has infinite PSNR).
PSNR_CAP = 100.0


def _model_batch(batch: dict, ds, device) -> dict:
    """A DataLoader batch on ``device`` with ``image`` in [-1, 1]: datasets with ``output="raw"``
    send file values (uint8 is 4x smaller than float32) and are scaled here, where the model runs."""
    from .dataset import to_model_range  # here: the dataset module loads the pixel reader and rasterio

    return to_model_range(batch, fill=getattr(ds, "fill", -1.0), device=device)


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
    log: str = "jsonl"  # "jsonl" (metrics.jsonl) or "tensorboard" (metrics.jsonl and tensorboard/ event files)

    def __post_init__(self):
        """Every value in range, before anything runs (one :class:`InvalidOption` naming the first that is not)."""
        if self.preset not in PRESETS:
            raise InvalidOption("preset", self.preset, f"unknown; choose one of {', '.join(PRESETS)}")
        if not isinstance(self.downsample, int) or self.downsample < 2 or self.downsample & (self.downsample - 1):
            raise InvalidOption("downsample", self.downsample, "must be a power of two >= 2 (8 is the default)")
        for name in ("steps", "batch_size", "val_every", "val_tiles", "save_every", "log_every"):
            check_number(name, getattr(self, name), 1, whole=True)
        check_number("warmup_steps", self.warmup_steps, 0, whole=True)
        check_number("workers", self.num_workers, 0, whole=True, example=2)  # the command line's name
        check_seed("seed", self.seed)
        check_number("lr", self.lr, 0, open_low=True, example="1e-3")
        for name in ("weight_decay", "kl_weight", "ssim_weight", "sam_weight", "lpips_weight"):
            check_number(name, getattr(self, name), 0)
        check_number("min_lr_ratio", self.min_lr_ratio, 0, 1)
        if self.minutes is not None:
            check_number("minutes", self.minutes, 0, open_low=True, example=60)
        for name in ("jitter_gain", "jitter_offset", "jitter_gamma"):
            check_number(name, getattr(self, name), 0, 1, example="0.1; 0 turns it off")
        if self.lr_schedule not in LR_SCHEDULES:
            raise InvalidOption("lr_schedule", self.lr_schedule, f"choose one of {', '.join(LR_SCHEDULES)}")
        if self.precision not in PRECISIONS:
            raise InvalidOption("precision", self.precision, f"choose one of {', '.join(PRECISIONS)}")
        check_log(self.log)
        if self.lpips_weight > 0 and not self.lpips:
            raise InvalidOption(
                "lpips_weight", self.lpips_weight, "needs a local LPIPS file (--lpips FILE); nothing is downloaded"
            )


@dataclass
class VAETrainResult:
    step: int
    best_val: float
    best_step: int
    metrics: dict = field(default_factory=dict)
    out: Path | None = None
    monitor: dict = field(default_factory=dict)  # {name: metrics} of the monitor sets, as in the report


LR_SCHEDULES = ("cosine", "constant")

#: Settings a resumed run may change: how long and how often, where and in what precision it runs, and the
#: optimiser's step size (lower it to go on after a NaN). Every other setting is part of the run key.
RESUMABLE = (
    "steps",
    "minutes",
    "val_every",
    "save_every",
    "log_every",
    "num_workers",
    "device",
    "precision",
    "channels_last",
    "lr",
    "weight_decay",
    "log",
)


def run_key(train_ds, val_ds, cfg: VAETrainConfig, monitor: dict | None = None, split: dict | None = None) -> dict:
    """What a VAE run is made of, ``{name: value}`` in the order a mismatch is reported: the data options
    (bands, crop, nodata, flips), how the validation tiles were chosen (``split``, e.g. ``{"val_by": "scene",
    "val_fraction": 0.05}``), the config less :data:`RESUMABLE`, the tiles of each split (catalog rows,
    windows) and the identities of their source files (path, size, time, content)."""
    reader = getattr(train_ds, "reader", None)
    key = {
        "bands": list(getattr(train_ds, "bands", [])),
        "crop": getattr(train_ds, "crop", None),
        "nodata": repr(getattr(reader, "nodata", None)),
        "no_dihedral": not getattr(train_ds, "dihedral", True),
        **(split or {}),
        **{k: v for k, v in asdict(cfg).items() if k not in RESUMABLE},
    }
    sets = {"train": train_ds, "validation": val_ds, **{f"monitor {n}": d for n, d in sorted((monitor or {}).items())}}
    key["tiles"] = {name: ds.digest() if hasattr(ds, "digest") else None for name, ds in sets.items()}
    key["sources"] = {name: ds.source_digest() if hasattr(ds, "source_digest") else None for name, ds in sets.items()}
    return key


def check_run_key(out: Path, saved: dict | None, key: dict) -> None:
    """Refuse to resume the run in ``out`` unless it was made with ``key`` (one line naming what differs)."""
    if not isinstance(saved, dict):
        raise RSGeoPruneError(f"{out}: a run without a run key (made by an older rsgeo-prune); start a new --out")
    for name, value in key.items():
        if saved.get(name) == value:
            continue
        if name == "tiles":
            raise RSGeoPruneError(
                f"{out}: the run was made on other tiles (another catalog, --select, --tile-ids, "
                "--val-by or --val-fraction); resume with its own catalog and options or choose "
                "a new --out"
            )
        if name == "sources":
            raise RSGeoPruneError(
                f"{out}: the source rasters of the run changed since it was made (size, time or "
                "content); restore them or choose a new --out"
            )
        flag = "--" + name.replace("_", "-")

        def shown(v):
            if v is None or v is False or v == "None":
                return f"without {flag}"
            return f"with {flag}" if v is True else f"with {flag} {','.join(map(str, v)) if isinstance(v, list) else v}"

        was = shown(saved.get(name))
        raise RSGeoPruneError(f"{out}: the run was made {was}, not {shown(value)}; resume {was} or choose a new --out")


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


def jitter_of(cfg: VAETrainConfig) -> RadiometricJitter:
    return RadiometricJitter(gain=cfg.jitter_gain, offset=cfg.jitter_offset, gamma=cfg.jitter_gamma)


class VAETask:
    """The VAE's part of :func:`~rsgeo_prune.train.loop.run_loop`: epochs of :func:`~.state.epoch_order` batches,
    its step (jitter, learning-rate schedule, loss terms, AdamW), its log fields and its validation, which keeps
    the best checkpoint in ``out/best``."""

    rate_name = "tiles_s"

    def __init__(
        self,
        model,
        optimizer,
        train_ds,
        val_ds,
        out: Path,
        cfg: "VAETrainConfig",
        device,
        precision: str,
        lpips,
        key: dict,
        monitor: dict,
        log: MetricsLog,
        budget: Budget,
        layout,
        best_val: float,
        best_step: int,
    ):
        self.model, self.optimizer, self.train_ds, self.val_ds, self.out = model, optimizer, train_ds, val_ds, out
        self.cfg, self.device, self.precision, self.lpips, self.key = cfg, device, precision, lpips, key
        self.monitor, self.log, self.budget, self.layout = monitor, log, budget, layout
        self.best_val, self.best_step = best_val, best_step
        self.jitter = jitter_of(cfg)
        self.terms: dict = {}

    def batches(self, epoch: int, position: int):
        while True:
            for batch in _epoch_loader(self.train_ds, self.cfg, epoch, position):
                position += int(batch["image"].shape[0])
                yield batch, epoch, position
            epoch, position = epoch + 1, 0  # the epoch ran out: the next one starts at its first sample

    def step(self, batch, step: int):
        cfg = self.cfg
        self.model.train()
        batch = _model_batch(batch, self.train_ds, self.device)
        x, valid = batch["image"], batch["valid"]
        x = self.jitter(x, valid, seed=cfg.seed, step=step, fill=getattr(self.train_ds, "fill", -1.0))
        x = x.contiguous(memory_format=self.layout)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(cfg, step, self.budget.elapsed())
        with autocast(self.device, self.precision):
            self.terms = _loss_terms(self.model, x, valid, cfg, self.lpips)
        self.optimizer.zero_grad(set_to_none=True)
        self.terms["loss"].backward()
        self.optimizer.step()
        return self.terms["loss"], x.shape[0]

    def log_record(self, step: int, epoch: int, loss: float, rate: float, step_time: float) -> dict:
        # the last step's terms (the loop's window mean is of the total loss only)
        return dict(
            step=step, epoch=epoch, tiles_per_s=round(rate, 2), **{k: float(v.detach()) for k, v in self.terms.items()}
        )

    def evaluate(self, step: int) -> dict:
        val = validation_loss(self.model, self.val_ds, self.cfg, self.device)
        if not math.isfinite(val):
            raise LossNotFinite(f"validation loss became {val} at step {step}; {saved_hint(self.out / STATE_FILE)}")
        extra = {}
        for name, ds in self.monitor.items():
            m = evaluate(self.model, ds, self.cfg, self.device, baseline=False, limit=self.cfg.val_tiles)["vae"]
            extra[f"{name}_psnr"], extra[f"{name}_sam_deg"] = m["psnr"], m["sam_deg"]
        record = dict(
            val_loss=val, elapsed_s=round(self.budget.elapsed(), 1), lr=self.optimizer.param_groups[0]["lr"], **extra
        )
        if self.log.tensorboard_dir is not None:
            self.log.image("recon/input_over_output", recon_picture(self.model, self.val_ds, self.device), step)
        if val < self.best_val:
            self.best_val, self.best_step = val, step
            save_vae(self.model, self.out / BEST_DIR)
        return record

    def state_extra(self) -> dict:
        return {
            "best_val": self.best_val,
            "best_step": self.best_step,
            "config": asdict(self.cfg),
            "key": self.key,
            "elapsed_s": self.budget.elapsed(),
        }

    def finish(self, step: int) -> None:
        """Nothing here: :func:`finish_vae` runs after the loop, on the best checkpoint."""


def train_vae(
    train_ds,
    val_ds,
    out: str | Path,
    cfg: VAETrainConfig = VAETrainConfig(),
    *,
    resume: bool = False,
    progress: bool = True,
    monitor: dict | None = None,
    split: dict | None = None,
) -> VAETrainResult:
    """Train a VAE from scratch on ``train_ds``; keep the checkpoint with the lowest loss on ``val_ds``.

    Args:
        train_ds, val_ds: :class:`~rsgeo_prune.train.dataset.CatalogDataset` (or any dataset of
            ``{"image", "valid"}`` dicts with ``set_epoch``); images ``(C, H, W)`` in [-1, 1].
        out: run folder (see module docstring).
        resume: continue from ``out/state.pt`` (same data order, RNG and optimiser state); refused unless the
            run was made with the same :func:`run_key`, or when ``cfg.steps`` is below its step.
        monitor: ``{name: dataset}`` also evaluated (PSNR, SAM; ``val_tiles`` tiles) at each validation and
            in full in the report, never used to choose the checkpoint: e.g. a hash split of the training
            scenes next to held-out scenes, or held-out years in the benchmark.
        split: how the caller chose the validation tiles (``{"val_by": ..., "val_fraction": ...}``), part of the key.
    Returns:
        the last step, the best validation loss and its step, and the final validation metrics.

    Everything that can be refused is checked before ``out`` is created; a run that fails before its first
    saved state leaves no folder behind, and a non-finite loss stops it (:class:`~.loop.LossNotFinite`) with
    the last good state kept.
    """
    out = Path(out)
    monitor = dict(monitor or {})
    state_path = claim_out(out, resume)
    if len(train_ds) < cfg.batch_size:
        raise RSGeoPruneError(
            f"{len(train_ds)} training tiles: fewer than one batch of {cfg.batch_size}; "
            "lower --batch-size or select more tiles"
        )
    for ds in (train_ds, val_ds, *monitor.values()):
        check_tile_size(ds, cfg.downsample)
    device = choose_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    lpips = _load_lpips(cfg.lpips, device) if cfg.lpips_weight > 0 else None
    key = run_key(train_ds, val_ds, cfg, monitor, split)
    if resume:
        saved = read_state(state_path)
        check_run_key(out, saved["extra"].get("key"), key)
        check_resume_steps(state_path, int(saved["step"]), cfg.steps)
    with run_folder(out):
        return _train(train_ds, val_ds, out, cfg, device, precision, lpips, key, resume, progress, monitor)


def _train(
    train_ds,
    val_ds,
    out: Path,
    cfg: VAETrainConfig,
    device,
    precision: str,
    lpips,
    key: dict,
    resume: bool,
    progress: bool,
    monitor: dict,
) -> VAETrainResult:
    """The run of :func:`train_vae`, its inputs checked: the loop, then the finished model into ``out/vae``."""
    state_path = out / STATE_FILE
    seed_everything(cfg.seed)
    channels = int(train_ds[0]["image"].shape[0])
    model = build_vae(cfg.preset, channels=channels, downsample=cfg.downsample).to(device)
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda")
    start, best_val, best_step, elapsed_before = (0, 0, 0), math.inf, -1, 0.0
    if resume:
        # to the CPU: the optimiser moves its state to the parameters' device itself, and a non-fused AdamW with
        # its step counts on the GPU would read them back to the host for every parameter, every step
        pos = load_state(state_path, model=model, optimizer=opt, map_location="cpu")
        start = (pos["step"], pos["epoch"], pos["position"])
        best_val, best_step = pos["extra"].get("best_val", math.inf), pos["extra"].get("best_step", -1)
        elapsed_before = float(pos["extra"].get("elapsed_s", 0.0))
    log = open_log(out, cfg.log, start[0] if resume else None)
    budget = Budget(cfg.minutes, elapsed_before)
    task = VAETask(
        model,
        opt,
        train_ds,
        val_ds,
        out,
        cfg,
        device,
        precision,
        lpips,
        key,
        monitor,
        log,
        budget,
        layout,
        best_val,
        best_step,
    )
    cadence = Cadence(cfg.steps, cfg.log_every, cfg.save_every, eval_every=cfg.val_every)
    step, _, _ = run_loop(
        task, cadence, out=out, start=start, d=Dist(device=device), budget=budget, log=log, progress=progress
    )
    best_val, best_step = task.best_val, task.best_step
    if not (out / BEST_DIR / "config.json").exists() and not (out / VAE_DIR / "config.json").exists():
        save_vae(model, out / BEST_DIR)  # resumed at its last step before any validation: the model as it is
    best = load_vae(out / BEST_DIR if (out / BEST_DIR / "config.json").exists() else out, device)
    finish_vae(
        best, train_ds, val_ds, out, cfg, device, step=step, best_step=best_step, best_val=best_val, monitor=monitor
    )
    shutil.rmtree(out / BEST_DIR, ignore_errors=True)  # vae/ holds it now, with its latent scale and report
    report = json.loads((out / VAE_DIR / REPORT_FILE).read_text())
    return VAETrainResult(step, best_val, best_step, report["validation"], out, report.get("monitor", {}))


def finish_vae(
    vae,
    train_ds,
    val_ds,
    out: Path,
    cfg: VAETrainConfig,
    device,
    *,
    step: int,
    best_step: int,
    best_val: float,
    monitor: dict | None = None,
) -> None:
    """Measure the latent scale on training tiles, store it in the best checkpoint's config, and
    write the validation metrics (``vae/rsgeo_vae.json``) and the recon grid (``recon.png``)."""
    mean, std = measure_latent_scale(vae, train_ds, cfg, device)
    vae.register_to_config(latents_mean=tuple(mean.tolist()), latents_std=tuple(std.tolist()), scaling_factor=1.0)
    metrics = evaluate(vae, val_ds, cfg, device)
    monitored = {name: evaluate(vae, ds, cfg, device) for name, ds in (monitor or {}).items()}
    save_vae(
        vae,
        out / VAE_DIR,
        report={
            "preset": cfg.preset,
            "config": asdict(cfg),
            "step": step,
            "best_step": best_step,
            "best_val_loss": best_val,
            "bands": list(getattr(train_ds, "bands", [])),
            "train_tiles": len(train_ds),
            "val_tiles": len(val_ds),
            "train_digest": train_ds.digest() if hasattr(train_ds, "digest") else None,
            "latents_mean": mean.tolist(),
            "latents_std": std.tolist(),
            "validation": metrics,
            "monitor": monitored,
        },
    )
    recon_grid(vae, val_ds, out / "recon.png", device)


def _epoch_loader(ds, cfg: VAETrainConfig, epoch: int, position: int):
    ds.set_epoch(epoch)
    sampler = EpochSampler(len(ds), cfg.seed, epoch, start=position)
    # our own generator: creating the iterator then leaves the global torch RNG untouched
    gen = torch.Generator().manual_seed(cfg.seed * 1000003 + epoch)
    return torch.utils.data.DataLoader(
        ds,
        batch_size=cfg.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=cfg.num_workers,
        generator=gen,
        persistent_workers=False,
        pin_memory=False,
    )


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

        s = ssim((y * w + x * (1 - w)).clamp(-1, 1), x, data_range=2.0, kernel_size=ssim_window(*x.shape[-2:]))
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
    return torch.utils.data.DataLoader(
        torch.utils.data.Subset(ds, idx),
        batch_size=batch_size,
        shuffle=False,
        generator=torch.Generator().manual_seed(0),
    )


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
    reconstructed exactly would be infinite) and averaged; SSIM averages its per-tile maps (an 11-px
    Gaussian window, narrower on tiles smaller than that); SAM is the mean angle between predicted and
    true pixel spectra, in degrees (None for one band: a single value has no angle).
    """

    def __init__(self, channels: int):
        from torchmetrics.image import PeakSignalNoiseRatio, SpectralAngleMapper

        self.channels = channels
        self.psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3), reduction="none")
        self.psnr_band = [
            PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3), reduction="none") for _ in range(channels)
        ]
        self.ssim_band = None  # made at the first update, with a window that fits the tiles
        self.sam = SpectralAngleMapper() if channels > 1 else None

    def update(self, pred01: torch.Tensor, target01: torch.Tensor) -> None:
        from torchmetrics.image import StructuralSimilarityIndexMeasure

        pred01, target01 = pred01.float().clamp(0, 1).cpu(), target01.float().clamp(0, 1).cpu()
        if self.ssim_band is None:
            k = ssim_window(*pred01.shape[-2:])
            self.ssim_band = [
                StructuralSimilarityIndexMeasure(data_range=1.0, kernel_size=k) for _ in range(self.channels)
            ]
        self.psnr.update(pred01, target01)
        for b in range(self.channels):
            self.psnr_band[b].update(pred01[:, b : b + 1], target01[:, b : b + 1])
            self.ssim_band[b].update(pred01[:, b : b + 1], target01[:, b : b + 1])
        if self.sam is not None:
            self.sam.update(pred01.clamp_min(SAM_EPS), target01.clamp_min(SAM_EPS))

    def compute(self) -> dict:
        def tile_mean(m):
            return float(m.compute().clamp(max=PSNR_CAP).mean())

        return {
            "psnr": tile_mean(self.psnr),
            "psnr_band": [tile_mean(m) for m in self.psnr_band],
            "ssim_band": [float(m.compute()) for m in self.ssim_band or []],
            "sam_deg": math.degrees(float(self.sam.compute())) if self.sam is not None else None,
        }


def ssim_window(height: int, width: int) -> int:
    """SSIM's Gaussian window: 11 px, or the largest odd size that fits a smaller tile."""
    return max(1, min(11, (min(height, width) - 1) // 2 * 2 + 1))


@torch.no_grad()
def evaluate(
    vae, ds, cfg: VAETrainConfig | None = None, device="cpu", *, baseline: bool = True, limit: int | None = None
) -> dict:
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


def recon_grid(vae, ds, path: Path, device="cpu", n: int = 8) -> Path:
    """:func:`recon_picture` as a PNG."""
    from PIL import Image

    arr = recon_picture(vae, ds, device, n)
    with atomic_output(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return path


@torch.no_grad()
def recon_picture(vae, ds, device="cpu", n: int = 8) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 picture of ``n`` tiles: input above output, in RGB (bands 1-3) and, with 4+ bands, in
    NIR-R-G false colour (bands 4, 1, 2); each tile stretched as the data is (no per-tile rescale). Leaves the
    model in eval mode."""
    vae.eval()
    batch = next(iter(_plain_loader(ds, n, n)))
    x = _model_batch(batch, ds, device)["image"]
    y = vae.decode(vae.encode(x).latent_dist.mode()).sample.float().clamp(-1, 1)
    rows = []
    for view in band_views(x.shape[1]).values():
        for img in (x, y):
            rows.append(torch.cat([img[k, list(view)] for k in range(img.shape[0])], dim=2))
    grid = torch.cat(rows, dim=1)
    return to_levels(grid.cpu().permute(1, 2, 0))


__all__ = [
    "BEST_DIR",
    "LR_SCHEDULES",
    "RESUMABLE",
    "ReconMetrics",
    "VAETask",
    "VAETrainConfig",
    "VAETrainResult",
    "bicubic_x8",
    "check_run_key",
    "evaluate",
    "finish_vae",
    "jitter_of",
    "lr_factor",
    "measure_latent_scale",
    "recon_grid",
    "recon_picture",
    "run_key",
    "ssim_window",
    "train_vae",
    "validation_loss",
]
