"""The stages, run in order over all inputs.

Today: tiles → nodata fraction → urban fraction → pre-filters → Stage I entropy (``tiles_stage``),
and Stage I on an existing tile table (``entropy_stage``).
"""

from __future__ import annotations

import logging
import math
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
from .entropy import entropy_filter, entropy_from_histograms, image_histograms, scene_histograms
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
    nb = max(p.shape[1] for _, p in parts)
    hist = np.zeros((len(table), nb, 256), np.int64)
    for idx, p in parts:  # scenes with fewer bands: their gray still goes last
        hist[idx, : p.shape[1] - 1] = p[:, :-1]
        hist[idx, -1] = p[:, -1]
    set_entropy_columns(table, hist)
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
    """Yield ``(row positions, tiles (n, C, H, W) uint8)`` for the rows of a tile table, scene by scene.

    Raster tiles are read by window with rasterio; non-uint8 rasters are mapped to 256 levels by
    the scene's Stage I stretch; collection images are read whole. Tiles of one shape go together.
    """
    import rasterio
    from rasterio.windows import Window

    from .entropy import scene_percentiles, stretch_levels
    from .sources import decode_errors, read_image

    for href, idx in table.groupby("href", sort=False).indices.items():
        rows = table.iloc[idx]
        if rows["transform"].iloc[0] is None:
            for i, path in zip(idx, rows["href"]):
                img = read_image(path)
                if img.dtype != np.uint8:
                    img = stretch_levels(img, *_percentiles_of(img))
                yield np.array([i]), img[None]
            continue
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


def _percentiles_of(img):
    from .entropy import percentile_range

    return percentile_range(img, None)


def embed_table(table: pd.DataFrame, embedder, *, nodata: float | None = None, progress: bool = True) -> np.ndarray:
    """Embeddings ``(len(table), D)`` float32 of every row of a tile table."""
    out = np.zeros((len(table), embedder.dim), np.float32)
    with tqdm(total=len(table), desc="embedding", unit="tile", disable=None if progress else True) as bar:
        for pos, tiles in read_tile_pixels(table, nodata=nodata):
            out[pos] = embedder(tiles)
            bar.update(len(pos))
    return out


def load_or_build_bank(reference: Sequence[str | Path], embedder, *, k: int, seed: int):
    """A saved bank (one ``.npz``) or a new one built from ImageFolder reference sets."""
    from .centroids import CentroidBank, build_centroid_bank

    if len(reference) == 1 and str(reference[0]).endswith(".npz"):
        bank = CentroidBank.load(reference[0])
        if bank.embedder != embedder.spec:
            raise RSGeoPruneError(f"{reference[0]}: bank was made with embedder {bank.embedder!r}, not "
                                  f"{embedder.spec!r}; pass --embedder {bank.embedder} or rebuild the bank")
        return bank
    return build_centroid_bank(reference, embedder, k=k, seed=seed)


def run_pipeline(inputs: Sequence[str | Path], out_dir: str | Path, reference: Sequence[str | Path],
                 tile_cfg: TileConfig = TileConfig(), run_cfg: RunConfig = RunConfig(), *, progress: bool = True):
    """tiles → masks → entropy → embed → assign → select; writes ``out_dir/catalog.parquet``.

    Returns:
        ``(catalog GeoDataFrame, counts)`` where ``counts`` maps each stage to the tiles it kept.
    """
    from .atomic import check_writable
    from .catalog import write_geoparquet
    from .embed import load_embedder
    from .select import (assign, rank_in_cluster, select_cluster_nearest, select_full_kmeans, select_moderate,
                         select_quota, select_random, select_top_entropy, select_water_filling)

    out_dir = Path(out_dir)
    check_writable(out_dir / "catalog.parquet")
    if not reference and run_cfg.method in ("rs-prune", "water-filling", "moderate"):
        raise RSGeoPruneError(f"--method {run_cfg.method} needs --reference (ImageFolder sets or a bank .npz)")
    embedder = load_embedder(run_cfg.embedder, nir_view=run_cfg.nir_view)
    bank = load_or_build_bank(reference, embedder, k=run_cfg.k, seed=run_cfg.seed) if reference else None

    table = tiles_stage(inputs, tile_cfg, progress=progress)
    passed = ~table["pruned_by"].isin(["nodata", "mask"]).to_numpy()
    cand = np.flatnonzero(table["kept"].to_numpy(bool))
    budget = run_cfg.budget_count if run_cfg.budget_count is not None else int(math.floor(run_cfg.budget * passed.sum() + 0.5))
    counts = {"tiles": len(table), "after nodata/mask": int(passed.sum()), "after entropy": len(cand)}
    if budget > len(cand):
        log.warning("budget %d is more than the %d candidates: all are kept", budget, len(cand))

    ids = table["tile_id"].to_numpy()[cand]
    z = embed_table(table.iloc[cand], embedder, nodata=tile_cfg.nodata, progress=progress) if len(cand) else \
        np.zeros((0, embedder.dim), np.float32)
    cluster = similarity = None
    if bank is not None:
        cluster, similarity = assign(z, bank.centroids)
    method = run_cfg.method
    if method == "rs-prune":
        chosen = select_quota(cluster, similarity, ids, budget, bank.k)
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
    write_geoparquet(catalog, out_dir / "catalog.parquet")
    if bank is not None and not (len(reference) == 1 and str(reference[0]).endswith(".npz")):
        bank.save(out_dir / "bank.npz")
    log.info("run: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
    return catalog, counts
