"""Scale benchmark: assignment + selection + catalog writing for 1,000,000 tiles (one table).

Precomputed random unit embeddings (d = 512, a memory-mapped .npy file the tasks read row by row),
200 centroids, B = 15 %: the tasks of the real pipeline (``assign_in_tasks``, ``select_in_tasks``,
``write_catalog``) on the threaded scheduler and on a 2-process dask.distributed LocalCluster, each
in a fresh process so that its peak memory (the largest process: the driver or a worker) is its
own. Targets: ≤ 60 s end to end, ≤ 3 GB peak, distributed within 1.5x of threaded; the 10.5 M
projection scales the time linearly.

Usage: python benchmarks/scale.py [--tiles 1000000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import print_table

PAPER_TILES = 10_500_000


def make_inputs(work: Path, n: int, d: int = 512) -> None:
    rng = np.random.default_rng(0)
    z = np.lib.format.open_memmap(work / "emb.npy", mode="w+", dtype=np.float32, shape=(n, d))
    for s in range(0, n, 100_000):
        block = rng.standard_normal((min(100_000, n - s), d), dtype=np.float32)
        z[s : s + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    z.flush()
    c = rng.standard_normal((200, d), dtype=np.float32)
    np.save(work / "centroids.npy", c / np.linalg.norm(c, axis=1, keepdims=True))


def tile_table(n: int):
    """1 M synthetic 256-m tiles on a grid of UTM-like footprints (boxes in lon/lat)."""
    import geopandas as gpd
    import pandas as pd
    import shapely

    side = int(np.ceil(np.sqrt(n)))
    i = np.arange(n)
    x0, y0 = -100.0 + (i % side) * 0.0033, 40.0 + (i // side) * 0.0023
    geom = shapely.box(x0, y0, x0 + 0.0033, y0 + 0.0023)
    return gpd.GeoDataFrame(
        {
            "tile_id": [f"scene_{k // 10_000:04d}/{(k % 10_000) // 100 * 256}_{k % 100 * 256}" for k in range(n)],
            "scene_id": [f"scene_{k // 10_000:04d}" for k in range(n)],
            "row_off": (i % 10_000) // 100 * 256,
            "col_off": i % 100 * 256,
            "entropy": np.random.default_rng(1).uniform(4, 7, n),
            "kept": True,
            "pruned_by": pd.array([None] * n, dtype="string"),
        },
        geometry=geom,
        crs="EPSG:4326",
    )


def worker(work: Path, scheduler: str) -> dict:
    """One measured configuration (runs in its own process)."""
    import pandas as pd

    from rsgeo_prune.catalog import write_catalog
    from rsgeo_prune.pipeline import assign_in_tasks, dask_scheduler, select_in_tasks
    from rsgeo_prune.select import tie_ranks

    centroids = np.load(work / "centroids.npy")
    n = len(np.load(work / "emb.npy", mmap_mode="r"))
    table = tile_table(n)
    cluster_client = None
    if scheduler == "cluster":
        from distributed import LocalCluster

        cluster_client = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        scheduler = cluster_client.scheduler_address
    t0 = time.perf_counter()
    with dask_scheduler(scheduler):
        cluster, sim = assign_in_tasks(str(work / "emb.npy"), centroids, 65_536, n=n)
        t1 = time.perf_counter()
        chosen = select_in_tasks(cluster, sim, tie_ranks(np.arange(n)), int(0.15 * n), 200, 65_536)
        t2 = time.perf_counter()
        peak_workers = 0
        if cluster_client is not None:
            from distributed import Client

            with Client(scheduler) as client:
                peaks = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
                peak_workers = max(peaks.values()) * 1024
    table["cluster"] = pd.array(cluster.astype(np.int64), dtype="Int64")
    table["similarity"] = pd.array(sim.astype(np.float64), dtype="Float64")
    table.loc[~chosen, "kept"] = False
    table.loc[~chosen, "pruned_by"] = "selection"
    out = work / f"catalog-{'cluster' if cluster_client else 'threads'}.parquet"
    write_catalog(table, out, config={"benchmark": "scale"}, bank_digest=None)
    t3 = time.perf_counter()
    if cluster_client is not None:
        cluster_client.close()
    peak_driver = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "assign": t1 - t0,
        "select": t2 - t1,
        "catalog": t3 - t2,
        "total": t3 - t0,
        "kept": int(chosen.sum()),
        "peak": max(peak_driver, peak_workers),
        "sha": hashlib.sha256(out.read_bytes()).hexdigest(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", type=int, default=1_000_000)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="rsgeo-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    if args._worker:
        print(json.dumps(worker(work, args._worker)))
        return
    if not (work / "emb.npy").exists() or len(np.load(work / "emb.npy", mmap_mode="r")) != args.tiles:
        print(f"writing {args.tiles:,} random unit embeddings (d=512) to {work} ...", flush=True)
        make_inputs(work, args.tiles)
    res = {}
    for name in ("threads", "cluster"):
        proc = subprocess.run(
            [sys.executable, __file__, "--workdir", str(work), "--_worker", name],
            capture_output=True,
            text=True,
            check=True,
        )
        res[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    th, cl = res["threads"], res["cluster"]
    rows = []
    for name, r in (("threaded scheduler", th), ("LocalCluster, 2 worker processes", cl)):
        rows.append(
            (
                f"{name}: assign / select / catalog",
                f"{r['total']:.1f} s",
                f"{r['assign']:.1f} / {r['select']:.1f} / {r['catalog']:.1f} s; peak {r['peak'] / 2**30:.2f} GB",
            )
        )
    rows.append(("distributed vs threaded", f"{cl['total'] / th['total']:.2f}x", "target <= 1.5x"))
    rows.append(("same catalog bytes on both", str(th["sha"] == cl["sha"]), th["sha"][:16]))
    rows.append(
        (
            f"projection to {PAPER_TILES:,} tiles (threaded)",
            f"{th['total'] * PAPER_TILES / args.tiles:.0f} s",
            "linear in N",
        )
    )
    print_table(rows)
    print(
        f"scale_1M_s={th['total']:.2f} peak_gb={th['peak'] / 2**30:.2f} "
        f"distributed_vs_threaded={cl['total'] / th['total']:.2f}"
    )


if __name__ == "__main__":
    main()
