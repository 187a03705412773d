"""The conversions the training wing repeats, each written once.

* model range ↔ uint8 levels: :func:`to_levels` (``round((x + 1) · 127.5)``, clipped: how samples are saved and how
  the metrics quantise floats; the inverse of the datasets' ``u / 127.5 - 1``);
* band views of 4-band tiles: :data:`VIEWS` and :func:`band_views` (RGB, NIR-R-G false colour, or grey);
* latent scale: :func:`scale_tensors`, :func:`normalise_latents`, :func:`denormalise_latents` (a diffusion model
  trains on ``(z − mean) / std`` per channel);
* JSON: :func:`json_safe` (tensors, numpy values, non-finite floats → plain JSON values).
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: Band views of grids and pictures: name → three 0-based bands shown as R, G, B.
VIEWS: dict[str, tuple[int, int, int]] = {"rgb": (0, 1, 2), "nirrg": (3, 0, 1), "gray": (0, 0, 0)}


def band_views(channels: int) -> dict[str, tuple[int, int, int]]:
    """The views that fit ``channels`` bands: RGB (3+ bands, bands 1-3), NIR-R-G (4+ bands: bands 4, 1, 2), or
    grey (band 1) for fewer than 3 bands."""
    if channels < 3:
        return {"gray": VIEWS["gray"]}
    return {k: VIEWS[k] for k in (("rgb", "nirrg") if channels >= 4 else ("rgb",))}


def to_levels(x) -> np.ndarray:
    """uint8 levels ``round((x + 1) · 127.5)`` of model-range values ``x`` (torch or numpy, clipped to [-1, 1]),
    computed in float64 so every level ``u`` comes back from ``u / 127.5 - 1`` unchanged."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.clip(np.rint((np.asarray(x, dtype=np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def scale_tensors(mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel latent ``mean`` and ``std`` (sequences of C numbers) as float32 ``(1, C, 1, 1)`` tensors."""
    return (
        torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1),
        torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1),
    )


def normalise_latents(z: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(z − mean) / std``: the unit-scale latents a diffusion model trains on."""
    return (z.float() - mean) / std


def denormalise_latents(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``x · std + mean``: a diffusion model's latents back on the VAE's scale."""
    return x.float() * std + mean


def json_safe(v):
    """``v`` with tensors and numpy values as numbers and lists, tuples as lists, keys as strings and non-finite
    floats as None (JSON has no NaN)."""
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        return json_safe(v.item() if v.numel() == 1 else v.tolist())
    if isinstance(v, np.ndarray):
        return json_safe(v.tolist())
    if isinstance(v, np.generic):
        return json_safe(v.item())
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


__all__ = ["VIEWS", "band_views", "denormalise_latents", "json_safe", "normalise_latents", "scale_tensors", "to_levels"]
