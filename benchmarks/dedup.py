"""Copies inside the quota: planted copies with known answers, and the cost at 1 M candidates.

Part 1, planted copies (real NAIP, ../shared/data/naip, 64-px tiles, default embedder, AID reference
centroids, K = 30):

* A, copies without a georeference (only the pixels can tell): the 2018 year's tiles are the
  distinct tiles; two rasters 100 km away hold planted copies of 40 of them each: byte copies, and
  copies shifted by 1-4 px with Gaussian noise (sigma 1 level); a third holds harder copies (sigma 2).
  ``--dedup-cosine TAU`` at budget 1.0 (every tile examined): recall = 1 - (planted copies kept
  beside their original or another copy) / (planted copies); distinct tiles dropped = tiles of no
  planted group dropped as duplicates, plus groups left with no kept tile, over the distinct tiles.
* B, the same place in eight years: the eight NAIP years, a byte re-export of 2014 and a
  re-export of 2018 shifted by (3, 5) px and sigma 1 noise, georeferenced in place;
  ``--dedup-cosine TAU --max-per-place 1``. At budget 1.0: places kept more than once (recall of
  same-place copies) and places lost. At budget 0.05 (one tile per place allows at most 10 % of
  these tiles): the budget met exactly, no place twice, and identical catalog bytes in a fresh
  threaded run and under the process scheduler.
* the cosine of each kind of copy to its original, by noise and shift (where recall falls).

Part 2, timing: N = 1 M synthetic 512-d unit embeddings in 200 planted clusters (5 % of them near
copies of others), B = 15 %. The plain selection (canonical assignment to the 200 centroids + the
RS-Prune quota selection) and the selection without copies (``--dedup-cosine 0.97``) in the same
run; peak memory of numpy allocations (tracemalloc) of each, at two budgets (memory and time follow
the quota). Targets: recall >= 0.95, distinct tiles dropped <= 1 %, dedup <= 2x the selection.

Usage: python benchmarks/dedup.py [--n 1000000] [--tau 0.97] [--skip-planted] [--skip-timing]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import print_table  # noqa: E402

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SIZE = 64  # tile edge (px) of the planted-copy corpus
PLANTED = 40  # copies per planted raster
ELSEWHERE = 100_000.0  # metres east of the source: a planted raster without the original's georeference


# ------------------------------------------------------------------------------------ planted copies
def _write(path: Path, profile: dict, data: np.ndarray, dx: float = 0.0, dy_px: int = 0, dx_px: int = 0) -> Path:
    import rasterio

    t = profile["transform"]
    out = dict(
        profile,
        height=data.shape[1],
        width=data.shape[2],
        transform=rasterio.Affine(t.a, t.b, t.c + dx + dx_px * t.a, t.d, t.e, t.f + dy_px * t.e),
    )
    with rasterio.open(path, "w", **out) as dst:
        dst.write(data)
    return path


def _shifted_noisy(a: np.ndarray, r: int, c: int, shift: int, sigma: float, rng) -> np.ndarray:
    """The ``SIZE`` window at (r, c) moved by 1..``shift`` px (inward at the edges) plus Gaussian noise."""
    dy, dx = rng.integers(1, shift + 1, 2) * rng.choice([-1, 1], 2)
    dy = dy if 0 <= r + dy <= a.shape[1] - SIZE else -dy
    dx = dx if 0 <= c + dx <= a.shape[2] - SIZE else -dx
    w = a[:, r + dy : r + dy + SIZE, c + dx : c + dx + SIZE].astype(np.float32)
    return (
        np.clip(np.round(w + rng.normal(0, sigma, w.shape)), 0, 255).astype(np.uint8) if sigma else w.astype(np.uint8)
    )


def plant_elsewhere(work: Path, year: Path, rng) -> tuple[list[Path], dict[str, str], dict[str, str]]:
    """Rasters of planted copies 100 km from ``year``: ``(paths, copy tile_id → original tile_id,
    copy tile_id → kind)``."""
    import rasterio

    with rasterio.open(year) as src:
        a, profile = src.read(), src.profile
    grid = [(r, c) for r in range(0, a.shape[1] - SIZE + 1, SIZE) for c in range(0, a.shape[2] - SIZE + 1, SIZE)]
    paths, original, kind = [], {}, {}
    for n, (name, make) in enumerate(
        [
            ("bytes", lambda r, c: a[:, r : r + SIZE, c : c + SIZE]),
            ("noise1", lambda r, c: _shifted_noisy(a, r, c, 4, 1.0, rng)),
            ("noise2", lambda r, c: _shifted_noisy(a, r, c, 4, 2.0, rng)),
        ]
    ):
        picks = rng.choice(len(grid), PLANTED, replace=False)
        out = np.zeros((a.shape[0], 5 * SIZE, 8 * SIZE), np.uint8)
        path = work / f"planted_{name}.tif"
        for k, p in enumerate(picks):
            r, c = grid[p]
            i, j = divmod(k, 8)
            out[:, i * SIZE : (i + 1) * SIZE, j * SIZE : (j + 1) * SIZE] = make(r, c)
            copy_id = f"{path.stem}/{i * SIZE}_{j * SIZE}"
            original[copy_id], kind[copy_id] = f"{year.stem}/{r}_{c}", name
        paths.append(_write(path, profile, out, dx=ELSEWHERE * (n + 1)))
    return paths, original, kind


def reexport_in_place(work: Path, years: list[Path], rng) -> list[Path]:
    """A byte re-export of the 2014 year, and the 2018 year shifted by (3, 5) px with sigma 1 noise,
    georeferenced so that the ground stays where it was (the tiles are the same places)."""
    import rasterio

    y2014 = next(y for y in years if "2014" in y.stem)
    y2018 = next(y for y in years if "2018" in y.stem)
    same = work / "reexport_of_2014.tif"
    shutil.copy(y2014, same)
    with rasterio.open(y2018) as src:
        a, profile = src.read(), src.profile
    moved = a[:, 3:, 5:].astype(np.float32) + rng.normal(0, 1.0, a[:, 3:, 5:].shape)
    moved = np.clip(np.round(moved), 0, 255).astype(np.uint8)
    return [same, _write(work / "reexport_of_2018_shifted.tif", profile, moved, dy_px=3, dx_px=5)]


def run(inputs, out: Path, ref: Path, budget: float, tau: float, max_per_place=None, scheduler="threads"):
    from rsgeo_prune.config import RunConfig, TileConfig
    from rsgeo_prune.pipeline import run_pipeline

    t0 = time.perf_counter()
    cat, counts = run_pipeline(
        [str(p) for p in inputs],
        out,
        [str(ref)],
        TileConfig(tile_size=SIZE),
        RunConfig(k=30, budget=budget, dedup_cosine=tau, max_per_place=max_per_place),
        scheduler=scheduler,
        progress=False,
    )
    return cat, counts, time.perf_counter() - t0


def excess_kept(groups: dict[str, list[str]], kept: set[str]) -> tuple[int, int, int]:
    """``(members kept beyond one per group, copies planted, groups left with none kept)``."""
    extra = sum(max(0, sum(m in kept for m in g) - 1) for g in groups.values())
    return extra, sum(len(g) - 1 for g in groups.values()), sum(not any(m in kept for m in g) for g in groups.values())


def planted_copies(tau: float, rows: list, figures: dict) -> None:
    from rsgeo_prune.places import same_place_partners

    years = sorted((SHARED / "naip").glob("m_*.tif"))
    ref = SHARED / "reference" / "aid_150px"
    if not years or not ref.exists():
        rows.append(("planted copies", "skipped", f"{SHARED} not present"))
        return
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="rsgeo-dedup-"))
    try:
        y2018 = next(y for y in years if "2018" in y.stem)
        planted, original, kind = plant_elsewhere(work, y2018, rng)
        # A: copies without a georeference, one year
        cat, counts, secs = run([y2018] + planted, work / "A", ref, 1.0, tau)
        kept = set(cat.loc[cat["kept"].astype(bool), "tile_id"])
        base = set(cat.loc[cat["href"] == str(y2018), "tile_id"])
        dropped = dict(zip(cat["tile_id"], (cat["pruned_by"] == "duplicate").fillna(False)))
        for which in (("bytes", "noise1"), ("bytes",), ("noise1",), ("noise2",)):
            groups: dict[str, list[str]] = {}
            for copy, o in original.items():
                if kind[copy] in which:
                    groups.setdefault(o, [o]).append(copy)
            extra, planted_n, lost = excess_kept(groups, kept)
            figures[f"recall_{'+'.join(which)}"] = 1 - extra / planted_n
            rows.append(
                (
                    f"A recall, {' + '.join(which)} copies (tau {tau})",
                    f"{1 - extra / planted_n:.3f}",
                    f"{extra} of {planted_n} planted copies kept beside their original"
                    + (" (target >= 0.95)" if which == ("bytes", "noise1") else ""),
                )
            )
        in_group = set(original) | set(original.values())
        lone = [t for t in base if t not in in_group]
        false = (
            sum(dropped[t] for t in lone)
            + excess_kept({o: [o] + [c for c in original if original[c] == o] for o in set(original.values())}, kept)[2]
        )
        figures["false_drop_A"] = false / len(base)
        rows.append(
            (
                "A distinct tiles dropped as duplicates",
                f"{false / len(base):.2%}",
                f"{false} of {len(base)} (target <= 1 %); exact {counts['exact copies']}, near "
                f"{counts['near copies']}; {secs:.1f} s",
            )
        )
        # B: the same place in eight years, plus two re-exports in place
        inputs = years + reexport_in_place(work, years, rng)
        cat, counts, secs = run(inputs, work / "B", ref, 1.0, tau, max_per_place=1)
        cat = cat.assign(place=cat["row_off"].astype(str) + "_" + cat["col_off"].astype(str))
        groups = cat.groupby("place")["tile_id"].apply(list).to_dict()
        extra, planted_n, lost = excess_kept(groups, set(cat.loc[cat["kept"].astype(bool), "tile_id"]))
        figures["recall_B"], figures["lost_B"] = 1 - extra / planted_n, lost / len(groups)
        rows.append(
            (
                "B recall of same-place tiles (8 years + 2 re-exports, budget 1.0)",
                f"{1 - extra / planted_n:.3f}",
                f"{extra} of {planted_n} kept beside another tile of their place; "
                f"{len(cat)} tiles, {len(groups)} places; {secs:.1f} s",
            )
        )
        rows.append(
            (
                "B places lost (distinct tiles dropped)",
                f"{lost / len(groups):.2%}",
                f"{lost} of {len(groups)}; exact {counts['exact copies']}, near {counts['near copies']}, "
                f"same place {counts['same place copies']}",
            )
        )
        # one tile per place allows at most 154 of the 1,540 tiles (10 %): a 5 % budget
        cat, counts, secs = run(inputs, work / "B5", ref, 0.05, tau, max_per_place=1)
        kept = cat[cat["kept"].astype(bool)].reset_index(drop=True)
        budget = int(np.floor(0.05 * len(cat) + 0.5))
        twice = same_place_partners(kept).pairs
        run(inputs, work / "B5-again", ref, 0.05, tau, max_per_place=1)
        p_secs = run(inputs, work / "B5-processes", ref, 0.05, tau, max_per_place=1, scheduler="processes")[2]
        digests = {
            hashlib.sha256((work / d / "catalog.parquet").read_bytes()).hexdigest()
            for d in ("B5", "B5-again", "B5-processes")
        }
        figures.update(budget_met=len(kept) == budget, same_place_pairs_kept=twice, identical=len(digests) == 1)
        rows.append(
            (
                "B at budget 0.05: kept / budget, same-place pairs kept",
                f"{len(kept)} / {budget}, {twice}",
                f"catalog bytes identical in a fresh run and under processes: {len(digests) == 1} "
                f"({secs:.1f} s threads, {p_secs:.1f} s processes)",
            )
        )
        cosine_by_kind(y2018, rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cosine_by_kind(year: Path, rows: list) -> None:
    """How close each kind of copy stays to its original in the default embedder's space."""
    import rasterio

    from rsgeo_prune.embed import load_embedder

    embed = load_embedder("default", threads=1)
    with rasterio.open(year) as src:
        a = src.read()
    rng = np.random.default_rng(1)
    offs = [(r, c) for r in range(0, a.shape[1] - SIZE + 1, SIZE) for c in range(0, a.shape[2] - SIZE + 1, SIZE)]
    z = embed(np.stack([a[:, r : r + SIZE, c : c + SIZE] for r, c in offs]))
    near = z @ z.T
    np.fill_diagonal(near, -1)
    rows.append(
        (
            "distinct tiles: cosine to the nearest other tile, median / 99 % / max",
            " / ".join(f"{v:.3f}" for v in np.quantile(near.max(1), [0.5, 0.99, 1.0])),
            f"{len(offs)} tiles, 2018",
        )
    )
    for shift, sigma in ((4, 0), (2, 1), (4, 1), (8, 1), (4, 2), (4, 3)):
        zc = embed(np.stack([_shifted_noisy(a, r, c, shift, sigma, rng) for r, c in offs]))
        cos = (zc * z).sum(1)
        rows.append(
            (
                f"copy shifted 1-{shift} px, noise sigma {sigma}: cosine 5 % quantile, share >= 0.97",
                f"{np.quantile(cos, 0.05):.3f}, {(cos >= 0.97).mean():.2f}",
                "",
            )
        )


# ------------------------------------------------------------------------------------------- timing
def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, d: int, k: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors around ``k`` centres (cosine to the centre about 0.7), 5 % of them near copies
    (cosine about 0.99) of others; and the centres."""
    centres = unit(rng.standard_normal((k, d), dtype=np.float32))
    z = np.empty((n, d), np.float32)
    for s in range(0, n, 65_536):
        e = min(n, s + 65_536)
        z[s:e] = centres[rng.integers(0, k, e - s)] + 0.04 * rng.standard_normal((e - s, d), dtype=np.float32)
    copies = rng.choice(n, n // 20, replace=False)
    z[copies] = z[rng.integers(0, n, len(copies))] + 0.004 * rng.standard_normal((len(copies), d), dtype=np.float32)
    for s in range(0, n, 65_536):
        z[s : s + 65_536] = unit(z[s : s + 65_536])
    return z, centres


def traced(fn):
    """``(result, seconds, peak bytes of numpy allocations)``."""
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    secs = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, secs, peak


def timing(n: int, d: int, k: int, tau: float, rows: list, figures: dict) -> None:
    from rsgeo_prune.kmeans import assign
    from rsgeo_prune.select import select_quota, select_quota_distinct

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    z, centres = clustered(n, d, k, rng)
    rows.append(
        (
            f"synthetic embeddings {n:,} x {d}, {k} clusters",
            f"{time.perf_counter() - t0:.1f} s",
            f"{z.nbytes / 2**30:.2f} GB (not counted below)",
        )
    )
    ids = np.arange(n, dtype=np.int64)
    (cluster, sim), t_assign, m_assign = traced(lambda: assign(z, centres))
    for budget_frac in (0.15, 0.075):
        budget = int(budget_frac * n)
        chosen, t_quota, m_quota = traced(lambda: select_quota(cluster, sim, ids, budget, k))
        got, t_dedup, m_dedup = traced(lambda: select_quota_distinct(cluster, sim, ids, budget, k, z, cosine=tau))
        assert chosen.sum() == budget == got.chosen.sum()
        plain = t_assign + t_quota
        tag = f"B = {budget_frac:.1%} ({budget:,}, quota {budget // k:,})"
        rows += [
            (
                f"plain selection, {tag}: assignment + quota",
                f"{plain:.2f} s",
                f"{t_assign:.2f} + {t_quota:.2f} s; peak numpy memory {max(m_assign, m_quota) / 2**20:.0f} MB",
            ),
            (
                f"selection without copies (tau {tau}), {tag}",
                f"{t_dedup:.2f} s",
                f"{t_dedup / plain:.2f}x the plain selection (target <= 2x), {t_dedup / t_quota:.1f}x the quota "
                f"step alone; peak numpy memory {m_dedup / 2**20:.0f} MB; {got.counts()['near']:,} near copies "
                "skipped",
            ),
        ]
        figures[f"ratio_{budget_frac}"] = t_dedup / plain
        figures[f"ratio_quota_{budget_frac}"] = t_dedup / t_quota
        figures[f"dedup_s_{budget_frac}"], figures[f"dedup_mb_{budget_frac}"] = t_dedup, m_dedup / 2**20
    sizes = np.bincount(cluster, minlength=k).astype(np.float64)
    rows.append(
        (
            "for scale: every cluster's full n x n cosine matrix (float32)",
            f"{(sizes**2).sum() * 4 / 2**30:.1f} GB",
            "what a dedup that follows the cluster size squared would hold",
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--tau", type=float, default=0.97)
    ap.add_argument("--skip-planted", action="store_true")
    ap.add_argument("--skip-timing", action="store_true")
    args = ap.parse_args()
    rows, figures = [], {}
    if not args.skip_planted:
        planted_copies(args.tau, rows, figures)
    if not args.skip_timing:
        timing(args.n, args.d, args.k, args.tau, rows, figures)
    print_table(rows)
    print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
