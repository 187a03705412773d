"""The orchestrator: tiles → masks → entropy → embed → assign → select (skipping copies when asked)
→ catalog → STAC, in a resumable run directory.

:func:`run_pipeline` is an outline of named steps. Each step reads or writes one artifact of the
run directory (:mod:`rsgeo_prune.rundir`) and is skipped when its key is unchanged. Everything
the run needs is checked by :func:`_plan_run` before the first stage starts.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .atomic import check_writable
from .catalog import catalog_metadata, read_catalog, to_geodataframe, write_catalog, write_geoparquet
from .centroids import CentroidBank, build_centroid_bank, check_reference
from .config import RunConfig, TileConfig
from .dedup import KIND_NAMES
from .embed_cache import embed_candidates
from .errors import InvalidOption, RSGeoPruneError
from .places import acquisition_dates, same_place_partners
from .rundir import RunDir, digest, embedder_identity, input_identities, package_version
from .scheduler import assign_in_tasks, cached_embedder, check_scheduler, dask_scheduler
from .select import METHODS, SelectionInputs, rank_in_cluster, run_selection
from .sources import RasterScene, resolve_inputs
from .stac import write_stac
from .status import DUPLICATE, PRE_FILTERS, SELECTION
from .tile_table import entropy_stage, tiles_stage
from .tiling import TILE_TABLE_VERSION

log = logging.getLogger(__name__)


@dataclass
class RunPlan:
    """A validated run: resolved inputs, the loaded bank (if one was given), and the stage keys."""

    run: RunDir
    inputs: list
    sources: list
    reference: list
    tile_cfg: TileConfig
    run_cfg: RunConfig
    config: dict
    embedder_id: str
    keys: dict
    bank: CentroidBank | None = None


def run_pipeline(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    reference: Sequence[str | Path],
    tile_cfg: TileConfig = TileConfig(),
    run_cfg: RunConfig = RunConfig(),
    *,
    scheduler: str = "threads",
    progress: bool = True,
):
    """tiles → masks → entropy → embed → assign → select → catalog, in a resumable run directory.

    ``out_dir`` gets ``tiles.parquet``, ``embeddings.parquet``, ``bank.npz`` (when built here),
    ``catalog.parquet``, ``items.parquet``, ``stac/`` and ``run.json``. A stage whose inputs and
    config are unchanged is skipped; embeddings already made for the same tile of the same file are
    reused (after a crash, or when a scene is added).

    Returns:
        ``(catalog GeoDataFrame, counts)``; ``counts`` gives the tiles left after each stage and
        how many tiles were embedded in this call.
    """
    plan = _plan_run(inputs, out_dir, reference, tile_cfg, run_cfg, scheduler)
    with dask_scheduler(scheduler) as workers:
        table = _tiles_step(plan, progress)
        cand, budget, counts = _candidates(table, plan.run_cfg)
        bank = _bank_step(plan)
        if _finished(plan):
            catalog = read_catalog(plan.run.artifact("select"))
            counts.update(embedded=0, selected=int(catalog["kept"].sum()))
            log.info("run: unchanged, nothing to do")
        else:
            z, digests, counts["embedded"] = _embed_step(plan, table, cand, workers, progress)
            selection = _select_step(plan, z, digests, table, cand, budget, bank)
            catalog = _catalog_step(plan, table, cand, selection, bank)
            counts["selected"] = int(selection.chosen.sum())
        counts.update(_copy_counts(plan, catalog))
    _stac_step(plan, catalog)
    log.info("run: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
    return catalog, counts


# ---------------------------------------------------------------------------------------------
# Validation: every option, input and reference, before any stage runs
# ---------------------------------------------------------------------------------------------


def _plan_run(inputs, out_dir, reference, tile_cfg: TileConfig, run_cfg: RunConfig, scheduler: str) -> RunPlan:
    out_dir = Path(out_dir)
    check_writable(out_dir / "run.json")
    check_scheduler(scheduler)
    reference = [str(r) for r in reference]
    if METHODS[run_cfg.method].needs_reference and not reference:
        raise RSGeoPruneError(
            f"selection method {run_cfg.method} needs reference centroids: give reference "
            "sets (ImageFolder folders or catalogs) or a bank .npz"
        )
    if METHODS[run_cfg.method].needs_entropy and not tile_cfg.wants_entropy:
        # without a Stage I option no entropy is computed and the ranking would be the tile-id tie-break
        raise InvalidOption(
            "method",
            run_cfg.method,
            "ranks by Stage I entropy: give an entropy threshold or keep "
            "fraction too (entropy_min 0 computes it and prunes nothing)",
        )
    embedder = cached_embedder(run_cfg.embedder, run_cfg.nir_view)  # a bad spec or weights file fails now
    bank = None
    if reference:
        bank = check_reference(reference, embedder.spec, k=run_cfg.k_or_default)
        if bank is not None and run_cfg.k is not None and run_cfg.k != bank.k:
            raise InvalidOption(
                "k",
                run_cfg.k,
                f"the bank {reference[0]} has {bank.k} centroids; leave k out or rebuild the bank with that k",
            )
    run_cfg = dataclasses.replace(run_cfg, k=bank.k if bank is not None else run_cfg.k_or_default)
    # bad inputs fail now, and are resolved once
    sources = resolve_inputs(inputs, nodata=tile_cfg.nodata, datetime=tile_cfg.datetime)
    embedder_id = embedder_identity(run_cfg.embedder, run_cfg.nir_view)
    run = RunDir(out_dir)
    config = {
        "inputs": [str(p) for p in inputs],
        "reference": reference,
        "tiles": tile_cfg.as_dict(),
        "run": run_cfg.as_dict(),
    }
    run.header(config)
    plan = RunPlan(run, list(inputs), sources, reference, tile_cfg, run_cfg, config, embedder_id, {}, bank)
    plan.keys = _stage_keys(plan)
    return plan


def _stage_keys(plan: RunPlan) -> dict[str, str]:
    """Per stage, a digest of everything its artifact depends on."""
    tile_cfg, run_cfg = plan.tile_cfg, plan.run_cfg
    # the tiles depend on every raster or image folder the inputs (globs, STAC Items) resolve to
    resolved = [s.href if isinstance(s, RasterScene) else s.root for s in plan.sources]
    ids_in = input_identities(resolved + ([tile_cfg.mask] if tile_cfg.mask else []))
    # acquisition times too: a STAC Item input can change its time without its raster changing
    times = [s.acquired if isinstance(s, RasterScene) else None for s in plan.sources]
    tiles = digest([ids_in, tile_cfg.as_dict(), TILE_TABLE_VERSION, package_version(), times])
    bank = digest([input_identities(plan.reference), plan.embedder_id, run_cfg.k, run_cfg.seed])
    embed = digest([tiles, plan.embedder_id])
    selection = {k: v for k, v in run_cfg.as_dict().items() if k != "export_tiles"}
    select = digest([embed, bank, selection])
    return {
        "tiles": tiles,
        "centroids": bank,
        "embed": embed,
        "select": select,
        "stac": digest([select, run_cfg.export_tiles]),
    }


# ---------------------------------------------------------------------------------------------
# The steps
# ---------------------------------------------------------------------------------------------


def _tiles_step(plan: RunPlan, progress: bool) -> pd.DataFrame:
    """Stage 0 and Stage I: the tile table (``tiles.parquet``)."""
    run, key = plan.run, plan.keys["tiles"]
    if run.done("tiles", key):
        log.info("tiles: unchanged, read from %s", run.artifact("tiles"))
        return pd.DataFrame(read_catalog(run.artifact("tiles")))
    run.forget("tiles")
    table = pd.DataFrame(tiles_stage(plan.inputs, plan.tile_cfg, progress=progress, sources=plan.sources))
    write_geoparquet(table, run.artifact("tiles"))
    run.mark("tiles", key, rows=len(table))
    return table


def _candidates(table: pd.DataFrame, run_cfg: RunConfig) -> tuple[np.ndarray, int, dict]:
    """Positions of the tiles Stage II chooses from, the budget B, and the counts so far."""
    passed = ~table["pruned_by"].isin(list(PRE_FILTERS)).to_numpy(bool)
    cand = np.flatnonzero(table["kept"].to_numpy(bool))
    budget = (
        run_cfg.budget_count
        if run_cfg.budget_count is not None
        else int(math.floor(run_cfg.budget * passed.sum() + 0.5))
    )
    if budget > len(cand):
        log.warning("budget %d is more than the %d candidates: all are kept", budget, len(cand))
    return cand, budget, {"tiles": len(table), "after nodata/mask": int(passed.sum()), "after entropy": len(cand)}


def _bank_step(plan: RunPlan) -> CentroidBank | None:
    """The reference centroids: the given bank, the one built by an earlier run, or a new one."""
    run, key, cfg = plan.run, plan.keys["centroids"], plan.run_cfg
    if not plan.reference or plan.bank is not None:
        return plan.bank
    if run.done("centroids", key):
        return CentroidBank.load(run.artifact("centroids"))
    run.forget("centroids")
    bank = build_centroid_bank(plan.reference, cached_embedder(cfg.embedder, cfg.nir_view), k=cfg.k, seed=cfg.seed)
    bank.save(run.artifact("centroids"))
    run.mark("centroids", key, digest=bank.digest)
    return bank


def _finished(plan: RunPlan) -> bool:
    return plan.run.done("embed", plan.keys["embed"]) and plan.run.done("select", plan.keys["select"])


def _embed_step(plan: RunPlan, table: pd.DataFrame, cand: np.ndarray, workers: int, progress: bool):
    """Embeddings of the candidates (``embeddings.parquet``), reusing earlier ones, and their pixel
    digests when exact copies are to be found (else None)."""
    cfg = plan.run_cfg
    plan.run.forget("select")
    plan.run.forget("embed")
    z, embedded, digests = embed_candidates(
        plan.run,
        table.iloc[cand],
        embedder_spec=cfg.embedder,
        nir_view=cfg.nir_view,
        embedder_id=plan.embedder_id,
        dim=cached_embedder(cfg.embedder, cfg.nir_view).dim,
        nodata=plan.tile_cfg.nodata,
        chunk=cfg.chunk,
        workers=workers,
        progress=progress,
        digests=cfg.effective_dedup_cosine is not None,
    )
    plan.run.mark("embed", plan.keys["embed"], rows=len(cand))
    return z, digests, embedded


def _select_step(plan: RunPlan, z, digests, table: pd.DataFrame, cand: np.ndarray, budget: int, bank):
    """Assignment to the bank's centroids (when there is one) and the chosen method; with copy
    removal also the candidates' same-place partners and acquisition dates."""
    cfg = plan.run_cfg
    cluster = similarity = None
    if bank is not None:
        cluster, similarity = assign_in_tasks(z, bank.centroids, cfg.chunk)
    entropy = (
        table["entropy"].to_numpy(np.float64, na_value=np.nan)[cand]
        if "entropy" in table
        else np.full(len(cand), np.nan)
    )
    copies = {}
    if cfg.removes_copies:
        rows = table.iloc[cand]
        per_place = cfg.effective_max_per_place
        copies = dict(
            dedup_cosine=cfg.effective_dedup_cosine,
            max_per_place=per_place,
            digests=digests,
            places=same_place_partners(rows, cfg.place_iou) if per_place is not None else None,
            acquired=acquisition_dates(rows),
        )
    inputs = SelectionInputs(
        embeddings=z,
        tile_id=table["tile_id"].to_numpy()[cand].astype(str),
        entropy=entropy,
        budget=budget,
        seed=cfg.seed,
        k=bank.k if bank is not None else cfg.k,
        chunk=cfg.chunk,
        cluster=cluster,
        similarity=similarity,
        **copies,
    )
    return run_selection(cfg.method, inputs)


def _catalog_step(plan: RunPlan, table: pd.DataFrame, cand: np.ndarray, selection, bank):
    """Stage II columns on every tile, written as ``catalog.parquet`` (GeoParquet 1.1)."""
    n = len(table)
    cols = {name: np.full(n, None, dtype=object) for name in ("cluster", "similarity", "rank")}
    if selection.cluster is not None and len(cand):
        ids = table["tile_id"].to_numpy()[cand].astype(str)
        cols["cluster"][cand] = selection.cluster.astype(np.int64)
        cols["similarity"][cand] = selection.similarity.astype(np.float64)
        cols["rank"][cand] = rank_in_cluster(selection.cluster, selection.similarity, ids)
    table = table.copy()
    table["cluster"] = pd.array(cols["cluster"], dtype="Int64")
    table["similarity"] = pd.array(cols["similarity"], dtype="Float64")
    table["rank"] = pd.array(cols["rank"], dtype="Int64")
    dropped = cand[~selection.chosen]
    table.loc[dropped, "kept"] = False
    table.loc[dropped, "pruned_by"] = SELECTION
    copies = None
    if selection.copy_of is not None:
        ids = table["tile_id"].to_numpy().astype(str)
        is_copy = selection.copy_kind > 0
        duplicate_of = np.full(n, None, dtype=object)
        duplicate_of[cand[is_copy]] = ids[cand[selection.copy_of[is_copy]]]
        table.loc[cand[is_copy], "pruned_by"] = DUPLICATE
        table["duplicate_of"] = pd.array(duplicate_of, dtype="string")
        copies = {name: int((selection.copy_kind == kind).sum()) for kind, name in KIND_NAMES.items()}
    write_catalog(
        to_geodataframe(table),
        plan.run.artifact("select"),
        config=plan.config,
        bank_digest=bank.digest if bank is not None else None,
        copies=copies,
    )
    plan.run.mark("select", plan.keys["select"], kept=int(selection.chosen.sum()))
    return read_catalog(plan.run.artifact("select"))


def _copy_counts(plan: RunPlan, catalog) -> dict[str, int]:
    """``{"exact copies": a, "near copies": b, "same place copies": c}`` when the run removes copies."""
    if not plan.run_cfg.removes_copies:
        return {}
    found = catalog_metadata(plan.run.artifact("select")).get("copies", {})
    return {f"{name} copies": int(found.get(name, 0)) for name in KIND_NAMES.values()}


def _stac_step(plan: RunPlan, catalog) -> None:
    """The kept tiles as a static STAC catalog and stac-geoparquet (``items.parquet``)."""
    run, key = plan.run, plan.keys["stac"]
    if run.done("stac", key) and (run.path / "stac" / "catalog.json").exists():
        return
    run.forget("stac")
    write_stac(catalog, run.path, export_tiles=plan.run_cfg.export_tiles)
    run.mark("stac", key, items=int(catalog["kept"].sum()))


__all__ = ["RunConfig", "RunPlan", "TileConfig", "entropy_stage", "run_pipeline", "tiles_stage"]
