"""The diffusion processes a DiT is trained and sampled with: DDPM noise prediction and rectified flow.

Both are written out here (about a page each) rather than wrapped from diffusers' schedulers: the maths stays
visible, the schedulers' per-call state disappears, and every random draw comes from the caller's
``torch.Generator`` in a fixed order, so a seed gives the same samples. The DDPM schedule and the full-length
ancestral sampler are checked against diffusers' ``DDPMScheduler`` in the tests.

Model interface (both processes): ``model(x_t, t, **model_kwargs) -> prediction`` with x_t (N, C, H, W) and
t a float tensor (N,) on a 0..1000 scale, the scale the DiT's 256-d timestep sinusoid is made for:

* :class:`DDPM`: t is the timestep index 0..999 (as a float); the prediction is the noise ε.
* :class:`RectifiedFlow`: t = 1000·τ for the path time τ ∈ [0, 1] (τ = 0 data, τ = 1 noise); the prediction
  is the velocity v = ε − x0.

Usage::

    diffusion = make_diffusion("ddpm")               # or "flow", time_sampling="logit_normal"
    loss = diffusion.loss(model, x0, generator=g)    # scalar, differentiable
    x0 = diffusion.sample(model, (16, 4, 32, 32), steps=250, generator=torch.Generator().manual_seed(0))
    x0 = diffusion.sample(model, shape, steps=50, sampler="ddim", generator=g)   # DDPM model only

Generators: ``torch.randn(..., generator=g, device=d)`` needs ``g`` on device ``d``; pass a
``torch.Generator(device=d)``. Sampling runs under ``torch.no_grad`` and keeps x in the dtype asked for (fp32 by
default) whatever the model computes in (the prediction is cast back).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..errors import RSGeoPruneError

__all__ = [
    "DIFFUSIONS",
    "DDPM",
    "Diffusion",
    "RectifiedFlow",
    "SAMPLERS",
    "TIME_SAMPLINGS",
    "check_sampler",
    "diffusion_from_config",
    "diffusion_of",
    "make_diffusion",
]

Model = Callable[..., torch.Tensor]

#: Timestep scale shared by both processes (the DiT's sinusoid expects t in 0..1000).
TIME_SCALE = 1000.0

#: Samplers each process accepts (a CLI's ``choices=`` and :func:`check_sampler`); the first is the default.
SAMPLERS: dict[str, tuple[str, ...]] = {"ddpm": ("ddpm", "ddim"), "flow": ("euler",)}

#: Path-time distributions of the flow objective (``--time-sampling``; DDPM draws its timesteps uniformly).
TIME_SAMPLINGS = ("uniform", "logit_normal")


class Diffusion(ABC):
    """A forward process with its training loss and its samplers."""

    name: str

    @abstractmethod
    def config(self) -> dict:
        """Every field needed to train or sample this process elsewhere, as plain JSON values (the numbers and, as
        text, the formulas they enter); :func:`diffusion_from_config` rebuilds the process from it."""

    @abstractmethod
    def loss(
        self,
        model: Model,
        x0: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        model_kwargs: dict | None = None,
    ) -> torch.Tensor:
        """Mean-squared error of the model's prediction on x0 (N, C, H, W) noised at random times; a scalar."""

    @abstractmethod
    def sample(
        self,
        model: Model,
        shape: tuple[int, ...],
        *,
        steps: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        model_kwargs: dict | None = None,
    ) -> torch.Tensor:
        """Samples of ``shape`` (N, C, H, W) from pure noise in ``steps`` model evaluations."""


def _randn(shape, generator, device, dtype) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------------------------
# DDPM (Ho et al. 2020), sampled ancestrally or with DDIM (Song et al. 2021)
# ---------------------------------------------------------------------------------------------------------------
class DDPM(Diffusion):
    """Discrete-time diffusion with ε-prediction: x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε, t ∈ {0..T−1}, loss ‖ε̂ − ε‖².

    The schedule is DiT's (and the notes'): T = 1000 linear betas 1e-4 → 0.02, ᾱ_t = ∏_{s≤t}(1 − β_s), held in
    float64 so the coefficients of a long sampling chain do not drift. Fixed variance: the model predicts ε
    only, so sampling picks the variance (``variance="small"``: the posterior β̃, the default; ``"large"``: β).

    Sampling with fewer steps ("respacing", as the DiT paper's 250-step sampler) runs on the evenly spaced
    timesteps ``round(linspace(T−1, 0, steps))`` — T−1 and 0 are always visited — with the betas implied between
    consecutive kept timesteps, β'_i = 1 − ᾱ_{t_i}/ᾱ_{t_{i+1}}; the model is called with the original index t_i.
    """

    name = "ddpm"

    def __init__(self, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        self.num_timesteps = num_timesteps
        self.beta_start, self.beta_end = beta_start, beta_end
        self.betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)  # (T,)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)  # (T,) ᾱ_t, from 0.9999 down to ~4e-5
        self._coef_cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def config(self) -> dict:
        return {
            "kind": self.name,
            "prediction": "epsilon",
            "num_timesteps": self.num_timesteps,
            "beta_schedule": "linear",
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "alphas_cumprod": "cumprod(1 - linspace(beta_start, beta_end, num_timesteps)), float64",
            "forward": "x_t = sqrt(alphas_cumprod[t]) * x0 + sqrt(1 - alphas_cumprod[t]) * noise",
            "model_time": "t, the timestep index 0..num_timesteps-1 as a float",
            "variance": "fixed (the model predicts the noise only); ancestral sampling uses the posterior's",
            "samplers": ["ddpm", "ddim"],
            "default_sampler": "ddpm",
            "default_steps": 250,
            "respacing": "timesteps round(linspace(num_timesteps - 1, 0, steps))",
            "clip_denoised": False,
        }

    def _coefs(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(√ᾱ, √(1−ᾱ)) as float32 tensors on ``device``, cached so the training step does not copy them."""
        if device not in self._coef_cache:
            acp = self.alphas_cumprod
            self._coef_cache[device] = (acp.sqrt().float().to(device), (1 - acp).sqrt().float().to(device))
        return self._coef_cache[device]

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε for x0, noise (N, C, H, W) and integer t (N,)."""
        sqrt_a, sqrt_1ma = self._coefs(x0.device)
        shape = (-1,) + (1,) * (x0.ndim - 1)
        return sqrt_a[t].view(shape).to(x0.dtype) * x0 + sqrt_1ma[t].view(shape).to(x0.dtype) * noise

    def loss(self, model, x0, *, generator=None, model_kwargs=None):
        """Uniform t ∈ {0..T−1}, ε ~ N(0, I); MSE between model(x_t, t) and ε, averaged over everything."""
        n = x0.shape[0]
        t = torch.randint(0, self.num_timesteps, (n,), generator=generator, device=x0.device)
        noise = _randn(x0.shape, generator, x0.device, x0.dtype)
        pred = model(self.q_sample(x0, t, noise), t.float(), **(model_kwargs or {}))
        return F.mse_loss(pred.float(), noise.float())

    def timesteps(self, steps: int) -> list[int]:
        """The descending timesteps a ``steps``-step sampler visits: round(linspace(T−1, 0, steps))."""
        if not 1 <= steps <= self.num_timesteps:
            raise ValueError(f"steps must be in 1..{self.num_timesteps}, got {steps}")
        return torch.linspace(self.num_timesteps - 1, 0, steps, dtype=torch.float64).round().long().tolist()

    @torch.no_grad()
    def sample(
        self,
        model,
        shape,
        *,
        steps: int = 250,
        generator=None,
        device=None,
        dtype=torch.float32,
        model_kwargs=None,
        sampler: str = "ddpm",
        eta: float = 0.0,
        variance: str = "small",
    ):
        """Ancestral DDPM (``sampler="ddpm"``) or DDIM (``sampler="ddim"``, ``eta`` 0 = deterministic).

        Draw order from ``generator``: x_T first, then (stochastic samplers only) one normal tensor per step except
        the last, whose variance is 0. DDIM with ``eta=1`` therefore reproduces the ancestral sampler with
        ``variance="small"`` draw for draw (the same update, written differently). Returns x0 (no clipping:
        latents are unbounded).
        """
        if sampler not in SAMPLERS["ddpm"]:
            raise ValueError(f"sampler must be one of {SAMPLERS['ddpm']}, got {sampler!r}")
        if variance not in ("small", "large"):
            raise ValueError(f"variance must be 'small' or 'large', got {variance!r}")
        if not 0.0 <= eta <= 1.0:  # also refuses NaN
            raise ValueError(f"eta must be in [0, 1], got {eta!r}")
        kwargs = model_kwargs or {}
        ts = self.timesteps(steps)
        acp = self.alphas_cumprod.tolist()
        x = _randn(shape, generator, device, dtype)  # x_T ~ N(0, I)
        for i, t in enumerate(ts):
            last = i == len(ts) - 1
            a_t = acp[t]
            a_s = 1.0 if last else acp[ts[i + 1]]  # ᾱ at the next (smaller) kept timestep; 1 after t = 0
            eps = model(x, torch.full((shape[0],), float(t), device=x.device), **kwargs).to(dtype)
            x0_hat = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
            beta = 1 - a_t / a_s  # β' of the (respaced) step t → s
            if sampler == "ddpm":
                # posterior q(x_s | x_t, x0̂): mean and variance of Ho et al. eq. 7 with the respaced β'
                mean = (a_s**0.5 * beta / (1 - a_t)) * x0_hat + ((1 - beta) ** 0.5 * (1 - a_s) / (1 - a_t)) * x
                var = beta * (1 - a_s) / (1 - a_t) if variance == "small" else beta
                x = mean if last else mean + var**0.5 * _randn(shape, generator, x.device, dtype)
            else:
                # DDIM: x_s = √ᾱ_s·x0̂ + √(1−ᾱ_s−σ²)·ε̂ + σ·z, σ = η·√((1−ᾱ_s)/(1−ᾱ_t))·√β'
                sigma = eta * ((1 - a_s) / (1 - a_t) * beta) ** 0.5
                x = a_s**0.5 * x0_hat + max(1 - a_s - sigma**2, 0.0) ** 0.5 * eps
                if eta > 0 and not last:
                    x = x + sigma * _randn(shape, generator, x.device, dtype)
        return x


# ---------------------------------------------------------------------------------------------------------------
# Rectified flow (Liu et al. 2023; SiT / LightningDiT's objective), sampled with Euler
# ---------------------------------------------------------------------------------------------------------------
class RectifiedFlow(Diffusion):
    """Linear path x_τ = (1−τ)·x0 + τ·ε, τ ∈ [0, 1]; the model predicts the velocity v = dx_τ/dτ = ε − x0.

    ``time_sampling``: ``"uniform"`` τ ~ U(0, 1), or ``"logit_normal"`` τ = sigmoid(m + s·n), n ~ N(0, 1)
    (SD3 / LightningDiT; puts more weight on the middle of the path, where the velocity is hardest). The model is
    called with 1000·τ.
    """

    name = "flow"

    def __init__(self, time_sampling: str = "uniform", logit_mean: float = 0.0, logit_std: float = 1.0):
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"time_sampling must be one of {TIME_SAMPLINGS}, got {time_sampling!r}")
        self.time_sampling = time_sampling
        self.logit_mean = logit_mean
        self.logit_std = logit_std

    def config(self) -> dict:
        return {
            "kind": self.name,
            "prediction": "velocity",
            "target": "noise - x0",
            "forward": "x_tau = (1 - tau) * x0 + tau * noise, tau in [0, 1] (0: data, 1: noise)",
            "model_time": f"{TIME_SCALE:g} * tau",
            "time_sampling": self.time_sampling,
            "logit_mean": self.logit_mean,
            "logit_std": self.logit_std,
            "samplers": ["euler"],
            "default_sampler": "euler",
            "default_steps": 50,
            "euler_grid": "tau = linspace(1, 0, steps + 1)",
            "clip_denoised": False,
        }

    def sample_time(self, n: int, *, generator=None, device=None) -> torch.Tensor:
        """(n,) float32 path times τ ∈ [0, 1] from the configured distribution."""
        if self.time_sampling == "uniform":
            return torch.rand(n, generator=generator, device=device)
        return torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(n, generator=generator, device=device))

    @staticmethod
    def interpolate(x0: torch.Tensor, noise: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """x_τ = (1−τ)·x0 + τ·ε for τ (N,)."""
        tau = tau.view((-1,) + (1,) * (x0.ndim - 1)).to(x0.dtype)
        return (1 - tau) * x0 + tau * noise

    def loss(self, model, x0, *, generator=None, model_kwargs=None):
        """τ from ``time_sampling``, ε ~ N(0, I); MSE between model(x_τ, 1000·τ) and ε − x0."""
        tau = self.sample_time(x0.shape[0], generator=generator, device=x0.device)
        noise = _randn(x0.shape, generator, x0.device, x0.dtype)
        pred = model(self.interpolate(x0, noise, tau), tau * TIME_SCALE, **(model_kwargs or {}))
        return F.mse_loss(pred.float(), (noise - x0).float())

    @torch.no_grad()
    def sample(
        self, model, shape, *, steps: int = 50, generator=None, device=None, dtype=torch.float32, model_kwargs=None
    ):
        """Euler from τ = 1 (noise) to τ = 0 on the uniform grid linspace(1, 0, steps + 1); one draw (x_1)."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        kwargs = model_kwargs or {}
        grid = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
        x = _randn(shape, generator, device, dtype)  # x_1 ~ N(0, I)
        for tau, tau_next in zip(grid[:-1], grid[1:]):
            v = model(x, torch.full((shape[0],), tau * TIME_SCALE, device=x.device), **kwargs).to(dtype)
            x = x + (tau_next - tau) * v  # dτ < 0: step toward the data
        return x


#: Names accepted by :func:`make_diffusion` (a CLI's ``choices=``).
DIFFUSIONS = {"ddpm": DDPM, "flow": RectifiedFlow}


def diffusion_from_config(cfg: dict) -> Diffusion:
    """The process a :meth:`Diffusion.config` dictionary describes (an exported DiT's ``config.json["diffusion"]``)."""
    if cfg["kind"] == "flow":
        return RectifiedFlow(cfg["time_sampling"], cfg["logit_mean"], cfg["logit_std"])
    if cfg["kind"] == "ddpm":
        return DDPM(cfg["num_timesteps"], cfg["beta_start"], cfg["beta_end"])
    raise ValueError(f"unknown diffusion {cfg['kind']!r}; choose one of {sorted(DIFFUSIONS)}")


def make_diffusion(kind: str = "ddpm", **kwargs) -> Diffusion:
    """``make_diffusion("ddpm")`` (1000 linear steps) or ``make_diffusion("flow", time_sampling=...)``."""
    try:
        cls = DIFFUSIONS[kind]
    except KeyError:
        raise ValueError(f"unknown diffusion {kind!r}; choose one of {sorted(DIFFUSIONS)}") from None
    return cls(**kwargs)


def diffusion_of(cfg: dict):
    """The diffusion a run trained with, from its config dict."""
    if cfg["diffusion"] == "flow":
        return make_diffusion("flow", time_sampling=cfg.get("time_sampling", "uniform"))
    return make_diffusion(cfg["diffusion"])


def check_sampler(diffusion: str, sampler: str | None) -> str:
    """The sampler to use: ``sampler`` when it fits ``diffusion``, the diffusion's default when ``None``."""
    allowed = SAMPLERS[diffusion]
    if sampler is None:
        return allowed[0]
    if sampler not in allowed:
        raise RSGeoPruneError(
            f"sampler {sampler!r}: the model was trained with {diffusion}; choose {' or '.join(allowed)}"
        )
    return sampler
