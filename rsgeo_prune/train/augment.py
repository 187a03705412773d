"""Radiometric augmentation for autoencoder training: per-band gain and offset, per-tile gamma.

Acquisitions of one place differ mostly in radiometry (sensor, season, sun angle, processing): the
NAIP years of one quarter-quad differ in band means by up to 30 levels and in blue's spread by 2x. A
VAE trained on a few acquisitions learns their levels; jittering them makes it encode the structure
and carry the levels through, which is what a new acquisition needs (measured on held-out years by
``benchmarks/vae.py``).

The jitter runs on a batch already on the model's device, in [-1, 1]::

    x01 = (x + 1) / 2                                  # [0, 1]
    y01 = clip(gain[b] · x01 ** gamma + offset[b], 0, 1)
    y   = 2 · y01 − 1, nodata pixels left at their fill value

with ``log gain ~ U(±log(1 + g))`` per tile and band, ``offset ~ U(±o)`` per tile and band and
``log gamma ~ U(±log(1 + γ))`` per tile. The draws come from a generator seeded by ``(seed, step)``,
so a resumed run sees the same jitter as an uninterrupted one, on any device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RadiometricJitter:
    """Jitter strengths (0 turns a term off); see the module docstring for the formula.

    Args:
        gain: per-band multiplicative range, ``g`` in ``[1/(1+g), 1+g]``.
        offset: per-band additive range in [0, 1] units (0.05 = ±13 uint8 levels).
        gamma: per-tile exponent range, ``γ`` in ``[1/(1+γ), 1+γ]``.
    """

    gain: float = 0.0
    offset: float = 0.0
    gamma: float = 0.0

    def __post_init__(self):
        for name in ("gain", "offset", "gamma"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and 0 <= v <= 1):
                raise ValueError(f"jitter {name} {v!r}: must be a finite number in [0, 1]")

    @property
    def active(self) -> bool:
        return bool(self.gain or self.offset or self.gamma)

    def draw(self, n: int, channels: int, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(gain (n, C, 1, 1), offset (n, C, 1, 1), gamma (n, 1, 1, 1))`` float32 on the CPU, a pure
        function of ``(seed, step)``."""
        gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) % 2**63)
        u = torch.rand(n, 2 * channels + 1, generator=gen, dtype=torch.float64) * 2 - 1  # U(-1, 1)
        gain = torch.exp(u[:, :channels] * math.log1p(self.gain))
        offset = u[:, channels : 2 * channels] * self.offset
        gamma = torch.exp(u[:, 2 * channels :] * math.log1p(self.gamma))
        return (
            gain.float().view(n, channels, 1, 1),
            offset.float().view(n, channels, 1, 1),
            gamma.float().view(n, 1, 1, 1),
        )

    def __call__(
        self, x: torch.Tensor, valid: torch.Tensor, *, seed: int, step: int, fill: float = -1.0
    ) -> torch.Tensor:
        """Jittered copy of ``x (N, C, H, W)`` in [-1, 1]; ``valid (N, H, W)`` pixels only."""
        if not self.active:
            return x
        gain, offset, gamma = (t.to(x.device) for t in self.draw(x.shape[0], x.shape[1], seed, step))
        x01 = ((x.float() + 1) * 0.5).clamp_(0, 1)
        if self.gamma:
            x01 = x01.pow(gamma)
        y = (x01 * gain + offset).clamp_(0, 1).mul_(2).sub_(1)
        y = torch.where(valid.unsqueeze(1), y, torch.full_like(y, fill))
        return y.to(x.dtype).contiguous(memory_format=_memory_format(x))


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return (
        torch.channels_last
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        else torch.contiguous_format
    )


__all__ = ["RadiometricJitter"]
