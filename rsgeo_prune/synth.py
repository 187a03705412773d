"""Procedural NAIP-like scenes with a known land-cover class per tile (for tests and demos).

A scene is a grid of tiles; each tile is drawn from one class with a recognisable colour, NIR
response and texture:

=============  ====================================================  ===================
class          look                                                  Stage I (entropy)
=============  ====================================================  ===================
cloud          near-white, saturated, faint smooth variation         very low
water          dark blue, dark NIR, almost flat                      very low
forest         green canopy blobs at several scales, bright NIR      high
urban          grey blocks, roofs and a street grid                  high
cropland       fields of green or brown with row stripes             high
bare_soil      brown with fine grain                                 medium
solar_farm     (rare) rows of dark-blue panels on light ground       high
nodata         all zeros (a collar, as on clipped NAIP)              none
=============  ====================================================  ===================

Outputs are real tiled, deflate-compressed GeoTIFFs with a CRS and nodata 0, a GeoPackage of urban
polygons (in EPSG:4326, so that the masking code has to reproject it) that covers exactly the urban
tiles, a label table, and a reference set in ImageFolder layout (``<class>/<image>.png``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .atomic import atomic_output

CLASSES = ("cloud", "water", "forest", "urban", "cropland", "bare_soil", "solar_farm")
RARE_CLASS = "solar_farm"
NODATA_CLASS = "nodata"
#: Share of tiles per common class in :func:`scene_layout` (the rare class gets exactly ``rare_tiles``).
CLASS_SHARES = {"cropland": 0.28, "forest": 0.2, "urban": 0.16, "bare_soil": 0.14, "water": 0.11, "cloud": 0.11}


def _smooth(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    """Smooth noise in [0, 1] with features about ``scale`` pixels wide, ``(size, size)`` float32."""
    n = max(2, size // scale + 2)
    low = rng.random((n, n), dtype=np.float32)
    big = np.asarray(Image.fromarray(low, mode="F").resize((size + 2 * scale, size + 2 * scale), Image.BICUBIC))
    return np.clip(big[scale : scale + size, scale : scale + size], 0.0, 1.0)


def _stack(r, g, b, n) -> np.ndarray:
    # 1..255: 0 is nodata, and a valid pixel never equals it in every band.
    return np.clip(np.stack([r, g, b, n]), 1, 255).astype(np.uint8)


def render_tile(cls: str, rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """One tile of class ``cls`` as ``(4, size, size)`` uint8 R, G, B, NIR."""
    if cls == NODATA_CLASS:
        return np.zeros((4, size, size), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if cls == "cloud":
        v = 246 + 9 * _smooth(rng, size, 96)
        return _stack(v, v, v, v - 4)
    if cls == "water":
        v = 2 * _smooth(rng, size, 64)
        return _stack(24 + v, 46 + v, 70 + v, 14 + v)
    if cls == "forest":
        canopy = 0.55 * _smooth(rng, size, 24) + 0.3 * _smooth(rng, size, 6) + 0.15 * rng.random((size, size))
        return _stack(25 + 55 * canopy, 55 + 70 * canopy, 25 + 40 * canopy, 140 + 90 * canopy)
    if cls == "urban":
        base = 115 + 30 * _smooth(rng, size, 8) + 12 * rng.random((size, size))
        r = base.copy()
        for _ in range(int(rng.integers(14, 24))):
            y0, x0 = rng.integers(0, size - 12, 2)
            h, w = rng.integers(8, 40, 2)
            r[y0 : y0 + h, x0 : x0 + w] = rng.choice([70.0, 185.0, 215.0, 150.0]) + 8 * rng.random()
        pitch = int(rng.integers(48, 80))
        street = ((yy % pitch) < 6) | ((xx % pitch) < 6)
        r[street] = 60 + 10 * rng.random(int(street.sum()))
        return _stack(r, r * 0.98, r * 1.02, 70 + 0.4 * r)
    if cls == "cropland":
        split_y, split_x = rng.integers(size // 4, 3 * size // 4, 2)
        field_id = (yy >= split_y).astype(int) * 2 + (xx >= split_x)
        angle = rng.random(4) * np.pi
        green = rng.random(4) < 0.6
        r = np.empty((size, size), np.float32)
        g, b, n = r.copy(), r.copy(), r.copy()
        for k in range(4):
            sel = field_id == k
            rows = 0.5 + 0.5 * np.sin((xx * np.cos(angle[k]) + yy * np.sin(angle[k])) * 2 * np.pi / rng.integers(5, 12))
            t = (0.7 * rows + 0.3 * rng.random((size, size)))[sel]
            if green[k]:
                r[sel], g[sel], b[sel], n[sel] = 60 + 40 * t, 110 + 50 * t, 45 + 25 * t, 170 + 60 * t
            else:
                r[sel], g[sel], b[sel], n[sel] = 140 + 40 * t, 110 + 30 * t, 80 + 20 * t, 120 + 40 * t
        return _stack(r, g, b, n)
    if cls == "bare_soil":
        t = 0.6 * rng.random((size, size)) + 0.4 * _smooth(rng, size, 16)
        return _stack(150 + 35 * t, 118 + 25 * t, 88 + 20 * t, 140 + 30 * t)
    if cls == "solar_farm":
        # Rows of dark-blue panels (with glare) on dry, patchy ground: distinctive and information-rich.
        ground = 150 + 50 * _smooth(rng, size, 12) + 30 * rng.random((size, size))
        pitch = int(rng.integers(10, 16))
        panel = ((yy % pitch) < pitch * 0.6) & ((xx % 64) > 4)
        glare = 40 * _smooth(rng, size, 32) + 20 * rng.random((size, size))
        r = np.where(panel, 20 + glare, ground)
        g = np.where(panel, 30 + glare, ground * 0.92)
        b = np.where(panel, 70 + glare, ground * 0.8)
        n = np.where(panel, 25 + glare * 0.5, ground * 0.95)
        return _stack(r, g, b, n)
    raise ValueError(f"unknown class {cls!r}; known: {CLASSES + (NODATA_CLASS,)}")


def scene_layout(
    rows: int, cols: int, rng: np.random.Generator, rare_tiles: int = 1, nodata_rows: int = 0
) -> np.ndarray:
    """Class name per tile, ``(rows, cols)``: shares of :data:`CLASS_SHARES`, exactly ``rare_tiles``
    of :data:`RARE_CLASS`, and ``nodata_rows`` bottom rows of nodata collar."""
    valid = (rows - nodata_rows) * cols
    counts = {c: int(round(s * (valid - rare_tiles))) for c, s in CLASS_SHARES.items()}
    counts["cropland"] += valid - rare_tiles - sum(counts.values())
    labels = [RARE_CLASS] * rare_tiles + [c for c, k in counts.items() for _ in range(k)]
    labels = np.array(labels, dtype=object)[rng.permutation(valid)]
    return np.concatenate([labels, np.full(nodata_rows * cols, NODATA_CLASS, dtype=object)]).reshape(rows, cols)


@dataclass(frozen=True)
class SynthScene:
    """A written synthetic scene: raster path, per-tile labels and the urban polygons."""

    path: Path
    labels: pd.DataFrame  # tile_id, class, row_off, col_off
    urban_path: Path
    tile_size: int
    crs: str


def write_scene(
    path: str | Path,
    *,
    rows: int = 6,
    cols: int = 8,
    tile_size: int = 256,
    seed: int = 0,
    rare_tiles: int = 1,
    nodata_rows: int = 1,
    crs: str = "EPSG:26914",
    origin: tuple[float, float] = (600_000.0, 5_200_000.0),
    res: float = 1.0,
    extra_px: tuple[int, int] = (0, 0),
    blocksize: int = 256,
    layout: np.ndarray | None = None,
) -> SynthScene:
    """Write a synthetic 4-band (R, G, B, NIR) uint8 scene and its urban polygons.

    Args:
        path: output GeoTIFF (tiled ``blocksize``, deflate, nodata 0). The urban polygons go to
            ``<stem>_urban.gpkg`` beside it and the labels to ``<stem>_labels.csv``.
        rows, cols: tile grid size; the raster is ``rows*tile_size + extra_px[0]`` pixels high.
        extra_px: extra (rows, cols) of pixels at the bottom/right that form partial edge tiles.
        layout: class per tile ``(rows, cols)``; default :func:`scene_layout`.
    """
    import geopandas as gpd
    import rasterio
    import shapely
    from rasterio.transform import from_origin

    path = Path(path)
    rng = np.random.default_rng(seed)
    if layout is None:
        layout = scene_layout(rows, cols, rng, rare_tiles=rare_tiles, nodata_rows=nodata_rows)
    height, width = rows * tile_size + extra_px[0], cols * tile_size + extra_px[1]
    pixels = np.zeros((4, height, width), np.uint8)
    for (i, j), cls in np.ndenumerate(layout):
        pixels[:, i * tile_size : (i + 1) * tile_size, j * tile_size : (j + 1) * tile_size] = render_tile(
            cls, rng, tile_size
        )
    if extra_px[0]:
        pixels[:, rows * tile_size :, :] = render_tile("bare_soil", rng, max(height, width))[:, : extra_px[0], :width]
    if extra_px[1]:
        pixels[:, :, cols * tile_size :] = render_tile("bare_soil", rng, max(height, width))[:, :height, : extra_px[1]]
    transform = from_origin(origin[0], origin[1], res, res)
    profile = dict(
        driver="GTiff",
        width=width,
        height=height,
        count=4,
        dtype="uint8",
        crs=crs,
        transform=transform,
        nodata=0,
        tiled=True,
        blockxsize=blocksize,
        blockysize=blocksize,
        compress="deflate",
        interleave="pixel",
    )
    with atomic_output(path) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(pixels)
            for k, name in enumerate(("red", "green", "blue", "nir"), start=1):
                dst.set_band_description(k, name)

    ii, jj = np.nonzero(layout == "urban")
    boxes = [
        shapely.box(
            *(transform * (j * tile_size, (i + 1) * tile_size)), *(transform * ((j + 1) * tile_size, i * tile_size))
        )
        for i, j in zip(ii, jj)
    ]
    urban = shapely.union_all(boxes) if boxes else shapely.Polygon()
    urban = shapely.segmentize(urban, tile_size * res / 16)  # stays faithful through EPSG:4326
    gdf = gpd.GeoDataFrame({"name": ["synthetic urban area"]}, geometry=[urban], crs=crs).to_crs("EPSG:4326")
    urban_path = path.with_name(f"{path.stem}_urban.gpkg")
    with atomic_output(urban_path) as tmp:
        gdf.to_file(tmp, driver="GPKG", layer="urban")

    r, c = np.meshgrid(np.arange(rows) * tile_size, np.arange(cols) * tile_size, indexing="ij")
    labels = pd.DataFrame(
        {
            "tile_id": [f"{path.stem}/{a}_{b}" for a, b in zip(r.ravel(), c.ravel())],
            "class": layout.ravel().astype(str),
            "row_off": r.ravel(),
            "col_off": c.ravel(),
        }
    )
    with atomic_output(path.with_name(f"{path.stem}_labels.csv")) as tmp:
        labels.to_csv(tmp, index=False)
    return SynthScene(path=path, labels=labels, urban_path=urban_path, tile_size=tile_size, crs=crs)


def write_reference_set(
    root: str | Path, *, per_class: int = 8, size: int = 128, seed: int = 1, classes: tuple[str, ...] = CLASSES
) -> Path:
    """A reference scene-classification set in ImageFolder layout: ``root/<class>/<class>_<i>.png`` (RGB)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rgb = np.moveaxis(render_tile(cls, rng, size)[:3], 0, -1)
            with atomic_output(root / cls / f"{cls}_{i}.png") as tmp:
                Image.fromarray(rgb).save(tmp, format="PNG")
    return root
