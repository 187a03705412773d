"""Same place, other time: which candidate tiles show the same ground, and when each was acquired.

Two tiles of **different source files** are the same place when their footprints' intersection
over union is at least ``iou``. Areas are taken where they are true: tiles that share a projected
CRS are compared in it, using the exact parallelogram of each tile's own affine transform; any other
pair (different CRSs, or a geographic one) is compared in EPSG:6933 (WGS 84 / EASE-Grid 2.0, an
equal-area projection, so area ratios are those of the ground), from the EPSG:4326 footprint the
tile table stores. Tiles of one file never pair: overlapping tiles of one scene are a tiling choice
(``--stride``), and near copies among them are the cosine test's job.

Image-collection tiles (points or no location) have no footprint and no place.

:func:`acquisition_dates` gives each tile's acquisition time for "most recent first" ties: the
``datetime`` column when the table has one, else a ``YYYYMMDD`` in the source file's name
(NAIP: ``m_4709963_se_14_1_20100629.tif``), else unknown.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .acquisition import dates_in_name
from .errors import InvalidOption

DEFAULT_IOU = 0.5
EQUAL_AREA_CRS = "EPSG:6933"


@dataclass(frozen=True)
class Places:
    """Same-place partners of ``N`` tiles, symmetric, as CSR: tile ``i``'s partners are
    ``partner[start[i]:start[i + 1]]`` (ascending)."""

    start: np.ndarray
    partner: np.ndarray

    @classmethod
    def none(cls, n: int) -> "Places":
        return cls(np.zeros(n + 1, np.int64), np.zeros(0, np.int64))

    @classmethod
    def from_pairs(cls, n: int, a: np.ndarray, b: np.ndarray) -> "Places":
        """From unordered pairs ``(a[p], b[p])``, each given once."""
        i = np.concatenate([a, b]).astype(np.int64)
        j = np.concatenate([b, a]).astype(np.int64)
        order = np.lexsort((j, i))
        start = np.zeros(n + 1, np.int64)
        np.cumsum(np.bincount(i, minlength=n), out=start[1:])
        return cls(start, j[order])

    def of(self, i: int) -> np.ndarray:
        return self.partner[self.start[i] : self.start[i + 1]]

    @property
    def pairs(self) -> int:
        return len(self.partner) // 2


def check_iou(iou) -> None:
    if isinstance(iou, bool) or not isinstance(iou, (int, float)) or not 0.0 < iou <= 1.0:
        raise InvalidOption("place_iou", iou, "must be an overlap (intersection over union) in (0, 1] (e.g. 0.5)")


def same_place_partners(rows: pd.DataFrame, iou: float = DEFAULT_IOU) -> Places:
    """Same-place partners of the tile rows (positions ``0..len(rows)-1``), see the module docstring."""
    check_iou(iou)
    rows = rows.reset_index(drop=True)
    n = len(rows)
    href = rows["href"].astype(str).to_numpy()
    group = _projected_groups(rows)
    found_a, found_b = [], []
    for g in np.unique(group[group >= 0]):
        idx = np.flatnonzero(group == g)
        a, b = _overlapping(_own_crs_footprints(rows.iloc[idx]), iou)
        found_a.append(idx[a])
        found_b.append(idx[b])
    if len(np.unique(group)) > 1 or (group < 0).any():  # pairs no shared projected CRS can measure
        idx = np.flatnonzero(_has_area(rows))
        a, b = _overlapping(_equal_area_footprints(rows.iloc[idx]), iou)
        a, b = idx[a], idx[b]
        other = (group[a] != group[b]) | (group[a] < 0)
        found_a.append(a[other])
        found_b.append(b[other])
    a = np.concatenate(found_a) if found_a else np.zeros(0, np.int64)
    b = np.concatenate(found_b) if found_b else np.zeros(0, np.int64)
    other_file = href[a] != href[b]
    return Places.from_pairs(n, a[other_file], b[other_file])


def acquisition_dates(rows: pd.DataFrame) -> np.ndarray:
    """``(N,)`` datetime64[ns] acquisition times (NaT where unknown): the ``datetime`` column, else the
    start of the ``start_datetime`` range (a date known to the day), else a ``YYYYMMDD`` in the source
    file's name (the last one when there are several)."""
    from_name = pd.to_datetime(rows["href"].astype(str).map(_date_in_name), format="%Y%m%d", errors="coerce")
    when = pd.Series(from_name.to_numpy(), index=rows.index)
    for column in ("start_datetime", "datetime"):  # the later one wins where both are known
        if column in rows:
            given = pd.to_datetime(rows[column], errors="coerce", utc=True).dt.tz_convert(None)
            when = given.where(given.notna(), when)
    return when.to_numpy("datetime64[ns]")


# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------


def _date_in_name(href: str):
    found = dates_in_name(href)
    return found[-1] if found else None


def _has_area(rows: pd.DataFrame) -> np.ndarray:
    import shapely

    geoms = np.array([g if g is not None else shapely.Polygon() for g in rows["geometry"]], dtype=object)
    return shapely.area(geoms) > 0


def _projected_groups(rows: pd.DataFrame) -> np.ndarray:
    """Per row, the index of its projected CRS among the rows' CRSs; -1 for rows that cannot be
    measured in their own CRS (no transform, or a geographic CRS)."""
    from pyproj import CRS

    crs = rows["crs"].astype("string").fillna("").to_numpy()
    has_transform = (
        np.array([t is not None and not (isinstance(t, float) and np.isnan(t)) for t in rows["transform"]], bool)
        if "transform" in rows
        else np.zeros(len(rows), bool)
    )
    names, codes = np.unique(crs, return_inverse=True)
    projected = np.array([bool(s) and CRS.from_user_input(s).is_projected for s in names], bool)
    return np.where(projected[codes] & has_transform, codes, -1).astype(np.int64)


def _own_crs_footprints(rows: pd.DataFrame) -> np.ndarray:
    """Each tile's exact footprint in its own CRS: the window's corners through its affine transform."""
    import shapely

    t = np.stack([np.asarray(v, np.float64)[:6] for v in rows["transform"]])  # a, b, c, d, e, f
    w = rows["width"].to_numpy(np.float64)
    h = rows["height"].to_numpy(np.float64)
    cols = np.stack([np.zeros_like(w), w, w, np.zeros_like(w), np.zeros_like(w)], axis=1)
    lines = np.stack([np.zeros_like(h), np.zeros_like(h), h, h, np.zeros_like(h)], axis=1)
    x = t[:, [0]] * cols + t[:, [1]] * lines + t[:, [2]]
    y = t[:, [3]] * cols + t[:, [4]] * lines + t[:, [5]]
    return shapely.polygons(np.stack([x, y], axis=2))


def _equal_area_footprints(rows: pd.DataFrame) -> np.ndarray:
    import geopandas as gpd

    return gpd.GeoSeries(rows["geometry"].to_numpy(), crs="EPSG:4326").to_crs(EQUAL_AREA_CRS).to_numpy()


def _overlapping(geoms: np.ndarray, iou: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(a, b)``, ``a < b``, of footprints whose intersection over union is ``≥ iou``."""
    import shapely

    if len(geoms) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    tree = shapely.STRtree(geoms)
    a, b = tree.query(geoms, predicate="intersects")
    once = a < b
    a, b = a[once], b[once]
    area = shapely.area(geoms)
    inter = shapely.area(shapely.intersection(geoms[a], geoms[b]))
    union = area[a] + area[b] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        same = inter >= iou * union
    same &= union > 0
    return a[same].astype(np.int64), b[same].astype(np.int64)


__all__ = ["DEFAULT_IOU", "EQUAL_AREA_CRS", "Places", "acquisition_dates", "check_iou", "same_place_partners"]
