"""Issue 15: does the curated catalog train a better model at equal steps? (RS-Prune §4, reproduced small)

PROTOCOL (fixed before the first real run; changing any value below makes a different experiment)
====================================================================================================
For one corpus, at one budget B (fraction of the tiles that pass the nodata pre-filter):

* catalogs (``rsgeo_prune.pipeline.run_pipeline``, 64-px tiles on CPU):
    full             every tile that passes the pre-filters (method random, budget 1.0, no Stage I)
    random           uniform random B over the same tiles (no Stage I: the paper's baseline)
    entropy          the B highest-entropy tiles (Stage I alone; entropy_min 0 so that entropy is computed)
    cluster-nearest  k-means with B clusters on all tiles, the nearest tile of each (no Stage I)
    rs-prune         Stage I keeps ``entropy_keep`` of the tiles, Stage II picks B of them by reference-centroid quota
  catalog seed = run seed (random, cluster-nearest and the rs-prune bank draw from it).
* one VAE per corpus, trained once on the *full* catalog (held-out tiles are other files, never seen),
  best checkpoint by loss on a 10 % hash split of the training tiles; every catalog is encoded once
  (the full catalog's latents; a catalog's latents are its rows of those).
* the same DiT config from the same seed on each catalog for the same steps; EMA samples at fixed
  checkpoints: ``n_fd`` samples (one fixed generation seed for every run: paired noise), DDIM ``eta`` 0,
  decoded by the VAE, Fréchet distance in the ``rsgeo-default`` feature space (name + sha256 digest
  reported) against two held-out reference sets (real pixels):
    random    tiles of held-out scenes drawn like the training corpus (the paper's protocol)
    balanced  an equal number of tiles per class (synthetic corpus only: classes are known there)
* seeds 0, 1, 2 per method; tables give mean ± std (sample std, ddof 1) over seeds.
* floors in the same space: real tiles of each catalog vs each reference (a perfect generator of that
  catalog), VAE reconstructions of the reference vs the reference (what the shared VAE allows).
* synthetic corpus: the class mix of the final samples, each sample classed by the nearest class mean of
  the balanced set's features (its accuracy on the labelled random reference is printed).

The configuration values are in ``CONFIGS`` below. ``--check`` runs the same protocol afresh (new work
folder) and passes when every FD cell's fresh mean lies within the committed mean ± 2 · committed std
(the committed table's spread) or within 0.002 (the FD noise floor at n = 512, TRAINING-NOTES.md).

    .venv/bin/python benchmarks/convergence.py --config cpu                  # synthetic corpus
    .venv/bin/python benchmarks/convergence.py --config cpu --corpus naip    # real NAIP years
    .venv/bin/python benchmarks/convergence.py --config cpu --check          # reproduce the committed table
"""

from __future__ import annotations

import sys


import argparse
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED = ROOT.parent / "shared" / "data"

METHODS = ("full", "random", "entropy", "cluster-nearest", "rs-prune")
FEATURE = "rsgeo-default"

# ------------------------------------------------------------------------------------------ protocol
CONFIGS: dict[str, dict] = {
    # 2-core CPU, torch threads 1, <= 30 min per corpus
    "cpu": dict(tile_size=64, budget=0.3, entropy_keep=0.5, k=28, k_naip=30,
                vae=dict(preset="small", steps=400, batch_size=16, lr=1e-3, kl_weight=1e-6, val_every=100),
                dit=dict(model="DiT-tiny/2", batch_size=32, lr=5e-4, ema_decay=0.999, steps=3000, grad_clip=1.0),
                checkpoints=(500, 1500, 3000), sampler="ddim", sampler_steps=50, n_fd=512, seeds=(0, 1, 2),
                synth=dict(train_scenes=4, rows=16, cols=16, heldout_scenes=2, balanced_per_class=64,
                           reference_per_class=16),
                naip=dict(heldout_year="2020", heldout_stride=32)),
    # one GPU (H100): 256-px tiles, DiT-S/2 on 32x32 latents, thousands of steps. Documented; not run yet.
    "gpu": dict(tile_size=256, budget=0.3, entropy_keep=0.5, k=28, k_naip=30,
                vae=dict(preset="base", steps=4000, batch_size=32, lr=1e-4, kl_weight=1e-6, val_every=500),
                dit=dict(model="DiT-S/2", batch_size=256, lr=1e-4, ema_decay=0.9999, steps=20000, grad_clip=1.0),
                checkpoints=(2500, 5000, 10000, 20000), sampler="ddpm", sampler_steps=250, n_fd=2048,
                seeds=(0, 1, 2),
                synth=dict(train_scenes=8, rows=24, cols=24, heldout_scenes=2, balanced_per_class=300,
                           reference_per_class=32),
                naip=dict(heldout_year="2020", heldout_stride=64)),
    # seconds: exercises every step of the script (not a result)
    "smoke": dict(tile_size=64, budget=0.3, entropy_keep=0.5, k=14, k_naip=30,
                  vae=dict(preset="tiny", steps=20, batch_size=16, lr=1e-3, kl_weight=1e-6, val_every=10),
                  dit=dict(model="DiT-tiny/2", batch_size=16, lr=5e-4, ema_decay=0.999, steps=40, grad_clip=1.0),
                  checkpoints=(20, 40), sampler="ddim", sampler_steps=5, n_fd=64, seeds=(0, 1),
                  synth=dict(train_scenes=2, rows=8, cols=8, heldout_scenes=1, balanced_per_class=8,
                             reference_per_class=4),
                  naip=dict(heldout_year="2020", heldout_stride=64)),
}
#: synthetic corpus: class shares of a training scene (redundant: half of it cloud and water) ...
SYNTH_SHARES = {"cloud": 0.25, "water": 0.25, "cropland": 0.16, "forest": 0.12, "urban": 0.12, "bare_soil": 0.10}
SYNTH_RARE = 3          # ... solar_farm tiles per scene
SYNTH_DUP_SHARE = 0.15  # ... share of a scene's tiles overwritten by noisy, shifted copies of 2 template tiles
SYNTH_DUP_NOISE = 3.0   # std (uint8 levels) of the copies' noise
EVAL_SEED = 12345       # generation seed of every FD sample set
CHECK_STD = 2.0         # --check: |fresh − committed| <= CHECK_STD · committed std ...
CHECK_ABS = 0.002       # ... or <= this (the FD noise floor at n = 512)


def protocol(config: str, corpus: str, budget: float | None, entropy_keep: float | None) -> dict:
    p = json.loads(json.dumps(CONFIGS[config]))
    if budget is not None:
        p["budget"] = budget
    if entropy_keep is not None:
        p["entropy_keep"] = entropy_keep
    p.update(config=config, corpus=corpus, feature=FEATURE, eval_seed=EVAL_SEED,
             synth_mix=dict(shares=SYNTH_SHARES, rare=SYNTH_RARE, dup_share=SYNTH_DUP_SHARE, dup_noise=SYNTH_DUP_NOISE))
    if corpus != "synth":
        p.pop("synth_mix")
    return p


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def say(*a):
    print(*a, flush=True)


# ------------------------------------------------------------------------------------------- corpora
def _tiles_of(path: Path, size: int, stride: int | None = None) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """All full ``size`` tiles of a raster (row-major), without any nodata pixel; and their offsets."""
    import rasterio

    stride = stride or size
    with rasterio.open(path) as src:
        a = src.read()
        nodata = src.nodata
    tiles, offs = [], []
    for r in range(0, a.shape[1] - size + 1, stride):
        for c in range(0, a.shape[2] - size + 1, stride):
            t = a[:, r:r + size, c:c + size]
            if nodata is not None and (t == nodata).all(axis=0).any():
                continue
            tiles.append(t)
            offs.append((r, c))
    return np.stack(tiles), offs


def _synth_layout(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    from rsgeo_prune.synth import NODATA_CLASS, RARE_CLASS

    valid = (rows - 1) * cols  # one nodata collar row: the pre-filter has something to drop
    counts = {c: int(round(s * (valid - SYNTH_RARE))) for c, s in SYNTH_SHARES.items()}
    counts["cropland"] += valid - SYNTH_RARE - sum(counts.values())
    labels = np.array([RARE_CLASS] * SYNTH_RARE + [c for c, k in counts.items() for _ in range(k)], dtype=object)
    labels = labels[rng.permutation(valid)]
    return np.concatenate([labels, np.full(cols, NODATA_CLASS, dtype=object)]).reshape(rows, cols)


def _redundant_scene(path: Path, rows: int, cols: int, size: int, seed: int) -> dict[str, str]:
    """A synthetic scene heavy in cloud and water, with near-duplicates; returns tile_id → class."""
    import rasterio

    from rsgeo_prune.synth import RARE_CLASS, write_scene

    rng = np.random.default_rng(seed + 7_000)
    layout = _synth_layout(rows, cols, rng)
    scene = write_scene(path, rows=rows, cols=cols, tile_size=size, seed=seed, layout=layout, nodata_rows=1)
    with rasterio.open(path) as src:
        a, profile, desc = src.read(), src.profile, src.descriptions
    cand = [(i, j) for (i, j), c in np.ndenumerate(layout) if c in ("cropland", "urban", "forest")]
    templates = [cand[k] for k in rng.choice(len(cand), 2, replace=False)]
    others = [(i, j) for (i, j), c in np.ndenumerate(layout)
              if c not in ("nodata", RARE_CLASS) and (i, j) not in templates]
    n_dup = int(round(SYNTH_DUP_SHARE * rows * cols))
    for k in rng.choice(len(others), n_dup, replace=False):
        (i, j), (ti, tj) = others[k], templates[k % 2]
        t = a[:, ti * size:(ti + 1) * size, tj * size:(tj + 1) * size].astype(np.float32)
        t = np.roll(t, tuple(rng.integers(-2, 3, 2)), axis=(1, 2)) + rng.normal(0, SYNTH_DUP_NOISE, t.shape)
        a[:, i * size:(i + 1) * size, j * size:(j + 1) * size] = np.clip(np.round(t), 1, 255).astype(np.uint8)
        layout[i, j] = layout[ti, tj]
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(a)
        for b, d in enumerate(desc, start=1):
            if d:
                dst.set_band_description(b, d)
    return {f"{path.stem}/{i * size}_{j * size}": str(c) for (i, j), c in np.ndenumerate(layout)}


def build_synth(work: Path, p: dict) -> dict:
    from rsgeo_prune.synth import CLASSES, write_reference_set, write_scene

    s, size = p["synth"], p["tile_size"]
    labels, inputs = {}, []
    for i in range(s["train_scenes"]):
        path = work / "corpus" / f"train_{i}.tif"
        labels.update(_redundant_scene(path, s["rows"], s["cols"], size, seed=100 + i))
        inputs.append(path)
    held, held_cls = [], []
    for i in range(s["heldout_scenes"]):
        path = work / "heldout" / f"heldout_{i}.tif"
        lab = _redundant_scene(path, s["rows"], s["cols"], size, seed=900 + i)
        tiles, offs = _tiles_of(path, size)
        held.append(tiles)
        held_cls += [lab[f"{path.stem}/{r}_{c}"] for r, c in offs]
    per = s["balanced_per_class"]
    cols = 16 if per % 16 == 0 else per
    layout = np.array([c for c in CLASSES for _ in range(per)], dtype=object)
    layout = layout[np.random.default_rng(950).permutation(len(layout))].reshape(-1, cols)
    bpath = work / "heldout" / "balanced.tif"
    write_scene(bpath, rows=layout.shape[0], cols=cols, tile_size=size, seed=950, layout=layout, nodata_rows=0)
    btiles, boffs = _tiles_of(bpath, size)
    bcls = [str(layout[r // size, c // size]) for r, c in boffs]
    reference = write_reference_set(work / "reference", per_class=s["reference_per_class"], size=size, seed=11)
    return dict(inputs=inputs, reference=reference, labels=labels, k=p["k"],
                refs={"random": np.concatenate(held), "balanced": btiles},
                ref_classes={"random": held_cls, "balanced": bcls}, classes=list(CLASSES))


def build_naip(work: Path, p: dict) -> dict:
    n = p["naip"]
    files = sorted((SHARED / "naip").glob("m_*.tif"))
    if not files:
        raise SystemExit(f"{SHARED / 'naip'}: no NAIP files; the naip corpus needs ../shared/data")
    held = [f for f in files if f"_{n['heldout_year']}" in f.stem]
    train = [f for f in files if f not in held]
    tiles, _ = _tiles_of(held[0], p["tile_size"], n["heldout_stride"])
    return dict(inputs=train, reference=SHARED / "reference" / "aid_150px", labels=None, k=p["k_naip"],
                refs={"random": tiles}, ref_classes=None, classes=None, heldout=[f.name for f in held])


# ------------------------------------------------------------------------------------------ catalogs
def build_catalogs(work: Path, data: dict, p: dict) -> dict[tuple[str, int], list[str]]:
    """(method, seed) → kept tile ids; catalogs that do not depend on the seed are built once."""
    from rsgeo_prune.config import RunConfig, TileConfig
    from rsgeo_prune.pipeline import run_pipeline

    out = {}
    for method in METHODS:
        for seed in p["seeds"]:
            if method in ("full", "entropy") and seed != p["seeds"][0]:
                out[method, seed] = out[method, p["seeds"][0]]
                continue
            # entropy: Stage I must run for the entropy column to exist; entropy_min 0 bits keeps every tile
            # (without it, method "entropy" sees no entropy and silently ranks by the tile-id tie-break)
            stage = dict(entropy_keep=p["entropy_keep"]) if method == "rs-prune" else \
                dict(entropy_min=0.0) if method == "entropy" else {}
            run_cfg = RunConfig(budget=1.0 if method == "full" else p["budget"],
                                method="random" if method == "full" else method, k=data["k"], seed=int(seed))
            cat, counts = run_pipeline([str(x) for x in data["inputs"]], work / "catalogs" / f"{method}-s{seed}",
                                       [str(data["reference"])], TileConfig(tile_size=p["tile_size"], **stage),
                                       run_cfg, scheduler="synchronous", progress=False)
            out[method, seed] = sorted(cat.loc[cat["kept"].astype(bool), "tile_id"].astype(str))
            if method == "full":
                shutil.copy(work / "catalogs" / f"{method}-s{seed}" / "catalog.parquet", work / "full_catalog.parquet")
            say(f"  catalog {method:16s} seed {seed}: {len(out[method, seed])} tiles ({counts})")
    return out


# ------------------------------------------------------------------------------------- VAE, latents
def train_and_encode(work: Path, p: dict) -> tuple[Path, Path]:
    from rsgeo_prune.train.dataset import CatalogDataset, hash_split
    from rsgeo_prune.train.latents import encode_catalog
    from rsgeo_prune.train.vae import VAETrainConfig, train_vae

    cat = work / "full_catalog.parquet"
    ids = CatalogDataset(cat, select="kept").tile_ids
    val = hash_split(ids, 0.1)
    train_ids = [t for t, v in zip(ids, val) if not v]
    val_ids = [t for t, v in zip(ids, val) if v]
    vae_out = work / "vae"
    if not (vae_out / "vae" / "config.json").exists():
        shutil.rmtree(vae_out, ignore_errors=True)
        v = p["vae"]
        cfg = VAETrainConfig(preset=v["preset"], steps=v["steps"], batch_size=v["batch_size"], lr=v["lr"],
                             kl_weight=v["kl_weight"], val_every=v["val_every"], save_every=v["steps"],
                             log_every=50, seed=0)
        res = train_vae(CatalogDataset(cat, select=train_ids, dihedral=True), CatalogDataset(cat, select=val_ids),
                        vae_out, cfg, progress=False)
        say(f"  VAE {v['preset']}: {res.step} steps, best val {res.best_val:.4f} at step {res.best_step}; "
            f"val PSNR {res.metrics.get('vae', {}).get('psnr', float('nan')):.2f} dB")
    lat = work / "latents" / "full"
    encode_catalog(CatalogDataset(cat, select="kept"), vae_out, lat, progress=False)
    return vae_out, lat


def subset_latents(full: Path, ids: list[str], out: Path) -> Path:
    """A latent folder (encode layout) holding the rows ``ids`` of ``full``: no second encoding."""
    from rsgeo_prune.atomic import atomic_output
    from rsgeo_prune.train.latents import INDEX_FILE, LatentShards, shard_name, write_shard

    if (out / INDEX_FILE).exists():
        return out
    ds = LatentShards(full)
    pos = {t: i for i, t in enumerate(ds.tile_ids)}
    idx = torch.tensor([pos[t] for t in ids])
    index = dict(ds.index)
    meta = {k: (json.dumps(v) if k in ("latents_mean", "latents_std", "bands") else str(v)) for k, v in index.items()
            if k in ("format", "vae_digest", "latents_mean", "latents_std", "bands")}
    meta.update(catalog_digest=digest(ids), shard_size=str(len(ids)), shard="0")
    write_shard(out / shard_name(0), ds.mean[idx], ds.logvar[idx], ids, meta)
    index.update(tiles=len(ids), shards=[shard_name(0)], shard_size=len(ids), catalog_digest=meta["catalog_digest"])
    with atomic_output(out / INDEX_FILE) as tmp:
        tmp.write_text(json.dumps(index, indent=2))
    return out


# ---------------------------------------------------------------------------------------- evaluation
class Judge:
    """Reference features, floors and the sample classifier, computed once per corpus."""

    def __init__(self, data: dict, vae, p: dict):
        from rsgeo_prune.train.metrics import feature_space

        self.space = feature_space(FEATURE, channels=4, threads=1)
        self.refs = {name: self.space(t) for name, t in data["refs"].items()}
        self.classes = data["classes"]
        self.centroids = None
        if data["ref_classes"]:
            f, cls = self.refs["balanced"], np.array(data["ref_classes"]["balanced"])
            c = np.stack([f[cls == k].mean(0) for k in self.classes])
            self.centroids = c / np.linalg.norm(c, axis=1, keepdims=True)
            pred = self.classify(self.refs["random"])
            truth = np.array(data["ref_classes"]["random"])
            self.accuracy = float((pred == truth).mean())

    def fd(self, feats: np.ndarray) -> dict[str, float]:
        from rsgeo_prune.train.metrics import frechet_distance

        return {name: float(frechet_distance(feats, ref)) for name, ref in self.refs.items()}

    def classify(self, feats: np.ndarray) -> np.ndarray:
        f = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
        return np.array(self.classes)[np.argmax(f @ self.centroids.T, axis=1)]

    def mix(self, feats: np.ndarray) -> dict[str, float]:
        pred = self.classify(feats)
        return {k: float((pred == k).mean()) for k in self.classes}


@torch.no_grad()
def reconstruct(vae, tiles_u8: np.ndarray, device) -> torch.Tensor:
    from rsgeo_prune.train.sampling import decode_latents

    x = torch.from_numpy(tiles_u8.astype(np.float32) / 127.5 - 1.0)
    z = torch.cat([vae.encode(x[i:i + 32].to(device)).latent_dist.mean.cpu() for i in range(0, len(x), 32)])
    return decode_latents(vae, z, device=device)


def evaluate_checkpoint(path: Path, vae, judge: Judge, p: dict, device) -> dict:
    from rsgeo_prune.train.sampling import decode_latents, denormalise, diffusion_of, ema_model, generate_latents, read_checkpoint

    model, info = ema_model(read_checkpoint(path), device)
    z = generate_latents(model, diffusion_of(info["config"]), p["n_fd"], latent_shape=tuple(info["latents"]["latent_shape"]),
                         steps=p["sampler_steps"], sampler=p["sampler"], eta=0.0, seed=EVAL_SEED, batch_size=256,
                         device=device)
    tiles = decode_latents(vae, denormalise(z, info["latents"]), batch_size=64, device=device)
    feats = judge.space(tiles)
    rec = {"fd": judge.fd(feats)}
    if judge.centroids is not None:
        rec["mix"] = judge.mix(feats)
    return rec, tiles


def train_and_judge(work: Path, lat_full: Path, vae_dir: Path, catalogs: dict, judge: Judge, p: dict) -> dict:
    from rsgeo_prune.train.sampling import write_grids
    from rsgeo_prune.train.trainer import DiTTrainConfig, train_dit
    from rsgeo_prune.train.vae import load_vae

    device = "cuda" if torch.cuda.is_available() else "cpu"
    vae = load_vae(vae_dir, device)
    d, cks = p["dit"], list(p["checkpoints"])
    keep = math.gcd(*cks)
    runs = {}
    for method in METHODS:
        for seed in p["seeds"]:
            t0 = time.perf_counter()
            ids = catalogs[method, seed]
            lat = subset_latents(lat_full, ids, work / "latents" / f"{method}-s{seed}")
            out = work / "dit" / f"{method}-s{seed}"
            if not (out / "checkpoints" / f"step-{cks[-1]:07d}.pt").exists():
                shutil.rmtree(out, ignore_errors=True)
                cfg = DiTTrainConfig(model=d["model"], batch_size=d["batch_size"], lr=d["lr"], ema_decay=d["ema_decay"],
                                     grad_clip=d["grad_clip"], steps=cks[-1], log_every=100, save_every=cks[-1],
                                     keep_every=keep, sample_every=0, fd_n=0, seed=int(seed))
                train_dit(lat, out, cfg, progress=False)
            t_train = time.perf_counter() - t0
            rec = {"tiles": len(ids), "checkpoints": {}}
            for step in cks:
                r, tiles = evaluate_checkpoint(out / "checkpoints" / f"step-{step:07d}.pt", vae, judge, p, device)
                rec["checkpoints"][str(step)] = r
            write_grids(tiles[:64], work / "grids", f"{method}-s{seed}")
            losses = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            rec["final_loss"] = [x["loss"] for x in losses if "loss" in x][-1]
            rec["seconds"] = {"train": round(t_train, 1), "total": round(time.perf_counter() - t0, 1)}
            runs[f"{method}/{seed}"] = rec
            last = rec["checkpoints"][str(cks[-1])]["fd"]
            say(f"  DiT {method:16s} seed {seed}: {len(ids)} tiles, loss {rec['final_loss']:.4f}, FD@{cks[-1]} "
                + ", ".join(f"{k} {v:.4f}" for k, v in last.items()) + f" ({rec['seconds']['total']:.0f} s)")
    return runs


def floors(data: dict, catalogs: dict, judge: Judge, vae, p: dict, labels) -> dict:
    """FD of real tiles of each catalog (first seed) and of VAE reconstructions of each reference."""
    import rasterio

    out, cls_mix = {}, {}
    size = p["tile_size"]
    handles = {}
    for method in METHODS:
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
        out[f"catalog:{method}"] = judge.fd(judge.space(np.stack(tiles)))
        if labels is not None:
            cl = [labels[t] for t in ids]
            cls_mix[method] = {k: cl.count(k) / len(cl) for k in data["classes"]}
    for h in handles.values():
        h.close()
    device = next(vae.parameters()).device
    for name, tiles in data["refs"].items():
        rec_feats = judge.space(reconstruct(vae, tiles, device))
        out[f"vae-recon:{name}"] = {name: judge.fd(rec_feats)[name]}
    return out, cls_mix


# ------------------------------------------------------------------------------------------- tables
def summarise(runs: dict, p: dict, refs: list[str]) -> dict:
    table = {}
    for method in METHODS:
        for step in p["checkpoints"]:
            for ref in refs:
                v = [runs[f"{method}/{s}"]["checkpoints"][str(step)]["fd"][ref] for s in p["seeds"]]
                table[f"{method}|{step}|{ref}"] = {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)),
                                                   "values": v}
    return table


def class_mix_summary(runs: dict, p: dict, classes: list[str]) -> dict:
    step = str(p["checkpoints"][-1])
    return {m: {k: float(np.mean([runs[f"{m}/{s}"]["checkpoints"][step]["mix"][k] for s in p["seeds"]]))
                for k in classes} for m in METHODS}


def write_markdown(path: Path, res: dict) -> None:
    p, t = res["protocol"], res["table"]
    refs = res["refs"]
    L = [f"# Convergence at equal steps — `{p['config']}` configuration, corpus `{p['corpus']}`", "",
         f"Written by `benchmarks/convergence.py --config {p['config']}"
         + (f" --corpus {p['corpus']}" if p["corpus"] != "synth" else "") + f"` on {res['machine']} "
         f"({res['date']}); total wall time **{res['seconds']['total'] / 60:.1f} min** "
         f"({', '.join(f'{k} {v:.0f} s' for k, v in res['seconds'].items() if k != 'total')}).", "",
         f"Protocol digest `{res['protocol_digest'][:16]}`: budget {p['budget']}, Stage I keep {p['entropy_keep']} "
         f"(RS-Prune only), k {res['k']}, {p['tile_size']}-px tiles; VAE `{p['vae']['preset']}` {p['vae']['steps']} steps "
         f"(validation PSNR {res['vae'].get('vae', {}).get('psnr', float('nan')):.2f} dB, bicubic x8 "
         f"{res['vae'].get('bicubic_x8', {}).get('psnr', float('nan')):.2f} dB); {p['dit']['model']}, batch {p['dit']['batch_size']}, "
         f"AdamW lr {p['dit']['lr']}, EMA {p['dit']['ema_decay']}, {p['dit']['steps']} steps; {p['sampler']} "
         f"{p['sampler_steps']} steps, {p['n_fd']} EMA samples per FD; seeds {list(p['seeds'])}.", "",
         f"Feature space `{res['feature']['name']}` ({res['feature']['dim']}-d), sha256 `{res['feature']['digest']}`. "
         "Reference sets: " + "; ".join(f"`{k}` {v} tiles" for k, v in res["ref_sizes"].items()) + ".", ""]
    L += ["Catalog sizes (tiles): " + ", ".join(f"{m} {res['tiles'][m]}" for m in METHODS) + ".", ""]
    for ref in refs:
        L += [f"## FD vs `{ref}` reference (mean ± std over {len(p['seeds'])} seeds; lower is better)", "",
              "| method | " + " | ".join(f"step {s}" for s in p["checkpoints"]) + " | floor: catalog's real tiles |",
              "|---|" + "---|" * (len(p["checkpoints"]) + 1)]
        for m in METHODS:
            cells = [f"{t[f'{m}|{s}|{ref}']['mean']:.4f} ± {t[f'{m}|{s}|{ref}']['std']:.4f}" for s in p["checkpoints"]]
            L.append(f"| {m} | " + " | ".join(cells) + f" | {res['floors'][f'catalog:{m}'][ref]:.4f} |")
        L += ["", f"VAE floor (reconstructions of the `{ref}` reference vs itself): "
              f"{res['floors'][f'vae-recon:{ref}'][ref]:.4f}.", ""]
        last = str(p["checkpoints"][-1])
        order = sorted(METHODS, key=lambda m: t[f"{m}|{last}|{ref}"]["mean"])
        L += [f"Ordering at step {last}: " + " < ".join(order) + ".", ""]
    if res.get("class_mix"):
        classes = list(next(iter(res["class_mix"].values())))
        L += [f"## Class mix of the step-{p['checkpoints'][-1]} samples (mean over seeds; nearest class mean of the "
              f"balanced set in `{res['feature']['name']}`, accuracy {res['classifier_accuracy']:.3f} on the labelled "
              "random reference)", "",
              "| method | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
        ref_mix = res["ref_mix"]
        L.append("| *random reference (labels)* | " + " | ".join(f"{ref_mix[c]:.3f}" for c in classes) + " |")
        for m in METHODS:
            L.append(f"| {m} samples | " + " | ".join(f"{res['class_mix'][m][c]:.3f}" for c in classes) + " |")
        for m in METHODS:
            L.append(f"| *{m} catalog (labels)* | " + " | ".join(f"{res['catalog_mix'][m][c]:.3f}" for c in classes) + " |")
        L.append("")
    L += [f"![FD vs steps](convergence_{p['config']}_{p['corpus']}.png)", "",
          "Per-seed values and the final training losses are in the `.json` beside this file; "
          "`--check` compares a fresh run with it (mean within ± 2 std of the committed mean, or within 0.002).", ""]
    path.write_text("\n".join(L))


def plot(path: Path, res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p, t, refs = res["protocol"], res["table"], res["refs"]
    fig, axes = plt.subplots(1, len(refs), figsize=(5.5 * len(refs), 4), squeeze=False)
    steps = list(p["checkpoints"])
    for ax, ref in zip(axes[0], refs):
        for m in METHODS:
            mu = [t[f"{m}|{s}|{ref}"]["mean"] for s in steps]
            sd = [t[f"{m}|{s}|{ref}"]["std"] for s in steps]
            ax.errorbar(steps, mu, yerr=sd, marker="o", capsize=3, label=m)
        ax.axhline(res["floors"][f"vae-recon:{ref}"][ref], color="grey", ls=":", label="VAE floor")
        ax.set_title(f"{p['corpus']}: FD vs {ref} reference")
        ax.set_xlabel("DiT steps")
        ax.set_ylabel(f"FD ({res['feature']['name']})")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -------------------------------------------------------------------------------------------- check
def check(fresh: dict, committed: dict) -> bool:
    if fresh["protocol_digest"] != committed["protocol_digest"]:
        say("protocol differs from the committed one: nothing to compare")
        return False
    ok, worst = True, 0.0
    for key, c in committed["table"].items():
        f = fresh["table"][key]
        diff = abs(f["mean"] - c["mean"])
        tol = max(CHECK_STD * c["std"], CHECK_ABS)
        worst = max(worst, diff / tol)
        if diff > tol:
            ok = False
            say(f"  OUTSIDE {key}: fresh {f['mean']:.4f}, committed {c['mean']:.4f} ± {c['std']:.4f} (tol {tol:.4f})")
    say(f"check: {len(committed['table'])} cells, largest |Δmean| = {worst:.2f} of the tolerance -> "
        + ("REPRODUCED within the reported spread" if ok else "NOT reproduced"))
    return ok


# --------------------------------------------------------------------------------------------- main
def run(config: str, corpus: str, work: Path, budget=None, entropy_keep=None) -> dict:
    import platform

    from rsgeo_prune.train.vae import load_vae

    p = protocol(config, corpus, budget, entropy_keep)
    work.mkdir(parents=True, exist_ok=True)
    times, t_all = {}, time.perf_counter()
    say(f"convergence: config {config}, corpus {corpus}, work {work}")
    t0 = time.perf_counter()
    data = (build_synth if corpus == "synth" else build_naip)(work, p)
    times["corpus"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    catalogs = build_catalogs(work, data, p)
    times["catalogs"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    vae_dir, lat_full = train_and_encode(work, p)
    times["vae+encode"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    vae = load_vae(vae_dir, "cuda" if torch.cuda.is_available() else "cpu")
    judge = Judge(data, vae, p)
    fl, cat_mix = floors(data, catalogs, judge, vae, p, data["labels"])
    times["references+floors"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    runs = train_and_judge(work, lat_full, vae_dir, catalogs, judge, p)
    times["dit+fd"] = time.perf_counter() - t0
    times["total"] = time.perf_counter() - t_all
    refs = list(data["refs"])
    vae_report = json.loads((vae_dir / "vae" / "rsgeo_vae.json").read_text()).get("validation", {})
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"{os.cpu_count()}-core CPU, torch threads 1"
    res = dict(protocol=p, protocol_digest=digest(p), refs=refs, k=data["k"], machine=dev,
               date=time.strftime("%Y-%m-%d"), seconds={k: round(v, 1) for k, v in times.items()},
               feature=dict(name=judge.space.name, dim=judge.space.dim, digest=judge.space.digest),
               ref_sizes={k: len(v) for k, v in data["refs"].items()},
               tiles={m: len(catalogs[m, p["seeds"][0]]) for m in METHODS}, vae=vae_report,
               floors=fl, table=summarise(runs, p, refs), runs=runs)
    if data["classes"]:
        res.update(class_mix=class_mix_summary(runs, p, data["classes"]), catalog_mix=cat_mix,
                   classifier_accuracy=judge.accuracy,
                   ref_mix={k: data["ref_classes"]["random"].count(k) / len(data["ref_classes"]["random"])
                            for k in data["classes"]})
    if corpus == "naip":
        res["heldout"] = data["heldout"]
    say(f"done in {times['total'] / 60:.1f} min")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    ap.add_argument("--corpus", choices=("synth", "naip"), default="synth")
    ap.add_argument("--budget", type=float, help="fraction kept (default: the protocol's)")
    ap.add_argument("--entropy-keep", type=float, help="Stage I keep fraction of RS-Prune (default: the protocol's)")
    ap.add_argument("--work", type=Path, help="work folder (VAE, latents and DiT runs are reused from it)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where the .md/.json/.png go")
    ap.add_argument("--check", action="store_true", help="run afresh and compare with the committed table")
    a = ap.parse_args(argv)
    stem = f"convergence_{a.config}_{a.corpus}"
    tmp = None
    if a.work is None:
        tmp = Path(tempfile.mkdtemp(prefix=f"{stem}-"))
        a.work = tmp
    try:
        res = run(a.config, a.corpus, a.work, a.budget, a.entropy_keep)
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
