"""Open the inputs: GeoTIFF/COG rasters (lazily, with rioxarray + dask), STAC Items, and image
collections (a folder where every image is one tile, as in Git-10M or RS5M).

Inputs are resolved once into small descriptions (:class:`RasterScene`, :class:`ImageCollection`) that
hold everything the later stages need without keeping a file handle open; pixels are read only
when a stage asks for them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import glob
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.windows import Window

from .acquisition import UNKNOWN, AcquisitionTime, first_known, from_filename, from_tags, parse_option, parse_time
from .errors import RSGeoPruneError

if TYPE_CHECKING:
    import xarray as xr

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
MANIFEST_NAMES = ("manifest.parquet", "manifest.csv")
_PATH_COLUMNS = ("path", "image", "filename", "file")
_LON_COLUMNS = ("lon", "longitude", "lng")
_LAT_COLUMNS = ("lat", "latitude")
#: Manifest columns of an image's acquisition time: an instant or date, or the two ends of a range.
_TIME_COLUMN, _RANGE_COLUMNS = "datetime", ("start_datetime", "end_datetime")

# Dask chunk edge (pixels) aimed at: ~4 MB per 4-band uint8 chunk keeps the task graph small
# (a 7,600 x 5,900 NAIP quarter-quad is ~50 chunks) while both cores stay busy.
TARGET_CHUNK = 1024


@dataclass(frozen=True)
class RasterScene:
    """One georeferenced raster, described without holding it open.

    Attributes:
        scene_id: stable name used in ``tile_id`` (file stem, or the STAC Item id).
        href: absolute path of the raster file.
        crs: the raster's CRS (or the one its STAC Item declares when the file has none).
        transform: affine pixel → CRS transform of the whole raster.
        width, height: size in pixels.
        count: band count.
        dtype: numpy dtype name of the pixels.
        nodata: nodata value (file's own, or an override), ``None`` if there is none.
        block_shape: internal (rows, cols) block size of band 1.
        has_mask: whether the file carries a per-dataset mask band (used when there is no nodata).
        acquired: when the raster was acquired, and how that is known (:mod:`rsgeo_prune.acquisition`).
    """

    scene_id: str
    href: str
    crs: CRS
    transform: Affine
    width: int
    height: int
    count: int
    dtype: str
    nodata: float | None
    block_shape: tuple[int, int]
    has_mask: bool = False
    acquired: AcquisitionTime = UNKNOWN

    @property
    def crs_string(self) -> str:
        """``EPSG:<code>`` when the CRS has one, else its WKT."""
        epsg = self.crs.to_epsg()
        return f"EPSG:{epsg}" if epsg else self.crs.to_wkt()

    @property
    def pixel_size(self) -> float:
        """Pixel edge in CRS units (square root of the pixel area; degrees for a geographic CRS)."""
        return float(math.sqrt(abs(self.transform.determinant)))

    @property
    def gsd(self) -> float:
        """Ground sample distance in metres per pixel at the scene centre (see :func:`gsd_metres`)."""
        centre_y = (self.transform * (self.width / 2, self.height / 2))[1]
        return float(gsd_metres(self.crs, abs(self.transform.determinant), centre_y))


@dataclass(frozen=True)
class ImageCollection:
    """A folder of images, each one tile (Git-10M / RS5M style).

    Attributes:
        collection_id: folder name, used as the ``scene_id`` prefix.
        root: absolute folder path.
        images: image paths relative to ``root`` (sorted, POSIX style).
        lon, lat: per-image location (degrees, EPSG:4326) from the manifest, NaN where unknown.
        acquired: per-image acquisition time (manifest, else file name), one per image.
    """

    collection_id: str
    root: str
    images: tuple[str, ...]
    lon: np.ndarray = field(repr=False)
    lat: np.ndarray = field(repr=False)
    acquired: tuple[AcquisitionTime, ...] = field(default=(), repr=False)


Source = RasterScene | ImageCollection


def gsd_metres(crs: CRS, pixel_area, y) -> np.ndarray | float:
    """Ground sample distance in metres: the square root of a pixel's area on the ground.

    Args:
        crs: the raster's CRS.
        pixel_area: area of one pixel in squared CRS units (``|det(transform)|``).
        y: latitude (geographic CRS units) where the pixel lies, scalar or ``(N,)``; used only for
            geographic CRSs, whose pixels shrink in longitude towards the poles.
    Returns:
        metres, the shape of ``y``. Projected CRSs: the CRS unit converted to metres (grid metres,
        as data providers state a GSD: no map scale factor). Geographic CRSs: the pixel's area on
        the CRS's ellipsoid at latitude ``y``. NaN (with a warning) for a CRS without a known unit.
    """
    import pyproj

    y = np.asarray(y, np.float64)
    pcrs = pyproj.CRS.from_user_input(crs.to_wkt())
    horizontal = pcrs.sub_crs_list[0] if pcrs.is_compound else pcrs
    # metres per CRS unit (projected) or radians per CRS unit (geographic)
    unit = horizontal.axis_info[0].unit_conversion_factor if horizontal.axis_info else None
    if horizontal.is_projected and unit:
        gsd = np.sqrt(pixel_area) * unit * np.ones_like(y)
    elif horizontal.is_geographic and unit and horizontal.ellipsoid is not None:
        gsd = np.sqrt(pixel_area * unit**2 * _ellipsoid_radii_product(horizontal.ellipsoid, y * unit))
    else:
        log.warning("CRS %s has no known linear or angular unit: gsd left null", crs.to_string())
        gsd = np.full_like(y, np.nan)
    return gsd if gsd.ndim else float(gsd)


def _ellipsoid_radii_product(ellipsoid, lat: np.ndarray) -> np.ndarray:
    # Area of a small lon/lat cell = M * N * cos(lat) * dlon * dlat (radians), M the meridional and N
    # the prime-vertical radius of curvature: exact to first order in the cell size.
    a = ellipsoid.semi_major_metre
    f = 1.0 / ellipsoid.inverse_flattening if ellipsoid.inverse_flattening else 0.0  # 0: a sphere
    e2 = f * (2.0 - f)
    w = 1.0 - e2 * np.sin(lat) ** 2
    return (a * (1 - e2) / w**1.5) * (a / np.sqrt(w)) * np.cos(lat)


def describe_raster(
    path: str | Path,
    *,
    crs: CRS | str | None = None,
    nodata: float | None = None,
    scene_id: str | None = None,
    acquired: AcquisitionTime | None = None,
) -> RasterScene:
    """Read a raster's header into a :class:`RasterScene`.

    Args:
        path: local GeoTIFF/COG (any GDAL raster).
        crs: CRS to use when the file has none (e.g. from a STAC Item's ``proj:code``).
        nodata: nodata value to use when the file declares none (NAIP: 0).
        scene_id: defaults to the file stem.
        acquired: acquisition time known from elsewhere (a STAC Item); else the file's metadata
            tags, else its name (:mod:`rsgeo_prune.acquisition`).

    Raises:
        RSGeoPruneError: unreadable/corrupt file, or no CRS anywhere.
    """
    path = Path(path)
    if not path.exists():
        raise RSGeoPruneError(f"{path}: no such file; check the path or glob")
    try:
        with rasterio.open(path) as src:
            file_crs = src.crs
            transform = src.transform
            width, height, count = src.width, src.height, src.count
            dtype = src.dtypes[0]
            file_nodata = src.nodata
            block_shape = tuple(src.block_shapes[0])
            has_mask = any(rasterio.enums.MaskFlags.per_dataset in flags for flags in src.mask_flag_enums)
            tags = src.tags()
    except RasterioIOError as exc:
        raise RSGeoPruneError(f"{path}: not a readable raster ({exc}); re-download or re-export the file") from exc
    if file_crs is None:
        if crs is None:
            raise RSGeoPruneError(
                f"{path}: raster has no CRS; assign one (e.g. `gdal_edit.py -a_srs EPSG:26914 {path.name}`) "
                "or pass a STAC Item whose proj:code names it"
            )
        file_crs = CRS.from_user_input(crs)
    elif crs is not None and CRS.from_user_input(crs) != file_crs:
        raise RSGeoPruneError(
            f"{path}: the file's CRS {file_crs.to_string()} differs from the STAC Item's {crs}; fix the "
            "Item's proj:code"
        )
    if transform == Affine.identity():
        raise RSGeoPruneError(
            f"{path}: raster has no geotransform; georeference it (e.g. gdal_translate -a_ullr) first"
        )
    return RasterScene(
        scene_id=scene_id or path.stem,
        href=str(path.resolve()),
        crs=file_crs,
        transform=transform,
        width=width,
        height=height,
        count=count,
        dtype=dtype,
        nodata=file_nodata if file_nodata is not None else nodata,
        block_shape=(int(block_shape[0]), int(block_shape[1])),
        has_mask=has_mask,
        acquired=first_known(acquired, from_tags(tags), from_filename(path.name)),
    )


def _stac_crs(props: dict) -> str | None:
    if props.get("proj:code"):
        return str(props["proj:code"])
    if props.get("proj:epsg"):
        return f"EPSG:{int(props['proj:epsg'])}"
    return None


def describe_stac_item(path: str | Path, *, asset: str | None = None, nodata: float | None = None) -> RasterScene:
    """Resolve a STAC Item JSON to the raster its data asset points at.

    The asset is ``asset`` if given, else the first with role ``data``, else the first GeoTIFF asset.
    The CRS comes from the asset's or the Item's ``proj:code`` (projection extension v2) or
    ``proj:epsg`` (v1) when the raster itself has none. Relative hrefs resolve against the Item file.
    """
    import pystac

    path = Path(path)
    try:
        item = pystac.Item.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RSGeoPruneError(f"{path}: not a readable STAC Item ({exc}); give a STAC Item JSON file") from exc
    assets = item.assets
    if asset is not None:
        if asset not in assets:
            raise RSGeoPruneError(f"{path}: no asset named {asset!r}; it has {sorted(assets)}")
        key = asset
    else:
        data = [k for k, a in assets.items() if "data" in (a.roles or [])]
        tiffs = [
            k for k, a in assets.items() if "tiff" in (a.media_type or "") or a.href.lower().endswith((".tif", ".tiff"))
        ]
        if not (data or tiffs):
            raise RSGeoPruneError(f"{path}: STAC Item has no raster asset (role 'data' or a GeoTIFF); add one")
        key = (data or tiffs)[0]
    chosen = assets[key]
    href = chosen.href
    if not (href.startswith("/") or "://" in href):
        href = str((path.parent / href).resolve())
    crs = _stac_crs(chosen.extra_fields) or _stac_crs(item.properties)
    return describe_raster(href, crs=crs, nodata=nodata, scene_id=item.id, acquired=_stac_time(item))


def _stac_time(item) -> AcquisitionTime:
    """A STAC Item's acquisition time: its ``datetime``, else its ``start_datetime``/``end_datetime``."""
    from pystac.utils import str_to_datetime

    if item.datetime is not None:
        return AcquisitionTime.instant(item.datetime, "stac")
    start, end = item.properties.get("start_datetime"), item.properties.get("end_datetime")
    if start and end:
        return AcquisitionTime(
            None,
            str_to_datetime(start).astimezone(dt.timezone.utc),
            str_to_datetime(end).astimezone(dt.timezone.utc),
            "stac",
        )
    return UNKNOWN


def _find_manifest(root: Path) -> Path | None:
    for name in MANIFEST_NAMES:
        if (root / name).exists():
            return root / name
    return None


def _pick_column(columns: Iterable[str], names: Sequence[str], manifest: Path, what: str) -> str:
    lower = {c.lower(): c for c in columns}
    for n in names:
        if n in lower:
            return lower[n]
    raise RSGeoPruneError(f"{manifest}: no {what} column (looked for {', '.join(names)}); rename the column")


def describe_image_collection(root: str | Path, *, manifest: str | Path | None = None) -> ImageCollection:
    """Describe a folder of images (searched recursively) as an :class:`ImageCollection`.

    A manifest (``manifest.csv`` / ``manifest.parquet`` in the folder, or ``manifest``) may give each
    image's location and acquisition time: a path column (``path``/``image``/``filename``/``file``,
    relative to the folder), ``lon``/``lat`` in degrees (EPSG:4326), and ``datetime`` (an instant or
    a date) or ``start_datetime`` + ``end_datetime`` (a range). Images missing from the manifest, or
    with empty cells, get no location or no time from it; an image without a manifest time gets the
    one its file name gives (:func:`rsgeo_prune.acquisition.from_filename`), if any.

    Raises:
        RSGeoPruneError: no images; two images that would share a tile id (same path but for the
            suffix); an unreadable manifest, or a location that is not a number, lies out of range
            (lon [-180, 180], lat [-90, 90]) or gives one coordinate without the other, or a time
            that is not a date, instant or range.
    """
    root = Path(root).resolve()
    images = sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not images:
        raise RSGeoPruneError(
            f"{root}: folder holds no images ({', '.join(IMAGE_SUFFIXES)}); point at a folder of images or "
            "at raster files"
        )
    _check_unique_stems(root, images)
    lon = np.full(len(images), np.nan)
    lat = np.full(len(images), np.nan)
    listed: list[AcquisitionTime | None] = [None] * len(images)
    manifest = Path(manifest) if manifest else _find_manifest(root)
    if manifest is not None:
        paths, xs, ys, times = _read_manifest(manifest)
        index = {p: i for i, p in enumerate(images)}
        for k, (p, x, y) in enumerate(zip(paths, xs, ys)):
            i = index.get(p)
            if i is not None:
                lon[i], lat[i] = x, y
                listed[i] = times[k] if times is not None else None
        log.info("%s: manifest gives locations for %d of %d images", manifest, int(np.isfinite(lon).sum()), len(images))
    acquired = tuple(first_known(t, from_filename(p)) for t, p in zip(listed, images))
    return ImageCollection(
        collection_id=root.name, root=str(root), images=tuple(images), lon=lon, lat=lat, acquired=acquired
    )


def _check_unique_stems(root: Path, images: Sequence[str]) -> None:
    # The tile id keeps the image path without its suffix: x.jpg and x.png would share one.
    seen: dict[str, str] = {}
    for p in images:
        stem = p.rsplit(".", 1)[0]
        if stem in seen:
            raise RSGeoPruneError(
                f"{root / p}: same tile id as {seen[stem]} ('{root.name}/{stem}/0_0'); "
                "rename or remove one of the two images"
            )
        seen[stem] = p


#: Valid range of each manifest coordinate, degrees.
_COORD_RANGES = {"longitude": (-180.0, 180.0), "latitude": (-90.0, 90.0)}


def _read_manifest(manifest: Path) -> tuple[list[str], np.ndarray, np.ndarray, list[AcquisitionTime] | None]:
    """``(image paths (POSIX), lon (N,), lat (N,), times)`` of a manifest: degrees, NaN where both are
    empty (all NaN without location columns); ``times`` None without time columns."""
    import pandas as pd

    try:
        table = pd.read_parquet(manifest) if manifest.suffix == ".parquet" else pd.read_csv(manifest)
    except (OSError, ValueError) as exc:
        raise RSGeoPruneError(f"{manifest}: manifest cannot be read ({exc}); write it as CSV or Parquet") from exc
    pcol = _pick_column(table.columns, _PATH_COLUMNS, manifest, "image path")
    paths = [Path(p).as_posix() for p in table[pcol].astype(str)]
    times = _manifest_times(table, manifest, paths)
    lower = {c.lower() for c in table.columns}
    if times is not None and not lower & set(_LON_COLUMNS + _LAT_COLUMNS):  # a manifest of times only
        return paths, np.full(len(paths), np.nan), np.full(len(paths), np.nan), times
    coords = {
        what: _coordinate_column(table[_pick_column(table.columns, names, manifest, what)], what, manifest, paths)
        for what, names in (("longitude", _LON_COLUMNS), ("latitude", _LAT_COLUMNS))
    }
    lon, lat = coords["longitude"], coords["latitude"]
    half = np.isnan(lon) != np.isnan(lat)
    if half.any():
        i = int(np.flatnonzero(half)[0])
        given = "latitude" if np.isnan(lon[i]) else "longitude"
        raise RSGeoPruneError(
            f"{manifest}: row {i + 1} ({paths[i]!r}) gives {given} without the other; "
            "give both coordinates or leave both empty"
        )
    return paths, lon, lat, times


def _manifest_times(table, manifest: Path, paths: Sequence[str]) -> list[AcquisitionTime] | None:
    """Per row, the manifest's acquisition time (``datetime``, else ``start_datetime``/``end_datetime``)."""
    import pandas as pd

    lower = {c.lower(): c for c in table.columns}
    if _TIME_COLUMN not in lower and not all(c in lower for c in _RANGE_COLUMNS):
        return None

    def cell(column: str, i: int) -> str | None:
        if column not in lower:
            return None
        v = table[lower[column]].iloc[i]
        if v is None or (not isinstance(v, str) and pd.isna(v)) or str(v).strip() == "":
            return None
        return v.isoformat() if isinstance(v, (pd.Timestamp, dt.datetime)) else str(v)

    out = []
    for i in range(len(table)):
        instant = cell(_TIME_COLUMN, i)
        start, end = cell(_RANGE_COLUMNS[0], i), cell(_RANGE_COLUMNS[1], i)
        text = instant if instant is not None else f"{start}/{end}" if start and end else None
        try:
            out.append(parse_time(text, "manifest") if text is not None else UNKNOWN)
        except ValueError as exc:
            raise RSGeoPruneError(
                f"{manifest}: row {i + 1} ({paths[i]!r}): acquisition time {exc}; give "
                "ISO 8601 times (2020-08-31T17:08:51Z, or 2020-08-31 for the day)"
            ) from None
    return out


def _coordinate_column(column, what: str, manifest: Path, paths: Sequence[str]) -> np.ndarray:
    """One manifest coordinate column as float64 degrees; empty cells NaN; anything else is an error."""
    import pandas as pd

    values = pd.to_numeric(column, errors="coerce").to_numpy(np.float64)
    lo, hi = _COORD_RANGES[what]
    empty = column.isna().to_numpy() | column.astype(str).str.strip().eq("").to_numpy()
    bad = ~empty & ~((values >= lo) & (values <= hi))  # also catches text (NaN) and ±inf
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raw = column.iloc[i]
        shown = repr(raw) if isinstance(raw, str) else format(float(raw), "g")
        problem = "is not a number" if np.isnan(values[i]) else "is out of range"
        raise RSGeoPruneError(
            f"{manifest}: row {i + 1} ({paths[i]!r}): {what} {shown} {problem}; "
            f"give degrees in [{lo:g}, {hi:g}] (EPSG:4326), or leave the cell empty"
        )
    return np.where(empty, np.nan, values)


_GLOB_CHARS = set("*?[")


def resolve_inputs(
    specs: Sequence[str | Path], *, nodata: float | None = None, datetime: str | None = None
) -> list[Source]:
    """Turn command-line inputs into sources.

    Each spec is a raster file, a glob of raster files, a STAC Item ``.json``, or a folder (an image
    collection). Every file must be given once (a path and an overlapping glob, two STAC Items of
    one raster or nested image folders are errors: their tiles would be duplicates), and scene ids
    must be unique: two files with one stem in different folders would share tile ids, which are
    ``<scene_id>/<row>_<col>``, so they are an error too rather than silently renamed (a tile id
    must not depend on which other files a run holds).

    ``datetime`` (a date, instant or ``START/END`` range, see
    :func:`rsgeo_prune.acquisition.parse_time`) is the acquisition time of every input, before any
    the inputs carry themselves.
    """
    if not specs:
        raise RSGeoPruneError("no input given; name raster files, a glob, a STAC Item or an image folder")
    given_time = parse_option(datetime)
    given = [(str(spec), path) for spec in specs for path in _expand(str(spec))]
    sources = [(spec, _describe(path, nodata)) for spec, path in given]
    _check_each_file_once(sources)
    _check_unique_scene_ids([s for _, s in sources])
    sources = [_with_time(s, given_time) for _, s in sources]
    _log_unknown_times(sources)
    return sources


def _with_time(src: Source, given: AcquisitionTime | None) -> Source:
    if given is None:
        return src
    if isinstance(src, RasterScene):
        return dataclasses.replace(src, acquired=given)
    return dataclasses.replace(src, acquired=(given,) * len(src.images))


def _log_unknown_times(sources: Sequence[Source]) -> None:
    unknown = [
        s.href if isinstance(s, RasterScene) else f"{s.root}/{s.images[i]}"
        for s in sources
        for i, t in enumerate([s.acquired] if isinstance(s, RasterScene) else s.acquired)
        if not t.known
    ]
    if unknown:  # info, not a warning: undated inputs are legitimate, and --quiet means quiet
        log.info(
            "%s%s: acquisition time unknown (no manifest time, STAC Item time, time tag or dated file "
            "name): its tiles get null datetime columns and STAC Items of 'any time' (docs/stac.md); "
            "pass --datetime to set it",
            unknown[0],
            f" and {len(unknown) - 1} more inputs" if len(unknown) > 1 else "",
        )


def _expand(spec: str) -> list[Path]:
    """The paths one input spec names: the files a glob matches (sorted), or the path itself."""
    if not _GLOB_CHARS & set(spec):
        return [Path(spec)]
    matches = sorted(glob.glob(spec, recursive=True))
    if not matches:
        raise RSGeoPruneError(f"{spec}: glob matched no files; check the pattern")
    return [Path(m) for m in matches if Path(m).is_file()]


def _describe(path: Path, nodata: float | None) -> Source:
    if path.is_dir():
        return describe_image_collection(path)
    if path.suffix.lower() == ".json":
        return describe_stac_item(path, nodata=nodata)
    return describe_raster(path, nodata=nodata)


def _check_each_file_once(sources: Sequence[tuple[str, Source]]) -> None:
    """Raise when two inputs resolve to one file (absolute path, symlinks resolved)."""
    seen: dict[str, str] = {}
    for spec, src in sources:
        if isinstance(src, RasterScene):
            files, what = [str(Path(src.href).resolve())], "raster"
        elif len(sources) > 1:  # a lone folder cannot overlap anything
            # root is resolved already; no per-image resolve (millions of system calls on Git-10M)
            files, what = [f"{src.root}/{p}" for p in src.images], "image folder"
        else:
            continue
        for f in files:
            if f in seen:
                raise RSGeoPruneError(f"{f}: given twice (as {seen[f]!r} and {spec!r}); pass each {what} once")
            seen[f] = spec


def _check_unique_scene_ids(sources: Sequence[Source]) -> None:
    seen: dict[str, str] = {}
    for s in sources:
        sid = s.scene_id if isinstance(s, RasterScene) else s.collection_id
        where = s.href if isinstance(s, RasterScene) else s.root
        if sid in seen:
            raise RSGeoPruneError(
                f"{where}: scene id {sid!r} is also used by {seen[sid]}, so their tile ids would collide; "
                "rename one of the files"
            )
        seen[sid] = where


def aligned_chunk(tile: int, block: int, extent: int, target: int = TARGET_CHUNK) -> int:
    """Chunk edge (pixels) that is a whole number of tiles and, where practical, of internal blocks.

    A chunk holding whole blocks is decoded once; a chunk holding whole tiles lets tile statistics be
    computed chunk by chunk. Strips (blocks as wide as the raster) impose nothing.
    """
    per_tile = tile * max(1, target // tile)
    if block >= extent:
        return per_tile
    both = math.lcm(tile, block)
    if both > 4 * target:  # odd block sizes: tile alignment matters more than block alignment
        return per_tile
    return both * max(1, target // both)


def open_raster(scene: RasterScene, tile_size: int = 256) -> xr.DataArray:
    """Open a raster lazily as a ``(band, y, x)`` dask-backed DataArray.

    Chunks hold whole tiles and whole internal blocks (see :func:`aligned_chunk`). Reading is
    lock-free so the threaded scheduler decodes chunks in parallel.
    """
    import rioxarray  # here: xarray and dask load only when a raster is opened lazily

    cy = aligned_chunk(tile_size, scene.block_shape[0], scene.height)
    cx = aligned_chunk(tile_size, scene.block_shape[1], scene.width)
    try:
        da = rioxarray.open_rasterio(
            scene.href, chunks={"band": -1, "y": cy, "x": cx}, lock=False, masked=False, cache=False
        )
    except (RasterioError, OSError) as exc:
        raise RSGeoPruneError(f"{scene.href}: cannot open raster ({exc}); re-download or re-export it") from exc
    if da.rio.crs is None:
        da = da.rio.write_crs(scene.crs)
    return da


@contextlib.contextmanager
def decode_errors(href: str):
    """Turn a failure to decode pixels of ``href`` (corrupt or truncated file) into one clear error."""
    try:
        yield
    except (RasterioError, OSError) as exc:
        raise RSGeoPruneError(
            f"{href}: pixels cannot be decoded ({exc}); the file is corrupt or truncated, re-download it"
        ) from exc


def dataset_mask_of_chunk(href: str, block_info: dict) -> np.ndarray:
    """``(H, W)`` bool: valid pixels of the raster window a dask chunk covers (the file's per-dataset
    mask band), for ``map_blocks`` functions called with ``block_info``."""
    (r0, r1), (c0, c1) = block_info[0]["array-location"][-2:]
    with rasterio.open(href) as src:
        return src.dataset_mask(window=Window(c0, r0, c1 - c0, r1 - r0)) > 0


def read_image(path: str | Path) -> np.ndarray:
    """Read one collection image as ``(C, H, W)`` (uint8 for JPEG/PNG; the file's dtype for TIFF)."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            with rasterio.open(path) as src:
                return src.read()
        from PIL import Image

        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB") if im.mode in ("P", "CMYK", "YCbCr", "LA", "I;16") else im)
    except (OSError, RasterioError, ValueError) as exc:
        raise RSGeoPruneError(f"{path}: image cannot be read ({exc}); remove or replace the file") from exc
    return arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)


def image_size(path: str | Path) -> tuple[int, int, int, str]:
    """``(bands, height, width, dtype)`` of a collection image from its header only."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            with rasterio.open(path) as src:
                return src.count, src.height, src.width, src.dtypes[0]
        from PIL import Image

        with Image.open(path) as im:
            bands = len(im.getbands())
            return bands, im.height, im.width, "uint16" if im.mode.startswith("I;16") else "uint8"
    except (OSError, RasterioError, ValueError) as exc:
        raise RSGeoPruneError(f"{path}: image cannot be read ({exc}); remove or replace the file") from exc
