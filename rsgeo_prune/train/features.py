"""Named, digested feature spaces of tile sets (offline, 3 or 4 bands): what FD, KID and precision/recall
(:mod:`rsgeo_prune.train.metrics`) measure distances in.

Tiles
-----
A tile set is ``(N, C, H, W)`` with ``C`` = 4 (R, G, B, NIR) or 3 (R, G, B), either

* **floats in [-1, 1]** (torch tensor or numpy array; the training wing's convention, ``u / 127.5 - 1``
  for a uint8 value ``u``), or
* **uint8** in 0..255 (torch tensor or numpy array; the files' own values).

Floats are first quantised to uint8 exactly as a sample is saved (``round((x + 1) · 127.5)``, clipped),
so a real tile gives the same features whichever form it comes in, and a generated sample is judged as
it would be stored. Values slightly outside [-1, 1] (sampler overshoot) are clipped; floats beyond ±1.5
are refused (uint8 values passed as floats). Floats in [0, 1] cannot be told apart from [-1, 1] ones:
do not pass them.

Feature spaces (:func:`feature_space`)
---------------------------------------
=========================  ======  ===========================================================
name                       dim     what
=========================  ======  ===========================================================
``rsgeo-default``          1,064   the project's weights-free embedder (colour, texture, NDVI
                                   histograms; :mod:`rsgeo_prune.embed.default`), uses NIR
``random-cnn-<seed>``      256     a fixed, seeded, randomly initialised 4-layer CNN on all C
                                   bands, global mean pool (Naeem et al. 2020 use random-init
                                   networks when data are far from ImageNet)
``inception:<path>``       2,048   torchvision Inception-v3 pool features from a **local**
                                   weights file, on the R, G, B bands; nothing is downloaded
=========================  ======  ===========================================================

Every space has ``.name``, ``.digest`` (sha256 hex), ``.dim`` and ``__call__(tiles) -> (N, dim)``
float64 numpy. A number is comparable only with numbers of the same name **and** digest, at the same
tile size and about the same ``n`` (FD is biased upward at small ``n``; see the training notes).

* ``random-cnn-<seed>`` digest: sha256 of its config (JSON) and every parameter's name, shape and
  little-endian float64 bytes. The weights come from a SplitMix64 counter stream (integer arithmetic,
  then exact float64 scaling), so they and the digest are the same on every machine and thread count,
  and do not depend on torch's or numpy's random generators. Its features (float64 convolutions) were
  bit-identical at 1 and 2 torch threads and for a tile alone or in a batch (tested here); across CPUs
  they may differ in the last bits, which no FD figure can see.
* ``rsgeo-default`` digest: sha256 of the embedder's projection matrix and of its exact output bits
  on a fixed integer-generated probe batch, so it changes whenever the embedder's behaviour changes
  (it is as machine-independent as the embedder's own bits).
* ``inception:<path>`` digest: sha256 of the weights file and of the preprocessing config.

Noise floor (synth tiles of 64 px, two independent draws of the same class mix, 5 repeats):
``rsgeo-default`` FD 0.005 ± 0.001 at n = 256, 0.0014 ± 0.0005 at n = 1,024; ``random-cnn-0``
FD 0.038 ± 0.003 at n = 256, 0.012 ± 0.001 at n = 1,024. A class-balanced mix vs the mix without
cloud and water: 0.41 and 6.9 (n = 256). Compare numbers at equal n only.

:class:`TorchFeatureModule` hands a space to torchmetrics as its extractor
(``FrechetInceptionDistance(feature=TorchFeatureModule(space), input_img_size=(C, H, W))``), which gives the same FD
(the tests cross-check it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import RSGeoPruneError
from .convert import to_levels

log = logging.getLogger(__name__)

FEATURE_SPACES = ("rsgeo-default", "random-cnn-<seed>", "inception:<path>")
DEFAULT_FEATURE = "rsgeo-default"
_RANDOM_CNN = re.compile(r"random-cnn-(\d+)\Z")
_BATCH = 32  # tiles per forward pass (a 256-px batch of 32 needs ~0.3 GB in float64)


# ----------------------------------------------------------------------------------------------- tiles
def as_uint8_tiles(tiles) -> np.ndarray:
    """``(N, C, H, W)`` uint8 from uint8 or [-1, 1] float tiles (torch or numpy); C must be 3 or 4."""
    if isinstance(tiles, torch.Tensor):
        tiles = tiles.detach().cpu().numpy()
    x = np.asarray(tiles)
    if x.ndim != 4:
        raise RSGeoPruneError(f"tiles must be (N, C, H, W); got shape {x.shape}: stack single tiles with a batch axis")
    if x.shape[1] not in (3, 4):
        raise RSGeoPruneError(f"tiles have {x.shape[1]} channels (shape {x.shape}); pass R, G, B[, NIR] as C = 3 or 4")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise RSGeoPruneError(f"tiles of dtype {x.dtype}: pass uint8 (0..255) or floats in [-1, 1]")
    if x.size:
        lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -1.5 or hi > 1.5:
            raise RSGeoPruneError(
                f"float tiles span [{lo:.3g}, {hi:.3g}]; floats must lie in [-1, 1] "
                "(u / 127.5 - 1 for uint8 u), or pass uint8 as is"
            )
    return to_levels(x)  # the inverse of u / 127.5 - 1: a float32 round trip of every uint8 value comes back unchanged


def _check_channels(x: np.ndarray, channels: int | None, name: str) -> None:
    if channels is not None and x.shape[1] != channels:
        raise RSGeoPruneError(
            f"feature space {name} was built for {channels} channels but tiles have {x.shape[1]}; "
            f"build it with channels={x.shape[1]}"
        )


def _sha256(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))  # length prefix: no two part lists hash alike
        h.update(p)
    return h.hexdigest()


def _config_bytes(config: dict) -> bytes:
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def _le64(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype="<f8").tobytes()


# ------------------------------------------------------------------------------ integer random streams
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(seed: int, stream: int, n: int) -> np.ndarray:
    """``n`` uint64 values of SplitMix64 at counters ``1..n`` of ``(seed, stream)``: integer ops only."""
    with np.errstate(over="ignore"):
        base = np.uint64((seed * 0x100000001B3 + stream * 0xC2B2AE3D27D4EB4F) % 2**64)
        z = base + _GOLDEN * np.arange(1, n + 1, dtype=np.uint64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _uniform_pm1(seed: int, stream: int, n: int) -> np.ndarray:
    """``n`` float64 values uniform on [-1, 1): the top 53 bits, scaled exactly (no rounding anywhere)."""
    return (_splitmix64(seed, stream, n) >> np.uint64(11)).astype(np.float64) * 2.0**-52 - 1.0


# -------------------------------------------------------------------------------------- random CNN
@dataclass(frozen=True)
class RandomCNNConfig:
    """Layers of the random feature CNN: 3x3 convolutions, stride 2, padding 1, ReLU between them,
    global mean pool of the last layer. Weights uniform with He variance ``2 / fan_in``, zero biases."""

    in_channels: int = 4
    widths: tuple[int, ...] = (32, 64, 128, 256)
    kernel: int = 3
    stride: int = 2
    init: str = "splitmix64-uniform-he"
    input_scale: str = "uint8/127.5-1"
    version: int = 1


class _BatchedFeatures:
    """Feature spaces that map uint8 tiles batch by batch with a ``_forward(u8) -> (n, dim)``."""

    dim: int
    channels: int | None = None

    def __call__(self, tiles) -> np.ndarray:
        x = as_uint8_tiles(tiles)
        if self.channels is not None:
            _check_channels(x, self.channels, self.name)
        out = np.zeros((len(x), self.dim), np.float64)
        for a in range(0, len(x), _BATCH):
            out[a : a + _BATCH] = self._forward(x[a : a + _BATCH])
        return out


class RandomCNNFeatures(_BatchedFeatures):
    """``random-cnn-<seed>``: a frozen randomly initialised CNN, computed in float64.

    ``__call__(tiles (N, C, H, W))`` → float64 ``(N, widths[-1])``: the mean over positions of the
    last layer's ReLU outputs. Any H, W ≥ 1 work (compare only sets of one size)."""

    def __init__(self, seed: int, channels: int = 4, config: RandomCNNConfig | None = None):
        self.seed = int(seed)
        self.config = config or RandomCNNConfig(in_channels=channels)
        self.name = f"random-cnn-{self.seed}"
        self.dim = self.config.widths[-1]
        self.channels = self.config.in_channels
        self.weights = self._init_weights()
        self.digest = self._digest()

    def _init_weights(self) -> list[torch.Tensor]:
        # one stream per layer, so a layer's weights do not depend on the layers before it
        cfg, out, cin = self.config, [], self.config.in_channels
        for layer, cout in enumerate(cfg.widths):
            fan_in = cin * cfg.kernel * cfg.kernel
            bound = np.sqrt(3.0) * np.sqrt(2.0 / fan_in)  # uniform on [-b, b) has variance b²/3 = 2/fan_in
            w = _uniform_pm1(self.seed, layer, cout * fan_in) * bound
            out.append(torch.from_numpy(w.reshape(cout, cin, cfg.kernel, cfg.kernel)))
            cin = cout
        return out

    def _digest(self) -> str:
        cfg = {"name": "random-cnn", "seed": self.seed, **asdict(self.config)}
        parts = [_config_bytes(cfg)]
        for i, w in enumerate(self.weights):
            parts += [f"conv{i}.weight{tuple(w.shape)}".encode(), _le64(w.numpy())]
        return _sha256(*parts)

    @torch.no_grad()
    def _forward(self, u8: np.ndarray) -> np.ndarray:
        h = torch.from_numpy(u8).to(torch.float64) / 127.5 - 1.0
        pad = self.config.kernel // 2
        for i, w in enumerate(self.weights):
            h = F.conv2d(h, w, stride=self.config.stride, padding=pad)
            h = F.relu(h)
        return h.mean(dim=(2, 3)).numpy()


# ---------------------------------------------------------------------------- the default embedder
def _probe_tiles() -> list[np.ndarray]:
    """A fixed probe batch from integer arithmetic only: smooth ramps plus SplitMix64 grain, two sizes
    (64 px, and 256 px so the embedder's pooling runs), 4 bands and 3 bands."""
    probes = []
    for k, (size, c) in enumerate([(64, 4), (64, 4), (256, 4), (64, 3)]):
        yy, xx = np.mgrid[0:size, 0:size]
        grain = (_splitmix64(20260101, k, c * size * size) % np.uint64(64)).astype(np.int64).reshape(c, size, size)
        ramp = np.stack([(xx * (b + 1) * 3 + yy * (k + 2) * 5) % 192 for b in range(c)])
        probes.append((ramp + grain).astype(np.uint8)[None])
    return probes


class DefaultEmbedderFeatures:
    """``rsgeo-default``: :func:`rsgeo_prune.embed.load_embedder` ``("default")`` as float64 features.

    ``__call__(tiles (N, C, H, W))`` → float64 ``(N, 1064)`` unit vectors (colour 1,024, texture 24,
    NDVI 16; the NDVI block is zero for 3-band tiles). ``threads``: the embedder's CPU threads."""

    def __init__(self, threads: int | None = None):
        from ..embed import load_embedder

        self.embedder = load_embedder("default", threads=threads)
        self.name = DEFAULT_FEATURE
        self.dim = int(self.embedder.dim)
        self.channels = None  # 3 or 4 bands both work
        self.digest = _sha256(
            _config_bytes({"name": self.name, "dim": self.dim, "input": "uint8"}),
            np.ascontiguousarray(self.embedder.projection, "<f4").tobytes(),
            *(np.ascontiguousarray(self.embedder(p), "<f4").tobytes() for p in _probe_tiles()),
        )

    def __call__(self, tiles) -> np.ndarray:
        x = as_uint8_tiles(tiles)
        return np.asarray(self.embedder(x), np.float64)


# ---------------------------------------------------------------------------------------- Inception
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class InceptionFeatures(_BatchedFeatures):
    """``inception:<path>``: torchvision Inception-v3 2,048-d pool features from a local state_dict.

    The R, G, B bands (NIR is ignored), scaled to [0, 1], resized bilinearly (antialiased) to
    299 x 299 and normalised with ImageNet's mean and std, as torchvision's weights expect. These are
    torchvision's ImageNet weights, not the TF "pt_inception-2015-12-05" FID network, so the numbers are
    not published FIDs; they are comparable with each other through the digest. Never downloads."""

    def __init__(self, path: str | Path, device: str | None = None):
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise RSGeoPruneError(
                f"Inception weights file {str(self.path)!r} not found; pass a local torchvision "
                "inception_v3 state_dict (inception_v3_google-0cc3c7bd.pth): nothing is downloaded"
            )
        self.name = "inception-v3-rgb"
        self.dim = 2048
        self.channels = None
        self.device = torch.device(device or "cpu")
        self.config = {
            "name": self.name,
            "bands": "RGB",
            "resize": "bilinear-antialias-299",
            "normalise": [_IMAGENET_MEAN, _IMAGENET_STD],
            "layer": "avgpool",
        }
        self.model = self._load()
        file_hash = hashlib.sha256(self.path.read_bytes()).digest()
        self.digest = _sha256(_config_bytes(self.config), file_hash)

    def _load(self):
        from torchvision.models import inception_v3

        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors of many kinds: one line for the user
            raise RSGeoPruneError(
                f"Inception weights {str(self.path)!r} could not be read as a state_dict "
                f"({type(exc).__name__}); save model.state_dict() with torch.save"
            ) from exc
        if not isinstance(state, dict):
            raise RSGeoPruneError(
                f"Inception weights {str(self.path)!r} hold a {type(state).__name__}, "
                "not a state_dict; save model.state_dict() with torch.save"
            )
        aux = any(k.startswith("AuxLogits.") for k in state)
        model = inception_v3(weights=None, aux_logits=aux, init_weights=False, transform_input=False)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise RSGeoPruneError(
                f"Inception weights {str(self.path)!r} do not fit torchvision's inception_v3 "
                f"({str(exc).splitlines()[0]}); pass a torchvision inception_v3 state_dict"
            ) from exc
        model.fc = torch.nn.Identity()
        return model.eval().to(self.device)

    @torch.no_grad()
    def _forward(self, u8: np.ndarray) -> np.ndarray:
        rgb = torch.from_numpy(u8[:, :3]).to(self.device, torch.float32) / 255.0
        rgb = F.interpolate(rgb, size=(299, 299), mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(_IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(_IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        return self.model((rgb - mean) / std).double().cpu().numpy()


# ------------------------------------------------------------------------------------------ registry
def feature_space(
    name: str = DEFAULT_FEATURE, *, channels: int = 4, threads: int | None = None, device: str | None = None
):
    """The feature space called ``name`` (see the module docstring).

    ``channels``: bands of the tiles (3 or 4); only ``random-cnn-<seed>`` depends on it (its first layer,
    hence its digest). ``threads``: CPU threads of the default embedder. ``device``: Inception's device."""
    if channels not in (3, 4):
        raise RSGeoPruneError(f"channels {channels!r}: tiles are R, G, B[, NIR], so 3 or 4")
    if name == DEFAULT_FEATURE:
        return DefaultEmbedderFeatures(threads=threads)
    m = _RANDOM_CNN.match(name)
    if m:
        return RandomCNNFeatures(int(m.group(1)), channels=channels)
    kind, sep, rest = name.partition(":")
    if kind == "inception" and sep:
        if not rest:
            raise RSGeoPruneError(f"feature {name!r}: write inception:<path to a local torchvision weights file>")
        return InceptionFeatures(rest, device=device)
    raise RSGeoPruneError(f"unknown feature space {name!r}; use one of {', '.join(FEATURE_SPACES)} (e.g. random-cnn-0)")


# ------------------------------------------------------------------------------------------- metrics


def _space(feature, channels: int, threads: int | None = None):
    """A feature-space object: ``feature`` itself, or the registry's space of that name for ``channels`` bands."""
    return feature_space(feature, channels=channels, threads=threads) if isinstance(feature, str) else feature


# ------------------------------------------------------------------------------- torchmetrics bridge
class TorchFeatureModule(torch.nn.Module):
    """A feature space as an ``nn.Module`` for torchmetrics: tiles (uint8, or floats in [-1, 1]) →
    float64 ``(N, dim)``. ``num_features`` spares torchmetrics its probe forward."""

    def __init__(self, space):
        super().__init__()
        self.space = space
        self.num_features = space.dim

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.space(imgs))


__all__ = [
    "DEFAULT_FEATURE",
    "FEATURE_SPACES",
    "DefaultEmbedderFeatures",
    "InceptionFeatures",
    "RandomCNNConfig",
    "RandomCNNFeatures",
    "TorchFeatureModule",
    "as_uint8_tiles",
    "feature_space",
]
