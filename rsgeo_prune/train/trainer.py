"""Training an unconditional DiT on latent shards (RS-Prune §4.2: DiT-XL/2, AdamW 1e-4, global batch 256, EMA).

Data path: ``encode`` wrote the posterior (mean, log-variance) of every tile; each step draws
``z ~ q(z|x)``, normalises it with the VAE's per-channel scale and trains the DiT on the diffusion loss::

    LatentShards ──epoch_order(seed, epoch)[position : position + B]──► rank r's slice (B / world rows)
      z = mean + exp(logvar/2)·ε;  x0 = (z − μ_c) / σ_c          (N, C, h, w) float32
      loss = diffusion.loss(DDP(DiT), x0)  under bf16 autocast on GPU
      backward → clip ‖g‖ → AdamW → EMA ← lerp(EMA, θ, 1 − decay(step))

Run layout under ``out``: ``state.pt`` (latest full state, what ``--resume`` reads and ``sample`` samples),
``checkpoints/step-NNNNNNN.pt`` (kept copies, with ``keep_every``), ``metrics.jsonl``, ``samples/`` (EMA grids),
``tensorboard/`` (with ``log="tensorboard"``) and, when the run ends, ``export/`` (:mod:`~rsgeo_prune.train.export`:
``config.json``, ``ema.safetensors``, ``model.safetensors``, which open without this package).

Choices, each with its reason:

* **One checkpoint format**: :func:`~rsgeo_prune.train.checkpoint.save_state` (atomic, ``weights_only``) with, in
  ``extra``: ``kind``, the train config, the EMA weights, the latents' identity (VAE digest, shape, scale) and
  the world size. ``sample`` needs nothing but this file and the VAE.
* **Exact resume**: the data order is :func:`~rsgeo_prune.train.rng.epoch_order` of (seed, epoch) and the
  state holds (epoch, position); the generator that draws step s's latent noise, timesteps and diffusion noise on
  rank r is seeded with (seed, s, r) (:func:`~rsgeo_prune.train.rng.seeded_generator`). Its state at any
  step is thus a pure function of the checkpointed step: nothing per rank has to be gathered to rank 0, and a
  run stopped at step k and resumed ends, on CPU, with the same weights bit for bit as an uninterrupted one.
* **Global batch is the unit**: ``batch_size`` is the global batch (the paper's 256); each of the ``world``
  processes takes its own contiguous slice of every global batch, so the data a step sees does not depend on
  the number of GPUs (only the per-rank noise does).
* **DDP**: ``torchrun`` → one process per GPU, the device from ``LOCAL_RANK`` (multi-node safe), NCCL; on CPU gloo
  and no ``device_ids``. Only rank 0 writes.
* **EMA warm-up**: decay = min(ema_decay, (1 + s)/(10 + s)), so a 1,000-step run has a usable EMA.
* **Precision**: ``precision="auto"``: bf16 autocast on CUDA (fp16 gives NaNs in diffusion training), fp32 master
  weights, TF32 matmuls; fp32 on CPU. ``"bf16"`` runs the same autocast path on CPU (the tests do),
  ``"fp32"`` turns it off. ``compile`` wraps the DDP module with ``torch.compile`` (the model traces as one graph).
* **Host-device traffic**: the latents stay memory-mapped on the host (page cache shared by the ranks); a step
  copies its rows through pinned memory and the latent scale lives on the device, so nothing in a step waits
  for the GPU except the log steps' loss read.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InvalidOption, RSGeoPruneError, check_number, check_seed
from .checkpoint import DIT_STATE_KIND, check_resume_steps, config_from_saved, load_state, read_checkpoint
from .device import PRECISIONS, autocast, enable_tf32, uses_bf16
from .diffusion import DIFFUSIONS, TIME_SAMPLINGS, diffusion_of
from .distributed import Dist, setup_distributed, teardown_distributed, wrap_ddp
from .dit import DIT_CONFIGS, build_dit, count_parameters
from .export import EXPORT_DIR, write_export
from .loop import STATE_FILE, Budget, Cadence, claim_out, open_log, run_folder, run_loop
from .metrics import compare_sets
from .rng import epoch_order, seeded_generator
from .runlog import MetricsLog, check_log
from .sampling import decode_latents, generate_latents, grid_pictures, write_grids

#: Settings that must match when a run is resumed (the data order, the noise and the model depend on them).
RESUME_KEYS = ("model", "diffusion", "time_sampling", "batch_size", "seed")


@dataclass
class DiTTrainConfig:
    """Settings of :func:`train_dit` (plain values: they are stored in every checkpoint)."""

    model: str = "DiT-B/2"
    diffusion: str = "ddpm"
    time_sampling: str = "uniform"  # flow only: "uniform" or "logit_normal"
    batch_size: int = 256  # global batch, split evenly over the processes
    lr: float = 1e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.9999
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping
    steps: int = 100_000
    minutes: float | None = None  # wall-clock budget; the state is saved when it runs out
    log_every: int = 50
    save_every: int = 5_000
    keep_every: int = 0  # also keep checkpoints/step-N.pt every this many steps (0: only state.pt)
    sample_every: int = 10_000  # EMA sample grid (and FD with a VAE) every this many steps (0: never)
    sample_n: int = 16
    sample_steps: int = 50
    fd_n: int = 256  # samples for the Fréchet distance (0: none); needs a VAE and rsgeo_prune.train.metrics
    compile: bool = False
    precision: str = "auto"  # "auto": bf16 autocast on CUDA, fp32 elsewhere; "bf16" or "fp32" anywhere
    grad_checkpointing: bool = False
    seed: int = 0
    device: str | None = None
    log: str = "jsonl"  # "jsonl" (metrics.jsonl) or "tensorboard" (metrics.jsonl and tensorboard/ event files)


@dataclass
class DiTTrainResult:
    step: int
    loss: float | None
    out: Path
    world_size: int = 1
    per_gpu_batch: int = 0
    global_batch: int = 0
    params: int = 0
    metrics: dict = field(default_factory=dict)


# -- the named steps ------------------------------------------------------------------------------


def check_config(cfg: DiTTrainConfig) -> None:
    """Every value finite and in range and the combinations meaningful, before anything runs (one
    :class:`InvalidOption` naming the first that is not)."""
    if cfg.model not in DIT_CONFIGS:
        raise InvalidOption("model", cfg.model, f"unknown; choose one of {', '.join(sorted(DIT_CONFIGS))}")
    if cfg.diffusion not in DIFFUSIONS:
        raise InvalidOption("diffusion", cfg.diffusion, f"choose one of {', '.join(sorted(DIFFUSIONS))}")
    if cfg.time_sampling not in TIME_SAMPLINGS:
        raise InvalidOption("time_sampling", cfg.time_sampling, f"choose one of {', '.join(TIME_SAMPLINGS)}")
    if cfg.time_sampling != "uniform" and cfg.diffusion != "flow":
        raise InvalidOption(
            "time_sampling",
            cfg.time_sampling,
            f"applies to --diffusion flow only ({cfg.diffusion} draws its timesteps uniformly); drop it or train flow",
        )
    for name in ("batch_size", "steps", "log_every", "save_every", "sample_n", "sample_steps"):
        check_number(name, getattr(cfg, name), 1, whole=True)
    for name in ("keep_every", "sample_every", "fd_n"):
        check_number(name, getattr(cfg, name), 0, whole=True)
    if cfg.diffusion == "ddpm" and cfg.sample_steps > 1000:
        raise InvalidOption("sample_steps", cfg.sample_steps, "must be at most 1000, the DDPM's timesteps")
    check_number("lr", cfg.lr, 0, open_low=True, example="1e-4")
    check_number("weight_decay", cfg.weight_decay, 0, example=0.0)
    check_number("grad_clip", cfg.grad_clip, 0, example="1.0; 0 turns clipping off")
    check_number("ema_decay", cfg.ema_decay, 0, 1, open_high=True, example=0.9999)
    if cfg.minutes is not None:
        check_number("minutes", cfg.minutes, 0, open_low=True, example=60)
    check_seed("seed", cfg.seed)
    if cfg.precision not in PRECISIONS:
        raise InvalidOption("precision", cfg.precision, f"choose one of {', '.join(PRECISIONS)}")
    check_log(cfg.log)


def load_latents(root: str | Path, cfg: DiTTrainConfig, world: int, vae_dir: str | Path | None):
    """The :class:`~rsgeo_prune.train.latents.LatentShards` of ``root``, checked against the batch split and the VAE."""
    from .latents import LatentShards

    if vae_dir is not None:
        from .vae_model import vae_folder

        vae_folder(vae_dir)  # there, before the latents are read
    ds = LatentShards(root)
    if len(ds) < cfg.batch_size:
        raise RSGeoPruneError(
            f"{root}: {len(ds)} latents, fewer than one global batch of {cfg.batch_size}; "
            "lower --batch-size or encode more tiles"
        )
    if cfg.batch_size % world:
        raise RSGeoPruneError(
            f"batch size {cfg.batch_size}: not divisible by the {world} processes; use a multiple of {world}"
        )
    _, _, h, w = ds.mean.shape
    patch = DIT_CONFIGS[cfg.model].patch_size
    if h != w or h % patch:
        raise RSGeoPruneError(f"{root}: latents {h}x{w} do not fit {cfg.model} (square, a multiple of patch {patch})")
    if vae_dir is not None:
        from .vae_model import vae_digest

        digest = vae_digest(vae_dir)
        if digest != ds.index["vae_digest"]:
            raise RSGeoPruneError(
                f"{vae_dir}: not the VAE that encoded {root} (digest {digest[:12]}…, latents "
                f"{str(ds.index['vae_digest'])[:12]}…); give that VAE or encode again"
            )
    return ds


def latents_info(ds, root) -> dict:
    """What a checkpoint records about its latents (``sample`` denormalises and checks the VAE with it; a resume
    checks that the latents are the run's: same VAE, catalog, source files, count and shape)."""
    return {
        "root": str(root),
        "vae_digest": ds.index["vae_digest"],
        "catalog_digest": ds.index["catalog_digest"],
        "source_digest": ds.index.get("source_digest"),
        "tiles": len(ds),
        "latent_shape": list(ds.mean.shape[1:]),
        "latents_mean": ds.latents_mean.flatten().tolist(),
        "latents_std": ds.latents_std.flatten().tolist(),
        "bands": ds.index.get("bands"),
        "band_names": ds.index.get("band_names"),
    }


def check_resume(path: Path, cfg: DiTTrainConfig, info: dict) -> None:
    """A resumed run must be the same run: same model, diffusion, global batch, seed and latents (VAE, catalog,
    source files, count, shape), and it goes forward (``cfg.steps`` not below the saved step)."""
    state = read_checkpoint(path, hint="start a new --out")
    extra = state["extra"]
    saved, lat = config_from_saved(DiTTrainConfig, extra["config"]), extra["latents"]
    for key in RESUME_KEYS:
        was, now = getattr(saved, key), getattr(cfg, key)
        if was != now:
            flag = "--" + key.replace("_", "-")
            raise RSGeoPruneError(
                f"{path}: checkpoint of another config ({flag} {was}, not {now}); resume with "
                f"{flag} {was} or start a new --out"
            )
    if lat["vae_digest"] != info["vae_digest"]:
        raise RSGeoPruneError(
            f"{info['root']}: latents from another VAE than the run's (digest "
            f"{info['vae_digest'][:12]}…, run {lat['vae_digest'][:12]}…); resume with "
            f"{lat['root']} or start a new --out"
        )
    if lat.get("catalog_digest") != info["catalog_digest"] or lat.get("source_digest") != info["source_digest"]:
        what = "catalog" if lat.get("catalog_digest") != info["catalog_digest"] else "version of the source rasters"
        raise RSGeoPruneError(
            f"{info['root']}: latents of another {what} than the run's (encoded from other tiles "
            f"or files); resume with {lat['root']} or start a new --out"
        )
    if lat["tiles"] != info["tiles"] or lat["latent_shape"] != info["latent_shape"]:
        raise RSGeoPruneError(
            f"{info['root']}: {info['tiles']} latents {info['latent_shape']}, the run had "
            f"{lat['tiles']} {lat['latent_shape']}; resume with {lat['root']} or start a new --out"
        )
    check_resume_steps(path, int(state["step"]), cfg.steps)


def ema_decay(cfg: DiTTrainConfig, step: int) -> float:
    """Decay of the EMA update that follows ``step`` completed updates: a warm-up to ``cfg.ema_decay``."""
    return min(cfg.ema_decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema ← ema + (1 − decay)·(θ − ema), all parameters in one fused call."""
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)


def next_batch(n: int, batch: int, seed: int, epoch: int, position: int, cache: dict) -> tuple[np.ndarray, int, int]:
    """The indices of the next global batch and the (epoch, position) after it. An epoch's tail shorter than
    a batch is skipped (drop-last), so every batch is full and a step's data is a function of (seed, step)."""
    if position + batch > n:
        epoch, position = epoch + 1, 0
    if cache.get("epoch") != epoch:
        cache.update(epoch=epoch, order=epoch_order(n, seed, epoch))
    return cache["order"][position : position + batch], epoch, position + batch


class TrainStep:
    """One optimiser step on one rank: draw z ~ q(z|x), normalise, diffusion loss, backward, clip, AdamW, EMA.

    ``train_model`` is what runs forward (the DDP and/or compiled wrapper); ``model`` the bare DiT whose
    parameters the optimiser and the EMA hold. Returns the loss and the gradient norm as device tensors
    (reading them synchronises a GPU: the loop does so only on log steps).
    """

    def __init__(self, train_model, model, ema, opt, diffusion, ds, cfg: DiTTrainConfig, device: torch.device):
        self.train_model, self.model, self.ema, self.opt = train_model, model, ema, opt
        self.diffusion, self.ds, self.cfg, self.device = diffusion, ds, cfg, device
        self.params = [p for p in model.parameters() if p.requires_grad]

    def __call__(self, mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator, step: int):
        """mean, logvar: (b, C, h, w) fp16 on the device; ``step``: updates done before this one."""
        x0 = self.ds.normalise(self.ds.sample(mean, logvar, generator))  # (b, C, h, w) float32
        with autocast(self.device, self.cfg.precision):
            loss = self.diffusion.loss(self.train_model, x0, generator=generator)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            gnorm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        else:
            gnorm = torch.zeros((), device=self.device)
        self.opt.step()
        update_ema(self.ema, self.model, ema_decay(self.cfg, step))
        return loss.detach(), gnorm.detach()


def build_training(cfg: DiTTrainConfig, latent_shape, device: torch.device):
    """Model (seeded init: the same on every rank), its EMA copy and AdamW (fused on CUDA)."""
    c, h, _ = latent_shape
    torch.manual_seed(cfg.seed)
    model = build_dit(cfg.model, input_size=h, in_channels=c, grad_checkpointing=cfg.grad_checkpointing).to(device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda")
    return model, ema, opt


class Evaluator:
    """Rank 0's periodic look at the EMA: a sample grid (decoded by the VAE when given) and, with the VAE and
    :func:`rsgeo_prune.train.metrics.compare_sets`, the Fréchet distance between ``fd_n`` decoded EMA samples and
    ``fd_n`` decoded training latents (posterior means: the reference shares the VAE's reconstruction error, so FD
    measures the DiT alone). Samples use a fixed seed, so grids of successive steps show the same noise."""

    def __init__(self, cfg: DiTTrainConfig, ds, vae, out: Path, device: torch.device, log: MetricsLog | None = None):
        self.cfg, self.ds, self.vae, self.out, self.device, self.log = cfg, ds, vae, out, device, log
        self.diffusion = diffusion_of(asdict(cfg))
        self.sampler = "euler" if cfg.diffusion == "flow" else "ddpm"
        self.latent_shape = tuple(ds.mean.shape[1:])
        self.compare_sets = compare_sets if vae is not None and cfg.fd_n > 0 else None
        self._reference = None

    def __call__(self, ema: torch.nn.Module, step: int) -> dict:
        record = {}
        n = max(self.cfg.sample_n, self.cfg.fd_n if self.compare_sets else 0)
        z = generate_latents(
            ema,
            self.diffusion,
            n,
            latent_shape=self.latent_shape,
            steps=self.cfg.sample_steps,
            sampler=self.sampler,
            seed=self.cfg.seed + 1,
            batch_size=64,
            device=self.device,
        )
        if self.vae is not None:
            tiles = decode_latents(self.vae, self.ds.denormalise(z), device=self.device)
        else:  # no VAE: show the normalised latents themselves, ±3σ → [-1, 1]
            tiles = (z / 3).clamp(-1, 1)
        kind = "tiles" if self.vae is not None else "latents"
        pictures = grid_pictures(tiles[: self.cfg.sample_n])
        write_grids(tiles[: self.cfg.sample_n], self.out / "samples", f"step-{step:07d}-{kind}", pictures)
        if self.log is not None:
            for view, picture in pictures.items():
                self.log.image(f"samples/{kind}_{view}", picture, step)
        if self.compare_sets is not None:
            record.update(self._fd(tiles[: self.cfg.fd_n]))
        return record

    def _fd(self, tiles: torch.Tensor) -> dict:
        if self._reference is None:
            idx = np.linspace(0, len(self.ds) - 1, min(self.cfg.fd_n, len(self.ds))).round().astype(np.int64)
            self._reference = decode_latents(self.vae, self.ds.mean[idx].float(), device=self.device)
        try:
            report = self.compare_sets(tiles, self._reference)
        except Exception as exc:  # the metric is a guest here: a failure must not end a training run
            return {"fd_error": f"{type(exc).__name__}: {exc}"}
        names = {
            "fd": "fd",
            "kid_mean": "kid",
            "kid_std": "kid_std",
            "feature": "fd_feature",
            "digest": "fd_feature_digest",
            "n_a": "fd_n_samples",
            "n_b": "fd_n_reference",
            "dim": "fd_dim",
        }
        return {names.get(k, f"fd_{k}"): v for k, v in _report_dict(report).items()}


def _report_dict(report) -> dict:
    """The plain numeric/string fields of a MetricReport-like object (dataclass, dict, to_dict() or a number)."""
    if hasattr(report, "as_dict"):
        d = report.as_dict()
    elif hasattr(report, "__dataclass_fields__"):
        d = asdict(report)
    elif isinstance(report, dict):
        d = report
    elif isinstance(report, (int, float)):
        d = {"fd": float(report)}
    else:
        d = {k: v for k, v in vars(report).items() if not k.startswith("_")}
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool))}


# -- the loop -------------------------------------------------------------------------------------
def train_dit(
    latents_root: str | Path,
    out: str | Path,
    cfg: DiTTrainConfig = DiTTrainConfig(),
    *,
    vae_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> DiTTrainResult:
    """Train ``cfg.model`` on the latent shards in ``latents_root``; write the run into ``out``.

    Call it in every process of a torchrun launch (it sets up DDP itself from the environment) or in one
    process. ``vae_dir``: the VAE that encoded the latents (checked by digest), to decode sample grids and FD.
    Returns the last step and loss; rank 0's result has the last logged metrics.
    """
    check_config(cfg)
    out = Path(out)
    d = setup_distributed(cfg.device)
    try:
        return _train(latents_root, out, cfg, d, vae_dir, resume, progress)
    finally:
        teardown_distributed(d)


def _train(latents_root, out: Path, cfg: DiTTrainConfig, d: Dist, vae_dir, resume: bool, progress: bool):
    # every rank runs the same checks, so bad input ends all of them at once (not rank 0 alone, with the
    # others left waiting in DDP's first broadcast); rank 0 cannot write state.pt before all ranks joined DDP
    state_path = claim_out(out, resume)
    if d.device.type == "cuda":
        enable_tf32()
    ds = load_latents(latents_root, cfg, d.world, vae_dir)
    info = latents_info(ds, latents_root)
    model, ema, opt = build_training(cfg, tuple(ds.mean.shape[1:]), d.device)
    start = (0, 0, 0)
    if resume:
        check_resume(state_path, cfg, info)
        # map to the CPU: load_state_dict copies into the device's parameters and the optimiser moves its state to
        # them, while the saved RNG states must stay CPU tensors for torch.set_rng_state
        pos = load_state(state_path, model=model, optimizer=opt, map_location="cpu")
        ema.load_state_dict(pos["extra"]["ema"])
        start = (pos["step"], pos["epoch"], pos["position"])
    # the loop writes; a new run that fails before its first saved state leaves no folder behind
    with run_folder(out, d.is_main):
        return _run(model, ema, opt, ds, info, out, cfg, d, vae_dir, resume, progress, start)


def _run(
    model,
    ema,
    opt,
    ds,
    info: dict,
    out: Path,
    cfg: DiTTrainConfig,
    d: Dist,
    vae_dir,
    resume: bool,
    progress: bool,
    start: tuple[int, int, int],
) -> DiTTrainResult:
    """The run of :func:`train_dit` from ``start``, its inputs checked: DDP/compile wrapping, then the loop."""
    train_model = wrap_ddp(model, d)
    if cfg.compile:
        train_model = torch.compile(train_model)
    per_rank = cfg.batch_size // d.world
    run_step = TrainStep(train_model, model, ema, opt, diffusion_of(asdict(cfg)), ds, cfg, d.device)

    vae = None
    if vae_dir is not None and d.is_main and cfg.sample_every:
        from .vae_model import load_vae

        vae = load_vae(vae_dir, d.device)
    log = open_log(out, cfg.log, start[0] if resume else None) if d.is_main else None
    evaluator = Evaluator(cfg, ds, vae, out, d.device, log) if d.is_main and cfg.sample_every else None
    n_params = count_parameters(model)
    if d.is_main:
        header = dict(
            event="start" if not resume else "resume",
            step=start[0],
            model=cfg.model,
            params=n_params,
            diffusion=cfg.diffusion,
            world_size=d.world,
            per_gpu_batch=per_rank,
            global_batch=cfg.batch_size,
            device=str(d.device),
            precision="bf16 autocast" if uses_bf16(d.device, cfg.precision) else "fp32",
            tiles=len(ds),
            latent_shape=info["latent_shape"],
            compile=cfg.compile,
        )
        log.log(**header)
        if progress:
            print(
                f"{cfg.model} ({n_params / 1e6:.2f} M params, {cfg.diffusion}) on {len(ds)} latents "
                f"{'x'.join(map(str, info['latent_shape']))}: {d.world} x {d.device.type}, per-GPU batch {per_rank}, "
                f"global batch {cfg.batch_size}, {header['precision']}",
                file=sys.stderr,
                flush=True,
            )
    task = DiTTask(run_step, ds, info, cfg, d, evaluator, out)
    cadence = Cadence(cfg.steps, cfg.log_every, cfg.save_every, eval_every=cfg.sample_every, keep_every=cfg.keep_every)
    step, loss, last = run_loop(
        task, cadence, out=out, start=start, d=d, budget=Budget(cfg.minutes), log=log, progress=progress
    )
    return DiTTrainResult(step, loss, out, d.world, per_rank, cfg.batch_size, n_params, last)


class DiTTask:
    """The DiT's part of :func:`~rsgeo_prune.train.loop.run_loop`: its batches (this rank's slice of each global
    batch), its step, its log fields, its evaluation (rank 0's :class:`Evaluator`), its state and its export."""

    rate_name = "img_s"

    def __init__(
        self,
        run_step: "TrainStep",
        ds,
        info: dict,
        cfg: DiTTrainConfig,
        d: Dist,
        evaluator: "Evaluator | None",
        out: Path,
    ):
        self.run_step, self.ds, self.info, self.cfg, self.d = run_step, ds, info, cfg, d
        self.evaluator, self.out = evaluator, out
        self.model, self.ema, self.optimizer, self.device = run_step.model, run_step.ema, run_step.opt, d.device
        self.per_rank = cfg.batch_size // d.world
        self.gnorm = torch.zeros(())

    def batches(self, epoch: int, position: int):
        cache: dict = {}
        rows = slice(self.d.rank * self.per_rank, (self.d.rank + 1) * self.per_rank)
        while True:
            idx, epoch, position = next_batch(len(self.ds), self.cfg.batch_size, self.cfg.seed, epoch, position, cache)
            mine = torch.from_numpy(idx[rows])
            yield (
                (_to_device(self.ds.mean[mine], self.device), _to_device(self.ds.logvar[mine], self.device)),
                epoch,
                position,
            )

    def step(self, batch, step: int):
        self.model.train()
        mean, logvar = batch
        loss, self.gnorm = self.run_step(
            mean, logvar, seeded_generator(self.device, self.cfg.seed, step, self.d.rank), step
        )
        return loss, self.cfg.batch_size

    def log_record(self, step: int, epoch: int, loss: float, rate: float, step_time: float) -> dict:
        return dict(
            step=step,
            epoch=epoch,
            loss=round(loss, 6),
            grad_norm=round(float(self.gnorm), 4),
            lr=self.cfg.lr,
            ema_decay=round(ema_decay(self.cfg, step - 1), 6),
            images_per_s=round(rate, 2),
            images_per_s_per_gpu=round(rate / self.d.world, 2),
            step_time_s=round(step_time, 4),
        )

    def evaluate(self, step: int) -> dict | None:
        return self.evaluator(self.ema, step) if self.evaluator is not None else None

    def state_extra(self) -> dict:
        return {
            "kind": DIT_STATE_KIND,
            "config": asdict(self.cfg),
            "ema": self.ema.state_dict(),
            "latents": self.info,
            "world_size": self.d.world,
            "noise": "step s, rank r: generator seeded with (seed, s, r)",
        }

    def finish(self, step: int) -> None:
        write_export(
            self.out / EXPORT_DIR,
            ema=self.ema,
            model=self.model,
            name=self.cfg.model,
            diffusion=self.run_step.diffusion,
            train_config=asdict(self.cfg),
            latents=self.info,
            step=step,
        )


def _to_device(rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch gathered on the host, to the device. On CUDA through pinned memory, so the copy is queued behind
    the previous step's kernels instead of waiting for them (a copy from pageable memory syncs the stream);
    torch's caching host allocator reuses the pinned blocks and keeps each until its copy is done."""
    if device.type != "cuda":
        return rows
    return rows.pin_memory().to(device, non_blocking=True)


__all__ = [
    "DiTTask",
    "DiTTrainConfig",
    "DiTTrainResult",
    "RESUME_KEYS",
    "STATE_FILE",
    "TrainStep",
    "build_training",
    "check_config",
    "check_resume",
    "ema_decay",
    "latents_info",
    "load_latents",
    "next_batch",
    "train_dit",
    "update_ema",
]
