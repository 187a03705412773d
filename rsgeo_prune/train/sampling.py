"""Sampling a trained DiT: the EMA model of a checkpoint, latent generation, VAE decoding, grids and sample files.

Used by the trainer (periodic EMA grids and Fréchet distance) and by ``rsgeo-prune sample``::

    ckpt = read_checkpoint("run/state.pt")                      # weights_only, memory-mapped
    model, info = ema_model(ckpt, device)                       # the EMA weights, eval mode
    z = generate_latents(model, make_diffusion(info["diffusion"]), 16, latent_shape=(4, 32, 32),
                         steps=250, sampler="ddpm", seed=0)     # normalised latents (16, 4, 32, 32)
    tiles = decode_latents(vae, denormalise(z, info))           # (16, 4, 256, 256) in [-1, 1]
    write_grids(tiles, "out", prefix="grid")                    # grid_rgb.png, grid_nirrg.png

Determinism: batch ``k`` of a generation draws from a generator seeded with ``(seed, k)``, so a seed gives the same
latents (and, on CPU, the same files) every time; the samplers draw in a fixed order (see ``diffusion.py``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_folder, atomic_output, check_writable
from ..errors import InvalidOption, RSGeoPruneError, check_number, check_seed

# read_checkpoint, seeded_generator, SAMPLERS, check_sampler and diffusion_of are also importable from here, where
# the notebooks and benchmarks first found them
from .checkpoint import DIT_STATE_KIND, read_checkpoint  # noqa: F401
from .convert import VIEWS, band_views, denormalise_latents, scale_tensors, to_levels
from .device import autocast, choose_device
from .diffusion import SAMPLERS, check_sampler, diffusion_of  # noqa: F401
from .dit import DIT_CONFIGS, build_dit
from .rng import seeded_generator


def ema_model(state: dict, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """The EMA DiT of a :func:`read_checkpoint` state, in eval mode on ``device``, and the run's info:
    ``{"config": train config dict, "latents": {vae_digest, latent_shape, latents_mean, latents_std, ...},
    "step": int}``."""
    extra = state["extra"]
    cfg, lat = extra["config"], extra["latents"]
    if cfg["model"] not in DIT_CONFIGS:
        raise RSGeoPruneError(
            f"checkpoint model {cfg['model']!r} is unknown to this version; "
            "sample with the rsgeo-prune version that trained it"
        )
    c, h, w = lat["latent_shape"]
    model = build_dit(cfg["model"], input_size=h, in_channels=c)
    try:
        model.load_state_dict(extra["ema"])
    except RuntimeError as exc:
        raise RSGeoPruneError(
            f"checkpoint EMA weights do not fit {cfg['model']} on {c}x{h}x{w} latents "
            "(a damaged or edited state); use another checkpoint"
        ) from exc
    return model.to(device).eval().requires_grad_(False), {"config": cfg, "latents": lat, "step": int(state["step"])}


def sampling_model(checkpoint: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """The EMA DiT and run info (as :func:`ema_model`) of a checkpoint file or of an export folder."""
    path = Path(checkpoint)
    if path.is_dir():
        from .export import load_dit, read_export

        config = read_export(path)
        lat = config["latents"]
        latents = {
            "latent_shape": lat["shape"],
            "latents_mean": lat["mean"],
            "latents_std": lat["std"],
            **{k: v for k, v in lat.items() if k not in ("shape", "mean", "std")},
        }
        return load_dit(path, device=device), {
            "config": config["training"],
            "latents": latents,
            "step": int(config["training"]["step"]),
        }
    return ema_model(read_checkpoint(path, hint="give another checkpoint"), device)


def export_dit(checkpoint: str | Path, folder: str | Path | None = None) -> Path:
    """The export folder of a ``train-dit`` checkpoint, written to ``folder`` (default: ``export/`` beside it)."""
    from .export import EXPORT_DIR, write_export

    checkpoint = Path(checkpoint)
    state = read_checkpoint(checkpoint, hint="give another checkpoint")
    ema, info = ema_model(state)
    cfg, lat = info["config"], info["latents"]
    c, h, _ = lat["latent_shape"]
    with torch.device("meta"):
        model = build_dit(cfg["model"], input_size=h, in_channels=c)
    model.load_state_dict(state["model"], assign=True)
    model.register_buffer("pos_embed", ema.pos_embed.clone(), persistent=False)
    folder = Path(folder) if folder is not None else checkpoint.parent / EXPORT_DIR
    return write_export(
        folder,
        ema=ema,
        model=model,
        name=cfg["model"],
        diffusion=diffusion_of(cfg),
        train_config=cfg,
        latents=lat,
        step=info["step"],
    )


# -- generation -----------------------------------------------------------------------------------


@torch.no_grad()
def generate_latents(
    model,
    diffusion,
    n: int,
    *,
    latent_shape: tuple[int, int, int],
    steps: int,
    sampler: str = "ddpm",
    eta: float = 0.0,
    seed: int = 0,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``n`` normalised latents ``(n, C, h, w)`` float32 on the CPU from ``model`` (bf16 autocast on CUDA).

    ``sampler``: ``"ddpm"`` (ancestral) or ``"ddim"`` (``eta``) for a DDPM model, ``"euler"`` for a flow model.
    """
    device = torch.device(device)
    out = []
    for k, lo in enumerate(range(0, n, batch_size)):
        m = min(batch_size, n - lo)
        g = seeded_generator(device, seed, k)
        kwargs = {} if diffusion.name == "flow" else {"sampler": sampler, "eta": eta}
        with autocast(device):
            z = diffusion.sample(model, (m, *latent_shape), steps=steps, generator=g, device=device, **kwargs)
        out.append(z.float().cpu())
    return torch.cat(out) if out else torch.empty(0, *latent_shape)


def denormalise(z: torch.Tensor, latents: dict) -> torch.Tensor:
    """Normalised latents back to the VAE's scale with the per-channel mean/std a run stored
    (as :meth:`~rsgeo_prune.train.latents.LatentShards.denormalise`)."""
    mean, std = scale_tensors(latents["latents_mean"], latents["latents_std"])
    return denormalise_latents(z, mean.to(z.device), std.to(z.device))


@torch.no_grad()
def decode_latents(vae, z: torch.Tensor, *, batch_size: int = 16, device: torch.device | str = "cpu") -> torch.Tensor:
    """VAE-scale latents ``(N, C, h, w)`` → tiles ``(N, bands, 8h, 8w)`` float32 on the CPU, clamped to [-1, 1]."""
    device = torch.device(device)
    out = []
    for lo in range(0, z.shape[0], batch_size):
        with autocast(device):
            x = vae.decode(z[lo : lo + batch_size].to(device)).sample
        out.append(x.float().clamp(-1, 1).cpu())
    return torch.cat(out)


# -- pictures and files ---------------------------------------------------------------------------
def grid_image(tiles: torch.Tensor, bands: tuple[int, int, int], ncol: int | None = None, gap: int = 2) -> np.ndarray:
    """``(N, C, H, W)`` tiles in [-1, 1] → one ``(rows·(H+gap), ncol·(W+gap), 3)`` uint8 picture of the three
    ``bands`` (bands past ``C`` fall back to band 0), ``ncol`` = ⌈√N⌉ by default, black gaps."""
    n, c, h, w = tiles.shape
    ncol = ncol or max(1, math.ceil(math.sqrt(n)))
    nrow = max(1, math.ceil(n / ncol))
    view = [b if b < c else 0 for b in bands]
    canvas = np.zeros((nrow * (h + gap), ncol * (w + gap), 3), dtype=np.uint8)
    levels = to_levels(tiles[:, view])
    for k in range(n):
        r, q = divmod(k, ncol)
        canvas[r * (h + gap) : r * (h + gap) + h, q * (w + gap) : q * (w + gap) + w] = levels[k].transpose(1, 2, 0)
    return canvas


def write_png(arr: np.ndarray, path: str | Path) -> Path:
    from PIL import Image

    with atomic_output(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return Path(path)


def grid_pictures(tiles: torch.Tensor) -> dict[str, np.ndarray]:
    """The :func:`grid_image` of ``tiles`` in [-1, 1] in each of their :func:`~.convert.band_views` (``rgb``, with
    4+ bands ``nirrg``: NIR-R-G false colour), each band shown as the data is (no per-tile stretch)."""
    return {name: grid_image(tiles, bands) for name, bands in band_views(tiles.shape[1]).items()}


def write_grids(
    tiles: torch.Tensor, out: str | Path, prefix: str = "grid", pictures: dict[str, np.ndarray] | None = None
) -> dict[str, Path]:
    """``{prefix}_rgb.png`` and, with 4+ bands, ``{prefix}_nirrg.png``: the :func:`grid_pictures` of ``tiles``
    (or the ``pictures`` already made of them)."""
    out = Path(out)
    pictures = grid_pictures(tiles) if pictures is None else pictures
    return {name: write_png(pic, out / f"{prefix}_{name}.png") for name, pic in pictures.items()}


#: The wing's band order for 3- and 4-band tiles (grids, metrics): the names samples get when the source
#: rasters name no band.
CONVENTION_NAMES = ("red", "green", "blue", "nir")

#: How a sample file's values relate to the model's [-1, 1] range, by ``--format``.
SAMPLE_FORMATS = {
    "npy": {
        "dtype": "float32",
        "value_range": [-1.0, 1.0],
        "layout": "(C, H, W)",
        "levels": "the model's range: x = level / 127.5 - 1 for the uint8 levels of the source (uint8 rasters: "
        "their values; uint16 and float rasters: the scene's 2-98 % stretch)",
    },
    "tif": {
        "dtype": "uint8",
        "value_range": [0, 255],
        "layout": "C bands of H x W, not georeferenced",
        "levels": "level = round((x + 1) * 127.5) of the model's x in [-1, 1]: uint8 sources' own scale "
        "(uint16 and float sources: the scene's 2-98 % stretch)",
    },
}


def sample_bands(latents: dict, channels: int) -> tuple[list[dict], str]:
    """The bands of the samples of a run whose latents record is ``latents``: ``[{"band": k (1-based in the
    sample), "source_band": the band of the source rasters it was trained on, "name": …}]``, and where the names
    come from: ``"source rasters"`` (their band descriptions or colour interpretations, recorded by ``encode``),
    or, when they name none, ``"convention"`` (3 or 4 bands: the wing's R, G, B, NIR order) or ``"none"``."""
    source = list(latents.get("bands") or [])
    names = list(latents.get("band_names") or [])
    source = source if len(source) == channels else [None] * channels
    names = names if len(names) == channels else [None] * channels
    if any(names):
        origin = "source rasters"
    elif channels in (3, 4):
        names, origin = list(CONVENTION_NAMES[:channels]), "convention"
    else:
        origin = "none"
    bands = [
        {
            "band": k + 1,
            "source_band": source[k],
            "name": names[k] or f"band {source[k] if source[k] is not None else k + 1}",
        }
        for k in range(channels)
    ]
    return bands, origin


def write_tiles(tiles: torch.Tensor, out: str | Path, fmt: str = "npy", names: list[str] | None = None) -> list[Path]:
    """One file per tile under ``out``: ``sample-00000.npy`` float32 ``(C, H, W)`` in [-1, 1], or ``.tif``: a
    plain (not georeferenced) C-band uint8 TIFF of the levels ``round((x + 1) · 127.5)`` whose bands carry
    ``names`` (see :func:`write_tiff`)."""
    out = Path(out)
    paths = []
    for k, tile in enumerate(tiles):
        path = out / f"sample-{k:05d}.{fmt}"
        if fmt == "npy":
            with atomic_output(path) as tmp, open(tmp, "wb") as fh:
                np.save(fh, tile.float().numpy())
        elif fmt == "tif":
            write_tiff(to_levels(tile), path, names)
        else:
            raise RSGeoPruneError(f"format {fmt!r}: choose npy or tif")
        paths.append(path)
    return paths


def write_tiff(levels: np.ndarray, path: Path, names: list[str] | None = None) -> None:
    """A (C, H, W) uint8 array as a plain GeoTIFF with no CRS and no transform, band ``k`` described as
    ``names[k]``. Bands named red, green, blue first are written as an RGB image (photometric RGB, colour
    interpretations red, green, blue, and "undefined" extra samples after them: Pillow opens it as RGB, GDAL
    tools see every band); one band is grey; other bands are grey plus undefined extra samples."""
    import warnings

    import rasterio
    from rasterio.enums import ColorInterp
    from rasterio.errors import NotGeoreferencedWarning

    c, h, w = levels.shape
    names = list(names or [])[:c]
    rgb = c >= 3 and [n.lower() for n in names[:3]] == list(CONVENTION_NAMES[:3])
    with atomic_output(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(
            tmp,
            "w",
            driver="GTiff",
            width=w,
            height=h,
            count=c,
            dtype="uint8",
            photometric="RGB" if rgb else "MINISBLACK",
        ) as dst:
            dst.write(levels)
            if rgb:
                dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue] + [ColorInterp.undefined] * (
                    c - 3
                )
            for k, name in enumerate(names):
                dst.set_band_description(k + 1, name)
            dst.update_tags(LEVELS=SAMPLE_FORMATS["tif"]["levels"])


#: What ``sample`` writes into its ``--out``: a folder holding these only is a previous sample output, replaced whole.
SAMPLE_ENTRIES = frozenset({"samples.json", "latents.npy", "tiles", *(f"grid_{v}.png" for v in VIEWS)})


def check_sample_out(out: Path) -> None:
    """``out`` is new, empty, or a previous ``sample`` output (which the new one replaces as a whole); a
    folder holding anything else is refused, so no run is mixed with another and no other file is lost."""
    check_writable(out / "samples.json", create=False)
    if out.is_dir():
        names = {p.name for p in out.iterdir()}
        if names and ("samples.json" not in names or not names <= SAMPLE_ENTRIES):
            raise InvalidOption(
                "out",
                str(out),
                "holds other files; choose a new or empty folder (a previous sample output there is replaced whole)",
            )


def sample_to_folder(
    checkpoint: str | Path,
    vae_dir: str | Path,
    out: str | Path,
    *,
    n: int = 64,
    sampler: str | None = None,
    steps: int | None = None,
    eta: float | None = None,
    seed: int = 0,
    batch_size: int = 16,
    fmt: str = "npy",
    device: str | None = None,
) -> dict:
    """``rsgeo-prune sample``: ``n`` tiles from a checkpoint's EMA weights, decoded by the VAE the latents came from.

    Writes under ``out``: ``tiles/sample-*.npy|tif`` (one C-band tile each), ``latents.npy`` (the denormalised
    latents ``(n, C, h, w)`` float32, what the VAE decoded), ``grid_rgb.png`` / ``grid_nirrg.png`` (the first 64),
    and ``samples.json`` (checkpoint, step, sampler, steps, eta, seed, batch size, the files' dtype, layout and value
    range, the bands with their names, what ``latents.npy`` holds, VAE digest). Returns that summary.
    ``checkpoint``: a ``state.pt`` or an export folder (:mod:`~rsgeo_prune.train.export`).

    Every option is checked first (``eta`` is DDIM's only); ``out`` must be new, empty or an earlier sample output,
    and the files appear there together, as one folder, when all are written.
    """
    from .vae_model import load_vae, vae_digest

    check_number("n", n, 1, whole=True, example=64)
    check_number("batch_size", batch_size, 1, whole=True, example=16)
    if steps is not None:
        check_number("steps", steps, 1, whole=True, example=50)
    if eta is not None:
        check_number("eta", eta, 0, 1, example="0 for a deterministic DDIM")
    check_seed("seed", seed)
    if fmt not in ("npy", "tif"):
        raise InvalidOption("format", fmt, "choose npy or tif")
    out = Path(out)
    check_sample_out(out)
    dev = choose_device(device)
    model, info = sampling_model(checkpoint, dev)
    cfg, lat = info["config"], info["latents"]
    digest = vae_digest(vae_dir)
    if digest != lat["vae_digest"]:
        raise RSGeoPruneError(
            f"{vae_dir}: not the VAE the model's latents were encoded with (digest {digest[:12]}…, "
            f"latents {lat['vae_digest'][:12]}…); give that VAE's folder"
        )
    sampler = check_sampler(cfg["diffusion"], sampler)
    if eta is not None and sampler != "ddim":
        raise InvalidOption(
            "eta", eta, f"applies to --sampler ddim only (this samples with {sampler}); drop it or add --sampler ddim"
        )
    if sampler in SAMPLERS["ddpm"] and steps is not None and steps > 1000:
        raise InvalidOption("steps", steps, "must be at most 1000, the DDPM's timesteps")
    steps = steps or (250 if sampler == "ddpm" else 50)
    eta = 0.0 if eta is None else eta
    diffusion = diffusion_of(cfg)
    vae = load_vae(vae_dir, dev)
    z = generate_latents(
        model,
        diffusion,
        n,
        latent_shape=tuple(lat["latent_shape"]),
        steps=steps,
        sampler=sampler,
        eta=eta,
        seed=seed,
        batch_size=batch_size,
        device=dev,
    )
    if not bool(torch.isfinite(z).all()):
        raise RSGeoPruneError(
            f"{checkpoint}: sampling gave non-finite latents (damaged EMA weights?); sample another checkpoint"
        )
    z = denormalise(z, lat)
    tiles = decode_latents(vae, z, batch_size=batch_size, device=dev)
    bands, names_from = sample_bands(lat, tiles.shape[1])
    summary = {
        "checkpoint": str(checkpoint),
        "step": info["step"],
        "model": cfg["model"],
        "diffusion": cfg["diffusion"],
        "sampler": sampler,
        "steps": steps,
        "eta": eta,
        "seed": seed,
        "batch_size": batch_size,
        "noise": "batch k of --batch-size tiles: a generator seeded with (seed, k)",
        "n": n,
        "tile_shape": list(tiles.shape[1:]),
        "format": fmt,
        "files": f"tiles/sample-NNNNN.{fmt}, one tile each",
        **SAMPLE_FORMATS[fmt],
        "bands": bands,
        "band_names_from": names_from,
        "latents": {
            "file": "latents.npy",
            "dtype": "float32",
            "shape": list(z.shape),
            "what": "the VAE latents the tiles were decoded from (the model's normalised output "
            "x back on the VAE's scale: z = x * latents_std + latents_mean)",
            "latents_mean": lat["latents_mean"],
            "latents_std": lat["latents_std"],
            "decode": "AutoencoderKL.from_pretrained(VAE).decode(z).sample, clamped to [-1, 1]",
        },
        "vae_digest": digest,
        "out": str(out),
    }
    with atomic_folder(out) as tmp:
        with atomic_output(tmp / "latents.npy") as part, open(part, "wb") as fh:
            np.save(fh, z.numpy())
        write_tiles(tiles, tmp / "tiles", fmt, [b["name"] for b in bands])
        grids = write_grids(tiles[:64], tmp, "grid")
        summary["grids"] = {k: str(out / v.name) for k, v in grids.items()}
        with atomic_output(tmp / "samples.json") as part:
            part.write_text(json.dumps(summary, indent=2))
    return summary


__all__ = [
    "CONVENTION_NAMES",
    "SAMPLE_ENTRIES",
    "SAMPLE_FORMATS",
    "check_sample_out",
    "decode_latents",
    "denormalise",
    "ema_model",
    "export_dit",
    "generate_latents",
    "grid_image",
    "grid_pictures",
    "sample_bands",
    "sample_to_folder",
    "sampling_model",
    "write_grids",
    "write_png",
    "write_tiff",
    "write_tiles",
]
