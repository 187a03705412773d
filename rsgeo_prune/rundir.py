"""The run directory: one artifact per stage, a manifest (``run.json``) of the key each artifact was
made with, and the digests those keys are built from.

A stage is skipped on a rerun only when its key (a digest of everything its output depends on)
is unchanged and its artifact is still there and readable; anything else recomputes it. Artifacts
are written atomically, so a killed run leaves only finished files behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from .atomic import atomic_output

log = logging.getLogger(__name__)

STAGE_FILES = {
    "tiles": "tiles.parquet",
    "embed": "embeddings.parquet",
    "centroids": "bank.npz",
    "select": "catalog.parquet",
    "stac": "items.parquet",
}
PARTS_DIR = "embed.parts"
RECORDED_PACKAGES = (
    "numpy",
    "rasterio",
    "geopandas",
    "shapely",
    "pyarrow",
    "dask",
    "numba",
    "torch",
    "open_clip_torch",
)


def package_version(name: str = "rsgeo_prune") -> str | None:
    """An installed distribution's version, from its metadata (None when not installed)."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def file_identity(path: str | Path, *, content: bool = False) -> list:
    """What identifies an input file cheaply: absolute path, size and modification time (ns); with
    ``content``, also :func:`content_digest` (catches a file rewritten with its old size and time)."""
    st = Path(path).stat()
    ident = [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]
    return ident + [content_digest(path)] if content else ident


#: Files up to this size are hashed whole by :func:`content_digest`; larger ones by samples.
WHOLE_HASH_BYTES = 16 << 20
_SAMPLE_BYTES, _SAMPLES = 64 << 10, 16


def content_digest(path: str | Path) -> str:
    """sha256 of a file's bytes where that is cheap: whole up to :data:`WHOLE_HASH_BYTES`, else of its
    first and last 64 KiB and 16 evenly spaced 64 KiB blocks (headers, tile indexes and a sample of the
    data: about 1 MiB read per file, whatever its size)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size <= WHOLE_HASH_BYTES:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        else:
            step = (size - _SAMPLE_BYTES) // (_SAMPLES + 1)
            for off in [0, *(step * k for k in range(1, _SAMPLES + 1)), size - _SAMPLE_BYTES]:
                fh.seek(off)
                h.update(fh.read(_SAMPLE_BYTES))
    return h.hexdigest()


def input_identities(paths) -> list:
    """Identities of inputs: files, or every file under a folder."""
    out = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.append([str(p.resolve()), [file_identity(f) for f in sorted(p.rglob("*")) if f.is_file()]])
        else:
            out.append(file_identity(p))
    return out


def embedder_identity(spec: str, nir_view: str) -> str:
    """A digest of what an embedding depends on besides the pixels: the embedder spec, the view,
    the identity of its weights file or folder, and the package version (the weights-free
    embedder's code)."""
    kind, _, rest = spec.partition(":")
    weights = rest.partition(":")[2] if kind == "openclip" else rest if kind == "siglip" else None
    ident = input_identities([weights]) if weights and Path(weights).exists() else None
    return digest([spec, nir_view, ident, package_version()])


def digest(obj) -> str:
    """sha256 of the canonical JSON of ``obj``."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class RunDir:
    """``RUN_DIR/run.json`` records, per stage, the key (digest of its inputs and config) it was made
    with; a stage whose key and artifact are unchanged is skipped on a rerun."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest_path = self.path / "run.json"
        self.manifest = {"stages": {}}
        if self.manifest_path.exists():
            try:
                manifest = json.loads(self.manifest_path.read_text())
                if not isinstance(manifest, dict) or not isinstance(manifest.get("stages"), dict):
                    raise ValueError("no stages")
                self.manifest = manifest
            except (ValueError, OSError):
                log.warning("%s is corrupt: every stage is recomputed", self.manifest_path)

    def artifact(self, stage: str) -> Path:
        return self.path / STAGE_FILES[stage]

    def done(self, stage: str, key: str) -> bool:
        """The stage ran with this key and its artifact is still there and readable."""
        entry = self.manifest["stages"].get(stage, {})
        path = self.artifact(stage)
        if not isinstance(entry, dict) or entry.get("key") != key or not path.exists():
            return False
        try:  # a damaged artifact means the stage runs again, never that a wrong result is used
            if path.suffix == ".parquet":
                import pyarrow.parquet as pq

                pq.read_table(path)
            else:
                np.load(path, allow_pickle=False).close()
        except Exception:
            log.warning("%s is damaged: stage %s runs again", path, stage)
            return False
        return True

    def mark(self, stage: str, key: str, **info) -> None:
        """Record that ``stage``'s artifact was made with ``key`` (after the artifact is written)."""
        self.manifest["stages"][stage] = {"key": key, "file": STAGE_FILES[stage], **info}
        self._write()

    def forget(self, stage: str) -> None:
        """Drop a stage's record before it is recomputed: a run killed mid-stage never pairs the old
        key with a new, partial state."""
        if self.manifest["stages"].pop(stage, None) is not None:
            self._write()

    def header(self, config: dict) -> None:
        """Record the config, package versions and Python of this run."""
        versions = {pkg: v for pkg in RECORDED_PACKAGES if (v := package_version(pkg))}
        self.manifest.update(
            {
                "rsgeo_prune": package_version(),
                "python": platform.python_version(),
                "packages": versions,
                "config": config,
            }
        )

    def _write(self) -> None:
        with atomic_output(self.manifest_path) as tmp:
            tmp.write_text(json.dumps(self.manifest, indent=2, sort_keys=True, default=str))


__all__ = [
    "PARTS_DIR",
    "RunDir",
    "STAGE_FILES",
    "content_digest",
    "digest",
    "embedder_identity",
    "file_identity",
    "input_identities",
    "package_version",
]
