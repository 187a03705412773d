"""Front-end glue of the DiT: argparse registration and run functions for ``train-dit`` and ``sample``
(``rsgeo-prune`` registers them in its parser; they raise :class:`~rsgeo_prune.errors.RSGeoPruneError` on bad input,
which the front end prints as one line, exit 2).

The entry point, also under torchrun, is ``rsgeo-prune`` (``python -m rsgeo_prune``)::

    rsgeo-prune train-dit LATENTS --out RUN --model DiT-B/2
    torchrun --nproc_per_node 4 -m rsgeo_prune train-dit LATENTS --out RUN --model DiT-XL/2
    rsgeo-prune sample RUN/state.pt --vae VAE --n 64 --out SAMPLES

"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def add_train_dit_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``rsgeo-prune train-dit LATENTS --out DIR``."""
    from .device import PRECISIONS
    from .diffusion import DIFFUSIONS, TIME_SAMPLINGS
    from .dit import DIT_CONFIGS
    from .runlog import LOGS
    from .trainer import DiTTrainConfig

    d = DiTTrainConfig()
    p.add_argument("latents", help="the --out folder of rsgeo-prune encode (latent shards + index.json)")
    p.add_argument(
        "--out", required=True, help="run folder (state.pt, metrics.jsonl, samples/; export/ when the run ends)"
    )
    p.add_argument("--model", default=d.model, choices=sorted(DIT_CONFIGS), help=f"DiT config (default {d.model})")
    p.add_argument(
        "--diffusion",
        default=d.diffusion,
        choices=sorted(DIFFUSIONS),
        help="ddpm (noise prediction, the paper's) or flow (rectified flow, velocity)",
    )
    p.add_argument(
        "--time-sampling",
        default=d.time_sampling,
        choices=TIME_SAMPLINGS,
        help="flow only: distribution of the path time",
    )
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimiser steps in all (default {d.steps})")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget; the state is saved when it runs out")
    p.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help=f"GLOBAL batch, split evenly over the torchrun processes (default {d.batch_size}, the paper's)",
    )
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--ema-decay", type=float, default=d.ema_decay, help="EMA decay after the warm-up")
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max gradient norm (0: no clipping)")
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument(
        "--log",
        choices=LOGS,
        default=d.log,
        help="jsonl: metrics.jsonl; tensorboard: metrics.jsonl and TensorBoard event files in tensorboard/ "
        "(loss, images/s, FD, sample grids)",
    )
    p.add_argument("--save-every", type=int, default=d.save_every, help="write state.pt every this many steps")
    p.add_argument(
        "--keep-every",
        type=int,
        default=d.keep_every,
        help="also keep checkpoints/step-N.pt every this many steps (0: never)",
    )
    p.add_argument(
        "--sample-every",
        type=int,
        default=d.sample_every,
        help="EMA sample grid (and FD with --vae) every this many steps (0: never)",
    )
    p.add_argument("--sample-n", type=int, default=d.sample_n, help="tiles in the sample grid")
    p.add_argument("--sample-steps", type=int, default=d.sample_steps, help="sampler steps for grids and FD")
    p.add_argument("--fd-n", type=int, default=d.fd_n, help="samples for the Fréchet distance (0: none)")
    p.add_argument("--vae", default=None, help="the VAE that encoded LATENTS: grids decoded to tiles, FD")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model (fuses norms, modulation and casts: recommended on GPU)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=d.precision,
        help="auto: bf16 autocast on CUDA, fp32 elsewhere; bf16 or fp32 on any device",
    )
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute blocks in backward (less memory)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:N or mps (default: the best available; under torchrun cuda:LOCAL_RANK or cpu)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run_train_dit(args) -> dict:
    """Train the DiT; returns (and prints, on rank 0) a one-line JSON summary."""
    from .commands import config_from_args
    from .export import EXPORT_DIR
    from .trainer import DiTTrainConfig, train_dit

    cfg = config_from_args(DiTTrainConfig, args)
    res = train_dit(args.latents, args.out, cfg, vae_dir=args.vae, resume=args.resume, progress=not args.quiet)
    summary = {
        "out": str(res.out),
        "step": res.step,
        "loss": res.loss,
        "model": cfg.model,
        "params": res.params,
        "world_size": res.world_size,
        "per_gpu_batch": res.per_gpu_batch,
        "global_batch": res.global_batch,
        "state": str(Path(res.out) / "state.pt"),
        **{k: v for k, v in res.metrics.items() if k.startswith("fd")},
    }
    if (Path(res.out) / EXPORT_DIR / "config.json").exists():
        summary["export"] = str(Path(res.out) / EXPORT_DIR)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return summary


def add_sample_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``rsgeo-prune sample CHECKPOINT --vae DIR --n 64 --out DIR``."""
    from .diffusion import SAMPLERS

    p.add_argument(
        "checkpoint",
        help="a train-dit state.pt (or checkpoints/step-N.pt) or its export/ folder; the EMA weights are used",
    )
    p.add_argument("--vae", required=True, help="the VAE that encoded the training latents (checked by digest)")
    p.add_argument("--n", type=int, default=64, help="tiles to generate (default 64)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--sampler",
        default=None,
        choices=sorted({s for ss in SAMPLERS.values() for s in ss}),
        help="ddpm (ancestral) or ddim for a ddpm model, euler for a flow model (default: ddpm / euler)",
    )
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default 250 for ddpm, 50 otherwise)")
    p.add_argument(
        "--eta",
        type=float,
        default=None,
        help="DDIM eta in [0, 1] (default 0: deterministic); with --sampler ddim only",
    )
    p.add_argument("--seed", type=int, default=0, help="same seed, same files")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--format",
        default="npy",
        choices=("npy", "tif"),
        help="one file per tile: npy float32 (C, H, W) in [-1, 1], or tif uint8 levels round((x + 1) * "
        "127.5) with band names (not georeferenced); samples.json names bands, dtype and range",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: the best available)")
    return p


def run_sample(args) -> dict:
    """Sample tiles; returns (and prints) the summary written to ``out/samples.json``."""
    from .sampling import sample_to_folder

    summary = sample_to_folder(
        args.checkpoint,
        args.vae,
        args.out,
        n=args.n,
        sampler=args.sampler,
        steps=args.steps,
        eta=args.eta,
        seed=args.seed,
        batch_size=args.batch_size,
        fmt=args.format,
        device=args.device,
    )
    print(json.dumps(summary))
    return summary
