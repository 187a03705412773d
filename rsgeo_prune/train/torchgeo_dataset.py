"""A catalog's tiles as a TorchGeo :class:`~torchgeo.datasets.GeoDataset`, and a sampler of whole tiles.

:class:`CatalogGeoDataset` indexes the selected tiles (default: the kept ones) by their footprint in
their own CRS and by their acquisition interval, and serves the pixels of
:class:`~rsgeo_prune.train.dataset.CatalogDataset` for the same tile — same bands in the same order,
same dtype, same scaling, same ``valid`` mask — so a model trained through TorchGeo sees the numbers
the project's own trainers see. :class:`CatalogTileSampler` yields each tile's query once (optionally
within a region and a time range); any other TorchGeo sampler (``RandomGeoSampler``, ``GridGeoSampler``)
works too and gets windows of single tiles.

Times follow TorchGeo's index: naive timestamps, here in UTC. A tile's interval is the catalog's
``[start_datetime, end_datetime]`` (equal to ``datetime`` for an instant), else ``[datetime, datetime]``;
a tile whose catalog says neither has an unbounded interval (TorchGeo's ``pd.Timestamp.min`` to
``pd.Timestamp.max``): its time is unknown, so no time range excludes it.

Requires the ``torchgeo`` extra (``pip install rsgeo_prune[torchgeo]``; ``make install`` installs it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import shapely
import torch
from geopandas import GeoDataFrame
from pyproj import CRS
from rasterio.transform import Affine
from torchgeo.datasets import GeoDataset
from torchgeo.datasets.utils import GeoSlice
from torchgeo.samplers import GeoSampler

from ..errors import RSGeoPruneError
from .dataset import CatalogDataset, Selection, load_table, select_rows

#: The catalog's acquisition-time columns (UTC): ``datetime`` is null when only a range is known.
TIME_COLUMNS = ("datetime", "start_datetime", "end_datetime")


def acquisition_intervals(table: pd.DataFrame, source: str = "catalog") -> pd.IntervalIndex:
    """Each row's acquisition interval as TorchGeo indexes time: closed on both ends, naive UTC.

    ``[start_datetime, end_datetime]`` where the catalog gives them, else ``[datetime, datetime]``; an
    end the catalog leaves unknown is unbounded (``pd.Timestamp.min`` / ``pd.Timestamp.max``).
    """
    cols = {}
    for name in TIME_COLUMNS:
        if name not in table:
            cols[name] = pd.Series(pd.NaT, index=table.index, dtype="datetime64[ns]")
            continue
        try:  # naive values are taken as UTC, aware ones converted to it
            cols[name] = pd.to_datetime(table[name], utc=True).dt.tz_localize(None).astype("datetime64[ns]")
        except (ValueError, TypeError, OverflowError) as exc:
            raise RSGeoPruneError(
                f"{source}: column {name!r} is not a UTC timestamp ({exc}); rebuild the catalog with rsgeo-prune"
            ) from exc
    start = cols["start_datetime"].fillna(cols["datetime"]).fillna(pd.Timestamp.min)
    end = cols["end_datetime"].fillna(cols["datetime"]).fillna(pd.Timestamp.max)
    bad = np.flatnonzero((start > end).to_numpy())
    if len(bad):
        i = bad[0]
        raise RSGeoPruneError(
            f"{source}: tile {table['tile_id'].iloc[i]!r} starts after it ends ({start.iloc[i]} > "
            f"{end.iloc[i]}, {len(bad)} tiles); fix start_datetime/end_datetime or rebuild the "
            "catalog"
        )
    return pd.IntervalIndex.from_arrays(start.to_numpy(), end.to_numpy(), closed="both", name="datetime")


def time_interval(toi: pd.Interval | tuple | None) -> pd.Interval | None:
    """A time range as the index compares it: ``pd.Interval`` closed on both ends, naive UTC.

    ``toi`` is a ``pd.Interval`` or ``(start, end)`` of anything :class:`pandas.Timestamp` reads
    (``"2020-06-01"``, a ``datetime``, aware or naive — naive is taken as UTC); a None end is unbounded.
    Both ends are included: an instant acquisition on either end is in the range.
    """
    if toi is None:
        return None
    start, end = (toi.left, toi.right) if isinstance(toi, pd.Interval) else toi
    start, end = _naive_utc(start, pd.Timestamp.min), _naive_utc(end, pd.Timestamp.max)
    if start > end:
        raise RSGeoPruneError(f"time range {start} .. {end}: starts after it ends; give (start, end)")
    return pd.Interval(start, end, closed="both")


def _naive_utc(value, default: pd.Timestamp) -> pd.Timestamp:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return default
    try:
        t = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise RSGeoPruneError(
            f"time {value!r}: not a date or time; give e.g. '2020-06-01' or '2020-06-01T12:00:00Z'"
        ) from exc
    return t.tz_convert("UTC").tz_localize(None) if t.tzinfo is not None else t


class CatalogGeoDataset(GeoDataset):
    """The selected tiles of a catalog as a TorchGeo dataset, indexed by footprint and acquisition time.

    Args:
        catalog: GeoParquet path or table (see :class:`~rsgeo_prune.train.dataset.CatalogDataset`).
        select: which tiles (default the kept ones; see :func:`~rsgeo_prune.train.dataset.select_rows`).
            All must share one CRS: TorchGeo's index has one (select one with a query such as
            ``"kept and crs == 'EPSG:26914'"`` and build one dataset per CRS).
        bands, nodata, fill, output, check_files: as for ``CatalogDataset``.
        transforms: a function of the sample dict, applied last (TorchGeo's convention).

    Indexed with TorchGeo's ``[xmin:xmax, ymin:ymax, tmin:tmax]`` (CRS units, naive UTC times), a
    query must fall within one tile's footprint (the dataset serves windows of single tiles, never a
    mosaic: kept tiles are scattered) at a time within or overlapping its interval; otherwise
    ``IndexError``. When several tiles qualify, the one whose interval contains the query's is chosen,
    then the one whose footprint is the query's box, then the narrowest interval, then catalog order —
    so a :class:`CatalogTileSampler` query always gets its own tile. The window is the query box
    snapped to the tile's pixel grid; pixels are never resampled, so a query resolution (slice step)
    other than the tile's is an ``IndexError``.

    A sample is ``{"image", "valid", "tile_id", "crs", "bounds"}`` (plus ``"stretch"`` when
    ``output="raw"``): ``image`` and ``valid`` equal ``CatalogDataset``'s for that tile, cut to the
    window (float32 ``(C, H, W)`` in [-1, 1] by default); ``crs`` is a :class:`pyproj.CRS` and
    ``bounds`` the query, as TorchGeo's own datasets return them. Collate batches with
    :func:`torchgeo.datasets.stack_samples` (torch's default collate rejects CRS objects and slices).
    """

    def __init__(
        self,
        catalog: str | Path | pd.DataFrame,
        *,
        select: Selection = "kept",
        bands: list[int] | None = None,
        nodata: float | None = None,
        fill: float = -1.0,
        output: str = "float",
        check_files: bool = True,
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ):
        source = str(catalog) if not isinstance(catalog, pd.DataFrame) else "catalog"
        table = select_rows(load_table(catalog), select, source=source)
        self.tiles = CatalogDataset(
            table, select="all", bands=bands, nodata=nodata, fill=fill, output=output, check_files=check_files
        )
        self.transforms = transforms
        self.paths = sorted(set(table["href"].astype(str)))
        n = len(self.tiles)
        transforms_ = [self.tiles.tile_transform(i) for i in range(n)]
        images = [self.tiles.tile_ids[i] for i in range(n) if transforms_[i] is None]
        if images:
            raise RSGeoPruneError(
                f"{source}: {images[0]!r} is a collection image ({len(images)} of {n} tiles): it has "
                "no footprint to index; select raster tiles for TorchGeo"
            )
        crs_names = sorted({self.tiles.tile_crs(i) for i in range(n)})
        if "" in crs_names:
            raise RSGeoPruneError(
                f"{source}: tiles without a CRS (no 'crs' column or empty cells); rebuild the "
                "catalog with rsgeo-prune, which records each tile's CRS"
            )
        if len(crs_names) > 1:
            raise RSGeoPruneError(
                f"{source}: the tiles are in {len(crs_names)} CRSs ({', '.join(crs_names[:3])}); a "
                f'TorchGeo dataset has one: select one, e.g. select="kept and crs == '
                f"'{crs_names[0]}'\", and build one dataset per CRS"
            )
        # pixel (col, row) of a CRS point: each tile's inverse transform, (a, b, c, d, e, f) in rasterio order
        self._inverse = np.array([tuple(~Affine(*t))[:6] for t in transforms_])
        self._tile_bounds = np.stack([self.tiles.tile_bounds(i) for i in range(n)])
        # pixel sizes in CRS units along x and y (any rotation): the length of one column and one row step
        self._tile_res = np.array([(np.hypot(t[0], t[3]), np.hypot(t[1], t[4])) for t in transforms_])
        # TorchGeo's samplers turn pixel sizes into CRS units with it: the finest, where resolutions differ
        self._res = (float(self._tile_res[:, 0].min()), float(self._tile_res[:, 1].min()))
        intervals = acquisition_intervals(table, source)
        self._check_unique(intervals, source)
        # nanoseconds since the epoch, the index's own unit: one integer comparison per tile and query
        self._start_ns = intervals.left.as_unit("ns").asi8
        self._end_ns = intervals.right.as_unit("ns").asi8
        self._crs = CRS.from_user_input(crs_names[0])
        self.index = GeoDataFrame(
            {"tile": np.arange(n), "tile_id": self.tiles.tile_ids},
            index=intervals,
            geometry=shapely.box(*self._tile_bounds.T),
            crs=self._crs,
        )

    def _check_unique(self, intervals: pd.IntervalIndex, source: str) -> None:
        """Two tiles of one footprint and one interval are one point of TorchGeo's index: refuse them."""
        key = pd.DataFrame(self._tile_bounds, columns=["minx", "miny", "maxx", "maxy"])
        key["start"], key["end"] = intervals.left, intervals.right
        twins = np.flatnonzero(key.duplicated(keep=False).to_numpy())
        if len(twins):
            a = self.tiles.tile_ids[twins[0]]
            b = next(self.tiles.tile_ids[j] for j in twins[1:] if (key.iloc[j] == key.iloc[twins[0]]).all())
            raise RSGeoPruneError(
                f"{source}: tiles {a!r} and {b!r} have the same footprint and acquisition time "
                f"({len(twins)} tiles share one with another); TorchGeo cannot tell them apart: give "
                "the catalog its datetime columns (rebuild it with rsgeo-prune) or select one "
                "acquisition"
            )

    @property
    def _tree(self) -> shapely.STRtree:
        """An R-tree of the tile boxes, built on first use in each process (it is not pickled to workers)."""
        tree = self.__dict__.get("_strtree")
        if tree is None:
            tree = self.__dict__["_strtree"] = shapely.STRtree(shapely.box(*self._tile_bounds.T))
        return tree

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_strtree"}

    # -- TorchGeo's GeoDataset -----------------------------------------------------------------
    @property
    def crs(self) -> CRS:
        return self._crs  # held, not read from the index per sample (GeoDataFrame.crs costs 0.2 ms)

    @crs.setter
    def crs(self, new_crs: CRS) -> None:
        if CRS.from_user_input(new_crs) != self._crs:
            raise RSGeoPruneError(
                f"crs {new_crs}: the tiles are served in their own CRS ({self._crs}) without "
                "reprojection; select tiles of that CRS instead"
            )

    def __getitem__(self, query: GeoSlice) -> dict[str, Any]:
        x, y, t = _three_slices(query)
        i, window = self._locate(x, y, t, query)
        sample = self.tiles[i]
        h, w = sample["image"].shape[-2:]
        r0, r1, c0, c1 = max(0, window[0]), min(h, window[1]), max(0, window[2]), min(w, window[3])
        if r1 <= r0 or c1 <= c0:
            raise IndexError(f"query {query}: less than one pixel of tile {sample['tile_id']!r}")
        if (r0, r1, c0, c1) != (0, h, 0, w):
            sample["image"] = sample["image"][..., r0:r1, c0:c1].contiguous()
            sample["valid"] = sample["valid"][r0:r1, c0:c1].contiguous()
        out = {
            "image": sample["image"],
            "valid": sample["valid"],
            "tile_id": sample["tile_id"],
            "crs": self.crs,
            "bounds": query,
        }
        if "stretch" in sample:
            out["stretch"] = sample["stretch"]
        return self.transforms(out) if self.transforms is not None else out

    def _locate(self, x: slice, y: slice, t: slice, query) -> tuple[int, tuple[int, int, int, int]]:
        """The tile that answers ``query`` (see the class docstring) and the pixel window
        ``(row0, row1, col0, col1)`` of the query box in it."""
        inf = float("inf")
        qx0, qx1 = (-inf if x.start is None else float(x.start)), (inf if x.stop is None else float(x.stop))
        qy0, qy1 = (-inf if y.start is None else float(y.start)), (inf if y.stop is None else float(y.stop))
        if not np.isfinite([qx0, qx1, qy0, qy1]).all():  # an open side: the tiles' extent
            xs, ys, _ = self.bounds
            qx0, qx1 = max(qx0, xs.start), min(qx1, xs.stop)
            qy0, qy1 = max(qy0, ys.start), min(qy1, ys.stop)
        near = np.sort(self._tree.query(shapely.box(qx0, qy0, qx1, qy1)))  # tiles whose box meets the query's
        b, left, right = self._tile_bounds[near], self._start_ns[near], self._end_ns[near]
        tol = 1e-6 * self._tile_res[near].min(axis=1)  # a millionth of a pixel: sums of float transforms
        inside = (b[:, 0] <= qx0 + tol) & (b[:, 1] <= qy0 + tol) & (b[:, 2] >= qx1 - tol) & (b[:, 3] >= qy1 - tol)
        tq0 = _naive_utc(t.start, pd.Timestamp.min).as_unit("ns").value
        tq1 = _naive_utc(t.stop, pd.Timestamp.max).as_unit("ns").value
        hit = np.flatnonzero(inside & (left <= tq1) & (right >= tq0))
        if not len(hit):
            raise IndexError(
                f"query {query}: no tile of the catalog contains this box at this time (windows of single "
                f"tiles are served, not mosaics); tiles: {self.bounds}"
            )
        exact = (np.abs(b[hit] - [qx0, qy0, qx1, qy1]) <= tol[hit, None]).all(axis=1)
        contains = (left[hit] <= tq0) & (right[hit] >= tq1)
        # in float: an unbounded interval's Timestamp.max - Timestamp.min overflows int64 nanoseconds
        width = right[hit].astype(np.float64) - left[hit].astype(np.float64)
        i = int(near[hit[np.lexsort((near[hit], width, ~exact, ~contains))[0]]])
        steps = (x.step, y.step)
        for k, step in enumerate(steps):
            if step is not None and not np.isclose(float(step), self._tile_res[i, k], rtol=1e-6):
                raise IndexError(
                    f"query {query}: resolution {step} differs from tile {self.tiles.tile_ids[i]!r}'s "
                    f"{self._tile_res[i, k]} (pixels are served as stored, never resampled)"
                )
        return i, self._window(i, qx0, qy0, qx1, qy1)

    def _window(self, i: int, qx0: float, qy0: float, qx1: float, qy1: float) -> tuple[int, int, int, int]:
        """The query box in tile ``i``'s pixels, snapped to its grid: ``(row0, row1, col0, col1)``, not yet
        clipped to the tile (a rotated tile's box reaches past its pixels)."""
        a, b, c, d, e, f = self._inverse[i]
        x, y = np.array([qx0, qx1, qx1, qx0]), np.array([qy0, qy0, qy1, qy1])
        cols, rows = np.rint(a * x + b * y + c), np.rint(d * x + e * y + f)
        return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def _three_slices(query: GeoSlice) -> tuple[slice, slice, slice]:
    parts = (query,) if isinstance(query, slice) else tuple(query)
    if len(parts) > 3 or not all(isinstance(p, slice) for p in parts):
        raise IndexError(f"query {query!r}: index with [xmin:xmax, ymin:ymax, tmin:tmax] slices")
    return (*parts, *(slice(None),) * (3 - len(parts)))


class CatalogTileSampler(GeoSampler):
    """Each tile of a :class:`CatalogGeoDataset` once, whole: the query of its footprint and its own
    acquisition interval.

    Args:
        dataset: the dataset whose tiles to yield (its ``select``: by default the kept tiles).
        roi: a shapely geometry in the dataset's CRS: only tiles that intersect it (yielded whole).
        toi: a time range (``pd.Interval`` or ``(start, end)``; see :func:`time_interval`): only tiles
            whose acquisition interval overlaps it, both ends included. Tiles of unknown time are in
            every range.
        shuffle: a new order each epoch (drawn with ``generator``), else catalog order.

    Unlike TorchGeo's ``PreChippedGeoSampler``, intervals are not clipped to ``toi``: each query
    names its tile's own interval, so tiles of one footprint at different times stay distinct.
    """

    def __init__(
        self,
        dataset: CatalogGeoDataset,
        roi: shapely.Geometry | None = None,
        toi: pd.Interval | tuple | None = None,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ):
        super().__init__(dataset)
        keep = np.ones(len(self.index), dtype=bool)
        interval = time_interval(toi)
        if interval is not None:
            self.toi = interval
            keep &= np.asarray(self.index.index.overlaps(interval))
        if roi is not None:
            self.roi = roi
            keep &= np.asarray(self.index.geometry.intersects(roi))
        self.index = self.index.iloc[keep]
        self.shuffle = shuffle
        self.generator = generator

    def __iter__(self) -> Iterator[tuple[slice, slice, slice]]:
        order = torch.randperm(len(self), generator=self.generator).tolist() if self.shuffle else range(len(self))
        bounds = self.index.geometry.bounds.to_numpy()
        left, right = self.index.index.left, self.index.index.right
        for i in order:
            xmin, ymin, xmax, ymax = bounds[i]
            yield slice(float(xmin), float(xmax)), slice(float(ymin), float(ymax)), slice(left[i], right[i])

    def __len__(self) -> int:
        return len(self.index)

    @property
    def tile_ids(self) -> list[str]:
        """The tile ids this sampler yields, in catalog order."""
        return self.index["tile_id"].tolist()


__all__ = ["TIME_COLUMNS", "CatalogGeoDataset", "CatalogTileSampler", "acquisition_intervals", "time_interval"]
