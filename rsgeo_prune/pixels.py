"""The one reader from catalog rows to pixel arrays.

A catalog row (``tiles.parquet``, ``catalog.parquet`` or any table with the same columns) names
its pixels by ``href`` plus, for raster tiles, the window ``row_off, col_off, height, width``;
rows without a ``transform`` are whole images of a collection. Everything that needs the pixels
of a row reads them here: embedding (Stage II), the report's contact sheets, the STAC tile export,
the notebooks and the training dataset.

Values come in three forms:

* **raw** — the file's own dtype and values (:meth:`PixelReader.read`), for exports;
* **levels** — uint8, the 256 levels Stage I and the embedders see (:meth:`PixelReader.read_levels`,
  :func:`read_tile_pixels`), and their sha256 :func:`pixel_digest` (exact copies have equal digests);
* **unit** — float32 in [0, 1] (:meth:`PixelReader.read_unit`), for training.

The scaling rule lives here (:func:`stretch_levels`, :func:`percentile_range`, :func:`scene_percentiles`,
:func:`valid_pixels`; Stage I counts the same levels; documented in docs/curation.md): uint8 is used as is (``/ 255``
for unit); any other dtype is stretched per band between the 2nd and 98th percentiles of the
*scene* (a decimated read of the whole raster, so every tile of a scene gets the same mapping) or,
for a collection image, of the image itself; values outside are clipped. Nodata pixels (the file's
nodata value, its mask band, or NaN, in every band) are reported in a ``valid`` mask and read as 0.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import threading
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from .errors import RSGeoPruneError
from .sources import decode_errors, read_image

#: The stretch of non-uint8 rasters: per band, these percentiles map to levels 0 and 255.
STRETCH_PERCENTILES = (2.0, 98.0)


def stretch_levels(block: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Map ``(C, H, W)`` values to uint8 levels with per-band ``lo``/``hi`` (the percentile stretch)."""
    lo = np.asarray(lo, np.float64).reshape(-1, 1, 1)
    span = np.maximum(np.asarray(hi, np.float64).reshape(-1, 1, 1) - lo, 1e-12)
    q = (block.astype(np.float64) - lo) / span
    return np.rint(np.clip(np.nan_to_num(q, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)


def valid_pixels(block: np.ndarray, nodata: float | None) -> np.ndarray:
    """``(H, W)`` uint8: 1 where at least one band holds data (not nodata, not NaN), from ``(C, H, W)``."""
    bad = np.zeros(block.shape, bool)
    if np.issubdtype(block.dtype, np.floating):
        bad |= np.isnan(block)
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        bad |= block == nodata
    return (~bad.all(axis=0)).astype(np.uint8)


def percentile_range(sample: np.ndarray, nodata: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-band 2nd and 98th percentiles of ``(C, H, W)`` ``sample``, nodata and NaN excluded."""
    valid = valid_pixels(sample, nodata).astype(bool)
    lo, hi = [], []
    for band in sample:
        v = band[valid]
        v = v[np.isfinite(v)] if np.issubdtype(v.dtype, np.floating) else v
        if v.size == 0:
            lo.append(0.0)
            hi.append(1.0)
            continue
        a, b = np.percentile(v.astype(np.float64), STRETCH_PERCENTILES)
        lo.append(float(a))
        hi.append(float(b) if b > a else float(a) + 1.0)
    return np.array(lo), np.array(hi)


def scene_percentiles(href: str, nodata: float | None, max_side: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """The scene's stretch (per-band 2nd/98th percentiles) from a decimated read of the whole raster."""
    import rasterio
    from rasterio.enums import Resampling

    with rasterio.open(href) as src:
        f = max(1, math.ceil(max(src.height, src.width) / max_side))
        sample = src.read(
            out_shape=(src.count, math.ceil(src.height / f), math.ceil(src.width / f)), resampling=Resampling.nearest
        )
    return percentile_range(sample, nodata)


@dataclass(frozen=True)
class Stretch:
    """Per-band ``lo``/``hi`` of the percentile stretch; ``None`` bounds mean uint8 used as is."""

    lo: np.ndarray | None = None
    hi: np.ndarray | None = None

    @property
    def identity(self) -> bool:
        return self.lo is None

    def to_unit(self, block: np.ndarray) -> np.ndarray:
        """``(C, H, W)`` → float32 in [0, 1] (NaN → 0)."""
        if self.identity:
            return block.astype(np.float32) / np.float32(255.0)
        lo = self.lo.reshape(-1, 1, 1)
        span = np.maximum(self.hi.reshape(-1, 1, 1) - lo, 1e-12)
        q = (block.astype(np.float64) - lo) / span
        return np.clip(np.nan_to_num(q, nan=0.0), 0.0, 1.0).astype(np.float32)

    def to_levels(self, block: np.ndarray) -> np.ndarray:
        """``(C, H, W)`` → uint8 levels (Stage I's mapping)."""
        return block.astype(np.uint8, copy=False) if self.identity else stretch_levels(block, self.lo, self.hi)

    def select(self, bands: Sequence[int] | None) -> "Stretch":
        """The stretch of a band subset (1-based band indexes)."""
        if self.identity or bands is None:
            return self
        idx = np.asarray(bands) - 1
        return Stretch(self.lo[idx], self.hi[idx])


@dataclass(frozen=True)
class Tile:
    """The pixels of one catalog row: ``data (C, H, W)``, ``valid (H, W)`` bool, and the stretch."""

    data: np.ndarray
    valid: np.ndarray
    stretch: Stretch


def is_image_row(row) -> bool:
    """Rows without a ``transform`` are whole images of a collection."""
    t = _field(row, "transform")
    return t is None or (isinstance(t, float) and np.isnan(t))


class PixelReader:
    """Reads the pixels of catalog rows, keeping one open rasterio handle per raster.

    Args:
        nodata: a nodata value for rasters that declare none (the run's ``nodata`` option).
        bands: 1-based band indexes to read (default: all bands).

    Handles and scene stretches are cached per process; the reader pickles without them, so a
    torch DataLoader worker opens its own handles (no lock is shared between processes). Within a
    process, one lock per raster serialises reads of the same handle (GDAL handles are not
    thread-safe); different rasters are read concurrently.
    """

    def __init__(self, *, nodata: float | None = None, bands: Sequence[int] | None = None):
        self.nodata = nodata
        self.bands = None if bands is None else [int(b) for b in bands]
        self._handles: dict = {}
        self._locks: dict = {}
        self._stretches: dict = {}
        self._all_valid: dict = {}
        self._guard = threading.Lock()
        self._pid = os.getpid()

    # -- pickling: handles and locks stay in the process that opened them --------------------
    def __getstate__(self):
        return {"nodata": self.nodata, "bands": self.bands}

    def __setstate__(self, state):
        self.__init__(**state)

    def close(self) -> None:
        for src in self._handles.values():
            src.close()
        self._handles.clear()

    def __del__(self):  # pragma: no cover - interpreter shutdown order varies
        try:
            self.close()
        except Exception:
            pass

    # -- public reads -----------------------------------------------------------------------
    def read(self, row, *, with_valid: bool = True) -> Tile:
        """The raw pixels of ``row`` (the file's dtype), its valid mask and its scene's stretch
        (``valid`` is None when ``with_valid`` is false: the mask band is then not read)."""
        if is_image_row(row):
            return self._read_image(row, with_valid)
        return self._read_window(row, with_valid)

    def read_unit(self, row) -> tuple[np.ndarray, np.ndarray]:
        """``(float32 (C, H, W) in [0, 1], valid (H, W) bool)``; nodata pixels are 0."""
        tile = self.read(row)
        x = tile.stretch.to_unit(tile.data)
        x[:, ~tile.valid] = 0.0
        return x, tile.valid

    def read_levels(self, row) -> np.ndarray:
        """``uint8 (C, H, W)``: the 256 levels Stage I and the embedders see (no mask is read)."""
        tile = self.read(row, with_valid=False)
        return tile.stretch.to_levels(tile.data)

    def read_levels_and_digest(self, row) -> tuple[np.ndarray, str]:
        """The levels of :meth:`read_levels` and their :func:`pixel_digest` (the mask is read only
        for rows that may hold nodata: ``nodata_frac`` above 0 or unknown)."""
        tile = self.read(row, with_valid=_may_hold_nodata(row))
        levels = tile.stretch.to_levels(tile.data)
        return levels, pixel_digest(levels, tile.valid)

    def profile(self, row) -> dict:
        """rasterio profile facts of the row's raster (count, dtype, crs, nodata) for exports."""
        src = self._handle(_field(row, "href"))
        return {
            "count": len(self.bands) if self.bands else src.count,
            "dtype": src.dtypes[0],
            "crs": src.crs,
            "nodata": src.nodata,
        }

    # -- named steps --------------------------------------------------------------------------
    def _handle(self, href: str):
        import rasterio

        if self._pid != os.getpid():
            # a forked child (a DataLoader worker under the fork start method) inherits the parent's
            # handles without pickling, and with them the parent's file offsets: open its own
            self._handles, self._locks, self._guard, self._pid = {}, {}, threading.Lock(), os.getpid()
            self._all_valid = {}
        with self._guard:
            src = self._handles.get(href)
            if src is None:
                with decode_errors(href):
                    try:
                        src = rasterio.open(href)
                    except rasterio.errors.RasterioIOError as exc:
                        raise RSGeoPruneError(
                            f"{href}: raster cannot be opened ({exc}); the catalog's href no "
                            "longer resolves: restore the file or rebuild the catalog"
                        ) from exc
                self._handles[href] = src
                self._locks[href] = threading.Lock()
            return src

    def _check_bands(self, href: str, count: int) -> None:
        if self.bands and (min(self.bands) < 1 or max(self.bands) > count):
            raise RSGeoPruneError(
                f"{href}: band {max(self.bands) if max(self.bands) > count else min(self.bands)} "
                f"is out of range; the file has bands 1..{count}"
            )

    def _nodata_of(self, src) -> float | None:
        return src.nodata if src.nodata is not None else self.nodata

    def _scene_stretch(self, href: str, src) -> Stretch:
        with self._guard:
            st = self._stretches.get(href)
        if st is None:
            if src.dtypes[0] == "uint8":
                st = Stretch()
            else:
                lo, hi = scene_percentiles(href, self._nodata_of(src))
                st = Stretch(np.asarray(lo, np.float64), np.asarray(hi, np.float64))
            with self._guard:
                self._stretches[href] = st
        return st.select(self.bands)

    def _read_window(self, row, with_valid: bool) -> Tile:
        from rasterio.windows import Window

        href = _field(row, "href")
        src = self._handle(href)
        self._check_bands(href, src.count)
        window = Window(
            int(_field(row, "col_off")),
            int(_field(row, "row_off")),
            int(_field(row, "width")),
            int(_field(row, "height")),
        )
        all_valid = with_valid and self._every_pixel_valid(href, src)
        masked = with_valid and not all_valid and src.nodata is None and self.nodata is None
        with decode_errors(href), self._locks[href]:
            data = src.read(indexes=self.bands, window=window)
            # the mask band speaks for files without a nodata value (GDAL's dataset mask)
            mask = src.dataset_mask(window=window) if masked else None
        valid = None
        if all_valid:
            valid = np.ones(data.shape[1:], bool)
        elif with_valid:
            valid = _valid_mask(data, self._nodata_of(src))
            if mask is not None:
                valid &= mask > 0
        return Tile(data, valid, self._scene_stretch(href, src))

    def _every_pixel_valid(self, href: str, src) -> bool:
        """Whether no pixel of the raster can be nodata: no nodata value (the file's or the
        reader's), no mask or alpha band, and an integer dtype (no NaN). Cached per raster; the
        mask is then neither read nor computed."""
        fact = self._all_valid.get(href)
        if fact is None:
            from rasterio.enums import MaskFlags

            fact = (
                self._nodata_of(src) is None
                and not any(np.issubdtype(np.dtype(d), np.floating) for d in src.dtypes)
                and all(list(flags) == [MaskFlags.all_valid] for flags in src.mask_flag_enums)
            )
            self._all_valid[href] = fact
        return fact

    def _read_image(self, row, with_valid: bool) -> Tile:
        href = _field(row, "href")
        data = read_image(href)
        self._check_bands(href, data.shape[0])
        if self.bands:
            data = data[np.asarray(self.bands) - 1]
        valid = _valid_mask(data, None) if with_valid else None
        if data.dtype == np.uint8:
            return Tile(data, valid, Stretch())
        lo, hi = percentile_range(data, None)
        return Tile(data, valid, Stretch(np.asarray(lo, np.float64), np.asarray(hi, np.float64)))


def _valid_mask(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """``(H, W)`` bool: ``valid_pixels(data, nodata)`` as bool, without the float64 copy a float
    nodata (rasterio reports ``0.0``) forces on an integer block: for integer dtypes a pixel is valid
    when any band differs from the nodata value (none can when the value is not one of the dtype's).
    Bitwise, so a contiguous block is OR-ed 8 bytes at a time."""
    if not (data.dtype.kind in "iu" and data.ndim == 3 and len(data)):
        return valid_pixels(data, nodata).astype(bool)
    nd, pattern = _nodata_pattern(data.dtype, nodata)
    if nd is None:
        return np.ones(data.shape[1:], bool)
    if len(data) == 1:
        return data[0] != nd
    if data.flags.c_contiguous and (data[0].size * data.itemsize) % 8 == 0:
        words = data.reshape(len(data), -1).view(np.uint64)
        acc = np.bitwise_or.reduce(words if pattern == 0 else words ^ np.uint64(pattern), axis=0)
        return (acc.view(data.dtype) != 0).reshape(data.shape[1:])
    return np.bitwise_or.reduce(data if nd == 0 else data ^ nd, axis=0) != 0


@functools.lru_cache(maxsize=64)
def _nodata_pattern(dtype: np.dtype, nodata: float | None) -> tuple:
    """``(nodata as a dtype scalar, its bytes repeated over a uint64)``; ``(None, None)`` when no
    pixel of an integer ``dtype`` can equal ``nodata`` (None, NaN, a fraction, out of range)."""
    if nodata is None or math.isnan(nodata) or not float(nodata).is_integer():
        return None, None
    info = np.iinfo(dtype)
    if not info.min <= int(nodata) <= info.max:
        return None, None
    nd = dtype.type(int(nodata))
    word = np.frombuffer(np.full(8 // dtype.itemsize, nd, dtype).tobytes(), np.uint64)[0]
    return nd, int(word)


def _may_hold_nodata(row) -> bool:
    try:
        frac = _field(row, "nodata_frac")
    except (AttributeError, KeyError, TypeError):  # no such column: unknown
        return True
    return bool(pd.isna(frac) or frac > 0)


def _field(row, name: str):
    """A column of a row given as a pandas Series, a namedtuple (itertuples) or a dict."""
    if isinstance(row, dict):
        return row[name]
    return getattr(row, name) if hasattr(row, name) else row[name]


def read_tile_pixels(
    table: pd.DataFrame, *, nodata: float | None = None, batch: int = 256
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(row positions, tiles (n, C, H, W) uint8 levels)`` for every row of a tile table.

    Rows are grouped by source and shape so that a batch stacks; within a group the table's order
    is kept, at most ``batch`` tiles at a time. Every tile is read and scaled on its own, so a
    tile's levels never depend on which other tiles share its batch.
    """
    for positions, tiles, _ in _read_batches(table, nodata, batch, digests=False):
        yield positions, tiles


def read_tile_pixels_and_digests(
    table: pd.DataFrame, *, nodata: float | None = None, batch: int = 256
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """As :func:`read_tile_pixels`, with each tile's :func:`pixel_digest` from the same read:
    yields ``(row positions, tiles, digests (n,) str)``."""
    yield from _read_batches(table, nodata, batch, digests=True)


def tile_digests(table: pd.DataFrame, *, nodata: float | None = None) -> np.ndarray:
    """``(len(table),)`` pixel digests (hex str) of every row of a tile table."""
    out = np.empty(len(table), dtype=object)
    for positions, _, digests in read_tile_pixels_and_digests(table, nodata=nodata):
        out[positions] = digests
    return out


def pixel_digest(levels: np.ndarray, valid: np.ndarray | None = None) -> str:
    """sha256 (hex) of a tile as the embedders see it: its shape ``(C, H, W)`` and its uint8 levels,
    with nodata pixels (``valid`` false) as 0 in every band, so two tiles whose data differ only
    under nodata have one digest. Equal digests = byte-identical tiles (different files,
    re-exports)."""
    if valid is not None and not valid.all():
        levels = levels.copy()
        levels[:, ~valid] = 0
    h = hashlib.sha256(np.asarray(levels.shape, "<i8").tobytes())
    h.update(np.ascontiguousarray(levels, np.uint8).data)
    return h.hexdigest()


def _read_batches(table: pd.DataFrame, nodata: float | None, batch: int, digests: bool):
    reader = PixelReader(nodata=nodata)
    try:
        for positions in _batches(table, batch):
            rows = table.iloc[positions]
            read = [
                reader.read_levels_and_digest(r) if digests else (reader.read_levels(r), None)
                for r in rows.itertuples(index=False)
            ]
            for group in _same_shape([t for t, _ in read]):
                yield (
                    positions[group],
                    np.stack([read[j][0] for j in group]),
                    np.array([read[j][1] for j in group], dtype=object) if digests else None,
                )
    finally:
        reader.close()


def _batches(table: pd.DataFrame, batch: int) -> Iterator[np.ndarray]:
    """Row positions, ``batch`` at a time: collection images together, raster tiles by ``href``
    (one handle, one scene stretch)."""
    if not len(table):
        return
    images = np.array([is_image_row(r) for r in table.itertuples(index=False)], dtype=bool)
    keys = np.where(images, "", table["href"].to_numpy().astype(str))
    for _, idx in pd.Series(keys).groupby(keys, sort=False).indices.items():
        idx = np.asarray(idx)
        for s in range(0, len(idx), batch):
            yield idx[s : s + batch]


def _same_shape(tiles: list[np.ndarray]) -> list[list[int]]:
    shapes: dict[tuple, list[int]] = {}
    for j, t in enumerate(tiles):
        shapes.setdefault(t.shape, []).append(j)
    return list(shapes.values())


__all__ = [
    "PixelReader",
    "Stretch",
    "Tile",
    "is_image_row",
    "pixel_digest",
    "read_tile_pixels",
    "read_tile_pixels_and_digests",
    "tile_digests",
]
