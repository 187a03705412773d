"""Tile embedders: ``(N, C, H, W)`` tiles → ``(N, D)`` float32, ℓ2-normalised, deterministic.

Specs for :func:`load_embedder`:

* ``default`` — weights-free, offline: colour, texture and (4 bands) vegetation statistics
  (:mod:`rsgeo_prune.embed.default`).
* ``openclip:<arch>:<checkpoint-path>`` — an open_clip model (RemoteCLIP, GeoRSCLIP) from a local
  checkpoint (:mod:`rsgeo_prune.embed.openclip`).
* ``siglip:<local-dir>`` — a SigLIP model in transformers format, e.g. Git-RSCLIP
  (:mod:`rsgeo_prune.embed.siglip`).

RGB models see bands 1–3 as R, G, B. For 4-band tiles, ``nir_view="concat"`` or ``"mean"`` also
embeds the false-colour view (NIR, R, G) and concatenates or averages the two embeddings
(``"none"``, the default, embeds RGB only). The default embedder uses NIR natively.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import RSGeoPruneError

NIR_VIEWS = ("none", "concat", "mean")


@runtime_checkable
class Embedder(Protocol):
    """Maps tiles ``(N, C, H, W)`` (uint8, or floats in [0, 1]) to float32 ``(N, D)`` unit vectors."""

    spec: str
    dim: int

    def __call__(self, tiles: np.ndarray) -> np.ndarray: ...


def as_unit_float(tiles: np.ndarray) -> np.ndarray:
    """``(N, C, H, W)`` uint8 → float32 in [0, 1]; floats are checked to lie in [0, 1]."""
    tiles = np.asarray(tiles)
    if tiles.ndim != 4:
        raise RSGeoPruneError(f"tiles must be (N, C, H, W); got shape {tiles.shape}")
    if tiles.dtype == np.uint8:
        return tiles.astype(np.float32) / 255.0
    if np.issubdtype(tiles.dtype, np.floating):
        if tiles.size and (np.nanmin(tiles) < 0 or np.nanmax(tiles) > 1):
            raise RSGeoPruneError("float tiles must hold values in [0, 1]; stretch them first (uint8 is used as is)")
        return tiles.astype(np.float32)
    raise RSGeoPruneError(f"tiles of dtype {tiles.dtype} must be mapped to uint8 or [0, 1] floats first")


def rgb_and_false_colour(tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The RGB view (bands 1–3; a 1-band tile is repeated) and, for ≥ 4 bands, the (NIR, R, G) view."""
    c = tiles.shape[1]
    rgb = tiles[:, :3] if c >= 3 else np.repeat(tiles[:, :1], 3, axis=1)
    false = tiles[:, [3, 0, 1]] if c >= 4 else None
    return rgb, false


def combine_views(embed_rgb, tiles: np.ndarray, nir_view: str) -> np.ndarray:
    """Embed the RGB view, and the false-colour view as ``nir_view`` says; ℓ2-normalise the result."""
    if nir_view not in NIR_VIEWS:
        raise RSGeoPruneError(f"nir_view {nir_view!r} must be one of {NIR_VIEWS}")
    rgb, false = rgb_and_false_colour(tiles)
    z = embed_rgb(rgb)
    if nir_view != "none" and false is not None:
        zf = embed_rgb(false)
        z = np.concatenate([z, zf], axis=1) if nir_view == "concat" else z + zf
    elif nir_view == "concat":  # keep D fixed for RGB inputs (reference sets): the NIR half is zero
        z = np.concatenate([z, np.zeros_like(z)], axis=1)
    return l2_normalise(z)


def l2_normalise(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float32)
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def embed_table(table, embedder, *, nodata: float | None = None, progress: bool = True, with_digests: bool = False):
    """Embeddings ``(len(table), D)`` float32 of every row of a tile table (or reference catalog),
    read through :func:`rsgeo_prune.pixels.read_tile_pixels`. ``with_digests``: also each tile's
    pixel digest from the same read; returns ``(embeddings, digests (N,) str)``."""
    from tqdm.auto import tqdm

    from ..pixels import read_tile_pixels, read_tile_pixels_and_digests

    out = np.zeros((len(table), embedder.dim), np.float32)
    digests = np.empty(len(table), dtype=object)
    batches = (
        read_tile_pixels_and_digests(table, nodata=nodata)
        if with_digests
        else ((pos, tiles, None) for pos, tiles in read_tile_pixels(table, nodata=nodata))
    )
    with tqdm(total=len(table), desc="embedding", unit="tile", disable=None if progress else True) as bar:
        for pos, tiles, found in batches:
            out[pos] = embedder(tiles)
            digests[pos] = found
            bar.update(len(pos))
    return (out, digests) if with_digests else out


def load_embedder(
    spec: str = "default",
    *,
    nir_view: str = "none",
    batch_size: int = 64,
    device: str | None = None,
    threads: int | None = None,
):
    """Build an embedder from its spec (see the module docstring). ``threads`` limits the CPU
    threads of the weights-free embedder (default: all cores)."""
    if spec == "default":
        from .default import DefaultEmbedder

        return DefaultEmbedder(threads=threads)
    kind, _, rest = spec.partition(":")
    if kind == "openclip":
        arch, sep, ckpt = rest.partition(":")
        if not sep or not arch or not ckpt:
            raise RSGeoPruneError(
                f"embedder spec {spec!r}: write openclip:<arch>:<checkpoint-path>, "
                "e.g. openclip:ViT-B-32:/models/RemoteCLIP-ViT-B-32.pt"
            )
        from .openclip import OpenClipEmbedder

        return OpenClipEmbedder(arch, ckpt, nir_view=nir_view, batch_size=batch_size, device=device)
    if kind == "siglip":
        if not rest:
            raise RSGeoPruneError(f"embedder spec {spec!r}: write siglip:<local-dir>, e.g. siglip:/models/Git-RSCLIP")
        from .siglip import SiglipEmbedder

        return SiglipEmbedder(rest, nir_view=nir_view, batch_size=batch_size, device=device)
    raise RSGeoPruneError(f"unknown embedder spec {spec!r}; use default, openclip:<arch>:<ckpt> or siglip:<dir>")


__all__ = [
    "Embedder",
    "NIR_VIEWS",
    "as_unit_float",
    "combine_views",
    "embed_table",
    "l2_normalise",
    "load_embedder",
    "rgb_and_false_colour",
]
