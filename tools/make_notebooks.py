"""Write notebooks/*.ipynb from the cells below (run after editing them; outputs are not stored)."""

from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).resolve().parents[1] / "notebooks"

SETUP = """\
import os, json, tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import geopandas as gpd
import matplotlib.pyplot as plt

import rsgeo_prune as rp
from rsgeo_prune import synth, viz
from rsgeo_prune.config import RunConfig, TileConfig
from rsgeo_prune.pipeline import run_pipeline

# Everything this notebook writes goes here (the tests point RSGEO_NB_WORK at a temporary folder).
WORK = Path(os.environ.get("RSGEO_NB_WORK", "../catalogs/notebooks")) / "{name}"
WORK.mkdir(parents=True, exist_ok=True)
SHARED = Path("../../shared/data")  # real samples, present in the development checkout only
print("outputs in", WORK.resolve(), "| real samples:", SHARED.exists())"""

TRAIN_IMPORTS = """

import torch
torch.set_num_threads(1)
from rsgeo_prune.train.dataset import CatalogDataset, load_table, split_validation
from rsgeo_prune.train.latents import LatentShards, encode_catalog
from rsgeo_prune.train.metrics import feature_space, frechet_distance, precision_recall
from rsgeo_prune.train.sampling import (decode_latents, denormalise, diffusion_of, ema_model, generate_latents,
                                        grid_image, read_checkpoint)
from rsgeo_prune.train.trainer import DiTTrainConfig, train_dit
from rsgeo_prune.train.vae import VAETrainConfig, load_vae, train_vae"""


def regional():
    nb = nbf.v4.new_notebook()
    c = nb.cells
    md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
    c.append(
        md(
            "# Regional curation with rsgeo_prune\n\nPick a region, find the scenes that cover it, tile and "
            "mask them, look at Stage I (entropy) and choose the cut, build a centroid bank from reference "
            "scenes, select a budget with RS-Prune, map the result, compare it with a random subset, and "
            "export the GeoParquet catalog and STAC. It runs on synthetic NAIP-like scenes (and shows the "
            "real North Dakota NAIP clips when `../shared/data` is there)."
        )
    )
    c.append(code(SETUP.format(name="01_regional_curation")))
    c.append(
        md(
            "## 1. A folder of scenes\n\nThree synthetic 4-band scenes (R, G, B, NIR; 1 m; EPSG:26914) side by "
            "side, each with its urban polygons, plus a reference set of labelled scene images "
            "(ImageFolder layout, like UCM or AID)."
        )
    )
    c.append(
        code("""scenes = []
for i, x0 in enumerate([600_000.0, 602_100.0, 604_200.0]):
    s = synth.write_scene(WORK / "scenes" / f"scene_{i}.tif", rows=6, cols=8, seed=i, rare_tiles=1,
                          origin=(x0, 5_200_000.0))
    scenes.append(s)
reference = synth.write_reference_set(WORK / "reference", per_class=8, seed=7)
urban = gpd.GeoDataFrame(pd.concat([gpd.read_file(s.urban_path) for s in scenes]), crs="EPSG:4326")
urban.to_file(WORK / "urban.gpkg")
labels = pd.concat([s.labels for s in scenes]).set_index("tile_id")["class"]
print([s.path.name for s in scenes], "| reference classes:", sorted(p.name for p in reference.iterdir()))""")
    )
    c.append(
        md(
            "## 2. Choose a region and find the scenes that intersect it\n\nA bounding box in longitude/latitude "
            "(any shapely polygon works the same). Each scene's footprint comes from its header; the same "
            "filter works on a STAC ItemCollection, shown below with items made from the scenes."
        )
    )
    c.append(
        code("""import shapely
from rasterio.warp import transform_bounds

footprints = []
for s in scenes:
    d = rp.describe_raster(s.path)
    b = d.transform.c, d.transform.f + d.transform.e * d.height, d.transform.c + d.transform.a * d.width, d.transform.f
    footprints.append(shapely.box(*transform_bounds(d.crs, "EPSG:4326", *b)))
fp = gpd.GeoDataFrame({"scene": [s.path.name for s in scenes]}, geometry=footprints, crs="EPSG:4326")
minx, miny, maxx, maxy = fp.total_bounds
region = shapely.box(minx, miny, minx + 0.62 * (maxx - minx), maxy)  # the western part of the mosaic
in_region = fp[fp.intersects(region)]
print("scenes in the region:", list(in_region["scene"]))""")
    )
    c.append(
        code("""import pystac

items = pystac.ItemCollection([pystac.Item(id=row.scene, geometry=shapely.geometry.mapping(row.geometry),
                                           bbox=list(row.geometry.bounds), datetime=pd.Timestamp("2020-07-01"),
                                           properties={"proj:code": "EPSG:26914"},
                                           assets={"data": pystac.Asset(str(WORK / "scenes" / row.scene), roles=["data"])})
                               for row in fp.itertuples()])
hits = [it for it in items if shapely.geometry.shape(it.geometry).intersects(region)]
print("STAC items in the region:", [it.id for it in hits])
scene_paths = [WORK / "scenes" / n for n in in_region["scene"]]""")
    )
    c.append(
        md(
            "## 3. Tile and mask\n\n256-px tiles with footprints, nodata fraction and the fraction covered by "
            "urban polygons; keep only the tiles inside the region."
        )
    )
    c.append(
        code("""tiles = rp.tiles_stage(scene_paths, TileConfig(mask=str(WORK / "urban.gpkg"), entropy_min=0.0), progress=False)
tiles = tiles[tiles.intersects(region)]
print(len(tiles), "tiles;", tiles["pruned_by"].value_counts(dropna=False).to_dict())
tiles[["tile_id", "nodata_frac", "urban_frac", "entropy"]].head()""")
    )
    c.append(
        md(
            "## 4. Stage I: look at the entropy histogram and pick the cut\n\nClouds, water and empty tiles "
            "carry little information. The paper keeps the top 30 %; here a threshold τ is read off the "
            "histogram: the gap between the low-entropy tiles and the rest."
        )
    )
    c.append(
        code("""tau = 3.5
fig = viz.plot_entropy(tiles, entropy_min=tau)
below = tiles["entropy"].astype(float) < tau
print(f"τ = {tau} bits prunes {int(below.sum())} tiles:", tiles.loc[below, "tile_id"].map(labels).value_counts().to_dict())""")
    )
    c.append(
        md(
            "## 5. The centroid bank\n\nEmbed the reference scenes (the weights-free default embedder here; "
            "`openclip:<arch>:<ckpt>` or `siglip:<dir>` for RemoteCLIP / Git-RSCLIP checkpoints) and cluster "
            "them with spherical k-means. The bank is saved once and reused by every run."
        )
    )
    c.append(
        code("""from rsgeo_prune.centroids import build_centroid_bank
from rsgeo_prune.embed import load_embedder

bank = build_centroid_bank([reference], load_embedder("default"), k=7, seed=0)
bank_path = bank.save(WORK / "bank.npz")
pd.DataFrame(bank.class_counts, columns=bank.classes).rename_axis("centroid")""")
    )
    c.append(
        md(
            "## 6. Select\n\nRS-Prune at 85 % pruning: a budget of 15 % of the tiles that passed the nodata "
            "and mask filters, a quota per centroid (nearest first), the rest by similarity."
        )
    )
    c.append(
        code("""catalog, counts = run_pipeline(scene_paths, WORK / "run", [bank_path],
                               TileConfig(mask=str(WORK / "urban.gpkg"), entropy_min=tau),
                               RunConfig(budget=0.15, k=7), progress=False)
catalog = catalog[catalog.intersects(region)]
print(counts)
catalog.loc[catalog["kept"], "tile_id"].map(labels).value_counts()""")
    )
    c.append(
        md(
            "## 7. Map the selection\n\nIn Jupyter, `viz.interactive_map` draws the tiles with lonboard "
            "(coloured by why each was kept or pruned; hover for entropy, cluster, similarity). "
            "`viz.write_map_html` writes one HTML file that draws offline."
        )
    )
    c.append(
        code("""m = viz.interactive_map(catalog, color_by="status")
viz.write_map_html(catalog, WORK / "map.html")
m""")
    )
    c.append(md("## 8. Compare with a random subset of the same size"))
    c.append(
        code("""random_cat, _ = run_pipeline(scene_paths, WORK / "run_random", [], TileConfig(mask=str(WORK / "urban.gpkg"), entropy_min=tau),
                             RunConfig(budget=0.15, method="random", seed=1), progress=False)
random_cat = random_cat[random_cat.intersects(region)]
compare = pd.DataFrame({
    "rs-prune": catalog.loc[catalog["kept"], "tile_id"].map(labels).value_counts(),
    "random": random_cat.loc[random_cat["kept"], "tile_id"].map(labels).value_counts(),
}).fillna(0).astype(int)
compare""")
    )
    c.append(
        md(
            "## 9. Export\n\nThe run directory already holds `catalog.parquet` (GeoParquet 1.1) and the kept "
            "tiles as STAC (`stac/`, `items.parquet`); read them back like any GeoParquet / STAC."
        )
    )
    c.append(
        code("""run_dir = WORK / "run"
print(sorted(p.name for p in run_dir.iterdir()))
back = gpd.read_parquet(run_dir / "catalog.parquet")
stac_items = list(pystac.Catalog.from_file(str(run_dir / "stac" / "catalog.json")).get_items(recursive=True))
print(len(back), "catalog rows;", len(stac_items), "STAC items; first:", stac_items[0].id)""")
    )
    c.append(
        md(
            "## 10. Real imagery (when `../shared/data` is there)\n\nThe rural North Dakota NAIP clips: "
            "Natural Earth's urban areas cover none of them, and Stage I ranks open water below fields."
        )
    )
    c.append(
        code("""if SHARED.exists():
    naip = sorted((SHARED / "naip").glob("m_*.tif"))
    real = rp.tiles_stage(naip, TileConfig(tile_size=128, mask=str(SHARED / "urban" / "ne_50m_urban_areas.geojson"),
                                          entropy_keep=0.3), progress=False)
    print(len(real), "tiles; urban fraction max", float(real["urban_frac"].max()))
    print(real["pruned_by"].value_counts(dropna=False).to_dict())
else:
    print("../shared/data not present: skipped")""")
    )
    return nb


def training():
    nb = nbf.v4.new_notebook()
    c = nb.cells
    md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
    c.append(
        md(
            "# A training catalog from several scenes\n\nSeveral scenes into one curated training catalog with "
            "a budget, its provenance, and how a training loop reads it back (a PyTorch `Dataset` that reads "
            "each kept tile by its window)."
        )
    )
    c.append(code(SETUP.format(name="02_training_catalog")))
    c.append(md("## 1. Scenes and reference set"))
    c.append(
        code("""scenes = [synth.write_scene(WORK / "scenes" / f"tile_{i}.tif", rows=6, cols=6, seed=10 + i, rare_tiles=1,
                             origin=(600_000.0 + 1600 * i, 5_200_000.0)).path for i in range(4)]
if SHARED.exists():  # add the real North Dakota NAIP clips
    scenes += sorted((SHARED / "naip").glob("m_*.tif"))[:2]
reference = synth.write_reference_set(WORK / "reference", per_class=8, seed=3)
print(len(scenes), "scenes")""")
    )
    c.append(
        md(
            "## 2. One run, one catalog\n\nStage I keeps the top 70 % by entropy; Stage II keeps a budget of "
            "15 % of the usable tiles. Rerunning the cell is instant: finished stages are skipped."
        )
    )
    c.append(
        code("""catalog, counts = run_pipeline(scenes, WORK / "run", [reference],
                               TileConfig(tile_size=128 if SHARED.exists() else 256, entropy_keep=0.7),
                               RunConfig(budget=0.15, k=7), progress=False)
print(counts)
catalog.groupby("scene_id")["kept"].agg(["size", "sum"])""")
    )
    c.append(
        md(
            "## 3. Provenance\n\nThe catalog carries the package version, the full config and the centroid-bank "
            "digest in its file metadata; `run.json` adds package versions and the identity of every input."
        )
    )
    c.append(
        code("""from rsgeo_prune.catalog import catalog_metadata

meta = catalog_metadata(WORK / "run" / "catalog.parquet")
manifest = json.loads((WORK / "run" / "run.json").read_text())
print("rsgeo_prune", meta["version"], "| bank", meta["centroid_bank_digest"][:12])
print({k: v["key"][:12] for k, v in manifest["stages"].items()})
print(manifest["packages"])""")
    )
    c.append(
        md(
            "## 4. Read it back for training\n\nOnly the kept rows are needed; each row says which file and "
            "window holds the tile. The dataset below returns float tensors `(C, H, W)` in [0, 1]."
        )
    )
    c.append(
        code('''import torch
from torch.utils.data import DataLoader, Dataset

from rsgeo_prune.pixels import PixelReader


class CatalogTiles(Dataset):
    """Kept tiles of an rsgeo_prune catalog, read by window through the package's one pixel reader
    (any band count; uint16/float rasters get the same per-scene stretch as the pipeline)."""

    def __init__(self, catalog_path):
        cat = rp.read_catalog(catalog_path)  # hrefs are stored relative to the catalog's folder
        self.rows = cat[cat["kept"]].reset_index(drop=True)
        self.reader = PixelReader()

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        x, valid = self.reader.read_unit(self.rows.iloc[i])  # (C, H, W) float32 in [0, 1], (H, W) bool
        return torch.from_numpy(x)


ds = CatalogTiles(WORK / "run" / "catalog.parquet")
batch = next(iter(DataLoader(ds, batch_size=8, shuffle=False)))
print(len(ds), "training tiles; a batch:", tuple(batch.shape), batch.dtype)''')
    )
    c.append(md("## 5. Look at what was kept"))
    c.append(
        code("""sheet = viz.contact_sheet(catalog, kept=True, n=25)
plt.figure(figsize=(6, 6)); plt.imshow(sheet); plt.axis("off"); plt.title("kept tiles");""")
    )
    return nb


def train_from_catalog():
    nb = nbf.v4.new_notebook()
    c = nb.cells
    md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
    c.append(
        md(
            "# Train a generator from a catalog\n\nFrom a curated catalog to a 4-band VAE (and its reconstructions), "
            "latents encoded once, a short unconditional DiT run, sample grids (RGB and NIR false colour) and the "
            "Fréchet distance of EMA samples against held-out tiles at several checkpoints. Everything uses the "
            "tiny presets so the notebook runs in seconds on a CPU; `benchmarks/convergence.py` is the full "
            "experiment (several catalogs, seeds and reference sets)."
        )
    )
    c.append(code(SETUP.format(name="03_train_from_catalog") + TRAIN_IMPORTS))
    c.append(
        md(
            "## 1. A catalog\n\nTwo synthetic 4-band scenes of 64-px tiles; Stage I keeps 70 % by entropy and "
            "RS-Prune keeps half of the usable tiles. A third scene is held out: its tiles are the FD reference."
        )
    )
    c.append(
        code("""scenes = [synth.write_scene(WORK / "scenes" / f"scene_{i}.tif", rows=8, cols=8, tile_size=64, seed=20 + i,
                             rare_tiles=2).path for i in range(2)]
heldout = synth.write_scene(WORK / "heldout" / "heldout.tif", rows=8, cols=8, tile_size=64, seed=99, rare_tiles=2)
reference = synth.write_reference_set(WORK / "reference", per_class=4, size=64, seed=3)
catalog, counts = run_pipeline(scenes, WORK / "run", [reference], TileConfig(tile_size=64, entropy_keep=0.7),
                               RunConfig(budget=0.5, k=7), progress=False)
print(counts)""")
    )
    c.append(
        md(
            "## 2. A VAE trained from scratch on the kept tiles\n\n`CatalogDataset` reads each kept tile by its "
            'window; one whole scene is held out for validation (`split_validation(..., "scene")`, what '
            "`train-vae --val-by scene` does: the number the checkpoint is chosen by is then one that transfers to "
            "an acquisition the model never saw). Training batches get radiometric jitter (per-band gain and "
            "offset, per-tile gamma). The `tiny` preset is for tests: expect blurry reconstructions."
        )
    )
    c.append(
        code("""cat_path = WORK / "run" / "catalog.parquet"
kept = load_table(cat_path).query("kept").reset_index(drop=True)
val = split_validation(kept, "scene", 0.15)
train_ds = CatalogDataset(kept[~val], select="all", dihedral=True)
val_ds = CatalogDataset(kept[val], select="all")
vae_res = train_vae(train_ds, val_ds, WORK / "vae", VAETrainConfig(preset="tiny", steps=80, batch_size=16, lr=2e-3,
                                                                  val_every=40, save_every=80), progress=False)
m = vae_res.metrics
print(f"VAE: validation PSNR {m['vae']['psnr']:.2f} dB (bicubic x8 baseline {m['bicubic_x8']['psnr']:.2f} dB), "
      f"best step {vae_res.best_step}")
plt.figure(figsize=(8, 3)); plt.imshow(plt.imread(WORK / "vae" / "recon.png")); plt.axis("off")
plt.title("validation tiles and their reconstructions");""")
    )
    c.append(
        md(
            "## 3. Encode once\n\nEvery kept tile becomes its posterior (mean, log-variance) in safetensors "
            "shards; the DiT never reads pixels."
        )
    )
    c.append(
        code("""index = encode_catalog(CatalogDataset(cat_path), WORK / "vae", WORK / "latents", progress=False)
lat = LatentShards(WORK / "latents")
print(f"latents: {len(lat)} x {tuple(lat.mean.shape[1:])}, per-channel std {[round(s, 3) for s in index['latents_std']]}")""")
    )
    c.append(
        md(
            "## 4. A short DiT run\n\n`DiT-tiny/2` (2 blocks, width 64) on the 4x8x8 latents, DDPM noise "
            "prediction, EMA; a checkpoint every 50 steps."
        )
    )
    c.append(
        code("""cfg = DiTTrainConfig(model="DiT-tiny/2", batch_size=16, lr=5e-4, ema_decay=0.999, steps=200, log_every=50,
                     save_every=200, keep_every=50, sample_every=0, fd_n=0, seed=0)
res = train_dit(WORK / "latents", WORK / "dit", cfg, progress=False)
print(f"DiT: {res.step} steps, {res.params / 1e6:.2f} M params, last loss {res.loss:.4f}")""")
    )
    c.append(
        md(
            "## 5. Samples of the EMA model\n\nDDIM, 25 steps, decoded by the VAE; shown as the data are (no "
            "per-tile stretch): RGB, and NIR-R-G false colour, where vegetation is red."
        )
    )
    c.append(
        code("""vae = load_vae(WORK / "vae")

def samples(step, n=64):
    model, info = ema_model(read_checkpoint(WORK / "dit" / "checkpoints" / f"step-{step:07d}.pt"))
    z = generate_latents(model, diffusion_of(info["config"]), n, latent_shape=tuple(info["latents"]["latent_shape"]),
                         steps=25, sampler="ddim", seed=1)
    return decode_latents(vae, denormalise(z, info["latents"]))

tiles = samples(200)
fig, ax = plt.subplots(1, 2, figsize=(10, 5))
for a, (name, bands) in zip(ax, [("RGB", (0, 1, 2)), ("NIR-R-G", (3, 0, 1))]):
    a.imshow(grid_image(tiles[:36], bands)); a.set_title(f"EMA samples, step 200, {name}"); a.axis("off")""")
    )
    c.append(
        md(
            "## 6. Fréchet distance, precision and recall vs steps\n\nIn the named, digested `random-cnn-0` "
            "feature space (a fixed random CNN that no selector embeds with, and that responds to structure; "
            "`rsgeo-default`, the selectors' own embedder, is the secondary space), 64 EMA samples against the "
            "held-out scene's tiles: FD, and improved precision (share of samples that look like some real tile: "
            "quality) and recall (share of real tiles some sample looks like: coverage), k = 3. With 64 samples "
            "the numbers are noisy: they show the mechanics, not a result (`benchmarks/convergence.py` is the "
            "experiment)."
        )
    )
    c.append(
        code("""import rasterio

with rasterio.open(heldout.path) as src:
    a = src.read()
ref = np.stack([a[:, r:r + 64, q:q + 64] for r in range(0, a.shape[1], 64) for q in range(0, a.shape[2], 64)
                if a[:, r:r + 64, q:q + 64].any(axis=0).all()])
space = feature_space("random-cnn-0", channels=4)
ref_feats = space(ref)
curve = {}
for step in (50, 100, 150, 200):
    feats = space(samples(step))
    pr = precision_recall(ref_feats, feats, k=3)
    curve[step] = (frechet_distance(feats, ref_feats), pr.precision, pr.recall)
    print(f"FD at step {step}: {curve[step][0]:.4f}, precision {pr.precision:.3f}, recall {pr.recall:.3f}")
print(f"feature space {space.name} sha256:{space.digest[:16]}, n_samples={len(feats)}, n_reference={len(ref_feats)}")
fig, ax = plt.subplots(1, 2, figsize=(9, 3))
ax[0].plot(list(curve), [v[0] for v in curve.values()], "o-"); ax[0].set_ylabel("FD (random-cnn-0)")
ax[1].plot(list(curve), [v[1] for v in curve.values()], "o-", label="precision")
ax[1].plot(list(curve), [v[2] for v in curve.values()], "s-", label="recall"); ax[1].legend()
for a in ax:
    a.set_xlabel("DiT steps")
fig.suptitle("EMA samples vs held-out tiles");""")
    )
    return nb


if __name__ == "__main__":
    HERE.mkdir(exist_ok=True)
    nbf.write(regional(), HERE / "01_regional_curation.ipynb")
    nbf.write(training(), HERE / "02_training_catalog.ipynb")
    nbf.write(train_from_catalog(), HERE / "03_train_from_catalog.ipynb")
    print("wrote", sorted(p.name for p in HERE.glob("*.ipynb")))
