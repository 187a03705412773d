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


class TorchImageEmbedder:
    """Batching shared by the model embedders: RGB views → PIL images → ``_encode`` → unit vectors.

    Subclasses set ``batch_size``, ``nir_view``, ``dim`` and implement ``_encode(images) -> tensor``.
    """

    batch_size: int
    nir_view: str
    dim: int

    def _encode(self, images):  # pragma: no cover - abstract
        raise NotImplementedError

    def _embed_rgb(self, rgb: np.ndarray) -> np.ndarray:
        import torch

        from . import l2_normalise

        out = []
        with torch.inference_mode():
            for s in range(0, len(rgb), self.batch_size):
                out.append(self._encode([to_pil(t) for t in rgb[s : s + self.batch_size]]).float().cpu().numpy())
        return l2_normalise(np.concatenate(out)) if out else np.zeros((0, self.dim), np.float32)

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        from . import combine_views

        return combine_views(self._embed_rgb, to_uint8(np.asarray(tiles)), self.nir_view)
