"""A trained DiT as a folder that opens without this package: ``config.json`` + two safetensors files.

``train-dit`` writes ``OUT/export/`` when its run ends (:func:`write_export`);
:func:`rsgeo_prune.train.sampling.export_dit` makes one from any checkpoint (``state.pt`` or
``checkpoints/step-N.pt``)::

    export/
      config.json         format, model name, every architecture field (constructor arguments and the fixed
                          choices: embeddings, block layout), every diffusion field (schedule, prediction, time input,
                          samplers), the latents (shape, per-channel mean and std, VAE and catalog digests, bands),
                          the training config and step, the files' sha256
      ema.safetensors     the EMA weights (what sampling uses), float32
      model.safetensors   the raw training weights, float32

Both weight files hold the model's ``state_dict`` plus ``pos_embed`` (the fixed (1, T, D) position table, a
buffer the model does not save), under facebookresearch/DiT's parameter names except those in
:data:`OFFICIAL_NAMES`. :func:`load_dit` builds the model again (on the meta device, so it draws no random
numbers); docs/training.md "Loading the DiT elsewhere" rebuilds its forward pass in plain torch.

The folder is written as a whole (:func:`~rsgeo_prune.atomic.atomic_folder`), every file mode 0644, and the same
weights and run give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..atomic import atomic_folder, atomic_output
from ..errors import InvalidOption, RSGeoPruneError
from .diffusion import diffusion_from_config
from .dit import DIT_ARGS, DiT

EXPORT_DIR = "export"
EXPORT_FORMAT = "rsgeo-dit-export/1"
CONFIG_FILE = "config.json"
WEIGHT_FILES = {"ema": "ema.safetensors", "model": "model.safetensors"}

#: Our parameter names that facebookresearch/DiT spells otherwise (every other name is the same there: pos_embed,
#: t_embedder.mlp.{0,2}, blocks.N.attn.{qkv,proj}, blocks.N.mlp.{fc1,fc2}, blocks.N.adaLN_modulation.1,
#: final_layer.adaLN_modulation.1, final_layer.linear).
OFFICIAL_NAMES = {
    "x_embedder.weight": "x_embedder.proj.weight",
    "x_embedder.bias": "x_embedder.proj.bias",
    "y_embedder.weight": "y_embedder.embedding_table.weight",
}


def export_tensors(model: DiT) -> dict[str, torch.Tensor]:
    """What a weight file holds: the model's ``state_dict`` and its ``pos_embed`` table, float32 on the CPU."""
    tensors = {**model.state_dict(), "pos_embed": model.pos_embed}
    return {k: v.detach().to("cpu", torch.float32) for k, v in tensors.items()}


def write_export(
    folder: str | Path, *, ema: DiT, model: DiT, name: str, diffusion, train_config: dict, latents: dict, step: int
) -> Path:
    """Write the export folder of a run (see the module docstring) in one piece: ``folder`` keeps its old content
    until the new one is complete.

    Args:
        ema, model: the EMA and the trained DiT (any device; unwrapped, not DDP or compiled).
        name: the registry name (``DiT-B/2``); diffusion: the :class:`~.diffusion.Diffusion` trained with.
        train_config: the run's settings; latents: the trainer's latents record (shape, scale, digests, bands).
    """
    from .checkpoint import write_safetensors

    lat = latents
    config = {
        "format": EXPORT_FORMAT,
        "model": name,
        "architecture": ema.config(),
        "diffusion": diffusion.config(),
        "latents": {
            "shape": list(lat["latent_shape"]),
            "mean": list(lat["latents_mean"]),
            "std": list(lat["latents_std"]),
            "normalisation": "the model works on (z - mean) / std per channel, z the VAE's latent; "
            "decode z = x * std + mean",
            **{
                k: lat.get(k) for k in ("vae_digest", "catalog_digest", "source_digest", "tiles", "bands", "band_names")
            },
        },
        "training": {"step": int(step), **train_config},
        "names": {
            "convention": "facebookresearch/DiT's parameter names, except these (ours: theirs)",
            "differences": OFFICIAL_NAMES,
            "pos_embed": "included: the fixed table the model adds to the patch tokens",
        },
        "weights": {},
    }
    meta = {"format": "pt", "rsgeo_format": EXPORT_FORMAT, "model": name, "step": str(int(step))}
    with atomic_folder(folder) as tmp:
        for kind, module in (("ema", ema), ("model", model)):
            path = write_safetensors(tmp / WEIGHT_FILES[kind], export_tensors(module), {**meta, "weights": kind})
            config["weights"][WEIGHT_FILES[kind]] = {
                "what": "EMA weights: sample with these" if kind == "ema" else "the trained (not averaged) weights",
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            }
        with atomic_output(tmp / CONFIG_FILE) as part:
            part.write_text(json.dumps(config, indent=2) + "\n")
    return Path(folder)


def read_export(folder: str | Path) -> dict:
    """The ``config.json`` of an export folder; one clear error when there is none or it is not one."""
    path = Path(folder) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise RSGeoPruneError(
            f"{folder}: no DiT export here ({CONFIG_FILE} missing); give the export/ folder of a finished train-dit run"
        ) from None
    except (OSError, ValueError) as exc:
        raise RSGeoPruneError(f"{path}: not readable ({exc}); export the checkpoint again") from exc
    if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT:
        raise RSGeoPruneError(f"{path}: not an rsgeo-prune DiT export ({EXPORT_FORMAT}); export the checkpoint again")
    return config


def load_dit(folder: str | Path, *, weights: str = "ema", device: torch.device | str = "cpu") -> DiT:
    """The DiT of an export folder with its ``weights`` (``"ema"``, what sampling uses, or ``"model"``), in eval
    mode on ``device``: ``model(x, t)`` on normalised latents ``x (N, C, h, w)`` and ``t (N,)`` on the 0..1000 scale
    (:func:`read_export` gives the latent scale and the diffusion; :func:`export_diffusion` builds the latter).
    Built on the meta device and filled from the file: it draws no random numbers."""
    from safetensors.torch import load_file

    if weights not in WEIGHT_FILES:
        raise InvalidOption("weights", weights, f"choose one of {', '.join(WEIGHT_FILES)}")
    config = read_export(folder)
    arch = config["architecture"]
    path = Path(folder) / WEIGHT_FILES[weights]
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # missing, truncated, not safetensors
        raise RSGeoPruneError(
            f"{path}: weights not readable ({type(exc).__name__}: {exc}); export the checkpoint again"
        ) from exc
    pos = tensors.pop("pos_embed", None)
    with torch.device("meta"):
        model = DiT(**{k: arch[k] for k in DIT_ARGS})
    try:
        model.load_state_dict(tensors, assign=True)
        if pos is None or tuple(pos.shape) != (1, model.num_tokens, model.hidden_size):
            raise RuntimeError(f"pos_embed missing or not of shape (1, {model.num_tokens}, {model.hidden_size})")
    except RuntimeError as exc:
        raise RSGeoPruneError(
            f"{path}: weights do not fit {config.get('model')} as config.json describes it "
            f"({str(exc).splitlines()[0]}); export the checkpoint again"
        ) from exc
    model.register_buffer("pos_embed", pos, persistent=False)
    return model.to(device).eval().requires_grad_(False)


def export_diffusion(config: dict):
    """The :class:`~.diffusion.Diffusion` of an export's ``config.json`` (``make_diffusion`` of its fields)."""
    return diffusion_from_config(config["diffusion"])


__all__ = [
    "CONFIG_FILE",
    "EXPORT_DIR",
    "EXPORT_FORMAT",
    "OFFICIAL_NAMES",
    "WEIGHT_FILES",
    "export_diffusion",
    "export_tensors",
    "load_dit",
    "read_export",
    "write_export",
]
