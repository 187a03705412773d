"""Reference scene sets → embeddings → spherical k-means → a saved :class:`CentroidBank`.

Reference sets are ImageFolder folders (``<root>/<class>/<image>``: UCM, NWPU-RESISC45, AID,
WHU-RS19 and RSD46 unpack this way); several may be combined. The bank records the centroids,
the embedder spec that made them, a digest of the reference files and, per centroid, how many
reference images of each class it holds (to read what a centroid "means").
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .atomic import atomic_output
from .embed import embed_table
from .errors import InvalidOption, RSGeoPruneError
from .kmeans import DEFAULT_K, spherical_kmeans  # also importable as centroids.spherical_kmeans
from .sources import IMAGE_SUFFIXES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReferenceSet:
    """Images of one or more ImageFolder roots: paths, class index per image, class names."""

    paths: tuple[Path, ...]
    labels: np.ndarray
    classes: tuple[str, ...]

    def digest(self) -> str:
        """sha256 over every file's class, name and bytes, in a fixed order."""
        h = hashlib.sha256()
        for p, y in zip(self.paths, self.labels):
            h.update(f"{self.classes[y]}/{p.name}\0".encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
        return h.hexdigest()


def read_reference_sets(roots: Sequence[str | Path]) -> ReferenceSet:
    """Collect the images of ImageFolder roots (classes with the same name are merged)."""
    paths, names = [], []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise RSGeoPruneError(f"{root}: reference set must be a folder of <class>/<image> (ImageFolder layout)")
        found = sorted(p for p in root.glob("*/*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise RSGeoPruneError(f"{root}: no images in <class>/<image> layout; unpack the reference set there")
        paths += found
        names += [p.parent.name for p in found]
    classes = tuple(sorted(set(names)))
    index = {c: i for i, c in enumerate(classes)}
    return ReferenceSet(tuple(paths), np.array([index[n] for n in names], np.int64), classes)


def embed_images(paths: Sequence[Path], embedder) -> np.ndarray:
    """Embed images of any sizes, in order (read and batched by :func:`rsgeo_prune.pixels.read_tile_pixels`)."""
    import pandas as pd

    table = pd.DataFrame({"href": [str(p) for p in paths], "transform": [None] * len(paths)})
    return embed_table(table, embedder, progress=False)


@dataclass(frozen=True)
class CentroidBank:
    """Centroids learned from reference sets, with their provenance."""

    centroids: np.ndarray  # (K, D) float32, unit rows
    embedder: str  # spec of the embedder that made them
    reference_digest: str
    classes: tuple[str, ...]
    class_counts: np.ndarray  # (K, n_classes) int64
    seed: int = 0

    @property
    def k(self) -> int:
        return len(self.centroids)

    @property
    def digest(self) -> str:
        """sha256 of the centroids and the embedder spec (goes into the catalog metadata)."""
        h = hashlib.sha256(np.ascontiguousarray(self.centroids, np.float32).tobytes())
        h.update(self.embedder.encode())
        return h.hexdigest()

    def save(self, path: str | Path) -> Path:
        meta = {
            "embedder": self.embedder,
            "reference_digest": self.reference_digest,
            "classes": list(self.classes),
            "seed": self.seed,
            "format": "rsgeo_prune.CentroidBank/1",
        }
        with atomic_output(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(
                    fh,
                    centroids=self.centroids.astype(np.float32),
                    class_counts=self.class_counts,
                    meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8),
                )
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "CentroidBank":
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(z["meta"].tobytes())
                return cls(
                    centroids=z["centroids"],
                    embedder=meta["embedder"],
                    reference_digest=meta["reference_digest"],
                    classes=tuple(meta["classes"]),
                    class_counts=z["class_counts"],
                    seed=int(meta.get("seed", 0)),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise RSGeoPruneError(
                f"{path}: not a readable centroid bank ({exc}); rebuild it with `rsgeo-prune centroids`"
            ) from exc


_CLASS_COLUMNS = ("class", "label", "category", "scene_class")


def read_reference_catalog(path: str | Path):
    """A reference set given as a catalog (Parquet/GeoParquet or CSV) of tiles or images.

    Rows need ``href`` (an image, or a raster with ``row_off, col_off, height, width, transform``
    as in rsgeo_prune catalogs); the class comes from a ``class``/``label``/``category`` column (all
    rows are one class, ``unlabelled``, without one). Returns ``(table, class names per row)``.
    """
    import pandas as pd

    path = Path(path)
    try:
        table = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise RSGeoPruneError(f"{path}: reference catalog cannot be read ({exc}); give Parquet or CSV") from exc
    if "href" not in table:
        raise RSGeoPruneError(f"{path}: reference catalog has no href column; add the image or raster paths")
    if "transform" not in table:
        table["transform"] = None
    for col in ("row_off", "col_off"):
        table[col] = table[col] if col in table else 0
    hrefs = table["href"].astype(str)
    table["href"] = [h if Path(h).is_absolute() or "://" in h else str((path.parent / h).resolve()) for h in hrefs]
    if "scene_id" not in table:
        table["scene_id"] = [Path(h).stem for h in table["href"]]
    column = next((c for c in _CLASS_COLUMNS if c in table), None)
    names = table[column].astype(str).tolist() if column else ["unlabelled"] * len(table)
    return table, names


def build_centroid_bank(refs: Sequence[str | Path], embedder, *, k: int = DEFAULT_K, seed: int = 0) -> CentroidBank:
    """Embed the reference sets (ImageFolder folders and/or catalogs) and cluster them into ``k`` centroids."""
    folders = [r for r in refs if Path(r).is_dir()]
    catalogs = [r for r in refs if not Path(r).is_dir()]
    parts, names = [], []
    digest = hashlib.sha256()
    if folders:
        ref = read_reference_sets(folders)
        parts.append(embed_images(ref.paths, embedder))
        names += [ref.classes[y] for y in ref.labels]
        digest.update(ref.digest().encode())
    for cat in catalogs:
        table, cat_names = read_reference_catalog(cat)
        parts.append(embed_table(table, embedder, progress=False))
        names += cat_names
        digest.update(hashlib.sha256(Path(cat).read_bytes()).digest())
    n = sum(len(p) for p in parts)
    z = np.concatenate(parts)  # spherical_kmeans checks k against n
    centroids, labels = spherical_kmeans(z, k, seed=seed)
    classes = tuple(sorted(set(names)))
    index = {c: i for i, c in enumerate(classes)}
    counts = np.zeros((k, len(classes)), np.int64)
    np.add.at(counts, (labels, np.array([index[c] for c in names])), 1)
    log.info("centroids: %d reference images of %d classes → %d centroids", n, len(classes), k)
    return CentroidBank(centroids, embedder.spec, digest.hexdigest(), classes, counts, seed)


def is_bank_file(reference: Sequence[str | Path]) -> bool:
    """One ``.npz`` file: a saved bank rather than reference sets."""
    return len(reference) == 1 and str(reference[0]).endswith(".npz")


def check_reference(reference: Sequence[str | Path], embedder_spec: str, *, k: int) -> CentroidBank | None:
    """Check reference inputs before any work: every path exists; a bank loads and was made by
    ``embedder_spec``; reference sets hold at least ``k`` images. Returns the bank when one is given."""
    for r in reference:
        if not Path(r).exists():
            raise RSGeoPruneError(
                f"{r}: reference not found; give ImageFolder reference sets, reference "
                "catalogs (Parquet/CSV) or one bank .npz"
            )
    if is_bank_file(reference):
        bank = CentroidBank.load(reference[0])
        if bank.embedder != embedder_spec:
            raise RSGeoPruneError(
                f"{reference[0]}: bank was made with embedder {bank.embedder!r}, not "
                f"{embedder_spec!r}; use embedder {bank.embedder} or rebuild the bank"
            )
        return bank
    folders = [r for r in reference if Path(r).is_dir()]
    n = len(read_reference_sets(folders).paths) if folders else 0
    n += sum(len(read_reference_catalog(c)[0]) for c in reference if not Path(c).is_dir())
    if k > n:
        raise InvalidOption(
            "k", k, f"is larger than the {n} reference images; use {n} or fewer, or add reference images"
        )
    return None
