"""Catalog rows → torch samples: ``image (C, H, W)`` float32 in [-1, 1], ``valid (H, W)``, ``tile_id``,
and where the pixels lie: ``crs`` (text) and ``bounds`` (float64 ``(minx, miny, maxx, maxy)`` in that CRS).

Two output forms (``CatalogDataset(..., output=)``):

* ``"float"`` (default): ``image`` is float32 in [-1, 1], nodata pixels set to ``fill``;
* ``"raw"``: ``image`` is the file's values (uint8 for uint8 rasters: 4x less to copy between
  DataLoader workers and to the device) plus ``stretch``, the per-band ``(lo, hi, uint8)`` of the
  scaling rule; :func:`to_model_range` (or :meth:`CatalogDataset.to_model_range`) maps a collated batch —
  on the device, after ``.to(device)`` — to exactly the float output's numbers.

Pixels are read through :class:`rsgeo_prune.pixels.PixelReader`, so the scaling is the catalog's
documented rule (uint8 ``/ 255``; uint16 and float stretched per band between the scene's 2nd and 98th
percentiles) and nodata pixels (every band equal to nodata, NaN, or masked) come back in ``valid``.
The reader keeps one rasterio handle per raster *per process* and pickles without them, so each
DataLoader worker opens its own handles and no lock is shared between workers.

Randomness (crop position, dihedral transform) is a pure function of ``(seed, epoch, index)``: a
resumed run sees the same samples as an uninterrupted one, whatever the worker count.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..acquisition import dates_in_name
from ..errors import RSGeoPruneError
from ..pixels import PixelReader, is_image_row

#: Band names (descriptions or colour interpretations, lower case) that make the NAIP default order.
_RGBN_NAMES = (("red",), ("green",), ("blue",), ("nir", "near-infrared", "near infrared", "nir08"))

Selection = str | Sequence[str] | None


def load_table(catalog: str | Path | pd.DataFrame) -> pd.DataFrame:
    """A catalog (GeoParquet path or table) as a plain DataFrame; a clear error if it can't be read."""
    if isinstance(catalog, pd.DataFrame):
        return pd.DataFrame(catalog)
    path = Path(catalog)
    if not path.exists():
        raise RSGeoPruneError(f"{path}: catalog not found; give a tiles.parquet or catalog.parquet path")
    from ..catalog import read_catalog

    try:
        return pd.DataFrame(read_catalog(path))
    except Exception as exc:
        raise RSGeoPruneError(
            f"{path}: not a readable catalog ({exc}); give a GeoParquet written by rsgeo-prune"
        ) from exc


def select_rows(table: pd.DataFrame, select: Selection = "kept", *, source: str = "catalog") -> pd.DataFrame:
    """The rows to train on.

    Args:
        select: ``"kept"`` (default: the kept tiles), ``"all"`` or None (every row), any other string
            is a :meth:`pandas.DataFrame.query` (``"kept and entropy > 5"``), a sequence is tile_ids
            (in the given order).
    """
    for col in ("tile_id", "href"):
        if col not in table:
            raise RSGeoPruneError(
                f"{source}: has no {col!r} column; give a tile table or catalog written by rsgeo-prune"
            )
    if select is None or (isinstance(select, str) and select == "all"):
        rows = table
    elif isinstance(select, str) and select == "kept":
        if "kept" not in table:
            raise RSGeoPruneError(f"{source}: has no 'kept' column; select tiles with a query or tile ids")
        rows = table[table["kept"].fillna(False).astype(bool)]
        if not len(rows):
            raise RSGeoPruneError(
                f"{source}: no kept tiles (all {len(table)} pruned); choose another catalog "
                "or select tiles with a query"
            )
    elif isinstance(select, str):
        try:
            rows = table.query(select)
        except Exception as exc:
            raise RSGeoPruneError(f"select {select!r}: not a valid query on {source} ({exc})") from exc
    else:
        ids = [str(t) for t in select]
        pos = pd.Series(np.arange(len(table)), index=table["tile_id"].astype(str))
        missing = [t for t in ids if t not in pos.index]
        if missing:
            raise RSGeoPruneError(f"tile_id {missing[0]!r}: not in {source} ({len(missing)} of {len(ids)} missing)")
        rows = table.iloc[pos.loc[ids].to_numpy()]
    if not len(rows):
        raise RSGeoPruneError(f"select {select!r}: no tiles of {source} match; loosen the selection")
    return rows.reset_index(drop=True)


def hash_split(tile_ids: Sequence[str], val_fraction: float, *, salt: str = "rsgeo-val") -> np.ndarray:
    """``True`` for the validation tiles: ``sha1(salt + tile_id)`` below ``val_fraction`` of its range.

    The split of a tile never depends on which other tiles are in the catalog, so adding tiles or
    pruning differently keeps the validation tiles that remain.
    """
    h = np.array(
        [int.from_bytes(hashlib.sha1(f"{salt}{t}".encode()).digest()[:8], "big") for t in tile_ids], dtype=np.float64
    )
    return h / 2.0**64 < float(val_fraction)


#: ``--val-by`` choices: hold out whole scenes (source files / collection images), whole acquisition
#: years, or tiles by the hash of their id (the last measures memorisation of the training scenes'
#: radiometry, not what encoding next year's imagery needs).
VAL_BY = ("scene", "year", "hash")

#: A date in a file name, as NAIP (``m_4709963_se_14_1_20200831``) and most product ids write it:
#: eight digits YYYYMMDD between non-digits.


def acquisition_year(row) -> int | None:
    """The acquisition year of a catalog row: its ``datetime`` column where present, else the start of its
    ``start_datetime`` range (a date known to the day), else a ``YYYYMMDD`` date in the source file's name
    (NAIP's convention); None when none says."""
    for column in ("datetime", "start_datetime"):
        value = row.get(column) if hasattr(row, "get") else None
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            try:
                return int(pd.Timestamp(value).year)
            except (ValueError, TypeError):
                pass
    found = dates_in_name(str(row.get("href", "")))
    return int(found[0][:4]) if found else None


def validation_groups(table: pd.DataFrame, by: str) -> pd.Series:
    """The group each row belongs to under ``--val-by``: scene id, acquisition year (as text) or tile id."""
    if by not in VAL_BY:
        raise RSGeoPruneError(f"val-by {by!r}: choose one of {', '.join(VAL_BY)}")
    if by == "hash":
        return table["tile_id"].astype(str)
    if by == "scene":
        col = "scene_id" if "scene_id" in table else "href"
        return table[col].astype(str)
    years = [acquisition_year(r) for r in table.to_dict("records")]
    missing = [i for i, y in enumerate(years) if y is None]
    if missing:
        href = table["href"].iloc[missing[0]]
        raise RSGeoPruneError(
            f"{href}: no acquisition date (no datetime column, no YYYYMMDD in the file name) for "
            f"--val-by year ({len(missing)} of {len(table)} tiles); use --val-by scene"
        )
    return pd.Series([str(y) for y in years], index=table.index)


def split_validation(
    table: pd.DataFrame, by: str = "scene", fraction: float = 0.05, *, salt: str = "rsgeo-val"
) -> np.ndarray:
    """``True`` for validation rows: whole groups (see :func:`validation_groups`) held out.

    ``hash`` is :func:`hash_split` per tile. For ``scene`` and ``year``, groups are taken in the order
    of ``sha1(salt + group)`` until they hold at least ``fraction`` of the tiles: at least one group,
    never all of them (a catalog of one group raises: the caller falls back to ``hash``). The choice
    depends only on the group names and sizes, so it is the same on every machine and rerun.
    """
    if not 0 < fraction < 1:
        raise RSGeoPruneError(f"validation fraction {fraction}: must be between 0 and 1")
    groups = validation_groups(table, by)
    if by == "hash":
        return hash_split(groups, fraction, salt=salt)
    sizes = groups.value_counts()
    if len(sizes) < 2:
        raise RSGeoPruneError(
            f"--val-by {by}: the tiles come from one {by} ({sizes.index[0]}); "
            "nothing can be held out whole: use --val-by hash"
        )
    order = sorted(sizes.index, key=lambda g: hashlib.sha1(f"{salt}{g}".encode()).digest())
    held, count = [], 0
    for g in order[:-1]:  # never every group
        held.append(g)
        count += int(sizes[g])
        if count >= fraction * len(table):
            break
    return groups.isin(held).to_numpy()


def check_hrefs(hrefs: Sequence[str], source: str = "catalog") -> None:
    """Fail on the first local file that does not exist (remote and GDAL virtual paths are not checked)."""
    uniq = list(dict.fromkeys(str(h) for h in hrefs))
    missing = [h for h in uniq if "://" not in h and not h.startswith("/vsi") and not Path(h).exists()]
    if missing:
        raise RSGeoPruneError(
            f"{missing[0]}: raster not found ({len(missing)} of {len(uniq)} files of the {source} "
            "are missing); the catalog's hrefs no longer resolve: restore the files or rebuild the catalog"
        )


def default_bands(href: str) -> list[int] | None:
    """R, G, B, NIR band indexes (1-based) of a raster whose band descriptions or colour
    interpretations name them; None (all bands) otherwise."""
    import rasterio

    try:
        with rasterio.open(href) as src:
            names = [(d or "").strip().lower() for d in src.descriptions]
            interp = [c.name.lower() for c in src.colorinterp]
    except Exception:
        return None  # not a raster GDAL opens by name (an image of a collection): all bands
    found = []
    for aliases in _RGBN_NAMES:
        hit = [k for k in range(len(names)) if names[k] in aliases or (not names[k] and interp[k] in aliases)]
        if not hit:
            return None
        found.append(hit[0] + 1)
    return found


def band_names(href: str, bands: Sequence[int]) -> list[str | None]:
    """What the raster at ``href`` calls each of ``bands`` (1-based): its band description, else a colour
    interpretation that names a band (red, green, blue; not GDAL's "gray" or "undefined"), else None. The
    R, G, B, NIR aliases of :func:`default_bands` come back as ``red``, ``green``, ``blue``, ``nir``."""
    import rasterio

    try:
        with rasterio.open(href) as src:
            descriptions, interp = list(src.descriptions), [c.name.lower() for c in src.colorinterp]
    except Exception:
        return [None] * len(bands)
    canonical = {alias: aliases[0] for aliases in _RGBN_NAMES for alias in aliases}
    names = []
    for b in bands:
        text = (descriptions[b - 1] or "").strip() if b <= len(descriptions) else ""
        if not text and b <= len(interp) and interp[b - 1] in ("red", "green", "blue"):
            text = interp[b - 1]
        names.append(canonical.get(text.lower(), text) or None)
    return names


class CatalogDataset(torch.utils.data.Dataset):
    """Tiles of a catalog as training samples.

    Args:
        catalog: GeoParquet path or table (one row per tile: ``tile_id, href, row_off, col_off,
            height, width, transform, bands, kept``; rows without ``transform`` are collection images).
        select: which rows (see :func:`select_rows`); default the kept tiles.
        bands: 1-based band indexes; default R, G, B, NIR when the first raster names them (NAIP),
            else all bands.
        crop: side in pixels of a crop smaller than the tile (random with ``random_crop``, else centred);
            default the whole tile (all selected tiles must then have one size).
        dihedral: apply one of the 8 rotations/flips of the square, drawn per sample (nadir imagery
            has no "up").
        nodata: nodata value for rasters that declare none (NAIP quarter-quads: 0).
        fill: value of nodata pixels in the [-1, 1] image (default -1, the file's 0 scaled).
        seed: seed of the crop and dihedral draws; see :meth:`set_epoch`.
        check_files: fail at construction, naming the first missing raster, when hrefs no longer resolve.
        output: ``"float"`` (default) or ``"raw"`` (see below).

    A sample is ``{"image": float32 (C, H, W) in [-1, 1], "valid": bool (H, W), "tile_id": str,
    "index": int, "crs": str, "bounds": float64 (4,)}``. ``crs`` is the tile's CRS as the catalog writes
    it (``"EPSG:<code>"``, else WKT); ``bounds`` is ``(minx, miny, maxx, maxy)`` of the sample's pixels in
    that CRS's units (metres for UTM): the tile, or the crop window when ``crop`` is set (a dihedral
    transform turns the pixels within that box). Both collate with torch's default collate (a list of
    strings, a ``(B, 4)`` tensor; a CRS object would not), and :func:`to_model_range` leaves ``bounds``
    on the CPU (float64 is metadata the model never reads, and MPS has no float64). A collection image
    has no footprint: ``bounds`` is its point location ``(lon, lat, lon, lat)`` in ``"EPSG:4326"`` where
    the catalog locates it, else NaN with ``crs`` ``""``.

    With ``output="raw"``, ``image`` holds the file's values instead (uint8 as is; uint16 and uint32
    widened to int32 and int64, which torch handles; nodata pixels keep their value) and the sample has
    ``"stretch": float64 (C, 3)``, each band's ``(lo, hi, uint8)`` (``(0, 255, 1)`` for uint8's rule,
    ``(p2, p98, 0)`` for a percentile stretch); ``self.to_model_range(batch)`` then gives the float
    samples' images, bit for bit.
    This is the fast path for training: workers copy and send 4x fewer bytes and the scaling runs
    once per batch on the device.

    ``valid`` is all True, without reading a mask, for rasters with no nodata value (the file's or
    ``nodata``), no mask or alpha band and an integer dtype.
    """

    def __init__(
        self,
        catalog: str | Path | pd.DataFrame,
        *,
        select: Selection = "kept",
        bands: Sequence[int] | None = None,
        crop: int | None = None,
        random_crop: bool = True,
        dihedral: bool = False,
        nodata: float | None = None,
        fill: float = -1.0,
        seed: int = 0,
        check_files: bool = True,
        output: str = "float",
    ):
        if output not in ("float", "raw"):
            raise RSGeoPruneError(
                f"output {output!r}: choose 'float' (image in [-1, 1]) or 'raw' (the file's values "
                "and a stretch, mapped with to_model_range)"
            )
        source = str(catalog) if not isinstance(catalog, pd.DataFrame) else "catalog"
        table = select_rows(load_table(catalog), select, source=source)
        if check_files:
            check_hrefs(table["href"], source)
        self.tile_ids = table["tile_id"].astype(str).tolist()
        self._rows = _row_records(table)
        self._crs, self._transforms, self._bounds = _georeference(table)
        self.bands = self._resolve_bands(table, bands, source)
        self.crop = None if crop is None else int(crop)
        self.random_crop = bool(random_crop)
        self.dihedral = bool(dihedral)
        self.fill = float(fill)
        self.output = output
        self.seed = int(seed)
        self.epoch = 0
        self._draws = self.dihedral or (self.crop is not None and self.random_crop)
        self.reader = PixelReader(nodata=nodata, bands=self.bands)
        self._check_sizes(source)

    # -- torch Dataset -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> dict:
        row = self._rows[index]
        rng = np.random.default_rng([self.seed, self.epoch, int(index)]) if self._draws else None
        data, valid, stretch, (dy, dx) = self._read(row, rng)
        bounds = self._window_bounds(index, dy, dx, data.shape[1], data.shape[2])
        if self.dihedral:
            k = int(rng.integers(8))
            data, valid = np.ascontiguousarray(dihedral(data, k)), np.ascontiguousarray(dihedral(valid, k))
        sample = {
            "image": torch.from_numpy(_torch_dtype(data)),
            "valid": torch.from_numpy(valid),
            "stretch": stretch,
            "tile_id": self.tile_ids[index],
            "index": int(index),
            "crs": self._crs[index],
            "bounds": torch.from_numpy(bounds),
        }
        # the float form is the raw one through the batch transform: the same numbers by construction
        return sample if self.output == "raw" else self.to_model_range(sample)

    def to_model_range(self, batch: dict, *, device: torch.device | str | None = None) -> dict:
        """:func:`to_model_range` with this dataset's ``fill``."""
        return to_model_range(batch, fill=self.fill, device=device)

    def set_epoch(self, epoch: int) -> None:
        """Draw crops and transforms of ``epoch`` (call before creating the epoch's DataLoader
        iterator: workers receive a pickled copy of the dataset)."""
        self.epoch = int(epoch)

    @property
    def channels(self) -> int:
        return len(self.bands)

    @property
    def band_names(self) -> list[str | None]:
        """What the first tile's raster calls each selected band (:func:`band_names`; None where it does not)."""
        return band_names(self._rows[0]["href"], self.bands)

    @property
    def tile_size(self) -> tuple[int, int] | None:
        """``(height, width)`` of every sample: the crop, else the one size of the raster tiles; None
        for collection images without a crop (their size is known only when read)."""
        if self.crop is not None:
            return self.crop, self.crop
        sizes = {(int(r["height"]), int(r["width"])) for r in self._rows if not is_image_row(r)}
        return sizes.pop() if len(sizes) == 1 and all(not is_image_row(r) for r in self._rows) else None

    def digest(self) -> str:
        """sha256 of what the samples are made of: tile ids, hrefs, windows, bands and crop."""
        h = hashlib.sha256()
        h.update(repr((self.bands, self.crop, self.random_crop, self.dihedral, self.fill, self.reader.nodata)).encode())
        for tid, r in zip(self.tile_ids, self._rows):
            h.update(
                f"{tid}|{r['href']}|{r.get('row_off')}|{r.get('col_off')}|{r.get('height')}|{r.get('width')}\n".encode()
            )
        return h.hexdigest()

    def source_digest(self, rows: range | None = None) -> str:
        """sha256 of the identities of the files that ``rows`` (default: all) are read from: path, size,
        modification time and a content digest (:func:`rsgeo_prune.rundir.file_identity`), so a raster
        rewritten in place gives another digest; a remote href counts by its name."""
        from ..rundir import digest, file_identity

        cache = self.__dict__.setdefault("_identities", {})
        hrefs = sorted({str(self._rows[i]["href"]) for i in (range(len(self)) if rows is None else rows)})
        for href in hrefs:
            if href not in cache:
                remote = "://" in href or href.startswith("/vsi")
                try:
                    cache[href] = [href] if remote else file_identity(href, content=True)
                except OSError as exc:
                    raise RSGeoPruneError(
                        f"{href}: raster cannot be read ({exc.strerror or exc}); restore the file "
                        "or rebuild the catalog"
                    ) from exc
        return digest([cache[h] for h in hrefs])

    # -- named steps ---------------------------------------------------------------------------
    def _read(
        self, row: dict, rng: np.random.Generator | None
    ) -> tuple[np.ndarray, np.ndarray, torch.Tensor, tuple[int, int]]:
        """``(raw (C, h, w), valid (h, w), stretch (C, 3), (dy, dx))``, the last the crop's offset in the
        tile (``(0, 0)`` without a crop); a raster crop reads only its window."""
        dy = dx = 0
        if self.crop is not None and not is_image_row(row):
            dy, dx = self._offset(int(row["height"]), int(row["width"]), rng)
            row = dict(
                row,
                row_off=int(row["row_off"]) + dy,
                col_off=int(row["col_off"]) + dx,
                height=self.crop,
                width=self.crop,
            )
        tile = self.reader.read(row)
        x, valid = tile.data, tile.valid
        if self.crop is not None and is_image_row(row):
            if min(x.shape[1:]) < self.crop:
                raise RSGeoPruneError(
                    f"{row['href']}: image {x.shape[1]}x{x.shape[2]} is smaller than crop "
                    f"{self.crop}; choose a smaller --crop"
                )
            dy, dx = self._offset(x.shape[1], x.shape[2], rng)
            x = np.ascontiguousarray(x[:, dy : dy + self.crop, dx : dx + self.crop])
            valid = np.ascontiguousarray(valid[dy : dy + self.crop, dx : dx + self.crop])
        return x, valid, _stretch_tensor(tile.stretch, x.shape[0]), (dy, dx)

    def tile_crs(self, index: int) -> str:
        """The CRS of tile ``index`` as the catalog writes it (``"EPSG:<code>"``, else WKT; ``""`` for none)."""
        return self._crs[index]

    def tile_transform(self, index: int) -> tuple[float, ...] | None:
        """The affine transform ``(a, b, c, d, e, f)`` of tile ``index`` (rasterio order); None for a
        collection image."""
        t = self._transforms[index]
        return None if math.isnan(t[0]) else tuple(float(v) for v in t)

    def tile_bounds(self, index: int) -> np.ndarray:
        """``(minx, miny, maxx, maxy)`` float64 of the whole tile ``index`` in its CRS (no crop)."""
        row = self._rows[index]
        if is_image_row(row):
            return self._bounds[index].copy()
        return self._window_bounds(index, 0, 0, int(row["height"]), int(row["width"]))

    def _window_bounds(self, index: int, dy: int, dx: int, h: int, w: int) -> np.ndarray:
        """``(minx, miny, maxx, maxy)`` float64 of the ``h x w`` window at ``(dy, dx)`` of tile ``index``:
        its four corners through the tile's affine transform (any rotation or flip); a collection image's
        point location or NaN."""
        a, b, c, d, e, f = self._transforms[index]
        if math.isnan(a):
            return self._bounds[index].copy()
        cols = np.array([dx, dx + w, dx + w, dx], dtype=np.float64)
        rows = np.array([dy, dy, dy + h, dy + h], dtype=np.float64)
        x, y = a * cols + b * rows + c, d * cols + e * rows + f
        return np.array([x.min(), y.min(), x.max(), y.max()])

    def _offset(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int]:
        if self.random_crop:
            return int(rng.integers(h - self.crop + 1)), int(rng.integers(w - self.crop + 1))
        return (h - self.crop) // 2, (w - self.crop) // 2

    def _resolve_bands(self, table: pd.DataFrame, bands, source: str) -> list[int]:
        counts = table["bands"].dropna().astype(int).unique() if "bands" in table else np.array([], int)
        if bands is not None:
            bands = [int(b) for b in bands]
            if not bands:
                raise RSGeoPruneError("bands: empty selection; give 1-based band indexes such as 1,2,3,4")
            twice = next((b for k, b in enumerate(bands) if b in bands[:k]), None)
            if twice is not None:
                raise RSGeoPruneError(
                    f"bands {','.join(map(str, bands))}: band {twice} is given twice; "
                    "give distinct bands such as 1,2,3,4"
                )
            low = int(counts.min()) if len(counts) else None
            bad = [b for b in bands if b < 1 or (low is not None and b > low)]
            if bad:
                raise RSGeoPruneError(f"band {bad[0]}: out of range; the tiles of {source} have bands 1..{low}")
            return bands
        if len(counts) > 1:
            raise RSGeoPruneError(
                f"{source}: tiles have {sorted(counts.tolist())} bands; choose a common band selection with --bands"
            )
        first = self._rows[0]
        named = None if is_image_row(first) else default_bands(first["href"])
        if named is not None:
            return named
        if len(counts):
            return list(range(1, int(counts[0]) + 1))
        return list(range(1, PixelReader().read(first, with_valid=False).data.shape[0] + 1))

    def _check_sizes(self, source: str) -> None:
        raster = [r for r in self._rows if not is_image_row(r)]
        sizes = {(int(r["height"]), int(r["width"])) for r in raster}
        if self.crop is not None:
            if self.crop < 1:
                raise RSGeoPruneError(f"crop {self.crop}: must be a positive number of pixels")
            small = [s for s in sizes if min(s) < self.crop]
            if small:
                raise RSGeoPruneError(
                    f"crop {self.crop}: larger than the {small[0][0]}x{small[0][1]} tiles of {source}; "
                    "choose a smaller --crop"
                )
        elif len(sizes) > 1:
            raise RSGeoPruneError(
                f"{source}: tiles of {len(sizes)} sizes ({sorted(sizes)[:3]} ...); give --crop to train on one size"
            )


def to_model_range(batch: dict, *, fill: float = -1.0, device: torch.device | str | None = None) -> dict:
    """A ``output="raw"`` sample or collated batch with ``image`` mapped to float32 in [-1, 1]: the
    catalog's [0, 1] rule (uint8 ``v · 2/255 − 1`` in float32; other dtypes ``clip((v − lo) / (hi − lo),
    0, 1)`` in float64, NaN → 0, then ``· 2 − 1`` in float32) with invalid pixels set to ``fill``.

    Runs where the tensors are; ``device`` first moves every tensor of the batch there (the
    trainer's ``batch = ds.to_model_range(batch, device=device)``: uint8 crosses to the device,
    4x fewer bytes than float32); ``bounds`` stays on the CPU. The result has no ``stretch`` key, so a batch
    already in model range (a ``"float"`` dataset's) is returned as is (moved to ``device``).
    """
    if device is not None:
        batch = {
            k: v.to(device) if isinstance(v, torch.Tensor) and k not in _HOST_KEYS else v for k, v in batch.items()
        }
    if "stretch" not in batch:
        return batch
    x, valid = batch["image"], batch["valid"].to(batch["image"].device)
    if x.dtype == torch.uint8:  # uint8's rule: one fused multiply, as v * float32(2/255)
        y = x.to(torch.float32).mul_(_TWO_OVER_255).sub_(1.0)
    else:
        st = batch["stretch"].to(device=x.device, dtype=torch.float64)
        lo, hi = st[..., 0, None, None], st[..., 1, None, None]
        q = (x.to(torch.float64) - lo) / torch.clamp_min(hi - lo, 1e-12)
        y = torch.nan_to_num(q, nan=0.0).clamp_(0.0, 1.0).to(torch.float32).mul_(2.0).sub_(1.0)
        uint8 = st[..., 2] > 0
        if bool(uint8.any()):  # uint8 samples collated with another dtype (torch.stack promoted them)
            y = torch.where(uint8[..., None, None], x.to(torch.float32).mul_(_TWO_OVER_255).sub_(1.0), y)
    if y.device.type == "cpu":  # torch's broadcast masked_fill_ is slow on the CPU; most tiles have no nodata
        invalid = ~valid.numpy()
        if invalid.any():
            np.moveaxis(y.numpy(), -3, 0)[:, invalid] = fill
    else:
        y.masked_fill_(~valid.unsqueeze(-3), fill)
    out = {k: v for k, v in batch.items() if k != "stretch"}
    out["image"] = y
    return out


#: Sample metadata :func:`to_model_range` leaves on the CPU: float64 the model never reads (MPS has no float64).
_HOST_KEYS = frozenset({"bounds"})
#: float32(2 / 255) as a Python float: torch multiplies a float32 tensor by it in float32.
_TWO_OVER_255 = float(np.float32(2.0 / 255.0))
_UINT8_STRETCH: dict[int, torch.Tensor] = {}


def _stretch_tensor(stretch, channels: int) -> torch.Tensor:
    """``(C, 3)`` float64 ``(lo, hi, uint8)`` per band; uint8's identity rule is ``(0, 255, 1)`` (one
    shared tensor), a percentile stretch ``(p2, p98, 0)``."""
    if stretch.identity:
        t = _UINT8_STRETCH.get(channels)
        if t is None:
            t = _UINT8_STRETCH[channels] = torch.tensor([[0.0, 255.0, 1.0]] * channels, dtype=torch.float64)
        return t
    return torch.from_numpy(np.stack([stretch.lo, stretch.hi, np.zeros_like(stretch.lo)], axis=1).astype(np.float64))


def _torch_dtype(a: np.ndarray) -> np.ndarray:
    """Unsigned types torch only partly supports, widened without loss (uint16 → int32, uint32 → int64)."""
    if a.dtype == np.uint16:
        return a.astype(np.int32)
    if a.dtype == np.uint32:
        return a.astype(np.int64)
    return a


def dihedral(a: np.ndarray, k: int) -> np.ndarray:
    """Element ``k`` (0..7) of the dihedral group of the square on the last two axes:
    ``k % 4`` quarter turns, then a left-right flip when ``k >= 4``. Keeps every pixel value."""
    a = np.rot90(a, k % 4, axes=(-2, -1))
    return a[..., ::-1] if k >= 4 else a


def _row_records(table: pd.DataFrame) -> list[dict]:
    """Plain dicts of the columns the reader needs (cheap to index and to pickle to workers)."""
    cols = [c for c in ("href", "row_off", "col_off", "height", "width", "transform") if c in table]
    recs = table[cols].to_dict("records")
    for r in recs:
        t = r.get("transform")  # absent column: a table of collection images
        if t is None or (isinstance(t, float) and np.isnan(t)):
            r["transform"] = None
        else:
            r["transform"] = True  # only its presence matters: the row is a raster window
    return recs


def _georeference(table: pd.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per row: the CRS text (``""`` when the catalog gives none), the affine transform ``(N, 6)``
    (NaN for collection images) and a collection image's bounds ``(N, 4)`` (its point location, else NaN)."""
    n = len(table)
    crs_col = table["crs"] if "crs" in table else pd.Series([None] * n, index=table.index)
    crs = ["" if c is None or (isinstance(c, float) and math.isnan(c)) else str(c) for c in crs_col]
    transforms = np.full((n, 6), np.nan)
    bounds = np.full((n, 4), np.nan)
    geoms = table["geometry"].tolist() if "geometry" in table else [None] * n
    for i, t in enumerate(table["transform"].tolist() if "transform" in table else [None] * n):
        if t is not None and not (isinstance(t, float) and math.isnan(t)):
            transforms[i] = np.asarray(t, dtype=np.float64)[:6]
        elif crs[i] and getattr(geoms[i], "geom_type", None) == "Point":
            bounds[i] = geoms[i].bounds
        else:
            crs[i] = ""  # no footprint and no location: nothing to name a CRS for
    return crs, transforms, bounds


__all__ = [
    "VAL_BY",
    "CatalogDataset",
    "acquisition_year",
    "band_names",
    "check_hrefs",
    "default_bands",
    "dihedral",
    "hash_split",
    "load_table",
    "select_rows",
    "split_validation",
    "to_model_range",
    "validation_groups",
]
