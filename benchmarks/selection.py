"""Stage II benchmark: prints one table (no assertions; targets in the notes).

* spherical k-means, 55,605 x 1024 unit vectors, K = 200 (the paper's Table 4 case: 115 s there).
  Target ≤ 5 s. Random vectors are the worst case (no structure: every round runs).
* assignment of N x 1024 embeddings to 200 centroids (blocks of 8,192; canonical similarities,
  see rsgeo_prune/exact.py) vs a bare float32 torch matrix product of the same size in the same
  run. Target ≤ 1.2x; projected to 10.5 M tiles. Also: the fraction of entries a float64 product
  cannot certify (recomputed more slowly), for the assignment and the default embedder.
* RS-Prune selection over 10.5 M assignments (B = 15 %). Target ≤ 3 s and ≤ 1 GB extra memory
  (tracemalloc peak, numpy's allocations included).
* tiles/s of the default embedder and of open_clip ViT-B-32 (random weights: the speed is the
  same) on 256 x 256 x 4 uint8 tiles, on this machine's CPU.

Usage: python benchmarks/selection.py [--n-assign 131072] [--n-select 10500000]
"""

from __future__ import annotations

import argparse  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

import numpy as np  # noqa: E402
from _common import best_of, print_table  # noqa: E402

from rsgeo_prune.embed import load_embedder  # noqa: E402
from rsgeo_prune.exact import canonical_matmul, uncertain_fraction  # noqa: E402
from rsgeo_prune.kmeans import assign, spherical_kmeans  # noqa: E402
from rsgeo_prune.select import select_quota  # noqa: E402

PAPER_TILES = 10_500_000


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-assign", type=int, default=131_072)
    ap.add_argument("--n-select", type=int, default=PAPER_TILES)
    ap.add_argument("--clip-tiles", type=int, default=32)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []

    x = unit(rng.standard_normal((55_605, 1024), dtype=np.float32))
    t_km = best_of(lambda: spherical_kmeans(x, 200, seed=0), 1)
    centres = unit(rng.standard_normal((400, 1024), dtype=np.float32))
    xc = unit(centres[rng.integers(0, 400, 55_605)] + 0.04 * rng.standard_normal((55_605, 1024), dtype=np.float32))
    t_kmc = best_of(lambda: spherical_kmeans(xc, 200, seed=0), 1)
    rows += [
        ("spherical k-means 55,605 x 1024, K=200, random vectors", f"{t_km:.2f} s", "target <= 5 s (paper: 115 s)"),
        ("spherical k-means, same size, 400 planted clusters", f"{t_kmc:.2f} s", ""),
    ]

    emb = unit(rng.standard_normal((args.n_assign, 1024), dtype=np.float32))
    cen = unit(rng.standard_normal((200, 1024), dtype=np.float32))
    import torch

    emb_t, cen_t = torch.from_numpy(emb), torch.from_numpy(np.ascontiguousarray(cen.T))
    t_np = best_of(lambda: emb @ cen.T, 3)
    t_mm = best_of(lambda: emb_t @ cen_t, 3)  # same engine as assign (torch)
    t_as = best_of(lambda: assign(emb, cen), 3)
    t_cm = best_of(lambda: canonical_matmul(emb[:8192], np.asfortranarray(cen.T)), 3) * args.n_assign / 8192
    unsure = uncertain_fraction(emb[:8192], np.asfortranarray(cen.T))
    rows += [
        (f"bare float32 matmul {args.n_assign:,} x 1024 x 200, numpy", f"{t_np:.3f} s", "for scale"),
        (f"bare float32 matmul {args.n_assign:,} x 1024 x 200, torch", f"{t_mm:.3f} s", "baseline"),
        (
            "canonical assignment (blocks of 8,192: float32 screen + canonical candidates)",
            f"{t_as:.3f} s",
            f"{t_as / t_mm:.2f}x matmul (target <= 1.2x); 10.5 M tiles: {t_as * PAPER_TILES / args.n_assign:.0f} s",
        ),
        (
            "full canonical_matmul of the same size (float64 BLAS + certificate)",
            f"{t_cm:.3f} s",
            f"{t_cm / t_mm:.2f}x matmul; {unsure:.2e} of entries uncertain in float64",
        ),
    ]

    n = args.n_select
    cluster = rng.integers(0, 200, n).astype(np.int32)
    sim = rng.random(n, dtype=np.float32)
    ids = np.arange(n, dtype=np.int64)
    budget = int(0.15 * n)
    tracemalloc.start()
    t0 = time.perf_counter()
    chosen = select_quota(cluster, sim, ids, budget, 200)
    t_sel = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert chosen.sum() == budget
    rows.append(
        (
            f"RS-Prune selection, {n:,} assignments, B = 15 %",
            f"{t_sel:.2f} s",
            f"peak extra memory {peak / 2**30:.2f} GB (targets <= 3 s, <= 1 GB)",
        )
    )

    tiles = rng.integers(0, 256, (512, 4, 256, 256), dtype=np.uint8)
    default = load_embedder("default")
    default(tiles[:4])
    t_def = best_of(lambda: default(tiles), 2)
    rows.append(("default embedder, 256x256x4 uint8", f"{len(tiles) / t_def:,.0f} tiles/s", "target >= 1,000 tiles/s"))
    from rsgeo_prune.embed.default import TARGET_SIDE, _statistics
    from rsgeo_prune.exact import unit_rows

    colour = unit_rows(np.sqrt(np.sqrt(_statistics(tiles[:64], TARGET_SIDE, np.float32(1 / 255))[0])))
    rows.append(
        (
            "  its colour projection: entries uncertain in float64",
            f"{uncertain_fraction(colour, default.projection):.2e}",
            "random-noise tiles (dense histograms: the worst case)",
        )
    )
    try:
        import open_clip
        import torch

        model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32")  # random weights: same speed
        model.eval()
        from PIL import Image

        sub = tiles[: args.clip_tiles]

        def clip():
            with torch.inference_mode():
                batch = torch.stack([preprocess(Image.fromarray(np.moveaxis(t[:3], 0, -1))) for t in sub])
                model.encode_image(batch)

        clip()
        t_clip = best_of(clip, 2)
        rows.append(
            (
                "open_clip ViT-B-32 on CPU (preprocess + image tower)",
                f"{len(sub) / t_clip:,.0f} tiles/s",
                f"default is {(len(tiles) / t_def) / (len(sub) / t_clip):.0f}x faster",
            )
        )
    except ImportError:
        rows.append(("open_clip ViT-B-32", "n/a", "open_clip_torch not installed"))
    print_table(rows)
    print(f"kmeans_55605x1024_k200_s={t_km:.3f}")
    print(f"assign_vs_matmul={t_as / t_mm:.3f} uncertain_rate={unsure:.2e}")
    print(f"select_10.5M_s={t_sel:.3f} select_peak_gb={peak / 2**30:.3f}")


if __name__ == "__main__":
    main()
