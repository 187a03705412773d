"""The 4-channel KL autoencoder as a model: its presets, building, saving, loading and identity (no training here:
:mod:`rsgeo_prune.train.vae` trains it).

The architecture is diffusers' :class:`~diffusers.AutoencoderKL`, built from a config (nothing is
downloaded) and saved with ``save_pretrained``, so ``AutoencoderKL.from_pretrained(out / "vae")``
loads it as is. Its config carries the measured latent scale: per-channel ``latents_mean`` and
``latents_std`` of posterior samples on training tiles (``scaling_factor`` is 1): a diffusion model
trains on ``(z - latents_mean) / latents_std``, never on Stable Diffusion's 0.18215.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch

from ..atomic import atomic_folder
from ..errors import InvalidOption, RSGeoPruneError
from .convert import json_safe, scale_tensors

#: Named sizes of the KL autoencoder (8x downsampling = 4 blocks). Step times: batch 16 of
#: 4 x 64 x 64 tiles, one CPU thread of this machine, forward + backward + AdamW.
PRESETS: dict[str, dict] = {
    # tests: 0.1 M params, ~0.03 s/step
    "tiny": dict(
        block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4, mid_block_add_attention=False
    ),
    # CPU: 2.6 M params, 0.32 s/step (vs 0.93 s for 32-64-128-128 with attention, 3.9 M)
    "small": dict(
        block_out_channels=(16, 32, 64, 128), layers_per_block=1, norm_num_groups=8, mid_block_add_attention=False
    ),
    # one GPU, modest data: 20.9 M params
    "base": dict(
        block_out_channels=(64, 128, 256, 256), layers_per_block=2, norm_num_groups=32, mid_block_add_attention=True
    ),
    # Stable Diffusion's VAE shape: 83.7 M params, 271 GFLOP per 256-px encode
    "sd": dict(
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, mid_block_add_attention=True
    ),
}

VAE_DIR = "vae"
REPORT_FILE = "rsgeo_vae.json"


def build_vae(
    preset: str = "small", *, channels: int = 4, latent_channels: int = 4, downsample: int = 8, sample_size: int = 64
):
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
    return AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n_blocks,
        up_block_types=("UpDecoderBlock2D",) * n_blocks,
        block_out_channels=tuple(chans),
        sample_size=sample_size,
        scaling_factor=1.0,
        **p,
    )


def vae_folder(path: str | Path) -> Path:
    """The folder of a saved VAE: ``path/vae`` (a train-vae ``--out``) or ``path`` itself; one clear error
    when neither holds one (an unfinished run has no ``vae/`` yet)."""
    path = Path(path)
    if (path / VAE_DIR / "config.json").exists():
        return path / VAE_DIR
    if not (path / "config.json").exists():
        raise RSGeoPruneError(
            f"{path}: no VAE here (config.json missing); give the --out of a finished train-vae run or its vae/ folder"
        )
    return path


def vae_downsampling(path: str | Path) -> int:
    """The spatial factor of a saved VAE (8 for the presets), read from its config."""
    try:
        cfg = json.loads((vae_folder(path) / "config.json").read_text())
        return 2 ** (len(cfg["block_out_channels"]) - 1)
    except (ValueError, KeyError, TypeError) as exc:
        raise RSGeoPruneError(f"{path}: VAE config cannot be read ({exc}); retrain or restore the folder") from exc


def load_vae(path: str | Path, device: str | torch.device = "cpu"):
    """The VAE saved by :func:`train_vae` (``out/vae`` or ``out``), in eval mode."""
    from diffusers import AutoencoderKL

    path = vae_folder(path)
    try:
        vae = AutoencoderKL.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        raise RSGeoPruneError(f"{path}: VAE cannot be loaded ({exc}); retrain or restore the folder") from exc
    return vae.to(device).eval()


def vae_digest(path: str | Path) -> str:
    """sha256 of a saved VAE's config and weights (names the model in latent shards and reports)."""
    path = vae_folder(path)
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
        return scale_tensors([0.0] * c, [1.0] * c)
    return scale_tensors(cfg.latents_mean, cfg.latents_std)


def save_vae(vae, path: Path, report: dict | None = None) -> Path:
    """``save_pretrained`` (safetensors) and the report, written as one folder that takes the place of
    ``path`` whole (:func:`~rsgeo_prune.atomic.atomic_folder`: the old checkpoint until the new one is complete)."""
    with atomic_folder(path) as tmp:
        vae.save_pretrained(tmp, safe_serialization=True)
        if report is not None:
            (tmp / REPORT_FILE).write_text(json.dumps(json_safe(report), indent=2))
    return Path(path)


def check_tile_size(ds, factor: int, model: str = "VAE") -> None:
    """Tiles (or crops) must be a multiple of the model's downsampling ``factor``: any other size would be
    encoded to latents of another footprint, or fail in the decoder."""
    size = getattr(ds, "tile_size", None)
    if size is None or all(s % factor == 0 for s in size):
        return
    fits = min(size) // factor * factor
    fix = f"e.g. --crop {fits}" if fits else f"tiles of at least {factor} px"
    if getattr(ds, "crop", None) is not None:
        raise InvalidOption("crop", ds.crop, f"must be a multiple of {factor}, the {model}'s downsampling ({fix})")
    raise RSGeoPruneError(
        f"tiles of {size[0]}x{size[1]} px: not a multiple of {factor}, the {model}'s downsampling; "
        f"use crops ({fix}) or tiles of a multiple of {factor}"
    )


__all__ = [
    "PRESETS",
    "REPORT_FILE",
    "VAE_DIR",
    "build_vae",
    "check_tile_size",
    "latent_scale",
    "load_vae",
    "save_vae",
    "vae_digest",
    "vae_downsampling",
    "vae_folder",
]
