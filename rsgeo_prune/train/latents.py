"""Latent shards: every selected tile encoded once, so the DiT reads latents, never pixels.

``encode_catalog`` writes ``out/shard-00000.safetensors, ...``: tensors ``mean`` and ``logvar``
``(n, 4, H/8, W/8)`` float16 (the posterior ``q(z|x) = N(mean, exp(logvar))``), and in the
safetensors metadata the shard's ``tile_ids`` (JSON list, row order), the VAE digest, the catalog
digest (tiles, windows, bands, crop, nodata), the source digest (identities of the files the shard's
tiles are read from: path, size, modification time, content) and the latent scale.
``out/index.json`` (written last) lists the shards and carries the digests of the whole encoding.

Shard ``k`` always holds tiles ``[k·shard_size, (k+1)·shard_size)`` of the dataset's order, and each
is written to a temporary name and renamed, so a killed run leaves only whole shards: rerunning the
command keeps those that match (same VAE, catalog, tiles and source files) and encodes the rest; a
source raster changed in place re-encodes the shards that read it. Shards of another VAE or catalog are
refused; shards left over from another layout (``--shard-size``) are removed. ``index.json`` is removed
before the first shard is rewritten, so it only ever lists one whole encoding. The same inputs give the
same bytes (the safetensors header is written with sorted keys).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_output, check_writable, output_folder
from ..errors import RSGeoPruneError, check_number
from ..rundir import digest
from .checkpoint import write_safetensors
from .convert import denormalise_latents, normalise_latents, scale_tensors
from .device import autocast, choose_device
from .runlog import progress_bar
from .vae_model import check_tile_size, latent_scale, load_vae, vae_digest, vae_downsampling

INDEX_FILE = "index.json"
FORMAT = "rsgeo-latents/1"
#: Shard metadata held as JSON text (lists); ``index.json`` holds them as lists.
JSON_META = ("latents_mean", "latents_std", "bands", "band_names")
#: Metadata that names the encoding a shard belongs to: a folder holds shards of one encoding only.
ENCODING_KEYS = ("vae_digest", "catalog_digest")


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def encode_catalog(
    ds,
    vae_dir: str | Path,
    out: str | Path,
    *,
    shard_size: int = 1024,
    batch_size: int = 32,
    device: str | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> dict:
    """Encode every tile of ``ds`` to its posterior mean and log-variance, in resumable shards.

    Args:
        ds: a :class:`~rsgeo_prune.train.dataset.CatalogDataset` (no random crop, no dihedral: a tile's
            latent must not depend on a draw), tiles or crop a multiple of the VAE's downsampling.
        vae_dir: the ``--out`` of ``train-vae`` (or its ``vae/`` folder).
        out: shard folder; created at the first shard (nothing is created when an input is refused).
        shard_size: tiles per shard.
    Returns:
        the index (also written to ``out/index.json``).
    """
    if getattr(ds, "random_crop", False) and getattr(ds, "crop", None) is not None or getattr(ds, "dihedral", False):
        raise RSGeoPruneError(
            "encode: the dataset draws random crops or flips; encode with a centred crop and no dihedral"
        )
    check_number("shard_size", shard_size, 1, whole=True, example=1024)
    check_number("batch_size", batch_size, 1, whole=True, example=32)
    check_number("workers", num_workers, 0, whole=True, example=2)
    out = Path(out)
    check_writable(out / INDEX_FILE, create=False)
    dev = choose_device(device)
    vae = load_vae(vae_dir, dev)
    if vae.config.in_channels != ds.channels:
        raise RSGeoPruneError(
            f"{vae_dir}: VAE takes {vae.config.in_channels} bands, the selection has {ds.channels}; "
            "select the bands the VAE was trained on (--bands)"
        )
    factor = vae_downsampling(vae_dir)
    check_tile_size(ds, factor)
    meta = {
        "format": FORMAT,
        "vae_digest": vae_digest(vae_dir),
        "catalog_digest": ds.digest(),
        "latents_mean": json.dumps(latent_scale(vae)[0].flatten().tolist()),
        "latents_std": json.dumps(latent_scale(vae)[1].flatten().tolist()),
        "bands": json.dumps(list(ds.bands)),
        "band_names": json.dumps(list(getattr(ds, "band_names", []))),
        "shard_size": str(shard_size),
    }
    n_shards = (len(ds) + shard_size - 1) // shard_size
    ranges = [range(k * shard_size, min((k + 1) * shard_size, len(ds))) for k in range(n_shards)]
    sources = [ds.source_digest(r) for r in ranges]
    _check_encoding(out, meta)
    todo = [
        k
        for k, r in enumerate(ranges)
        if not _shard_matches(out / shard_name(k), [ds.tile_ids[i] for i in r], sources[k])
    ]
    bar = progress_bar(len(ds), len(ds) - sum(len(ranges[k]) for k in todo), progress, unit="tile")
    with output_folder(out, keep=lambda: any(out.glob("shard-*.safetensors"))):
        try:
            _remove_temporaries(out)
            if todo:  # the index lists one whole encoding: gone until every shard of this one is there
                (out / INDEX_FILE).unlink(missing_ok=True)
            for k in todo:
                mean, logvar = _encode_range(vae, ds, ranges[k], batch_size, dev, num_workers, bar, factor)
                write_shard(
                    out / shard_name(k),
                    mean,
                    logvar,
                    [ds.tile_ids[i] for i in ranges[k]],
                    {**meta, "shard": str(k), "source_digest": sources[k]},
                )
        finally:
            bar.close()
        _remove_stale_shards(out, n_shards)
        index = {
            "format": FORMAT,
            "tiles": len(ds),
            "shards": [shard_name(k) for k in range(n_shards)],
            "shard_size": shard_size,
            "latent_shape": list(_shard_shape(out / shard_name(0))),
            **{k: (json.loads(v) if k in JSON_META else v) for k, v in meta.items() if k != "shard_size"},
            "source_digest": digest(sources),
        }
        with atomic_output(out / INDEX_FILE) as tmp:
            tmp.write_text(json.dumps(index, indent=2))
    return index


@torch.no_grad()
def _encode_range(vae, ds, rows: range, batch_size: int, device, num_workers: int, bar, factor: int):
    from .dataset import to_model_range  # here: the dataset module loads the pixel reader and rasterio

    sub = torch.utils.data.Subset(ds, rows)
    loader = torch.utils.data.DataLoader(
        sub, batch_size=batch_size, shuffle=False, num_workers=num_workers, generator=torch.Generator().manual_seed(0)
    )
    means, logvars = [], []
    for batch in loader:
        h, w = batch["image"].shape[-2:]
        if h % factor or w % factor:  # collection images: their size is known only now
            raise RSGeoPruneError(
                f"{batch['tile_id'][0]}: image of {h}x{w} px, not a multiple of {factor} (the VAE's "
                f"downsampling); encode crops (--crop {max(factor, min(h, w) // factor * factor)})"
            )
        with autocast(device):
            post = vae.encode(to_model_range(batch, fill=getattr(ds, "fill", -1.0), device=device)["image"]).latent_dist
        means.append(post.mean.float().cpu().half())
        logvars.append(post.logvar.float().cpu().half())
        bar.update(batch["image"].shape[0])
    return torch.cat(means), torch.cat(logvars)


def write_shard(path: Path, mean: torch.Tensor, logvar: torch.Tensor, tile_ids, meta: dict) -> Path:
    """One safetensors shard (``mean``, ``logvar`` as float16, ``meta`` and ``tile_ids`` as metadata), written
    atomically with the same bytes for the same tensors and metadata (:func:`~.state.write_safetensors`)."""
    if len(tile_ids) != mean.shape[0]:
        raise ValueError("one tile_id per latent")
    return write_safetensors(
        path,
        {"mean": mean.to(torch.float16), "logvar": logvar.to(torch.float16)},
        {**meta, "tile_ids": json.dumps(list(tile_ids))},
    )


def read_shard(path: str | Path) -> tuple[list[str], torch.Tensor, torch.Tensor, dict]:
    """``(tile_ids, mean (n, C, h, w) fp16, logvar fp16, metadata)`` of one shard."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        mean, logvar = f.get_tensor("mean"), f.get_tensor("logvar")
    return json.loads(meta.pop("tile_ids")), mean, logvar, meta


def _check_encoding(out: Path, meta: dict) -> None:
    """Every shard already in ``out`` belongs to this encoding (same VAE and catalog); one of another is an
    error, before anything is written (an unreadable one is encoded again)."""
    for path in sorted(out.glob("shard-*.safetensors")):
        try:
            got = _shard_header(path)[0]["__metadata__"]
        except RSGeoPruneError:
            continue
        for key in ENCODING_KEYS:
            if got.get(key) != meta[key]:
                raise RSGeoPruneError(
                    f"{path}: a shard of another {key.split('_')[0]} ({key} differs); "
                    "encode into a new --out or delete the old shards"
                )


def _shard_matches(path: Path, tile_ids: list[str], source: str) -> bool:
    """A whole shard of these tiles, read from source files of this identity (``source``)."""
    if not path.exists():
        return False
    try:
        header = _shard_header(path)
        for tensor in ("mean", "logvar"):
            _tensor_layout(path, header, tensor)
    except RSGeoPruneError:
        return False  # cut short or unreadable: encoded again
    meta = header[0]["__metadata__"]
    return json.loads(meta["tile_ids"]) == tile_ids and meta.get("source_digest") == source


def _shard_shape(path: Path) -> tuple:
    return tuple(_tensor_layout(path, _shard_header(path), "mean")[1][1:])


def _remove_temporaries(out: Path) -> None:
    """Temporary shards of a killed run (``atomic_output`` names them ``.<stem>.tmp-<pid>.safetensors``)."""
    for tmp in out.glob(".shard-*.tmp-*"):
        tmp.unlink(missing_ok=True)


def _remove_stale_shards(out: Path, n_shards: int) -> None:
    """Shards past the last of this layout (an earlier encoding with a smaller ``--shard-size``)."""
    keep = {shard_name(k) for k in range(n_shards)}
    for path in out.glob("shard-*.safetensors"):
        if path.name not in keep:
            path.unlink(missing_ok=True)


class ShardedRows:
    """One tensor (``"mean"`` or ``"logvar"``) of every shard, read as one ``(n, C, h, w)`` float16 array
    without loading it: each shard's data is a read-only ``numpy.memmap`` into its safetensors file.

    ``rows[index]`` (an int, a slice, or an int array / tensor in any order, across shards) returns a new
    float16 tensor with those rows, gathered from the page cache. A training step reads its batch only, so
    memory does not grow with the corpus, and the torchrun processes of one machine share the cached pages
    (in memory, each would hold its own copy: 16 KiB per 256-px tile, 16 GiB per million tiles, times the GPUs).
    Pickling keeps the paths, not the maps (DataLoader workers and spawned processes map the files again).
    """

    def __init__(self, paths: list[Path], layouts: list[tuple[int, list[int]]]):
        """``layouts``: per shard, the tensor's byte offset and shape (:func:`_tensor_layout`)."""
        self.paths, self._layouts = [Path(p) for p in paths], layouts
        shapes = {tuple(shape[1:]) for _, shape in self._layouts}
        if len(shapes) > 1:
            raise RSGeoPruneError(
                f"{self.paths[0].parent}: shards of different latent shapes {sorted(shapes)}; "
                "encode again into a new --out"
            )
        counts = [shape[0] for _, shape in self._layouts]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(
            np.int64
        )  # shard k: rows [starts[k], starts[k+1])
        self.shape = torch.Size([int(self.starts[-1]), *(shapes.pop() if shapes else ())])
        self.dtype = torch.float16
        self._maps: list[np.memmap] | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": None}

    def _open(self) -> list[np.memmap]:
        if self._maps is None:
            self._maps = [
                np.memmap(p, dtype=np.float16, mode="r", offset=off, shape=tuple(shape))
                for p, (off, shape) in zip(self.paths, self._layouts)
            ]
        return self._maps

    def __getitem__(self, index) -> torch.Tensor:
        rows = self._rows(index)
        flat = rows.reshape(-1)
        out = np.empty((flat.size, *self.shape[1:]), dtype=np.float16)
        shard = np.searchsorted(self.starts, flat, side="right") - 1
        maps = self._open()
        for k in np.unique(shard):
            at = np.flatnonzero(shard == k)
            out[at] = maps[k][flat[at] - self.starts[k]]
        return torch.from_numpy(out.reshape(*rows.shape, *self.shape[1:]))

    def _rows(self, index) -> np.ndarray:
        n = len(self)
        if isinstance(index, slice):
            return np.arange(n, dtype=np.int64)[index]
        rows = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index)
        if rows.dtype == bool or not np.issubdtype(rows.dtype, np.integer):
            raise TypeError(f"latent rows: index with ints or a slice, not {rows.dtype}")
        rows = rows.astype(np.int64)
        if rows.size and (rows.min() < -n or rows.max() >= n):
            raise IndexError(f"latent row out of range for {n} latents")
        return np.where(rows < 0, rows + n, rows)


def _shard_header(path: Path) -> tuple[dict, int, int]:
    """The JSON header of a safetensors shard, where its data starts and the file's size (format: an 8-byte
    little-endian header length, the JSON header, then the data). One read gives the tile ids and digests
    (``__metadata__``) and where each tensor lies, without reading a tensor."""
    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        json.loads(header["__metadata__"]["tile_ids"])  # present and readable, checked once here
        return header, 8 + n, path.stat().st_size
    except (OSError, ValueError, KeyError, struct.error, TypeError) as exc:
        raise RSGeoPruneError(
            f"{path}: not a readable latent shard ({type(exc).__name__}: {exc}); "
            "run rsgeo-prune encode again with this --out"
        ) from None


def _tensor_layout(path: Path, header: tuple[dict, int, int], name: str) -> tuple[int, list[int]]:
    """Byte offset and shape of tensor ``name`` of a shard whose :func:`_shard_header` is ``header`` (the
    offsets in the JSON count from the data's start)."""
    entries, data_start, size = header
    try:
        info = entries[name]
        begin, end = info["data_offsets"]
        shape = [int(v) for v in info["shape"]]
    except (KeyError, ValueError, TypeError) as exc:
        raise RSGeoPruneError(
            f"{path}: not a readable latent shard ({type(exc).__name__}: {exc}); "
            "run rsgeo-prune encode again with this --out"
        ) from None
    if info.get("dtype") != "F16" or end - begin != 2 * int(np.prod(shape)) or data_start + end > size:
        raise RSGeoPruneError(
            f"{path}: tensor {name!r} is not whole float16 data (file cut short or another "
            "writer); run rsgeo-prune encode again with this --out"
        )
    return data_start + begin, shape


def write_synthetic_latents(
    root: str | Path,
    n: int = 64,
    shape: tuple[int, int, int] = (4, 8, 8),
    *,
    seed: int = 0,
    vae_digest: str = "synthetic",
    shard_size: int = 1024,
) -> Path:
    """A latent folder in the ``encode`` layout (shards + ``index.json``) of ``n`` structured latents, for
    benchmarks and tests (a DiT run without a VAE or a catalog): each tile is a few smooth per-channel patterns
    (learnable, unlike white noise) with a small
    posterior variance. ``vae_digest`` names the (pretend) VAE; the catalog digest names ``seed``, ``n`` and
    ``shape``, so other latents are other latents to a resumed run."""
    root = Path(root)
    c, h, w = shape
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    basis = torch.stack([torch.ones_like(xx), xx, yy, xx * yy, torch.sin(math.pi * xx), torch.cos(math.pi * yy)])
    coef = torch.randn(n, c, basis.shape[0], generator=g) * torch.tensor([1.0, 0.8, 0.8, 0.5, 0.5, 0.5])
    mean = torch.einsum("nck,khw->nchw", coef, basis) + 0.3 * torch.arange(c).view(1, c, 1, 1)
    logvar = torch.full_like(mean, -6.0)
    meta = {
        "format": FORMAT,
        "vae_digest": vae_digest,
        "catalog_digest": f"synthetic-{seed}-{n}-{c}x{h}x{w}",
        "latents_mean": json.dumps(mean.mean((0, 2, 3)).tolist()),
        "latents_std": json.dumps(mean.std((0, 2, 3)).tolist()),
        "bands": json.dumps([1, 2, 3, 4]),
        "shard_size": str(shard_size),
    }
    ids = [f"synthetic-{i:06d}" for i in range(n)]
    shards = []
    for k, lo in enumerate(range(0, n, shard_size)):
        write_shard(
            root / shard_name(k),
            mean[lo : lo + shard_size].half(),
            logvar[lo : lo + shard_size].half(),
            ids[lo : lo + shard_size],
            {**meta, "shard": str(k)},
        )
        shards.append(shard_name(k))
    index = {
        "format": FORMAT,
        "tiles": n,
        "shards": shards,
        "shard_size": shard_size,
        "latent_shape": list(shape),
        **{k: (json.loads(v) if k in JSON_META else v) for k, v in meta.items() if k != "shard_size"},
    }
    with atomic_output(root / INDEX_FILE) as tmp:
        tmp.write_text(json.dumps(index, indent=2))
    return root


class LatentShards(torch.utils.data.Dataset):
    """The latents of an ``encode`` folder.

    ``mean`` and ``logvar`` are :class:`ShardedRows`: ``(n, C, h, w)`` float16, memory-mapped from the
    shards (``in_memory=True`` reads them into RAM instead: 16 KiB per 256-px tile, mean and log-variance).
    A sample is ``{"mean", "logvar": fp16 (C, h, w), "tile_id"}``; :meth:`sample` draws
    ``z ~ q(z|x)`` and :meth:`normalise` applies the VAE's measured scale.
    """

    def __init__(self, root: str | Path, *, in_memory: bool = False):
        root = Path(root)
        index_path = root / INDEX_FILE
        if not index_path.exists():
            raise RSGeoPruneError(
                f"{root}: no {INDEX_FILE} (encoding unfinished or not an encode folder); "
                "run rsgeo-prune encode again with this --out"
            )
        try:
            self.index = json.loads(index_path.read_text())
            names = [str(n) for n in self.index["shards"]]
            c = len(self.index["latents_mean"])
            if not names or c != len(self.index["latents_std"]) or not all(k in self.index for k in ENCODING_KEYS):
                raise ValueError("no shards, or an incomplete latent scale or digests")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RSGeoPruneError(
                f"{index_path}: not a readable latent index ({type(exc).__name__}: {exc}); "
                "run rsgeo-prune encode again with this --out"
            ) from None
        ids, paths, layouts = [], [], {"mean": [], "logvar": []}
        for name in names:
            path = root / name
            header = _shard_header(path)
            meta = header[0]["__metadata__"]
            for key in ENCODING_KEYS:
                if meta.get(key) != self.index[key]:
                    raise RSGeoPruneError(
                        f"{path}: a shard of another {key.split('_')[0]} than {INDEX_FILE} ({key} "
                        "differs); run rsgeo-prune encode again with this --out"
                    )
            ids += json.loads(meta["tile_ids"])
            paths.append(path)
            for tensor, per_shard in layouts.items():
                per_shard.append(_tensor_layout(path, header, tensor))
        self.tile_ids = ids
        self.mean, self.logvar = ShardedRows(paths, layouts["mean"]), ShardedRows(paths, layouts["logvar"])
        if len(self.mean) != len(ids) or len(self.logvar) != len(ids):
            raise RSGeoPruneError(f"{root}: {len(ids)} tile ids for {len(self.mean)} latents; encode again")
        if in_memory:
            self.mean, self.logvar = self.mean[:], self.logvar[:]
        if self.mean.shape[1] != c:
            raise RSGeoPruneError(
                f"{index_path}: a latent scale of {c} channels for {self.mean.shape[1]}-channel "
                "latents; run rsgeo-prune encode again with this --out"
            )
        self.latents_mean, self.latents_std = scale_tensors(self.index["latents_mean"], self.index["latents_std"])
        self._scale_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.tile_ids)

    def __getitem__(self, i: int) -> dict:
        return {"mean": self.mean[i], "logvar": self.logvar[i], "tile_id": self.tile_ids[i]}

    def sample(
        self, mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``z = mean + exp(logvar / 2) · ε`` in float32, ``(N, C, h, w)``."""
        mean, logvar = mean.float(), logvar.float()
        eps = torch.randn(mean.shape, generator=generator, device=mean.device)
        return mean + torch.exp(0.5 * logvar) * eps

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        """``(z - latents_mean) / latents_std``: unit-scale latents for the diffusion model."""
        return normalise_latents(z, *self._scale_on(z.device))

    def denormalise(self, z: torch.Tensor) -> torch.Tensor:
        """``z · latents_std + latents_mean``: back on the VAE's scale."""
        return denormalise_latents(z, *self._scale_on(z.device))

    def _scale_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The latent scale on ``device``, copied there once (a host-to-GPU copy every step would make the host
        wait for the GPU's queue to drain)."""
        key = str(device)
        if key not in self._scale_cache:
            self._scale_cache[key] = (self.latents_mean.to(device), self.latents_std.to(device))
        return self._scale_cache[key]


__all__ = [
    "LatentShards",
    "ShardedRows",
    "encode_catalog",
    "read_shard",
    "shard_name",
    "write_shard",
    "write_synthetic_latents",
]
