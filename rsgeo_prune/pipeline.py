"""The stages, run in order over all inputs.

Today: tiles → nodata fraction → urban fraction → pre-filters → Stage I entropy (``tiles_stage``),
and Stage I on an existing tile table (``entropy_stage``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import shapely
from tqdm.auto import tqdm

from .catalog import to_geodataframe
from .errors import RSGeoPruneError
from .masks import mask_filter, polygons_in_crs, read_vector, urban_fraction
from .entropy import entropy_filter, entropy_from_histograms, image_histograms, scene_histograms, stack_histograms
from .sources import ImageCollection, RasterScene, describe_raster, resolve_inputs
from .tiling import collection_grid, nodata_fraction, tile_grid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileConfig:
    """Options of the tiling stage (defaults are the CLI's)."""

    tile_size: int = 256
    stride: int | None = None
    partial: bool = False
    mask: str | None = None
    min_urban: float | None = None
    max_nodata: float = 0.5
    nodata: float | None = None
    entropy_min: float | None = None
    entropy_keep: float | None = None

    @property
    def wants_entropy(self) -> bool:
        return self.entropy_min is not None or self.entropy_keep is not None

    def __post_init__(self):
        if self.tile_size <= 0 or (self.stride is not None and self.stride <= 0):
            raise RSGeoPruneError(
                f"--tile-size {self.tile_size} and --stride {self.stride} must be positive pixel counts (e.g. 256)")
        # Validate the filter options now, before hours of tiling, with the filter's own checks.
        mask_filter(np.zeros(0), np.zeros(0) if self.mask else None, max_nodata=self.max_nodata,
                    min_urban=self.min_urban)
        entropy_filter(np.zeros(0), [], np.zeros(0, bool), entropy_min=self.entropy_min,
                       entropy_keep=self.entropy_keep)

    def as_dict(self) -> dict:
        return asdict(self)


def _scene_tiles(scene: RasterScene, cfg: TileConfig, urban_polys) -> pd.DataFrame:
    table, native = tile_grid(scene, cfg.tile_size, cfg.stride, cfg.partial)
    r, c, h, w = (table[k].to_numpy() for k in ("row_off", "col_off", "height", "width"))
    if cfg.wants_entropy:  # one pass over the pixels gives both: valid pixels = gray histogram total
        hist = scene_histograms(scene, r, c, h, w, cfg.tile_size)
        table["nodata_frac"] = 1.0 - hist[:, -1].sum(axis=1) / (h * w)
        set_entropy_columns(table, hist)
    else:
        table["nodata_frac"] = nodata_fraction(scene, r, c, h, w, tile_size=cfg.tile_size, stride=cfg.stride)
    if urban_polys is not None:
        table["urban_frac"] = urban_fraction(native, urban_polys(scene.crs, shapely.total_bounds(native)))
    return table


def _collection_tiles(coll: ImageCollection, urban_polys, with_entropy: bool) -> pd.DataFrame:
    table = collection_grid(coll)
    table["nodata_frac"] = 0.0  # plain images carry no nodata
    if with_entropy:
        set_entropy_columns(table, image_histograms(table["href"]))
    if urban_polys is not None:
        # A point has no area: its urban fraction is 1 inside an urban polygon, 0 outside, NaN unplaced.
        polys = urban_polys("EPSG:4326", None)
        points = table["geometry"].to_numpy()
        frac = np.full(len(points), np.nan)
        placed = np.array([p is not None for p in points], dtype=bool)
        if placed.any():
            tree = shapely.STRtree(polys)
            hit, _ = tree.query(points[placed], predicate="intersects")
            inside = np.zeros(int(placed.sum()))
            inside[np.unique(hit)] = 1.0
            frac[placed] = inside
        table["urban_frac"] = frac
    return table


def tiles_stage(inputs: Sequence[str | Path], cfg: TileConfig = TileConfig(), *, progress: bool = True):
    """Tile every input, measure nodata and urban fractions, and apply the pre-filters.

    Returns:
        GeoDataFrame (EPSG:4326) with the catalog columns known at this stage, ``kept`` and
        ``pruned_by`` (``"nodata"``, ``"mask"`` or null).
    """
    sources = resolve_inputs(inputs, nodata=cfg.nodata)
    urban_polys = None
    if cfg.mask:
        vector = read_vector(cfg.mask)

        def urban_polys(crs, bounds):
            return polygons_in_crs(vector, crs, bounds)

    tables = []
    # disable=None: a bar only on a terminal, so logs and captured stderr stay clean
    for src in tqdm(sources, desc="tiling", unit="scene", disable=None if progress else True):
        if isinstance(src, RasterScene):
            tables.append(_scene_tiles(src, cfg, urban_polys))
        else:
            tables.append(_collection_tiles(src, urban_polys, cfg.wants_entropy))
    table = pd.concat(tables, ignore_index=True)
    if "urban_frac" not in table:
        table["urban_frac"] = np.nan
    why = mask_filter(table["nodata_frac"].to_numpy(), table["urban_frac"].to_numpy() if cfg.mask else None,
                      max_nodata=cfg.max_nodata, min_urban=cfg.min_urban)
    table["kept"] = pd.isna(why)
    table["pruned_by"] = pd.array(why, dtype="string")
    counts = pd.Series(why).value_counts()
    log.info("tiles: %d in total, %d pruned by nodata, %d by mask, %d kept", len(table),
             counts.get("nodata", 0), counts.get("mask", 0), int(table["kept"].sum()))
    if cfg.wants_entropy:
        apply_entropy_filter(table, entropy_min=cfg.entropy_min, entropy_keep=cfg.entropy_keep)
    return to_geodataframe(table)


def set_entropy_columns(table: pd.DataFrame, hist: np.ndarray) -> None:
    """Add ``entropy`` (gray) and ``entropy_bands`` (list per tile) from ``(N, C + 1, 256)`` histograms.

    Tiles without a valid pixel get null in both.
    """
    h = entropy_from_histograms(hist)
    gray = h[:, -1]
    table["entropy"] = pd.array(np.where(np.isnan(gray), None, gray), dtype="Float64")
    table["entropy_bands"] = [None if np.isnan(g) else row[: n].tolist()
                              for g, row, n in zip(gray, h[:, :-1], table["bands"].to_numpy())]


def apply_entropy_filter(table: pd.DataFrame, *, entropy_min=None, entropy_keep=None) -> None:
    """Stage I filter on a tile table in place: candidates are the tiles still ``kept``."""
    entropy = table["entropy"].to_numpy(dtype=np.float64, na_value=np.nan)
    pruned = entropy_filter(entropy, table["tile_id"].to_numpy(), table["kept"].to_numpy(bool),
                            entropy_min=entropy_min, entropy_keep=entropy_keep)
    table.loc[pruned, "kept"] = False
    table.loc[pruned, "pruned_by"] = "entropy"
    log.info("entropy: %d pruned, %d kept", int(pruned.sum()), int(table["kept"].sum()))


def entropy_stage(table: pd.DataFrame, *, nodata: float | None = None, entropy_min=None, entropy_keep=None,
                  progress: bool = True):
    """Add the Stage I columns to a tile table made by :func:`tiles_stage`, re-reading its rasters.

    Raster tiles are grouped by scene and read in one pass per scene; image-collection tiles
    (rows without a ``transform``) are read image by image.
    """
    table = table.copy()
    parts = []
    groups = list(table.groupby("href", sort=False).indices.items())
    for href, idx in tqdm(groups, desc="entropy", unit="scene", disable=None if progress else True):
        rows = table.iloc[idx]
        if rows["transform"].iloc[0] is None:
            parts.append((idx, image_histograms(rows["href"])))
            continue
        scene = describe_raster(href, nodata=nodata, scene_id=rows["scene_id"].iloc[0])
        r, c, h, w = (rows[k].to_numpy() for k in ("row_off", "col_off", "height", "width"))
        parts.append((idx, scene_histograms(scene, r, c, h, w, int(max(h.max(), w.max())))))
    set_entropy_columns(table, stack_histograms(parts, len(table)))
    if entropy_min is not None or entropy_keep is not None:
        apply_entropy_filter(table, entropy_min=entropy_min, entropy_keep=entropy_keep)
    return to_geodataframe(table)


# ---------------------------------------------------------------------------------------------
# Stage II and the whole run
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunConfig:
    """Options of ``rsgeo-prune run`` beyond the tiling ones (defaults are the CLI's)."""

    budget: float | None = 0.15
    budget_count: int | None = None
    k: int = 200
    embedder: str = "default"
    nir_view: str = "none"
    method: str = "rs-prune"
    seed: int = 0
    chunk: int = 4096  # tiles per embedding/assignment task (fixes the partition boundaries)
    export_tiles: bool = False  # also write each kept tile as a COG and point its STAC asset at it

    def __post_init__(self):
        from .select import METHODS

        if self.method not in METHODS:
            raise RSGeoPruneError(f"--method {self.method!r} must be one of {', '.join(METHODS)}")
        if self.budget_count is not None and self.budget_count < 0:
            raise RSGeoPruneError(f"--budget-count {self.budget_count} must be >= 0")
        if self.budget_count is None and (self.budget is None or not 0.0 <= self.budget <= 1.0):
            raise RSGeoPruneError(f"--budget {self.budget} must be a fraction in [0, 1] (0.15 keeps 15 %)")
        if self.k <= 0:
            raise RSGeoPruneError(f"--k {self.k} must be >= 1")

    def as_dict(self) -> dict:
        return asdict(self)


def read_tile_pixels(table: pd.DataFrame, *, nodata: float | None = None, batch: int = 256):
    """Yield ``(row positions, tiles (n, C, H, W) uint8)`` for the rows of a tile table.

    Raster tiles are read by window with rasterio, scene by scene; non-uint8 rasters are mapped to
    256 levels by the scene's Stage I stretch. Collection images (rows without a ``transform``) are
    read whole, each stretched on its own when not uint8. Tiles of one shape go together, at most
    ``batch`` at a time.
    """
    import rasterio
    from rasterio.windows import Window

    from .entropy import percentile_range, scene_percentiles, stretch_levels
    from .sources import decode_errors, read_image

    is_image = np.array([t is None for t in table["transform"]], dtype=bool)
    images = np.flatnonzero(is_image)
    for s in range(0, len(images), batch):
        part = images[s:s + batch]
        read = [read_image(p) for p in table["href"].to_numpy()[part]]
        read = [im if im.dtype == np.uint8 else stretch_levels(im, *percentile_range(im, None)) for im in read]
        shapes: dict[tuple, list[int]] = {}
        for j, im in enumerate(read):
            shapes.setdefault(im.shape, []).append(j)
        for js in shapes.values():
            yield part[js], np.stack([read[j] for j in js])

    rasters = np.flatnonzero(~is_image)
    for href, sub in table.iloc[rasters].groupby("href", sort=False).indices.items():
        idx = rasters[sub]
        rows = table.iloc[idx]
        scene = describe_raster(href, nodata=nodata, scene_id=rows["scene_id"].iloc[0])
        stretch = None if scene.dtype == "uint8" else scene_percentiles(scene.href, scene.nodata)
        shapes = rows.groupby(["height", "width"], sort=False).indices
        with decode_errors(scene.href), rasterio.open(scene.href) as src:
            for _, pos in shapes.items():
                for s in range(0, len(pos), batch):
                    part = pos[s:s + batch]
                    tiles = np.stack([src.read(window=Window(int(c), int(r), int(w), int(h)))
                                      for r, c, h, w in rows.iloc[part][["row_off", "col_off", "height", "width"]].to_numpy()])
                    if stretch is not None:
                        tiles = np.stack([stretch_levels(t, *stretch) for t in tiles])
                    yield idx[part], tiles


def embed_table(table: pd.DataFrame, embedder, *, nodata: float | None = None, progress: bool = True) -> np.ndarray:
    """Embeddings ``(len(table), D)`` float32 of every row of a tile table."""
    out = np.zeros((len(table), embedder.dim), np.float32)
    with tqdm(total=len(table), desc="embedding", unit="tile", disable=None if progress else True) as bar:
        for pos, tiles in read_tile_pixels(table, nodata=nodata):
            out[pos] = embedder(tiles)
            bar.update(len(pos))
    return out


def load_or_build_bank(reference: Sequence[str | Path], embedder, *, k: int, seed: int):
    """A saved bank (one ``.npz``) or a new one built from reference sets (folders or catalogs)."""
    from .centroids import CentroidBank, build_centroid_bank

    if _is_bank(reference):
        bank = CentroidBank.load(reference[0])
        if bank.embedder != embedder.spec:
            raise RSGeoPruneError(f"{reference[0]}: bank was made with embedder {bank.embedder!r}, not "
                                  f"{embedder.spec!r}; pass --embedder {bank.embedder} or rebuild the bank")
        return bank
    return build_centroid_bank(reference, embedder, k=k, seed=seed)


def _is_bank(reference) -> bool:
    return len(reference) == 1 and str(reference[0]).endswith(".npz")


# ---------------------------------------------------------------------------------------------
# The run directory: one artifact per stage, a manifest, resumable
# ---------------------------------------------------------------------------------------------

STAGE_FILES = {"tiles": "tiles.parquet", "embed": "embeddings.parquet", "centroids": "bank.npz",
               "select": "catalog.parquet", "stac": "items.parquet"}
PARTS_DIR = "embed.parts"


def file_identity(path: str | Path) -> list:
    """What identifies an input file cheaply: absolute path, size and modification time (ns)."""
    st = Path(path).stat()
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]


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


def digest(obj) -> str:
    """sha256 of the canonical JSON of ``obj``."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class RunDir:
    """``RUN_DIR/run.json`` records, per stage, the key (digest of its inputs and config) it was made
    with; a stage whose key and artifact are unchanged is skipped on a rerun."""

    def __init__(self, path: str | Path):
        import json

        self.path = Path(path)
        self.manifest_path = self.path / "run.json"
        self.manifest = {"stages": {}}
        if self.manifest_path.exists():
            try:
                self.manifest = json.loads(self.manifest_path.read_text())
            except ValueError:
                log.warning("%s is corrupt: every stage is recomputed", self.manifest_path)

    def artifact(self, stage: str) -> Path:
        return self.path / STAGE_FILES[stage]

    def done(self, stage: str, key: str) -> bool:
        """The stage ran with this key and its artifact is still there and readable."""
        entry = self.manifest["stages"].get(stage, {})
        path = self.artifact(stage)
        if entry.get("key") != key or not path.exists():
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
        import json

        from .atomic import atomic_output

        self.manifest["stages"][stage] = {"key": key, "file": STAGE_FILES[stage], **info}
        with atomic_output(self.manifest_path) as tmp:
            tmp.write_text(json.dumps(self.manifest, indent=2, sort_keys=True, default=str))

    def header(self, config: dict) -> None:
        import platform
        from importlib.metadata import PackageNotFoundError, version

        from . import __version__

        versions = {}
        for pkg in ("numpy", "rasterio", "geopandas", "shapely", "pyarrow", "dask", "numba", "torch", "open_clip_torch"):
            try:
                versions[pkg] = version(pkg)
            except PackageNotFoundError:
                pass
        self.manifest.update({"rsgeo_prune": __version__, "python": platform.python_version(),
                              "packages": versions, "config": config})


@contextlib.contextmanager
def dask_scheduler(spec: str = "threads"):
    """``threads`` (default), ``processes``, ``synchronous``, or ``tcp://HOST:PORT`` of a running
    dask.distributed scheduler; yields the number of parallel workers."""
    import dask

    if spec.startswith("tcp://") or spec.startswith("tls://"):
        from distributed import Client

        try:
            client = Client(spec, timeout="10s")
        except OSError as exc:
            raise RSGeoPruneError(f"--scheduler {spec}: no dask scheduler answers there ({exc}); start one "
                                  "(`dask scheduler` + `dask worker`) or use --scheduler threads") from exc
        with client:
            yield max(1, sum(client.nthreads().values()))
        return
    if spec not in ("threads", "processes", "synchronous"):
        raise RSGeoPruneError(f"--scheduler {spec!r}: use threads, processes, synchronous or tcp://HOST:PORT")
    with dask.config.set(scheduler=spec):
        yield 1 if spec == "synchronous" else (os.cpu_count() or 1)


@functools.lru_cache(maxsize=4)
def _cached_embedder(spec: str, nir_view: str):
    from .embed import load_embedder

    return load_embedder(spec, nir_view=nir_view, threads=1)  # dask runs the chunks in parallel


def _embed_chunk(rows: pd.DataFrame, spec: str, nir_view: str, nodata) -> np.ndarray:
    """Task: embeddings of a chunk of tile rows (the embedder is built once per process)."""
    embedder = _cached_embedder(spec, nir_view)
    out = np.zeros((len(rows), embedder.dim), np.float32)
    local = rows.reset_index(drop=True)
    for pos, tiles in read_tile_pixels(local, nodata=nodata):
        out[pos] = embedder(tiles)
    return out


def _assign_chunk(z: np.ndarray, centroids: np.ndarray):
    """Task: nearest centroid of a chunk; one torch thread so the result never depends on how many
    threads a worker has (the same float sums in any process)."""
    import torch

    from .select import assign

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return assign(z, centroids)
    finally:
        torch.set_num_threads(threads)


def _embed_stage(run: RunDir, table: pd.DataFrame, cand: np.ndarray, run_cfg: RunConfig,
                 nodata, workers: int, progress: bool):
    """Embeddings of the candidate tiles, reusing every embedding already made for the same tile of
    the same source file (earlier runs, or parts written before a crash)."""
    import dask

    from .catalog import read_embeddings

    rows = table.iloc[cand]
    ids = rows["tile_id"].to_numpy().astype(str)
    sources = {h: digest(file_identity(h)) for h in rows["href"].unique()}
    src = rows["href"].map(sources).to_numpy().astype(str)
    wanted = {f"{t}|{s}": i for i, (t, s) in enumerate(zip(ids, src))}
    embedder_id = f"{run_cfg.embedder}|{run_cfg.nir_view}"
    dim = _cached_embedder(run_cfg.embedder, run_cfg.nir_view).dim
    z = np.zeros((len(cand), dim), np.float32)
    have = np.zeros(len(cand), bool)

    def reuse(path):
        import pyarrow.parquet as pq

        try:
            meta = pq.read_schema(path).metadata or {}
            if meta.get(b"rsgeo_prune_embedder", b"").decode() != embedder_id:
                return
            t = pq.read_table(path, columns=["tile_id", "source"])
            old_ids, old_z = read_embeddings(path)
        except Exception:  # a corrupt artifact is recomputed, never trusted
            log.warning("%s is unreadable: its tiles are embedded again", path)
            return
        for j, (tid, s) in enumerate(zip(old_ids, t.column("source").to_pylist())):
            i = wanted.get(f"{tid}|{s}")
            if i is not None and old_z.shape[1] == dim:
                z[i], have[i] = old_z[j], True

    parts = run.path / PARTS_DIR
    for old in [run.artifact("embed"), *sorted(parts.glob("part-*.parquet"))]:
        if old.exists():
            reuse(old)
    todo = np.flatnonzero(~have)
    log.info("embed: %d of %d candidate tiles already embedded, %d to do", int(have.sum()), len(cand), len(todo))
    parts.mkdir(parents=True, exist_ok=True)
    chunks = [todo[s:s + run_cfg.chunk] for s in range(0, len(todo), run_cfg.chunk)]
    fault = os.environ.get("RSGEO_PRUNE_FAULT", "")  # test hook: "embed:N" kills the run after N parts
    with tqdm(total=len(todo), desc="embedding", unit="tile", disable=None if progress else True) as bar:
        for g in range(0, len(chunks), max(1, workers)):
            group = chunks[g:g + max(1, workers)]
            tasks = [dask.delayed(_embed_chunk)(rows.iloc[c], run_cfg.embedder, run_cfg.nir_view, nodata) for c in group]
            for c, zc in zip(group, dask.compute(*tasks)):
                z[c], have[c] = zc, True
                part = parts / f"part-{int(c[0]):09d}.parquet"
                _write_embedding_part(part, ids[c], src[c], zc, embedder_id)
                bar.update(len(c))
            if fault.startswith("embed:") and g // max(1, workers) + 1 >= int(fault.split(":")[1]):
                os.kill(os.getpid(), 9)
    _write_embedding_part(run.artifact("embed"), ids, src, z, embedder_id)
    import shutil

    shutil.rmtree(parts, ignore_errors=True)
    return z, len(todo)


def _write_embedding_part(path: Path, ids, src, z, embedder_id: str) -> None:
    """``embeddings.parquet`` layout plus the source identity and the embedder, atomically."""
    from .catalog import write_embeddings

    write_embeddings(ids, z, path, source=src, metadata={b"rsgeo_prune_embedder": embedder_id.encode()})


def _assign_rows(source, start: int, stop: int, centroids: np.ndarray):
    """Task: assignment of rows ``start:stop`` of an embeddings array or ``.npy`` file (memory-mapped,
    so a worker reads only its rows)."""
    z = np.load(source, mmap_mode="r")[start:stop] if isinstance(source, (str, Path)) else source
    return _assign_chunk(np.asarray(z, np.float32), centroids)


def assign_in_tasks(source, centroids: np.ndarray, chunk: int, n: int | None = None):
    """Nearest centroid of every row of ``source`` (``(N, D)`` array, or the path of an ``.npy``
    file) as dask tasks of ``chunk`` rows on the current scheduler. Returns ``(cluster, similarity)``."""
    import dask

    if n is None:
        n = len(np.load(source, mmap_mode="r")) if isinstance(source, (str, Path)) else len(source)
    tasks = [dask.delayed(_assign_rows)(source if isinstance(source, (str, Path)) else source[s:s + chunk],
                                        s, min(n, s + chunk), centroids) for s in range(0, n, chunk)]
    got = dask.compute(*tasks)
    if not got:
        return np.zeros(0, np.int32), np.zeros(0, np.float32)
    return np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got])


def select_in_tasks(cluster, similarity, tie, budget: int, k: int, chunk: int) -> np.ndarray:
    """RS-Prune selection as the two-pass map-reduce of DESIGN.md on the current dask scheduler:
    pass 1 counts candidates per cluster (giving ``q`` and ``r``); pass 2 reduces every partition to
    its possible winners and merges them in a tree. Identical to :func:`~rsgeo_prune.select.select_quota`;
    no task holds more than ``2 (q·K + r)`` candidates."""
    import dask

    from .select import candidate_partition, finish_selection, merge_candidates, quota_plan, reduce_candidates

    n = len(cluster)
    counts = sum(dask.compute(*[dask.delayed(np.bincount)(cluster[s:s + chunk], minlength=k)
                                for s in range(0, n, chunk)]), np.zeros(k, np.int64))
    q, r = quota_plan(np.asarray(counts), budget, k)
    parts = [dask.delayed(reduce_candidates)(
        dask.delayed(candidate_partition)(cluster[s:s + chunk], similarity[s:s + chunk], tie[s:s + chunk], s), q, r)
        for s in range(0, n, chunk)]
    while len(parts) > 1:
        parts = [dask.delayed(merge_candidates)(parts[i], parts[i + 1], q, r) if i + 1 < len(parts) else parts[i]
                 for i in range(0, len(parts), 2)]
    chosen = np.zeros(n, bool)
    if parts:
        chosen[finish_selection(dask.compute(parts[0])[0], q, r)] = True
    return chosen


def _select(method: str, z, ids, table, cand, budget, bank, run_cfg: RunConfig):
    """Cluster, similarity and the chosen candidates for one selection method."""

    from .select import (select_cluster_nearest, select_full_kmeans, select_moderate, select_random, select_top_entropy,
                         select_water_filling, tie_ranks)

    cluster = similarity = None
    if bank is not None:
        cluster, similarity = assign_in_tasks(z, bank.centroids, run_cfg.chunk)
    if method == "rs-prune":
        chosen = select_in_tasks(cluster, similarity, tie_ranks(ids), budget, bank.k, run_cfg.chunk)
    elif method == "water-filling":
        chosen = select_water_filling(cluster, similarity, ids, budget)
    elif method == "random":
        chosen = select_random(len(cand), budget, seed=run_cfg.seed)
    elif method == "entropy":
        chosen = select_top_entropy(table["entropy"].to_numpy(np.float64, na_value=np.nan)[cand], ids, budget)
    elif method == "moderate":
        chosen = select_moderate(similarity, ids, budget)
    elif method == "cluster-nearest":
        chosen = select_cluster_nearest(z, ids, budget, seed=run_cfg.seed)
    else:  # full-kmeans
        chosen, cluster, similarity = select_full_kmeans(z, ids, budget, run_cfg.k, seed=run_cfg.seed)
    return chosen, cluster, similarity


def run_pipeline(inputs: Sequence[str | Path], out_dir: str | Path, reference: Sequence[str | Path],
                 tile_cfg: TileConfig = TileConfig(), run_cfg: RunConfig = RunConfig(), *,
                 scheduler: str = "threads", progress: bool = True):
    """tiles → masks → entropy → embed → assign → select, in a resumable run directory.

    ``out_dir`` gets ``tiles.parquet``, ``embeddings.parquet``, ``bank.npz`` (when built here),
    ``catalog.parquet`` and ``run.json``. A stage whose inputs and config are unchanged is skipped;
    embeddings already made for the same tile of the same file are reused (after a crash, or when
    a scene is added).

    Returns:
        ``(catalog GeoDataFrame, counts)``; ``counts`` gives the tiles left after each stage and
        how many tiles were embedded in this call.
    """
    from .atomic import check_writable
    from .catalog import read_catalog, write_catalog, write_geoparquet
    from .select import rank_in_cluster

    out_dir = Path(out_dir)
    check_writable(out_dir / "run.json")
    if not reference and run_cfg.method in ("rs-prune", "water-filling", "moderate"):
        raise RSGeoPruneError(f"--method {run_cfg.method} needs --reference (ImageFolder sets or a bank .npz)")
    sources = resolve_inputs(inputs, nodata=tile_cfg.nodata)  # fail early on bad inputs, before any work
    run = RunDir(out_dir)
    config = {"inputs": [str(p) for p in inputs], "reference": [str(p) for p in reference],
              "tiles": tile_cfg.as_dict(), "run": run_cfg.as_dict()}
    run.header(config)
    # what the tiles depend on: every raster or image folder the inputs (globs, STAC Items) resolve to
    resolved = [s.href if isinstance(s, RasterScene) else s.root for s in sources]
    ids_in = input_identities(resolved + ([tile_cfg.mask] if tile_cfg.mask else []))
    key_tiles = digest([ids_in, tile_cfg.as_dict()])
    key_bank = digest([input_identities(reference), run_cfg.embedder, run_cfg.nir_view, run_cfg.k, run_cfg.seed])
    key_embed = digest([key_tiles, run_cfg.embedder, run_cfg.nir_view])
    key_select = digest([key_embed, key_bank, run_cfg.as_dict()])
    key_stac = digest([key_select, run_cfg.export_tiles])
    counts: dict = {}

    with dask_scheduler(scheduler) as workers:
        if run.done("tiles", key_tiles):
            table = pd.DataFrame(read_catalog(run.artifact("tiles")))
            log.info("tiles: unchanged, read from %s", run.artifact("tiles"))
        else:
            table = pd.DataFrame(tiles_stage(inputs, tile_cfg, progress=progress))
            write_geoparquet(table, run.artifact("tiles"))
            run.mark("tiles", key_tiles, rows=len(table))
        passed = ~table["pruned_by"].isin(["nodata", "mask"]).to_numpy()
        cand = np.flatnonzero(table["kept"].to_numpy(bool))
        budget = run_cfg.budget_count if run_cfg.budget_count is not None else \
            int(math.floor(run_cfg.budget * passed.sum() + 0.5))
        counts.update({"tiles": len(table), "after nodata/mask": int(passed.sum()), "after entropy": len(cand)})
        if budget > len(cand):
            log.warning("budget %d is more than the %d candidates: all are kept", budget, len(cand))

        bank = None
        if reference:
            from .centroids import CentroidBank

            embedder = _cached_embedder(run_cfg.embedder, run_cfg.nir_view)
            if _is_bank(reference):
                bank = load_or_build_bank(reference, embedder, k=run_cfg.k, seed=run_cfg.seed)
            elif run.done("centroids", key_bank):
                bank = CentroidBank.load(run.artifact("centroids"))
            else:
                bank = load_or_build_bank(reference, embedder, k=run_cfg.k, seed=run_cfg.seed)
                bank.save(run.artifact("centroids"))
                run.mark("centroids", key_bank, digest=bank.digest)

        ids = table["tile_id"].to_numpy()[cand].astype(str)
        if run.done("embed", key_embed) and run.done("select", key_select):
            counts["embedded"] = 0
            catalog = read_catalog(run.artifact("select"))
            counts["selected"] = int(catalog["kept"].sum())
            log.info("run: unchanged, nothing to do")
            _stac_stage(run, catalog, key_stac, run_cfg)
            return catalog, counts
        z, counts["embedded"] = _embed_stage(run, table, cand, run_cfg, tile_cfg.nodata, workers, progress)
        run.mark("embed", key_embed, rows=len(cand))

        chosen, cluster, similarity = _select(run_cfg.method, z, ids, table, cand, budget, bank, run_cfg)

    n = len(table)
    col_cluster = np.full(n, None, dtype=object)
    col_sim = np.full(n, None, dtype=object)
    col_rank = np.full(n, None, dtype=object)
    if cluster is not None and len(cand):
        col_cluster[cand] = cluster.astype(np.int64)
        col_sim[cand] = similarity.astype(np.float64)
        col_rank[cand] = rank_in_cluster(cluster, similarity, ids)
    table["cluster"] = pd.array(col_cluster, dtype="Int64")
    table["similarity"] = pd.array(col_sim, dtype="Float64")
    table["rank"] = pd.array(col_rank, dtype="Int64")
    dropped = cand[~chosen]
    table.loc[dropped, "kept"] = False
    table.loc[dropped, "pruned_by"] = "selection"
    counts["selected"] = int(chosen.sum())
    catalog = to_geodataframe(table)
    write_catalog(catalog, run.artifact("select"), config=config, bank_digest=bank.digest if bank else None)
    run.mark("select", key_select, kept=counts["selected"])
    catalog = read_catalog(run.artifact("select"))
    _stac_stage(run, catalog, key_stac, run_cfg)
    log.info("run: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
    return catalog, counts


def _stac_stage(run: RunDir, catalog, key: str, run_cfg: RunConfig) -> None:
    from .stac import write_stac

    if not (run.done("stac", key) and (run.path / "stac" / "catalog.json").exists()):
        write_stac(catalog, run.path, export_tiles=run_cfg.export_tiles)
        run.mark("stac", key, items=int(catalog["kept"].sum()))
