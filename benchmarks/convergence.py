"""Does RS-Prune's catalog train a better generator at equal steps, and is it Stage II that does it?

PROTOCOL (written before the first run of this version; a change of any value below is a different
experiment, with a different protocol digest, never a tuning of this one)
====================================================================================================
Corpus ``synth`` (default): ``train_scenes`` synthetic scenes heavy in cloud and water with planted
near-copies (class shares, rare tiles, copy share and noise: ``--synth-*``), ``heldout_scenes`` more
scenes of the same mix for the references, a class-balanced set of content classes. Corpus ``naip``:
the eight NAIP years of ../shared/data/naip, the same map block (the eastern ``heldout_cols`` share of
the columns) held out in every year; training rasters are the rest of each year; non-overlapping tiles.

Catalogs, all at one budget B = round(budget · N) tiles of the N tiles that pass the nodata pre-filter
(the paper's headline: 85 % pruned, budget 0.15; ``--budget 0.3`` for 70 %):
    full             every pre-filtered tile (no pruning)
    random           a uniform draw of B (the paper's baseline)
    entropy          the B highest-entropy tiles (Stage I alone, used as a selector)
    cluster-nearest  k-means with B clusters on all tiles, the nearest tile of each
    rs-prune         Stage I keeps ``entropy_keep``, then Stage II's reference-centroid quota picks B
    stage1+random    the same Stage I, then a uniform draw of B          (control: isolates Stage II)
    oracle-clean     synth only: every content tile, no cloud, water or planted copy (control: junk removal)
    + any selection method registered after this protocol (run like rs-prune: Stage I, then the method)
and one evaluation-side control:
    full-filtered    the full model's samples passed through the same Stage I rule (entropy ≥ the
                     threshold Stage I used on the corpus), the first ``n_fd`` that pass

References (real pixels, never seen in training), fixed before any model is trained:
    target    primary. synth: held-out tiles of content classes by the generator's labels (no cloud,
              water or planted copy), the analogue of the paper's "high-quality" test set (§4.1).
              naip: every held-out-block tile (NAIP has no labels and almost no junk).
    balanced  synth: the same number of tiles per content class, rare class included.
    raw       synth: every held-out tile as drawn (cloud, water, copies): the coverage cost of pruning.

Feature spaces: ``random-cnn-0`` (primary: no selector embeds with it, and it responds to structure)
and ``rsgeo-default`` (secondary: the selectors' own embedder). Names and digests go into every table.
Metrics per checkpoint, reference and space: FD; improved precision and recall (k = 3); per-class recall
(synth). One VAE per corpus (the trainer's defaults: radiometric jitter, cosine schedule, whole scenes
held out for the checkpoint choice), trained once and reused by key; each catalog's latents normalised
with that catalog's own mean and std (their ratio to the VAE's is reported). The same DiT config, seed
for seed, on every catalog; EMA samples at every checkpoint from one fixed generation seed (paired
noise), DDIM eta 0, decoded by the VAE. Floors: each catalog's own real tiles, and their VAE
reconstructions, scored like samples. Sampling noise: the full model's final checkpoint scored twice
from two generation seeds. The sample class-mix classifier (nearest class mean of the balanced set, in
the primary space) is checked on VAE reconstructions of the labelled target tiles before it is used.

DECISION RULE (primary space, ``target`` reference, final checkpoint, per-seed paired differences
d = FD(rs-prune) − FD(other); "beats X" means d < 0 in every seed and mean(d) + 2·sd(d) < 0):
    SUPPORTED     rs-prune beats full, random, entropy and cluster-nearest; beats stage1+random; and
                  its rare-class recall on ``target`` is ≥ full's (means over seeds).
    REFUTED       rs-prune does not beat full (mean d ≥ 0): no gain at equal steps; or rs-prune does not
                  differ from stage1+random (|mean d| ≤ 2·sd(d) or seeds disagree in sign) while it beats
                  full: the gain is Stage I's junk removal alone, not Stage II.
    INCONCLUSIVE  anything else.
Both the verdict and the Stage II sub-verdict (rs-prune vs stage1+random, vs oracle-clean) are printed.

``--check`` runs the protocol afresh and compares each method's paired difference to full (mean over
seeds, every checkpoint, reference and space) with the committed one: it passes when they agree within
2·sqrt(sd_committed² + sd_fresh²) + 2·noise (noise: the sampling noise measured in the same run), and the
verdict is the same. Differences, not absolute FDs, are compared because the VAE — trained once per
corpus, on this CPU's kernels — shifts every absolute number together.

    .venv/bin/python benchmarks/convergence.py --config cpu                  # synthetic corpus
    .venv/bin/python benchmarks/convergence.py --config cpu --corpus naip    # real NAIP years
    .venv/bin/python benchmarks/convergence.py --config cpu --check          # reproduce the committed table
    .venv/bin/python benchmarks/convergence.py --config cpu --synth-shares cloud=0.1,water=0.1,cropland=0.3,\
forest=0.2,urban=0.2,bare_soil=0.1 --out /tmp/other-mix                    # another mix
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED = ROOT.parent / "shared" / "data"

#: methods of the registry when this protocol was written, and the catalogs this protocol builds
BASE_METHODS = ("full", "random", "entropy", "cluster-nearest", "rs-prune")
CONTROLS = ("stage1+random", "oracle-clean")
EVAL_CONTROLS = ("full-filtered",)
#: registry methods that exist but are not part of this experiment (RS-Prune's water-filling and full-k-means
#: variants, the Moderate-DS baseline); any method registered later joins the experiment automatically
KNOWN_REGISTRY = ("rs-prune", "water-filling", "random", "entropy", "cluster-nearest", "moderate", "full-kmeans")
SPACES = ("random-cnn-0", "rsgeo-default")  # primary first
PRIMARY, TARGET = SPACES[0], "target"
CONTENT = ("cropland", "forest", "urban", "bare_soil", "solar_farm")
JUNK = ("cloud", "water")
PR_K = 3

# ------------------------------------------------------------------------------------------ protocol
CONFIGS: dict[str, dict] = {
    # 2-core CPU (two DiT runs in parallel processes, one torch thread each), fresh work folder: synthetic
    # corpus 32 min, NAIP 23 min on a 2-core Xeon (the 40-min budget); DiT training and scoring are two thirds
    "cpu": dict(
        tile_size=64,
        budget=0.15,
        entropy_keep=0.5,
        k=28,
        k_naip=30,
        procs=2,
        vae=dict(preset="small", steps=1500, batch_size=16, lr=2e-3, kl_weight=1e-6, val_every=250, threads=2),
        dit=dict(model="DiT-tiny/2", batch_size=32, lr=5e-4, ema_decay=0.999, steps=3000, grad_clip=1.0),
        checkpoints=(500, 1000, 2000, 3000),
        sampler="ddim",
        sampler_steps=50,
        n_fd=512,
        seeds=(0, 1, 2),
        synth=dict(train_scenes=6, rows=16, cols=16, heldout_scenes=4, balanced_per_class=64, reference_per_class=16),
        naip=dict(heldout_cols=0.3),
    ),
    # one GPU (H100): 256-px tiles, DiT-S/2 on 32x32 latents. Documented; not measured.
    "gpu": dict(
        tile_size=256,
        budget=0.15,
        entropy_keep=0.5,
        k=28,
        k_naip=30,
        procs=1,
        vae=dict(preset="base", steps=6000, batch_size=32, lr=2e-4, kl_weight=1e-6, val_every=500, threads=8),
        dit=dict(model="DiT-S/2", batch_size=256, lr=1e-4, ema_decay=0.9999, steps=20000, grad_clip=1.0),
        checkpoints=(2500, 5000, 10000, 20000),
        sampler="ddpm",
        sampler_steps=250,
        n_fd=2048,
        seeds=(0, 1, 2),
        synth=dict(train_scenes=12, rows=24, cols=24, heldout_scenes=4, balanced_per_class=300, reference_per_class=32),
        naip=dict(heldout_cols=0.3),
    ),
    # seconds: exercises every step of the script (not a result)
    "smoke": dict(
        tile_size=64,
        budget=0.3,
        entropy_keep=0.5,
        k=14,
        k_naip=30,
        procs=2,
        vae=dict(preset="tiny", steps=20, batch_size=16, lr=1e-3, kl_weight=1e-6, val_every=10, threads=1),
        dit=dict(model="DiT-tiny/2", batch_size=16, lr=5e-4, ema_decay=0.999, steps=40, grad_clip=1.0),
        checkpoints=(10, 20, 30, 40),
        sampler="ddim",
        sampler_steps=5,
        n_fd=64,
        seeds=(0, 1),
        synth=dict(train_scenes=2, rows=8, cols=8, heldout_scenes=2, balanced_per_class=8, reference_per_class=4),
        naip=dict(heldout_cols=0.3),
    ),
}
#: the committed synthetic mix: a training scene is half cloud and water ...
SYNTH_SHARES = {"cloud": 0.25, "water": 0.25, "cropland": 0.16, "forest": 0.12, "urban": 0.12, "bare_soil": 0.10}
SYNTH_RARE = 3  # ... solar_farm tiles per scene
SYNTH_DUP_SHARE = 0.15  # ... share of a scene's tiles overwritten by noisy, shifted copies of 2 template tiles
SYNTH_DUP_NOISE = 3.0  # std (uint8 levels) of the copies' noise
EVAL_SEED = 12345  # generation seed of every sample set (a second seed, +1, measures sampling noise)
CHECK_K = 2.0  # --check tolerance: CHECK_K · sqrt(sd_c² + sd_f²) + CHECK_K · noise
FILTER_OVERDRAW = 2  # full-filtered: draw this many times n_fd samples, keep the first n_fd that pass (n reported)


def registry_newcomers() -> list[str]:
    from rsgeo_prune.select import METHODS as REGISTRY

    return [m for m in REGISTRY if m not in KNOWN_REGISTRY]


def catalog_methods(corpus: str) -> list[str]:
    ctl = [c for c in CONTROLS if corpus == "synth" or c != "oracle-clean"]
    return list(BASE_METHODS) + ctl + registry_newcomers()


def protocol(config: str, corpus: str, budget: float | None, entropy_keep: float | None, synth_mix: dict) -> dict:
    p = json.loads(json.dumps(CONFIGS[config]))
    if budget is not None:
        p["budget"] = budget
    if entropy_keep is not None:
        p["entropy_keep"] = entropy_keep
    p.update(
        config=config,
        corpus=corpus,
        spaces=list(SPACES),
        pr_k=PR_K,
        eval_seed=EVAL_SEED,
        methods=catalog_methods(corpus),
        eval_controls=list(EVAL_CONTROLS),
    )
    if corpus == "synth":
        p["synth_mix"] = synth_mix
    else:
        p.pop("synth")
    return p


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def say(*a):
    print(*a, flush=True)


# ------------------------------------------------------------------------------------------- corpora
def _tiles_of(path: Path, size: int, cols: tuple[int, int] | None = None) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """All full, non-overlapping ``size`` tiles of a raster (row-major) without a nodata pixel, within the
    column range ``cols`` (pixels) when given; and their offsets."""
    import rasterio

    with rasterio.open(path) as src:
        a = src.read()
        nodata = src.nodata
    c0, c1 = cols or (0, a.shape[2])
    c1 = min(c1, a.shape[2])  # an open-ended range stops at the raster's edge
    tiles, offs = [], []
    for r in range(0, a.shape[1] - size + 1, size):
        for c in range(c0, c1 - size + 1, size):
            t = a[:, r : r + size, c : c + size]
            if nodata is not None and (t == nodata).all(axis=0).any():
                continue
            tiles.append(t)
            offs.append((r, c))
    return np.stack(tiles), offs


def _synth_layout(rows: int, cols: int, rng: np.random.Generator, mix: dict) -> np.ndarray:
    from rsgeo_prune.synth import NODATA_CLASS, RARE_CLASS

    valid = (rows - 1) * cols  # one nodata collar row: the pre-filter has something to drop
    rare = mix["rare"]
    counts = {c: int(round(s * (valid - rare))) for c, s in mix["shares"].items()}
    first = next(iter(c for c in counts if c in CONTENT), next(iter(counts)))
    counts[first] += valid - rare - sum(counts.values())
    labels = np.array([RARE_CLASS] * rare + [c for c, k in counts.items() for _ in range(k)], dtype=object)
    labels = labels[rng.permutation(valid)]
    return np.concatenate([labels, np.full(cols, NODATA_CLASS, dtype=object)]).reshape(rows, cols)


def _redundant_scene(path: Path, rows: int, cols: int, size: int, seed: int, mix: dict) -> tuple[dict, set]:
    """A synthetic scene of the mix, with planted near-copies; returns (tile_id → class, ids of copies)."""
    import rasterio

    from rsgeo_prune.synth import RARE_CLASS, write_scene

    rng = np.random.default_rng(seed + 7_000)
    layout = _synth_layout(rows, cols, rng, mix)
    # every scene its own place (a synthetic scene is another landscape, not another year of one place:
    # same-place limits must not see them as revisits)
    write_scene(
        path,
        rows=rows,
        cols=cols,
        tile_size=size,
        seed=seed,
        layout=layout,
        nodata_rows=1,
        origin=(400_000.0 + 2_000.0 * (seed % 100), 5_000_000.0 + 50_000.0 * (seed // 100)),
    )
    with rasterio.open(path) as src:
        a, profile, desc = src.read(), src.profile, src.descriptions
    cand = [(i, j) for (i, j), c in np.ndenumerate(layout) if c in ("cropland", "urban", "forest")]
    templates = [cand[k] for k in rng.choice(len(cand), 2, replace=False)]
    others = [
        (i, j) for (i, j), c in np.ndenumerate(layout) if c not in ("nodata", RARE_CLASS) and (i, j) not in templates
    ]
    copies = set()
    n_dup = int(round(mix["dup_share"] * rows * cols))
    for k in rng.choice(len(others), n_dup, replace=False):
        (i, j), (ti, tj) = others[k], templates[k % 2]
        t = a[:, ti * size : (ti + 1) * size, tj * size : (tj + 1) * size].astype(np.float32)
        t = np.roll(t, tuple(rng.integers(-2, 3, 2)), axis=(1, 2)) + rng.normal(0, mix["dup_noise"], t.shape)
        a[:, i * size : (i + 1) * size, j * size : (j + 1) * size] = np.clip(np.round(t), 1, 255).astype(np.uint8)
        layout[i, j] = layout[ti, tj]
        copies.add(f"{path.stem}/{i * size}_{j * size}")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(a)
        for b, d in enumerate(desc, start=1):
            if d:
                dst.set_band_description(b, d)
    return {f"{path.stem}/{i * size}_{j * size}": str(c) for (i, j), c in np.ndenumerate(layout)}, copies


def build_synth(work: Path, p: dict) -> dict:
    from rsgeo_prune.synth import write_reference_set, write_scene

    s, size, mix = p["synth"], p["tile_size"], p["synth_mix"]
    labels, copies, inputs = {}, set(), []
    for i in range(s["train_scenes"]):
        path = work / "corpus" / f"train_{i}.tif"
        lab, cop = _redundant_scene(path, s["rows"], s["cols"], size, seed=100 + i, mix=mix)
        labels.update(lab)
        copies |= cop
        inputs.append(path)
    raw, raw_cls, is_copy = [], [], []
    for i in range(s["heldout_scenes"]):
        path = work / "heldout" / f"heldout_{i}.tif"
        lab, cop = _redundant_scene(path, s["rows"], s["cols"], size, seed=900 + i, mix=mix)
        tiles, offs = _tiles_of(path, size)
        raw.append(tiles)
        ids = [f"{path.stem}/{r}_{c}" for r, c in offs]
        raw_cls += [lab[t] for t in ids]
        is_copy += [t in cop for t in ids]
    raw = np.concatenate(raw)
    raw_cls, is_copy = np.array(raw_cls, dtype=object), np.array(is_copy)
    content = np.isin(raw_cls, CONTENT) & ~is_copy
    per = s["balanced_per_class"]
    cols = 16 if per % 16 == 0 else per
    layout = np.array([c for c in CONTENT for _ in range(per)], dtype=object)
    layout = layout[np.random.default_rng(950).permutation(len(layout))].reshape(-1, cols)
    bpath = work / "heldout" / "balanced.tif"
    write_scene(bpath, rows=layout.shape[0], cols=cols, tile_size=size, seed=950, layout=layout, nodata_rows=0)
    btiles, boffs = _tiles_of(bpath, size)
    bcls = [str(layout[r // size, c // size]) for r, c in boffs]
    reference = write_reference_set(work / "reference", per_class=s["reference_per_class"], size=size, seed=11)
    return dict(
        inputs=inputs,
        reference=reference,
        labels=labels,
        copies=copies,
        k=p["k"],
        refs={"target": raw[content], "balanced": btiles, "raw": raw},
        ref_classes={"target": list(raw_cls[content]), "balanced": bcls, "raw": list(raw_cls)},
        classes=list(CONTENT) + list(JUNK),
    )


def build_naip(work: Path, p: dict) -> dict:
    """Training rasters: each year without its eastern block; reference: that block in every year."""
    import rasterio
    from rasterio.windows import Window

    files = sorted((SHARED / "naip").glob("m_*.tif"))
    if not files:
        raise SystemExit(f"{SHARED / 'naip'}: no NAIP files; the naip corpus needs ../shared/data")
    size, share = p["tile_size"], p["naip"]["heldout_cols"]
    inputs, held = [], []
    for f in files:
        with rasterio.open(f) as src:
            # the cut falls on the tile grid, so training tiles and held-out tiles never overlap
            cut = (int(src.width * (1 - share)) // size) * size
            prof = src.profile
            prof.update(width=cut, transform=src.window_transform(Window(0, 0, cut, src.height)))
            out = work / "corpus" / f.name
            out.parent.mkdir(parents=True, exist_ok=True)
            with rasterio.open(out, "w", **prof) as dst:
                dst.write(src.read(window=Window(0, 0, cut, src.height)))
        inputs.append(out)
        tiles, _ = _tiles_of(f, size, cols=(cut, 10**9))
        held.append(tiles)
    return dict(
        inputs=inputs,
        reference=SHARED / "reference" / "aid_150px",
        labels=None,
        copies=set(),
        k=p["k_naip"],
        refs={"target": np.concatenate(held)},
        ref_classes=None,
        classes=None,
        heldout_block=f"eastern {share:.0%} of the columns of every year",
    )


# ------------------------------------------------------------------------------------------ catalogs
def _run_config(method: str, p: dict, budget_count: int, seed: int, k: int) -> tuple[dict, dict]:
    """(tiling options, RunConfig options) of one catalog."""
    if method == "full":
        return {}, dict(budget=1.0, method="random")
    if method == "entropy":
        # Stage I must run for the entropy column to exist; entropy_min 0 bits keeps every tile
        return dict(entropy_min=0.0), dict(budget_count=budget_count, method="entropy")
    if method in ("random", "cluster-nearest"):
        return {}, dict(budget_count=budget_count, method=method)
    if method == "stage1+random":
        return dict(entropy_keep=p["entropy_keep"]), dict(budget_count=budget_count, method="random")
    return dict(entropy_keep=p["entropy_keep"]), dict(budget_count=budget_count, method=method)  # rs-prune & newcomers


def build_catalogs(work: Path, data: dict, p: dict) -> tuple[dict, dict]:
    """(method, seed) → kept tile ids, and facts: B, N, the Stage I threshold."""
    import pandas as pd

    from rsgeo_prune.config import RunConfig, TileConfig
    from rsgeo_prune.pipeline import run_pipeline

    out, facts = {}, {}
    seed0 = p["seeds"][0]

    def pipeline(method, seed, budget_count):
        tile_opts, run_opts = _run_config(method, p, budget_count, seed, data["k"])
        cat, counts = run_pipeline(
            [str(x) for x in data["inputs"]],
            work / "catalogs" / f"{method}-s{seed}",
            [str(data["reference"])],
            TileConfig(tile_size=p["tile_size"], **tile_opts),
            RunConfig(k=data["k"], seed=int(seed), **run_opts),
            scheduler="synchronous",
            progress=False,
        )
        return cat

    full = pipeline("full", seed0, None)
    full_ids = sorted(full.loc[full["kept"].astype(bool), "tile_id"].astype(str))
    shutil.copy(work / "catalogs" / f"full-s{seed0}" / "catalog.parquet", work / "full_catalog.parquet")
    n = len(full_ids)
    budget_count = int(math.floor(p["budget"] * n + 0.5))
    facts.update(n=n, budget_count=budget_count)
    for method in p["methods"]:
        for seed in p["seeds"]:
            if method == "full":
                out[method, seed] = full_ids
            elif method == "oracle-clean":
                out[method, seed] = [t for t in full_ids if data["labels"][t] in CONTENT and t not in data["copies"]]
            elif method == "entropy" and seed != seed0:
                out[method, seed] = out[method, seed0]  # deterministic: built once
            else:
                cat = pipeline(method, seed, budget_count)
                out[method, seed] = sorted(cat.loc[cat["kept"].astype(bool), "tile_id"].astype(str))
                if method == "rs-prune" and seed == seed0:
                    t = pd.DataFrame(cat)  # Stage I's survivors: neither pre-filtered nor pruned for entropy
                    survivors = t[~t["pruned_by"].isin(["nodata", "mask", "entropy"])]
                    facts["stage1_threshold_bits"] = float(survivors["entropy"].min())
            if seed == seed0 or method not in ("full", "oracle-clean", "entropy"):
                say(f"  catalog {method:16s} seed {seed}: {len(out[method, seed])} tiles")
    return out, facts


# ------------------------------------------------------------------------------------- VAE, latents
def train_and_encode(work: Path, p: dict) -> tuple[Path, Path, dict]:
    """The corpus VAE (trainer defaults; a whole training scene chooses the checkpoint), reused by key."""
    from rsgeo_prune.train.dataset import CatalogDataset, load_table, split_validation
    from rsgeo_prune.train.latents import encode_catalog
    from rsgeo_prune.train.vae import VAETrainConfig, train_vae

    cat = work / "full_catalog.parquet"
    table = load_table(cat)
    table = table[table["kept"].astype(bool)].reset_index(drop=True)
    v = p["vae"]
    key = digest({"vae": v, "tiles": sorted(table["tile_id"].astype(str))})
    vae_out = work / "vae"
    done, key_file = vae_out / "vae" / "config.json", vae_out / "key"
    if not (done.exists() and key_file.exists() and key_file.read_text() == key):
        shutil.rmtree(vae_out, ignore_errors=True)
        is_val = split_validation(table, "scene", 0.1)
        cfg = VAETrainConfig(
            preset=v["preset"],
            steps=v["steps"],
            batch_size=v["batch_size"],
            lr=v["lr"],
            kl_weight=v["kl_weight"],
            val_every=v["val_every"],
            save_every=v["steps"],
            log_every=50,
            seed=0,
        )
        threads = torch.get_num_threads()
        torch.set_num_threads(v.get("threads", 1))
        try:
            res = train_vae(
                CatalogDataset(table[~is_val], select="all", dihedral=True, output="raw"),
                CatalogDataset(table[is_val], select="all", output="raw"),
                vae_out,
                cfg,
                progress=False,
            )
        finally:
            torch.set_num_threads(threads)
        (vae_out / "key").write_text(key)
        say(
            f"  VAE {v['preset']}: {res.step} steps, best val {res.best_val:.4f} at step {res.best_step}; "
            f"held-out-scene PSNR {res.metrics['vae']['psnr']:.2f} dB (bicubic x8 "
            f"{res.metrics['bicubic_x8']['psnr']:.2f} dB)"
        )
    lat = work / "latents" / "full"
    encode_catalog(CatalogDataset(cat, select="kept"), vae_out, lat, progress=False)
    report = json.loads((vae_out / "vae" / "rsgeo_vae.json").read_text())
    return vae_out, lat, report


def subset_latents(full: Path, ids: list[str], out: Path) -> tuple[Path, float]:
    """A latent folder holding the rows ``ids`` of ``full`` (no second encoding), normalised with the
    catalog's own per-channel mean and std (of posterior samples: var(mean) + E[exp(logvar)]); returns the
    folder and the largest ratio of the catalog's std to the VAE's."""
    from rsgeo_prune.atomic import atomic_output
    from rsgeo_prune.train.latents import INDEX_FILE, LatentShards, shard_name, write_shard

    ds = LatentShards(full)
    index = dict(ds.index)
    pos = {t: i for i, t in enumerate(ds.tile_ids)}
    idx = torch.tensor([pos[t] for t in ids])
    mean, logvar = ds.mean[idx].double(), ds.logvar[idx].double()
    mu = mean.mean((0, 2, 3))
    sd = (mean.var((0, 2, 3), unbiased=False) + logvar.exp().mean((0, 2, 3))).sqrt()
    ratio = (sd / torch.tensor(index["latents_std"], dtype=torch.float64)).tolist()
    if not (out / INDEX_FILE).exists():
        index.update(latents_mean=mu.tolist(), latents_std=sd.tolist())
        meta = {
            k: (json.dumps(v) if k in ("latents_mean", "latents_std", "bands") else str(v))
            for k, v in index.items()
            if k in ("format", "vae_digest", "latents_mean", "latents_std", "bands")
        }
        meta.update(catalog_digest=digest(ids), shard_size=str(len(ids)), shard="0")
        write_shard(out / shard_name(0), ds.mean[idx], ds.logvar[idx], ids, meta)
        index.update(tiles=len(ids), shards=[shard_name(0)], shard_size=len(ids), catalog_digest=meta["catalog_digest"])
        with atomic_output(out / INDEX_FILE) as tmp:
            tmp.write_text(json.dumps(index, indent=2))
    return out, ratio


# ---------------------------------------------------------------------------------------- evaluation
class Judge:
    """Reference features in every space, and scores of a tile set against them."""

    def __init__(self, refs: dict, ref_classes: dict | None):
        from rsgeo_prune.train.metrics import feature_space

        self.spaces = {name: feature_space(name, channels=4, threads=1) for name in SPACES}
        self.ref_classes = ref_classes or {}
        self.ref_feats = {s: {r: sp(t) for r, t in refs.items()} for s, sp in self.spaces.items()}
        self.centroids = None
        if "balanced" in self.ref_classes:  # nearest class mean of the balanced set, primary space
            f, cls = self.ref_feats[PRIMARY]["balanced"], np.array(self.ref_classes["balanced"])
            self.mix_classes = sorted(set(cls.tolist()), key=list(CONTENT).index)
            c = np.stack([f[cls == k].mean(0) for k in self.mix_classes])
            self.centroids = c / np.linalg.norm(c, axis=1, keepdims=True)

    def features(self, tiles) -> dict:
        return {s: sp(tiles) for s, sp in self.spaces.items()}

    def score(self, feats: dict) -> dict:
        from rsgeo_prune.train.metrics import frechet_distance, precision_recall

        out = {}
        for s, by_ref in self.ref_feats.items():
            out[s] = {}
            for r, rf in by_ref.items():
                pr = precision_recall(rf, feats[s], k=PR_K, real_classes=self.ref_classes.get(r))
                out[s][r] = {
                    "fd": float(frechet_distance(feats[s], rf)),
                    "precision": pr.precision,
                    "recall": pr.recall,
                    "class_recall": pr.class_recall,
                }
        return out

    def classify(self, feats_primary: np.ndarray) -> np.ndarray:
        f = feats_primary / np.maximum(np.linalg.norm(feats_primary, axis=1, keepdims=True), 1e-12)
        return np.array(self.mix_classes)[np.argmax(f @ self.centroids.T, axis=1)]

    def mix(self, feats: dict) -> dict:
        pred = self.classify(feats[PRIMARY])
        return {k: float((pred == k).mean()) for k in self.mix_classes}


@torch.no_grad()
def reconstruct(vae, tiles_u8: np.ndarray) -> torch.Tensor:
    from rsgeo_prune.train.sampling import decode_latents

    x = torch.from_numpy(tiles_u8.astype(np.float32) / 127.5 - 1.0)
    z = torch.cat([vae.encode(x[i : i + 32]).latent_dist.mean for i in range(0, len(x), 32)])
    return decode_latents(vae, z)


def _sample(model, info, vae, p: dict, n: int, seed: int) -> torch.Tensor:
    from rsgeo_prune.train.sampling import decode_latents, denormalise, diffusion_of, generate_latents

    z = generate_latents(
        model,
        diffusion_of(info["config"]),
        n,
        latent_shape=tuple(info["latents"]["latent_shape"]),
        steps=p["sampler_steps"],
        sampler=p["sampler"],
        eta=0.0,
        seed=seed,
        batch_size=256,
        device="cpu",
    )
    return decode_latents(vae, denormalise(z, info["latents"]), batch_size=64, device="cpu")


def _entropy_pass(tiles: torch.Tensor, threshold: float) -> np.ndarray:
    from rsgeo_prune.entropy import tile_entropy
    from rsgeo_prune.train.metrics import as_uint8_tiles

    gray, _ = tile_entropy(as_uint8_tiles(tiles), nodata=None)
    return gray >= threshold


# the worker state of one DiT process (set by _init_worker)
_W: dict = {}


def _init_worker(judge_args: tuple, vae_dir: str, p: dict, threshold: float | None) -> None:
    from rsgeo_prune.train.vae import load_vae

    torch.set_num_threads(1)
    _W.update(judge=Judge(*judge_args), vae=load_vae(vae_dir), p=p, threshold=threshold)


def _train_and_score(job: dict) -> dict:
    """Train one DiT (method, seed) and score its EMA samples at every checkpoint."""
    from rsgeo_prune.train.sampling import ema_model, read_checkpoint, write_grids
    from rsgeo_prune.train.trainer import DiTTrainConfig, train_dit

    judge, vae, p = _W["judge"], _W["vae"], _W["p"]
    d, cks = p["dit"], list(p["checkpoints"])
    out = Path(job["out"])
    t0 = time.perf_counter()
    if not (out / "checkpoints" / f"step-{cks[-1]:07d}.pt").exists():
        shutil.rmtree(out, ignore_errors=True)
        cfg = DiTTrainConfig(
            model=d["model"],
            batch_size=d["batch_size"],
            lr=d["lr"],
            ema_decay=d["ema_decay"],
            grad_clip=d["grad_clip"],
            steps=cks[-1],
            log_every=100,
            save_every=cks[-1],
            keep_every=math.gcd(*cks),
            sample_every=0,
            fd_n=0,
            seed=int(job["seed"]),
        )
        train_dit(job["latents"], out, cfg, progress=False)
    t_train = time.perf_counter() - t0
    rec = {"checkpoints": {}, "filtered": {}, "noise": None}
    for step in cks:
        model, info = ema_model(read_checkpoint(out / "checkpoints" / f"step-{step:07d}.pt"), "cpu")
        tiles = _sample(model, info, vae, p, p["n_fd"], EVAL_SEED)
        feats = judge.features(tiles)
        r = {"scores": judge.score(feats)}
        if judge.centroids is not None:
            r["mix"] = judge.mix(feats)
        rec["checkpoints"][str(step)] = r
        if job["method"] == "full" and _W["threshold"] is not None:
            # the same Stage I rule on the full model's samples: draw more, keep the first n_fd that pass
            many = _sample(model, info, vae, p, FILTER_OVERDRAW * p["n_fd"], EVAL_SEED + 7)
            keep = np.flatnonzero(_entropy_pass(many, _W["threshold"]))[: p["n_fd"]]
            ff = judge.features(many[keep])
            rec["filtered"][str(step)] = {
                "scores": judge.score(ff),
                "n": int(len(keep)),
                **({"mix": judge.mix(ff)} if judge.centroids is not None else {}),
            }
        if job["method"] == "full" and step == cks[-1] and job["seed"] == p["seeds"][0]:
            other = judge.score(judge.features(_sample(model, info, vae, p, p["n_fd"], EVAL_SEED + 1)))
            rec["noise"] = {
                s: {
                    r_: abs(other[s][r_]["fd"] - rec["checkpoints"][str(step)]["scores"][s][r_]["fd"])
                    for r_ in other[s]
                }
                for s in other
            }
    write_grids(tiles[:64], Path(job["grids"]), f"{job['method']}-s{job['seed']}")
    losses = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rec["final_loss"] = [x["loss"] for x in losses if "loss" in x][-1]
    rec["seconds"] = {"train": round(t_train, 1), "total": round(time.perf_counter() - t0, 1)}
    return rec


def train_and_judge(
    work: Path, lat_full: Path, vae_dir: Path, catalogs: dict, data: dict, p: dict, threshold: float | None
) -> tuple[dict, dict]:
    jobs, ratios = [], {}
    for method in p["methods"]:
        for seed in p["seeds"]:
            lat, ratio = subset_latents(lat_full, catalogs[method, seed], work / "latents" / f"{method}-s{seed}")
            ratios.setdefault(method, ratio)
            jobs.append(
                dict(
                    method=method,
                    seed=int(seed),
                    latents=str(lat),
                    out=str(work / "dit" / f"{method}-s{seed}"),
                    grids=str(work / "grids"),
                )
            )
    runs = {}
    ctx = multiprocessing.get_context("spawn")
    init = ((data["refs"], data["ref_classes"]), str(vae_dir), p, threshold)
    with cf.ProcessPoolExecutor(
        max_workers=p["procs"], mp_context=ctx, initializer=_init_worker, initargs=init
    ) as pool:
        futures = {pool.submit(_train_and_score, j): j for j in jobs}
        for fut in cf.as_completed(futures):
            j = futures[fut]
            rec = fut.result()
            rec["tiles"] = len(catalogs[j["method"], j["seed"]])
            runs[f"{j['method']}/{j['seed']}"] = rec
            last = rec["checkpoints"][str(p["checkpoints"][-1])]["scores"][PRIMARY]
            say(
                f"  DiT {j['method']:16s} seed {j['seed']}: {rec['tiles']} tiles, loss {rec['final_loss']:.4f}, "
                f"{PRIMARY} FD@{p['checkpoints'][-1]} "
                + ", ".join(f"{k} {v['fd']:.4f}" for k, v in last.items())
                + f" ({rec['seconds']['total']:.0f} s)"
            )
    return runs, ratios


def floors(data: dict, catalogs: dict, judge: Judge, vae, p: dict) -> tuple[dict, dict, dict]:
    """Scores of each catalog's own real tiles and of their VAE reconstructions (first seed); the class
    mix of each catalog (labels); the classifier's accuracy on reconstructed labelled target tiles."""
    import rasterio

    out, cls_mix = {}, {}
    size = p["tile_size"]
    handles = {}
    for method in p["methods"]:
        ids = catalogs[method, p["seeds"][0]]
        rng = np.random.default_rng(0)
        pick = [ids[i] for i in sorted(rng.choice(len(ids), min(len(ids), p["n_fd"]), replace=False))]
        tiles = []
        for t in pick:
            scene, off = t.rsplit("/", 1)
            r, c = map(int, off.split("_"))
            href = next(x for x in data["inputs"] if Path(x).stem == scene.split("/")[-1])
            src = handles.setdefault(href, rasterio.open(href))
            tiles.append(src.read(window=((r, r + size), (c, c + size))))
        tiles = np.stack(tiles)
        out[f"catalog:{method}"] = judge.score(judge.features(tiles))
        out[f"vae-recon:{method}"] = judge.score(judge.features(reconstruct(vae, tiles)))
        if data["labels"] is not None:
            cl = [data["labels"][t] for t in ids]
            cls_mix[method] = {k: cl.count(k) / len(cl) for k in data["classes"]}
            cls_mix[method]["copies"] = sum(t in data["copies"] for t in ids) / len(ids)
        else:  # NAIP: the year mix
            years = [t.split("/")[0][-8:-4] for t in ids]
            cls_mix[method] = {y: years.count(y) / len(years) for y in sorted(set(years))}
    for h in handles.values():
        h.close()
    check = {}
    if judge.centroids is not None:
        truth = np.array(data["ref_classes"]["target"])
        rec = judge.features(reconstruct(vae, data["refs"]["target"]))
        real = judge.features(data["refs"]["target"])
        check = {
            "real": float((judge.classify(real[PRIMARY]) == truth).mean()),
            "decoded": float((judge.classify(rec[PRIMARY]) == truth).mean()),
            "n": int(len(truth)),
        }
    return out, cls_mix, check


# ------------------------------------------------------------------------------------------- tables
def _stat(v) -> dict:
    v = [float(x) for x in v]
    return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "values": v}


def method_rows(p: dict) -> list[str]:
    return list(p["methods"]) + [c for c in p["eval_controls"] if c == "full-filtered"]


def _values(runs: dict, p: dict, method: str, step, space: str, ref: str, key: str = "fd") -> list[float]:
    out = []
    for s in p["seeds"]:
        if method == "full-filtered":
            r = runs[f"full/{s}"]["filtered"].get(str(step))
            if r is None:
                return []
        else:
            r = runs[f"{method}/{s}"]["checkpoints"][str(step)]
        out.append(r["scores"][space][ref][key])
    return out


def summarise(runs: dict, p: dict, refs: list[str]) -> dict:
    table = {}
    for m in method_rows(p):
        for step in p["checkpoints"]:
            for space in SPACES:
                for ref in refs:
                    for key in ("fd", "precision", "recall"):
                        v = _values(runs, p, m, step, space, ref, key)
                        if v:
                            table[f"{m}|{step}|{space}|{ref}|{key}"] = _stat(v)
    return table


def paired(runs: dict, p: dict, a: str, b: str, step, space=PRIMARY, ref=TARGET) -> dict:
    """Per-seed FD(a) − FD(b): values, mean, sd, seeds with a lower (better) than b."""
    va, vb = _values(runs, p, a, step, space, ref), _values(runs, p, b, step, space, ref)
    d = [x - y for x, y in zip(va, vb)]
    st = _stat(d)
    st["a_better_in"] = int(sum(x < 0 for x in d))
    st["beats"] = bool(all(x < 0 for x in d) and st["mean"] + 2 * st["std"] < 0)
    st["indistinct"] = bool(abs(st["mean"]) <= 2 * st["std"] or 0 < st["a_better_in"] < len(d))
    return st


def steps_to_reach(table: dict, p: dict, method: str, goal: float, space=PRIMARY, ref=TARGET) -> float | None:
    """The first step at which the method's mean FD reaches ``goal`` (linear between checkpoints)."""
    prev = None
    for step in p["checkpoints"]:
        v = table.get(f"{method}|{step}|{space}|{ref}|fd", {}).get("mean")
        if v is None:
            return None
        if v <= goal:
            if prev is None:
                return float(step)
            (s0, v0) = prev
            return float(s0 + (step - s0) * (v0 - goal) / max(v0 - v, 1e-12))
        prev = (step, v)
    return None


def verdict(runs: dict, table: dict, p: dict) -> dict:
    last = p["checkpoints"][-1]
    vs = {b: paired(runs, p, "rs-prune", b, last) for b in method_rows(p) if b != "rs-prune"}
    rare = "solar_farm"
    rare_recall = {}
    for m in ("rs-prune", "full"):
        vals = [
            runs[f"{m}/{s}"]["checkpoints"][str(last)]["scores"][PRIMARY][TARGET]["class_recall"].get(rare)
            for s in p["seeds"]
        ]
        rare_recall[m] = float(np.mean(vals)) if None not in vals else None
    rare_ok = None if None in rare_recall.values() else rare_recall["rs-prune"] >= rare_recall["full"]
    beats_baselines = all(vs[b]["beats"] for b in ("full", "random", "entropy", "cluster-nearest"))
    beats_stage1 = vs["stage1+random"]["beats"]
    if beats_baselines and beats_stage1 and rare_ok is not False:
        word = "SUPPORTED"
    elif vs["full"]["mean"] >= 0:
        word = "REFUTED (rs-prune does not beat full at equal steps)"
    elif vs["full"]["beats"] and vs["stage1+random"]["indistinct"]:
        word = "REFUTED (the gain over full is Stage I's junk removal: rs-prune ≈ stage1+random)"
    else:
        word = "INCONCLUSIVE"
    stage2 = (
        "Stage II helps (rs-prune beats stage1+random)"
        if beats_stage1
        else "Stage II adds nothing measurable (rs-prune ≈ stage1+random)"
        if vs["stage1+random"]["indistinct"]
        else "Stage II hurts (stage1+random beats rs-prune)"
        if paired(runs, p, "stage1+random", "rs-prune", last)["beats"]
        else "Stage II: no clear difference"
    )
    if "oracle-clean" in vs:
        stage2 += (
            "; rs-prune beats oracle-clean"
            if vs["oracle-clean"]["beats"]
            else "; rs-prune ≈ oracle-clean"
            if vs["oracle-clean"]["indistinct"]
            else "; oracle-clean is better"
        )
    return {"verdict": word, "stage2": stage2, "paired_vs": vs, "rare_recall": rare_recall}


def write_markdown(path: Path, res: dict) -> None:
    p, t = res["protocol"], res["table"]
    rows = method_rows(p)
    last = p["checkpoints"][-1]
    L = [
        f"# Convergence at equal steps — `{p['config']}` configuration, corpus `{p['corpus']}`",
        "",
        f"Written by `benchmarks/convergence.py --config {p['config']}"
        + (f" --corpus {p['corpus']}" if p["corpus"] != "synth" else "")
        + f"` on {res['machine']} "
        f"({res['date']}); total wall time **{res['seconds']['total'] / 60:.1f} min** "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in res['seconds'].items() if k != 'total')}).",
        "",
        f"Protocol digest `{res['protocol_digest'][:16]}`: budget {p['budget']} = **{res['facts']['budget_count']} of "
        f"{res['facts']['n']} tiles**, Stage I keep {p['entropy_keep']} (threshold "
        f"{res['facts'].get('stage1_threshold_bits', float('nan')):.3f} bits), k {res['k']}, "
        f"{p['tile_size']}-px tiles; "
        f"{p['dit']['model']}, batch {p['dit']['batch_size']}, lr {p['dit']['lr']}, EMA {p['dit']['ema_decay']}, "
        f"{p['dit']['steps']} steps; {p['sampler']} {p['sampler_steps']} steps, {p['n_fd']} EMA samples per score; "
        f"seeds {list(p['seeds'])}; precision/recall k = {PR_K}.",
        "",
        f"VAE `{p['vae']['preset']}` {p['vae']['steps']} steps: PSNR on its held-out scene "
        f"{res['vae']['vae']['psnr']:.2f} dB (bicubic x8 {res['vae']['bicubic_x8']['psnr']:.2f} dB). "
        "Per-catalog latent "
        "std / VAE std (largest channel): "
        + ", ".join(f"{m} {max(r):.2f}" for m, r in res["latent_std_ratio"].items())
        + " (each catalog trains on its own normalisation).",
        "",
        "Feature spaces: "
        + "; ".join(f"`{s['name']}` {s['dim']}-d sha256 `{s['digest'][:16]}`" for s in res["spaces"])
        + f" (primary: `{PRIMARY}`). References: "
        + "; ".join(f"`{k}` {v} tiles" for k, v in res["ref_sizes"].items())
        + ".",
        "",
        "Catalog sizes (tiles, first seed): " + ", ".join(f"{m} {n}" for m, n in res["tiles"].items()) + ".",
        "",
        f"## Verdict: **{res['verdict']['verdict']}**",
        "",
        f"{res['verdict']['stage2']}.",
        "",
        f"Paired per-seed differences FD(rs-prune) − FD(other), `{PRIMARY}`, `{TARGET}`, step {last} "
        "(negative: rs-prune better):",
        "",
        "| other | per seed | mean ± sd | seeds rs-prune better | beats |",
        "|---|---|---|---|---|",
    ]
    for b, d in res["verdict"]["paired_vs"].items():
        L.append(
            f"| {b} | {', '.join(f'{x:+.4f}' for x in d['values'])} | {d['mean']:+.4f} ± {d['std']:.4f} | "
            f"{d['a_better_in']}/{len(d['values'])} | {'yes' if d['beats'] else 'no'} |"
        )
    rr = res["verdict"]["rare_recall"]
    if rr.get("full") is not None:
        L += [
            "",
            f"Rare-class (solar_farm) recall on `{TARGET}`: rs-prune {rr['rs-prune']:.3f}, full {rr['full']:.3f}.",
        ]
    filt = {
        st: [res["runs"][f"full/{sd}"]["filtered"][str(st)]["n"] for sd in p["seeds"]]
        for st in p["checkpoints"]
        if str(st) in res["runs"][f"full/{p['seeds'][0]}"]["filtered"]
    }
    if filt:
        L += [
            "",
            f"full-filtered: of {FILTER_OVERDRAW * p['n_fd']} samples drawn per checkpoint, the first "
            f"{p['n_fd']} passing Stage I's rule are kept; passing (per seed): "
            + "; ".join(f"step {st}: {', '.join(map(str, v))}" for st, v in filt.items())
            + ".",
        ]
    L += [
        "",
        f"Steps to reach full's final FD ({PRIMARY}, {TARGET}, "
        f"{t[f'full|{last}|{PRIMARY}|{TARGET}|fd']['mean']:.4f}): "
        + ", ".join(f"{m} {('%.0f' % s) if s is not None else 'not reached'}" for m, s in res["steps_to_full"].items())
        + ".",
        "",
    ]
    for space in SPACES:
        for ref in res["refs"]:
            L += [
                f"## `{space}` vs `{ref}` — FD (mean ± sd over seeds), precision / recall at step {last}",
                "",
                "| method | "
                + " | ".join(f"FD {s}" for s in p["checkpoints"])
                + f" | P@{last} | R@{last} | floor: own tiles | floor: VAE recon |",
                "|---|" + "---|" * (len(p["checkpoints"]) + 4),
            ]
            for m in rows:
                key = lambda s, k: t.get(f"{m}|{s}|{space}|{ref}|{k}")  # noqa: E731
                cells = [
                    f"{key(s, 'fd')['mean']:.4f} ± {key(s, 'fd')['std']:.4f}" if key(s, "fd") else "–"
                    for s in p["checkpoints"]
                ]
                pr = [f"{key(last, k)['mean']:.3f}" if key(last, k) else "–" for k in ("precision", "recall")]
                fl = res["floors"].get(f"catalog:{m}", {}).get(space, {}).get(ref, {}).get("fd")
                fv = res["floors"].get(f"vae-recon:{m}", {}).get(space, {}).get(ref, {}).get("fd")
                L.append(
                    f"| {m} | " + " | ".join(cells + pr) + f" | {'%.4f' % fl if fl is not None else '–'} | "
                    f"{'%.4f' % fv if fv is not None else '–'} |"
                )
            noise = res.get("noise", {}).get(space, {}).get(ref)
            L += [
                "",
                f"Sampling noise (full, final step, two generation seeds): {noise:.4f}." if noise is not None else "",
                "",
            ]
    if res.get("class_mix"):
        classes = list(next(iter(res["catalog_mix"].values())))
        L += [
            f"## Class mix (synthetic labels) of each catalog, and of the step-{last} samples",
            "",
            f"The sample classifier (nearest class mean of `balanced` in `{PRIMARY}`) labels real `{TARGET}` tiles "
            f"with accuracy {res['classifier_check']['real']:.3f} and their VAE reconstructions with "
            f"{res['classifier_check']['decoded']:.3f} (n = {res['classifier_check']['n']}); it knows content "
            "classes only.",
            "",
            "| catalog | " + " | ".join(classes) + " |",
            "|---|" + "---|" * len(classes),
        ]
        for m in p["methods"]:
            L.append(f"| {m} | " + " | ".join(f"{res['catalog_mix'][m].get(c, 0):.3f}" for c in classes) + " |")
        mc = list(next(iter(res["class_mix"].values())))
        L += ["", "| samples | " + " | ".join(mc) + " |", "|---|" + "---|" * len(mc)]
        for m, mix in res["class_mix"].items():
            L.append(f"| {m} | " + " | ".join(f"{mix[c]:.3f}" for c in mc) + " |")
        L.append("")
    elif res.get("catalog_mix"):
        years = sorted({y for mix in res["catalog_mix"].values() for y in mix})
        L += [
            "## Year mix of each catalog",
            "",
            "| catalog | " + " | ".join(years) + " |",
            "|---|" + "---|" * len(years),
        ]
        for m, mix in res["catalog_mix"].items():
            L.append(f"| {m} | " + " | ".join(f"{mix.get(y, 0):.3f}" for y in years) + " |")
        L.append("")
    L += [
        f"![FD vs steps](convergence_{p['config']}_{p['corpus']}.png)",
        "",
        "Per-seed values, floors, per-class recall and final training losses are in the `.json` beside this file; "
        "`--check` compares a fresh run's paired differences with it.",
        "",
    ]
    path.write_text("\n".join(L))


def plot(path: Path, res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p, t, refs = res["protocol"], res["table"], res["refs"]
    fig, axes = plt.subplots(len(SPACES), len(refs), figsize=(5.2 * len(refs), 3.8 * len(SPACES)), squeeze=False)
    steps = list(p["checkpoints"])
    for row, space in enumerate(SPACES):
        for ax, ref in zip(axes[row], refs):
            for m in method_rows(p):
                if f"{m}|{steps[-1]}|{space}|{ref}|fd" not in t:
                    continue
                mu = [t[f"{m}|{s}|{space}|{ref}|fd"]["mean"] for s in steps]
                sd = [t[f"{m}|{s}|{space}|{ref}|fd"]["std"] for s in steps]
                ax.errorbar(steps, mu, yerr=sd, marker="o", capsize=3, label=m, lw=2.2 if m == "rs-prune" else 1.2)
            ax.axhline(
                res["floors"]["vae-recon:full"][space][ref]["fd"], color="grey", ls=":", label="VAE floor (full)"
            )
            ax.set_title(f"{p['corpus']}: {space} vs {ref}", fontsize=9)
            ax.set_xlabel("DiT steps")
            ax.set_ylabel("FD")
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -------------------------------------------------------------------------------------------- check
def check(fresh: dict, committed: dict) -> bool:
    if fresh["protocol_digest"] != committed["protocol_digest"]:
        say("protocol differs from the committed one: nothing to compare")
        return False
    p = fresh["protocol"]
    ok, worst, n = True, 0.0, 0
    for m in method_rows(p):
        if m == "full":
            continue
        for step in p["checkpoints"]:
            for space in SPACES:
                for ref in fresh["refs"]:
                    dc, df = (
                        committed["paired_full"].get(f"{m}|{step}|{space}|{ref}"),
                        fresh["paired_full"].get(f"{m}|{step}|{space}|{ref}"),
                    )
                    if dc is None or df is None:
                        continue
                    noise = max(fresh["noise"][space][ref], committed["noise"][space][ref])
                    tol = CHECK_K * math.hypot(dc["std"], df["std"]) + CHECK_K * noise
                    diff = abs(df["mean"] - dc["mean"])
                    worst, n = max(worst, diff / max(tol, 1e-12)), n + 1
                    if diff > tol:
                        ok = False
                        say(
                            f"  OUTSIDE {m} − full @ {step} {space} {ref}: fresh {df['mean']:+.4f}, committed "
                            f"{dc['mean']:+.4f} (tol {tol:.4f})"
                        )
    same = fresh["verdict"]["verdict"] == committed["verdict"]["verdict"]
    say(
        f"check: {n} paired cells, largest |Δ| = {worst:.2f} of the tolerance; verdict "
        f"{'the same' if same else 'DIFFERENT'} ({fresh['verdict']['verdict']}) -> "
        + ("REPRODUCED" if ok and same else "NOT reproduced")
    )
    return ok and same


def paired_full(runs: dict, p: dict, refs: list[str]) -> dict:
    return {
        f"{m}|{step}|{space}|{ref}": paired(runs, p, m, "full", step, space, ref)
        for m in method_rows(p)
        if m != "full"
        for step in p["checkpoints"]
        for space in SPACES
        for ref in refs
        if _values(runs, p, m, step, space, ref)
    }


# --------------------------------------------------------------------------------------------- main
def run(p: dict, work: Path) -> dict:
    from rsgeo_prune.train.device import cpu_has_amx
    from rsgeo_prune.train.vae import load_vae

    work.mkdir(parents=True, exist_ok=True)
    times, t_all = {}, time.perf_counter()
    say(f"convergence: config {p['config']}, corpus {p['corpus']}, work {work}, methods {', '.join(p['methods'])}")
    t0 = time.perf_counter()
    data = (build_synth if p["corpus"] == "synth" else build_naip)(work, p)
    times["corpus"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    catalogs, facts = build_catalogs(work, data, p)
    times["catalogs"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    vae_dir, lat_full, vae_report = train_and_encode(work, p)
    times["vae+encode"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    judge = Judge(data["refs"], data["ref_classes"])
    fl, cat_mix, cls_check = floors(data, catalogs, judge, load_vae(vae_dir), p)
    times["references+floors"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    runs, ratios = train_and_judge(work, lat_full, vae_dir, catalogs, data, p, facts.get("stage1_threshold_bits"))
    times["dit+scores"] = time.perf_counter() - t0
    times["total"] = time.perf_counter() - t_all
    refs = list(data["refs"])
    table = summarise(runs, p, refs)
    last = p["checkpoints"][-1]
    goal = table[f"full|{last}|{PRIMARY}|{TARGET}|fd"]["mean"]
    from _common import cpu_name  # the script's folder is on sys.path when it runs

    cpu = cpu_name()
    res = dict(
        protocol=p,
        protocol_digest=digest(p),
        refs=refs,
        k=data["k"],
        facts=facts,
        machine=f"{cpu}, {os.cpu_count()} cores (AMX: {cpu_has_amx()}), torch threads 1, {p['procs']} DiT processes",
        date=time.strftime("%Y-%m-%d"),
        seconds={k: round(v, 1) for k, v in times.items()},
        spaces=[dict(name=s.name, dim=s.dim, digest=s.digest) for s in judge.spaces.values()],
        ref_sizes={k: len(v) for k, v in data["refs"].items()},
        tiles={m: len(catalogs[m, p["seeds"][0]]) for m in p["methods"]},
        vae=vae_report["validation"],
        latent_std_ratio=ratios,
        floors=fl,
        table=table,
        paired_full=paired_full(runs, p, refs),
        noise=runs[f"full/{p['seeds'][0]}"]["noise"],
        steps_to_full={m: steps_to_reach(table, p, m, goal) for m in method_rows(p) if m != "full"},
        verdict=verdict(runs, table, p),
        catalog_mix=cat_mix,
        classifier_check=cls_check,
        runs=runs,
    )
    if judge.centroids is not None:
        res["class_mix"] = {
            m: {
                k: float(np.mean([runs[f"{m}/{s}"]["checkpoints"][str(last)]["mix"][k] for s in p["seeds"]]))
                for k in judge.mix_classes
            }
            for m in p["methods"]
        }
    if p["corpus"] == "naip":
        res["heldout_block"] = data["heldout_block"]
    say(f"done in {times['total'] / 60:.1f} min; verdict: {res['verdict']['verdict']}; {res['verdict']['stage2']}")
    return res


def _shares(text: str) -> dict:
    try:
        pairs = [kv.split("=") for kv in text.split(",") if kv.strip()]
        shares = {k.strip(): float(v) for k, v in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write class=share pairs, e.g. cloud=0.25,water=0.25,cropland=0.5")
    from rsgeo_prune.synth import CLASSES, RARE_CLASS

    bad = [k for k in shares if k not in CLASSES or k == RARE_CLASS]
    if bad or not shares or any(not 0 <= v <= 1 for v in shares.values()) or abs(sum(shares.values()) - 1) > 1e-6:
        raise argparse.ArgumentTypeError(
            f"{text!r}: shares of classes among {', '.join(c for c in CLASSES if c != RARE_CLASS)},"
            " each in [0, 1], summing to 1 (the rare class is --synth-rare)"
        )
    return shares


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    ap.add_argument("--corpus", choices=("synth", "naip"), default="synth")
    ap.add_argument("--budget", type=float, help="fraction kept (default: the protocol's 0.15 = 85 %% pruned)")
    ap.add_argument("--entropy-keep", type=float, help="Stage I keep fraction (default: the protocol's)")
    ap.add_argument(
        "--synth-shares",
        type=_shares,
        default=dict(SYNTH_SHARES),
        help="class shares of a synthetic scene, e.g. cloud=0.25,water=0.25,cropland=0.16,forest=0.12,"
        "urban=0.12,bare_soil=0.10 (the default)",
    )
    ap.add_argument("--synth-rare", type=int, default=SYNTH_RARE, help="rare-class tiles per scene")
    ap.add_argument(
        "--synth-dup-share",
        type=float,
        default=SYNTH_DUP_SHARE,
        help="share of a scene's tiles overwritten by noisy shifted copies of two templates",
    )
    ap.add_argument(
        "--synth-dup-noise", type=float, default=SYNTH_DUP_NOISE, help="noise std of the copies (uint8 levels)"
    )
    ap.add_argument("--synth-scenes", type=int, default=None, help="training scenes (default: the config's)")
    ap.add_argument("--work", type=Path, help="work folder (VAE, latents and DiT runs are reused from it)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where the .md/.json/.png go")
    ap.add_argument("--check", action="store_true", help="run afresh and compare with the committed table")
    a = ap.parse_args(argv)
    for name, v, lo, hi in (
        ("--synth-rare", a.synth_rare, 0, 100),
        ("--synth-dup-share", a.synth_dup_share, 0, 0.5),
        ("--synth-dup-noise", a.synth_dup_noise, 0, 64),
    ):
        if not lo <= v <= hi:
            ap.error(f"{name} {v}: must be in [{lo}, {hi}]")
    mix = dict(shares=a.synth_shares, rare=a.synth_rare, dup_share=a.synth_dup_share, dup_noise=a.synth_dup_noise)
    p = protocol(a.config, a.corpus, a.budget, a.entropy_keep, mix)
    if a.synth_scenes is not None and a.corpus == "synth":
        if a.synth_scenes < 1:
            ap.error(f"--synth-scenes {a.synth_scenes}: must be at least 1")
        p["synth"]["train_scenes"] = a.synth_scenes
    stem = f"convergence_{a.config}_{a.corpus}"
    tmp = None
    if a.work is None:
        tmp = Path(tempfile.mkdtemp(prefix=f"{stem}-"))
        a.work = tmp
    try:
        res = run(p, a.work)
        if a.check:
            committed = json.loads((a.out / f"{stem}.json").read_text())
            (a.work / f"{stem}.fresh.json").write_text(json.dumps(res, indent=1))
            return 0 if check(res, committed) else 1
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / f"{stem}.json").write_text(json.dumps(res, indent=1))
        write_markdown(a.out / f"{stem}.md", res)
        plot(a.out / f"{stem}.png", res)
        say(f"wrote {a.out / stem}.{{md,json,png}}")
        say((a.out / f"{stem}.md").read_text())
        return 0
    finally:
        if tmp is not None and not a.check:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
