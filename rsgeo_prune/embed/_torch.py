"""Shared plumbing of the torch-based embedders: device choice and uint8 conversion."""

from __future__ import annotations

import numpy as np


def pick_device(device: str | None) -> str:
    """``device`` if given, else CUDA when available, else CPU."""
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def to_uint8(tiles: np.ndarray) -> np.ndarray:
    """``(N, C, H, W)`` uint8 as is, [0, 1] floats scaled and rounded (models' processors want 8-bit images)."""
    from . import as_unit_float

    if tiles.dtype == np.uint8:
        return tiles
    return np.rint(as_unit_float(tiles) * 255.0).astype(np.uint8)


def to_pil(rgb: np.ndarray):
    """``(3, H, W)`` uint8 → PIL RGB image."""
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(np.moveaxis(rgb, 0, -1)), mode="RGB")
