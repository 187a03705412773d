"""What the training tests share and the library does not need: a simulated kill, a reference FD from moments
and the torchmetrics cross-checks of FD and KID."""

from __future__ import annotations

import numpy as np
import torch


def interrupt_after(monkeypatch, owner, name: str, calls: int) -> None:
    """``owner.name`` runs ``calls`` times as usual; the next call raises :class:`KeyboardInterrupt`, as Ctrl-C or a
    killed process would end the run there: nothing after the last saved state is written."""
    real, done = getattr(owner, name), []

    def counted(*args, **kwargs):
        if len(done) >= calls:
            raise KeyboardInterrupt
        done.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)


def feature_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of features ``(N, D)`` in float64 (centred first)."""
    mu = x.mean(axis=0)
    xc = x - mu
    return mu, (xc.T @ xc) / (len(x) - 1)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix, eigenvalues below ``D · eps · max`` taken as zero."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    eps, tiny = np.finfo(np.float64).eps, np.finfo(np.float64).tiny
    floor = len(w) * eps * max(float(np.abs(w).max(initial=0.0)), tiny)
    return (v * np.sqrt(np.where(w > floor, w, 0.0))) @ v.T


def frechet_from_moments(mu_a, sigma_a, mu_b, sigma_b) -> float:
    """FD of N(μa, Σa) and N(μb, Σb): ``‖μa − μb‖² + tr Σa + tr Σb − 2 tr (Σa^½ Σb Σa^½)^½`` (float64), the
    cross term as the singular values of ``Σb^½ Σa^½``: the closed form the feature-based FD is checked against."""
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    sa, sb = np.asarray(sigma_a, np.float64), np.asarray(sigma_b, np.float64)
    tr_cross = float(np.linalg.svd(_psd_sqrt(sb) @ _psd_sqrt(sa), compute_uv=False).sum())
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(sa) + np.trace(sb) - 2.0 * tr_cross)


def _space(space, channels: int):
    from rsgeo_prune.train.features import feature_space

    return feature_space(space, channels=channels) if isinstance(space, str) else space


def torchmetrics_fid(a_tiles, b_tiles, space="rsgeo-default") -> float:
    """FD through ``torchmetrics``' ``FrechetInceptionDistance(feature=<space>, input_img_size=(C, H, W))``
    (a as "real", b as "fake"); ``space`` a registry name or a feature-space object."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    from rsgeo_prune.train.features import TorchFeatureModule, as_uint8_tiles

    a, b = torch.from_numpy(as_uint8_tiles(a_tiles)), torch.from_numpy(as_uint8_tiles(b_tiles))
    metric = FrechetInceptionDistance(
        feature=TorchFeatureModule(_space(space, a.shape[1])), input_img_size=tuple(a.shape[1:])
    )
    metric.update(a, real=True)
    metric.update(b, real=False)
    return float(metric.compute())


def torchmetrics_kid(a_tiles, b_tiles, space, subsets: int, subset_size: int, degree: int = 3) -> tuple[float, float]:
    """KID through ``torchmetrics``' ``KernelInceptionDistance(feature=<space>)`` (its own torch draws)."""
    import warnings

    from torchmetrics.image.kid import KernelInceptionDistance

    from rsgeo_prune.train.features import TorchFeatureModule, as_uint8_tiles

    a, b = torch.from_numpy(as_uint8_tiles(a_tiles)), torch.from_numpy(as_uint8_tiles(b_tiles))
    with warnings.catch_warnings():  # "will save all extracted features in buffer": what we ask of it
        warnings.filterwarnings("ignore", message=".*save all extracted features", category=UserWarning)
        metric = KernelInceptionDistance(
            feature=TorchFeatureModule(_space(space, a.shape[1])),
            subsets=subsets,
            subset_size=subset_size,
            degree=degree,
        )
    metric.update(a, real=True)
    metric.update(b, real=False)
    mean, std = metric.compute()
    return float(mean), float(std)


def weights_digest(*modules: torch.nn.Module) -> str:
    """sha256 over the state dicts of ``modules`` (names, dtypes, shapes and bytes)."""
    import hashlib

    h = hashlib.sha256()
    for m in modules:
        for name, t in m.state_dict().items():
            t = t.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
