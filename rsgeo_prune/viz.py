"""Maps and plots of catalogs, for notebooks, scripts and the ``map``/``report`` commands.

* :func:`interactive_map` — a lonboard map (GeoArrow, deck.gl; handles hundreds of thousands of
  tiles) coloured by why each tile was kept or pruned, by cluster or by entropy, with tooltips.
* :func:`write_map_html` — one standalone HTML file that draws offline. lonboard's own HTML export
  loads require.js and the widget manager from a CDN, so instead the page inlines **Leaflet**
  (installed from npm by ``make install``) and the tiles as GeoJSON drawn on a canvas; an optional
  OpenStreetMap basemap is simply absent offline.
* matplotlib figures: :func:`plot_entropy`, :func:`plot_cluster_sizes`, :func:`plot_class_mix`,
  :func:`plot_similarity`, and :func:`contact_sheet` (RGB, or NIR false colour for 4 bands).
* :func:`write_report` — one self-contained HTML page per run.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_output
from .errors import InvalidOption, RSGeoPruneError
from .pixels import read_tile_pixels
from .status import DUPLICATE, ENTROPY, MASK, NODATA, SELECTION, stage_counts

#: Colours of the status classes (kept, and each pruning reason), as RGB.
STATUS_COLOURS = {
    "kept": (26, 152, 80),
    SELECTION: (116, 173, 209),
    DUPLICATE: (202, 0, 32),
    ENTROPY: (253, 174, 97),
    MASK: (171, 130, 200),
    NODATA: (150, 150, 150),
}
KEPT_HEX = "#1a9850"


def status(catalog: pd.DataFrame) -> pd.Series:
    """``kept`` or the pruning reason of every tile."""
    why = catalog["pruned_by"].astype("string").fillna("kept")
    return why.where(~catalog["kept"].astype(bool), "kept")


COLOR_BY = ("status", "cluster", "entropy")


def _colours(catalog: pd.DataFrame, color_by: str) -> np.ndarray:
    """``(N, 3)`` uint8 colours."""
    if color_by not in COLOR_BY:
        raise InvalidOption("color_by", color_by, f"use {', '.join(COLOR_BY)}")
    if color_by != "status" and color_by not in catalog:
        raise InvalidOption(
            "color_by",
            color_by,
            f"the table has no {color_by} column; colour by status, or "
            f"give a catalog that has it ({'a run' if color_by == 'cluster' else 'Stage I'} adds it)",
        )
    if color_by == "status":
        return np.array([STATUS_COLOURS.get(s, (0, 0, 0)) for s in status(catalog)], np.uint8)
    import matplotlib

    if color_by == "cluster":
        c = catalog["cluster"].astype("Float64").to_numpy(np.float64, na_value=np.nan)
        cmap = matplotlib.colormaps["tab20"]
        rgb = np.array([cmap(int(v) % 20)[:3] if np.isfinite(v) else (0.6, 0.6, 0.6) for v in c])
        return (rgb * 255).astype(np.uint8)
    if color_by == "entropy":
        e = catalog["entropy"].astype("Float64").to_numpy(np.float64, na_value=np.nan)
        cmap = matplotlib.colormaps["viridis"]
        rgb = np.array([cmap(v / 8.0)[:3] if np.isfinite(v) else (0.6, 0.6, 0.6) for v in e])
        return (rgb * 255).astype(np.uint8)


def _tooltip_columns(catalog: pd.DataFrame) -> list[str]:
    return [
        c for c in ("tile_id", "pruned_by", "duplicate_of", "entropy", "cluster", "similarity", "rank") if c in catalog
    ]


def interactive_map(catalog, color_by: str = "status"):
    """A lonboard map of the tiles (for Jupyter): fill colour by ``status``, ``cluster`` or ``entropy``."""
    import geopandas as gpd
    from lonboard import Map, PolygonLayer

    gdf = catalog if isinstance(catalog, gpd.GeoDataFrame) else gpd.GeoDataFrame(catalog, geometry="geometry")
    gdf = gdf[gdf.geometry.notna()]
    cols = _tooltip_columns(gdf) + ["geometry"]
    layer = PolygonLayer.from_geopandas(
        gdf[cols].assign(status=status(gdf).to_numpy()),
        get_fill_color=_colours(gdf, color_by),
        get_line_color=[40, 40, 40],
        line_width_min_pixels=0.5,
        opacity=0.6,
        pickable=True,
    )
    return Map(layer)


def leaflet_dir() -> Path:
    """Where ``make install`` put Leaflet's dist files (``RSGEO_PRUNE_LEAFLET`` overrides)."""
    env = os.environ.get("RSGEO_PRUNE_LEAFLET")
    candidates = [Path(env)] if env else []
    candidates += [Path(sys.prefix) / "share" / "rsgeo_prune" / "node_modules" / "leaflet" / "dist"]
    for c in candidates:
        if (c / "leaflet.js").exists():
            return c
    raise RSGeoPruneError(
        "Leaflet not found for the offline map: run `make install` (it installs leaflet from npm "
        "into .venv/share/rsgeo_prune) or set RSGEO_PRUNE_LEAFLET to a leaflet/dist folder"
    )


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{leaflet_css}
html, body, #map {{ height: 100%; margin: 0; background: #f4f4f0; }}
.legend {{ background: white; padding: 6px 8px; font: 13px sans-serif; line-height: 18px; }}
.legend i {{ display: inline-block; width: 14px; height: 14px; margin-right: 6px; vertical-align: middle; }}
</style>
<script>{leaflet_js}</script>
</head><body><div id="map"></div>
<script>
const tiles = {geojson};
const legend = {legend};
const map = L.map('map', {{preferCanvas: true}});
// Optional basemap: fetched when online, simply missing offline (the tiles draw either way).
L.tileLayer('https://tile.openstreetmap.org/{{z}}/{{x}}/{{y}}.png', {{maxZoom: 19,
  attribution: '&copy; OpenStreetMap contributors'}}).addTo(map);
const layer = L.geoJSON(tiles, {{
  style: f => ({{color: '#333', weight: 0.5, fillColor: f.properties._fill, fillOpacity: 0.75}}),
  onEachFeature: (f, l) => l.bindTooltip(Object.entries(f.properties).filter(([k]) => !k.startsWith('_'))
      .map(([k, v]) => '<b>' + k + '</b>: ' + v).join('<br>'), {{sticky: true}})
}}).addTo(map);
if (layer.getLayers().length) map.fitBounds(layer.getBounds()); else map.setView([0, 0], 2);
const box = L.control({{position: 'bottomright'}});
box.onAdd = () => {{ const d = L.DomUtil.create('div', 'legend');
  d.innerHTML = '<b>{legend_title}</b><br>' + legend.map(([n, c]) => '<i style="background:' + c + '"></i>' +
  n).join('<br>');
  return d; }};
box.addTo(map);
</script></body></html>
"""


def _hex(rgb) -> str:
    return "#%02x%02x%02x" % tuple(int(v) for v in rgb)


def write_map_html(
    catalog, path: str | Path, *, color_by: str = "status", title: str = "rsgeo_prune tiles", max_tiles: int = 200_000
) -> Path:
    """One standalone HTML map (Leaflet and the data inlined; draws with no network)."""
    import geopandas as gpd
    import shapely

    gdf = catalog if isinstance(catalog, gpd.GeoDataFrame) else gpd.GeoDataFrame(catalog, geometry="geometry")
    gdf = gdf[gdf.geometry.notna()].reset_index(drop=True)
    if len(gdf) > max_tiles:
        raise RSGeoPruneError(
            f"{len(gdf)} tiles are too many for a standalone HTML map (max {max_tiles}); "
            "filter the catalog first or use viz.interactive_map in Jupyter"
        )
    leaflet = leaflet_dir()
    colours = _colours(gdf, color_by)
    # the footprints' densified edges are not needed at map scale: their corners are enough
    geoms = shapely.simplify(np.asarray(gdf.geometry.values), 1e-7)
    cols = _tooltip_columns(gdf)
    features = []
    for i, g in enumerate(geoms):
        props = {}
        for c in cols:
            v = gdf[c].iloc[i]
            props[c] = (
                None
                if pd.isna(v)
                else (
                    round(float(v), 4)
                    if isinstance(v, (float, np.floating))
                    else int(v)
                    if isinstance(v, (np.integer,))
                    else str(v)
                )
            )
        props["status"] = status(gdf.iloc[[i]]).iloc[0]
        props["_fill"] = _hex(colours[i])
        features.append({"type": "Feature", "geometry": shapely.geometry.mapping(g), "properties": props})
    if color_by == "status":
        present = set(status(gdf))
        legend = [[k, _hex(v)] for k, v in STATUS_COLOURS.items() if k in present]
        legend_title = "kept / pruned by"
    elif color_by == "entropy":
        legend = [
            [f"{e} bits", _hex(np.array(__import__("matplotlib").colormaps["viridis"](e / 8)[:3]) * 255)]
            for e in (0, 2, 4, 6, 8)
        ]
        legend_title = "entropy"
    else:
        legend = [["colour = cluster id", "#888888"]]
        legend_title = "cluster"
    page = _PAGE.format(
        title=html.escape(title),
        leaflet_css=(leaflet / "leaflet.css").read_text(),
        leaflet_js=(leaflet / "leaflet.js").read_text(),
        geojson=json.dumps({"type": "FeatureCollection", "features": features}),
        legend=json.dumps(legend),
        legend_title=legend_title,
    )
    with atomic_output(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return Path(path)


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------


def _fig(ax=None, size=(6, 3.5)):
    import matplotlib

    if "ipykernel" not in sys.modules:  # scripts and the CLI draw off-screen; notebooks keep their backend
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=size, layout="constrained")
        return fig, ax
    return ax.figure, ax


def plot_entropy(catalog, *, entropy_min: float | None = None, entropy_keep: float | None = None, ax=None):
    """Histogram of tile entropy (bits) with the Stage I cut marked (a threshold or the top-p cut)."""
    fig, ax = _fig(ax)
    e = catalog["entropy"].astype("Float64").to_numpy(np.float64, na_value=np.nan)
    e = e[np.isfinite(e)]
    pruned = catalog["pruned_by"].astype("string").fillna("") == ENTROPY
    ax.hist(e, bins=64, range=(0, 8), color="#888", label="all tiles with data")
    pe = catalog.loc[pruned, "entropy"].astype(float)
    if len(pe):
        ax.hist(pe, bins=64, range=(0, 8), color=_hex(STATUS_COLOURS[ENTROPY]), label="pruned by entropy")
    cut = entropy_min
    if cut is None and len(pe):
        cut = float(pe.max())  # the top-p cut lies just above the highest pruned entropy
    if cut is not None:
        ax.axvline(
            cut,
            color="k",
            ls="--",
            label=f"cut {cut:.2f} bits" + (f" (keep {entropy_keep:.0%})" if entropy_keep else ""),
        )
    ax.set(xlabel="grayscale entropy (bits)", ylabel="tiles", title="Stage I: entropy")
    ax.legend(fontsize=8)
    return fig


def plot_cluster_sizes(catalog, ax=None):
    """Candidate tiles per cluster before selection and kept after it (clusters by size)."""
    fig, ax = _fig(ax, (7, 3.5))
    c = catalog.dropna(subset=["cluster"])
    before = c["cluster"].astype(int).value_counts()
    after = c.loc[c["kept"].astype(bool), "cluster"].astype(int).value_counts().reindex(before.index, fill_value=0)
    x = np.arange(len(before))
    ax.bar(x, before.to_numpy(), color="#bbb", label="candidates")
    ax.bar(x, after.to_numpy(), color=KEPT_HEX, label="kept")
    ax.set(xlabel="cluster (by size)", ylabel="tiles", title="Tiles per cluster before / after selection", yscale="log")
    ax.legend(fontsize=8)
    return fig


def plot_class_mix(catalog, classes: pd.Series, ax=None):
    """Share of each class (``classes`` maps tile_id → class) among kept and pruned tiles."""
    fig, ax = _fig(ax, (7, 3.5))
    cls = catalog["tile_id"].map(classes).fillna("unknown")
    kept = catalog["kept"].astype(bool)
    mix = pd.DataFrame(
        {"kept": cls[kept].value_counts(normalize=True), "pruned": cls[~kept].value_counts(normalize=True)}
    ).fillna(0)
    mix.plot.bar(ax=ax, color=[KEPT_HEX, "#bbb"])
    ax.set(xlabel="class", ylabel="share of tiles", title="Class mix: kept vs pruned")
    return fig


def plot_similarity(catalog, ax=None):
    """Cosine similarity to the assigned centroid, kept vs not selected."""
    fig, ax = _fig(ax)
    c = catalog.dropna(subset=["similarity"])
    kept = c["kept"].astype(bool)
    ax.hist(c.loc[~kept, "similarity"].astype(float), bins=40, color="#bbb", label="not selected")
    ax.hist(c.loc[kept, "similarity"].astype(float), bins=40, color=KEPT_HEX, alpha=0.8, label="kept")
    ax.set(xlabel="cosine similarity to centroid", ylabel="tiles", title="Stage II: similarity")
    ax.legend(fontsize=8)
    return fig


def contact_sheet(
    catalog, *, kept: bool = True, n: int = 36, false_colour: bool = False, size: int = 96, seed: int = 0
) -> np.ndarray:
    """A grid image (H, W, 3) uint8 of up to ``n`` kept (or pruned) tiles; NIR, R, G when ``false_colour``."""
    from PIL import Image

    sel = catalog[catalog["kept"].astype(bool) == kept]
    if len(sel) > n:
        sel = sel.sample(n, random_state=seed)
    cols = int(np.ceil(np.sqrt(max(len(sel), 1))))
    rows = int(np.ceil(len(sel) / cols)) if len(sel) else 1
    sheet = np.full((rows * (size + 2), cols * (size + 2), 3), 255, np.uint8)
    sel = sel.reset_index(drop=True)
    for pos, tiles in read_tile_pixels(sel):
        for i, t in zip(pos, tiles):
            bands = [3, 0, 1] if false_colour and t.shape[0] >= 4 else [0, 1, 2] if t.shape[0] >= 3 else [0, 0, 0]
            rgb = np.moveaxis(t[bands], 0, -1)
            img = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))
            r, c = divmod(int(i), cols)
            sheet[r * (size + 2) : r * (size + 2) + size, c * (size + 2) : c * (size + 2) + size] = img
    return sheet


def _png(obj) -> str:
    """A figure or an image array as a base64 PNG data URI."""
    buf = io.BytesIO()
    if isinstance(obj, np.ndarray):
        from PIL import Image

        Image.fromarray(obj).save(buf, format="PNG")
    else:
        obj.savefig(buf, format="png", dpi=100)
        import matplotlib.pyplot as plt

        plt.close(obj)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def write_report(run_dir: str | Path, path: str | Path, *, classes: pd.Series | None = None, seed: int = 0) -> Path:
    """One self-contained HTML report of a run: per-stage counts, the plots, contact sheets, the
    config, and a comparison with a random subset of the same size drawn from the same candidates."""
    from .catalog import catalog_metadata, read_catalog

    run_dir = Path(run_dir)
    cat_path = run_dir / "catalog.parquet"
    if not cat_path.exists():
        raise RSGeoPruneError(
            f"{cat_path}: no catalog in this run directory; run `rsgeo-prune run ... --out {run_dir}` first"
        )
    catalog = read_catalog(cat_path)
    meta = catalog_metadata(cat_path)
    cfg = meta.get("config", {})
    counts = stage_counts(catalog)
    tiles_cfg = cfg.get("tiles", {})
    figures = {}
    if "entropy" in catalog:  # a run without a Stage I option has no entropy to plot
        figures["entropy histogram"] = plot_entropy(
            catalog, entropy_min=tiles_cfg.get("entropy_min"), entropy_keep=tiles_cfg.get("entropy_keep")
        )
    if catalog["cluster"].notna().any():
        figures["tiles per cluster"] = plot_cluster_sizes(catalog)
        figures["similarity"] = plot_similarity(catalog)
    if classes is None and (run_dir / "bank.npz").exists() and catalog["cluster"].notna().any():
        # no labels: name each tile by the reference class that dominates its centroid
        from .centroids import CentroidBank

        bank = CentroidBank.load(run_dir / "bank.npz")
        dominant = np.array(bank.classes)[bank.class_counts.argmax(axis=1)]
        c = catalog.dropna(subset=["cluster"])
        figures["reference-class mix"] = plot_class_mix(
            catalog, pd.Series(dominant[c["cluster"].astype(int).to_numpy()], index=c["tile_id"].to_numpy())
        )
    if classes is not None:
        figures["class mix"] = plot_class_mix(catalog, classes)
    sheets = {
        "kept tiles (RGB)": contact_sheet(catalog, kept=True, seed=seed),
        "pruned tiles (RGB)": contact_sheet(catalog, kept=False, seed=seed),
    }
    if (catalog["bands"] >= 4).any():
        sheets["kept tiles (NIR, R, G false colour)"] = contact_sheet(catalog, kept=True, false_colour=True, seed=seed)

    # the same number of tiles drawn at random from the same candidates
    cand = catalog[catalog["pruned_by"].astype("string").fillna("kept").isin(["kept", DUPLICATE, SELECTION])]
    n_kept = int(catalog["kept"].sum())
    rnd = cand.sample(min(n_kept, len(cand)), random_state=seed) if len(cand) else cand
    kept = catalog[catalog["kept"].astype(bool)]

    def summary(df):
        clusters = df["cluster"].dropna().astype(int)
        return {
            "tiles": len(df),
            "clusters covered": int(clusters.nunique()) if len(clusters) else "-",
            "mean entropy (bits)": round(float(df["entropy"].astype(float).mean()), 3)
            if len(df) and "entropy" in df
            else "-",
            "mean similarity": round(float(df["similarity"].astype(float).mean()), 3)
            if df["similarity"].notna().any()
            else "-",
        }

    comparison = pd.DataFrame({"this run": summary(kept), f"random subset (seed {seed})": summary(rnd)}).astype(object)
    if classes is not None:
        comparison.loc["classes covered"] = [
            kept["tile_id"].map(classes).nunique(),
            rnd["tile_id"].map(classes).nunique(),
        ]
    parts = [
        f"<h1>rsgeo_prune run report</h1><p>{html.escape(str(run_dir))} — rsgeo_prune {meta.get('version', '?')}</p>",
        "<h2>Tiles per stage</h2>",
        pd.Series(counts, name="tiles").to_frame().to_html(),
    ]
    if "copies" in meta:  # the selection skipped copies: how many of each kind
        parts += [
            "<h2>Copies skipped by the selection (pruned by duplicate)</h2>",
            pd.Series(meta["copies"], name="tiles").rename_axis("kind").to_frame().to_html(),
        ]
    parts += ["<h2>Comparison with a random subset of the same size</h2>", comparison.to_html()]
    for name, fig in figures.items():
        parts.append(f'<h2>{html.escape(name)}</h2><img alt="{html.escape(name)}" src="{_png(fig)}">')
    for name, img in sheets.items():
        parts.append(f'<h2>Contact sheet: {html.escape(name)}</h2><img alt="{html.escape(name)}" src="{_png(img)}">')
    parts.append("<h2>Config</h2><pre>" + html.escape(json.dumps(meta, indent=2, sort_keys=True)) + "</pre>")
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>rsgeo_prune report</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto} table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right} img{max-width:100%}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>"
    )
    with atomic_output(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return Path(path)
