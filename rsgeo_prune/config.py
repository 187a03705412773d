"""The options of a run, validated as a whole before any stage starts.

:class:`TileConfig` holds what the tile table depends on (Stage 0 and Stage I); :class:`RunConfig`
what Stage II and the catalog depend on. Both check every value when built, so a bad option fails
in a second, never after hours of tiling.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .dedup import DEFAULT_COSINE, DEFAULT_MAX_PER_PLACE, check_cosine, check_max_per_place
from .errors import InvalidOption
from .kmeans import DEFAULT_K
from .places import DEFAULT_IOU, check_iou

MAX_ENTROPY_BITS = 8.0  # 256 levels: H ≤ log2(256)


def _fraction(name: str, value, example: str) -> None:
    if value is not None and not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise InvalidOption(name, value, f"must be a fraction in [0, 1] ({example})")


def _positive(name: str, value, what: str) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise InvalidOption(name, value, f"must be a positive whole number of {what}")


@dataclass(frozen=True)
class TileConfig:
    """Options of the tiling stage and Stage I (defaults are the CLI's)."""

    tile_size: int = 256
    stride: int | None = None
    partial: bool = False
    mask: str | None = None
    min_urban: float | None = None
    max_nodata: float = 0.5
    nodata: float | None = None
    entropy_min: float | None = None
    entropy_keep: float | None = None
    #: acquisition time of every input (a date, an instant or START/END), before their own
    datetime: str | None = None

    @property
    def wants_entropy(self) -> bool:
        return self.entropy_min is not None or self.entropy_keep is not None

    def __post_init__(self):
        _positive("tile_size", self.tile_size, "pixels (e.g. 256)")
        _positive("stride", self.stride, "pixels (e.g. 256; default: the tile size)")
        _fraction("max_nodata", self.max_nodata, "0.5 prunes tiles more than half nodata")
        _fraction("min_urban", self.min_urban, "0.1 keeps tiles at least 10 % urban")
        _fraction("entropy_keep", self.entropy_keep, "0.3 keeps the 30 % highest-entropy tiles")
        if self.min_urban is not None and not self.mask:
            raise InvalidOption("min_urban", self.min_urban, "needs the urban polygons (a mask vector file)")
        if self.entropy_min is not None and not (
            math.isfinite(self.entropy_min) and 0.0 <= self.entropy_min <= MAX_ENTROPY_BITS
        ):
            raise InvalidOption(
                "entropy_min",
                self.entropy_min,
                f"must be a threshold in bits within [0, {MAX_ENTROPY_BITS:g}] (e.g. 4.5)",
            )
        if self.entropy_min is not None and self.entropy_keep is not None:
            raise InvalidOption("entropy_min", self.entropy_min, "give either a threshold or a keep fraction, not both")
        if self.nodata is not None and not isinstance(self.nodata, (int, float)):
            raise InvalidOption("nodata", self.nodata, "must be a number (e.g. 0)")
        from .acquisition import parse_option

        parse_option(self.datetime)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RunConfig:
    """Options of ``rsgeo-prune run`` beyond the tiling ones (defaults are the CLI's).

    ``k`` None means: the bank's K when a saved bank is given, else :data:`DEFAULT_K`.
    """

    budget: float | None = 0.15
    budget_count: int | None = None
    k: int | None = None
    embedder: str = "default"
    nir_view: str = "none"
    method: str = "rs-prune"
    seed: int = 0
    chunk: int = 4096  # tiles per embedding/assignment task
    export_tiles: bool = False  # also write each kept tile as a COG and point its STAC asset at it
    dedup_cosine: float | None = None  # skip exact copies and tiles this close to a chosen one of their cluster
    max_per_place: int | None = None  # keep at most this many tiles of one place (other files, footprint IoU)
    place_iou: float = DEFAULT_IOU  # footprints overlapping this much are one place

    def __post_init__(self):
        from .embed import NIR_VIEWS
        from .select import COPY_METHODS, METHODS

        if self.method not in METHODS:
            raise InvalidOption("method", self.method, f"must be one of {', '.join(METHODS)}")
        if self.budget_count is not None:
            if not isinstance(self.budget_count, int) or self.budget_count < 0:
                raise InvalidOption("budget_count", self.budget_count, "must be a tile count >= 0")
        elif self.budget is None:
            raise InvalidOption("budget", None, "give a fraction in [0, 1] or a tile count")
        else:
            _fraction("budget", self.budget, "0.15 keeps 15 %")
        _positive("k", self.k, "centroids (e.g. 200)")
        _positive("chunk", self.chunk, "tiles per task (e.g. 4096)")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**32:
            raise InvalidOption("seed", self.seed, "must be a whole number in [0, 2**32) (e.g. 0)")
        if self.nir_view not in NIR_VIEWS:
            raise InvalidOption("nir_view", self.nir_view, f"must be one of {', '.join(NIR_VIEWS)}")
        check_cosine(self.dedup_cosine)
        check_max_per_place(self.max_per_place)
        check_iou(self.place_iou)
        for name in ("dedup_cosine", "max_per_place"):
            if getattr(self, name) is not None and self.method not in COPY_METHODS:
                raise InvalidOption(
                    name,
                    getattr(self, name),
                    f"applies to the quota selection: use method {' or '.join(COPY_METHODS)} (not {self.method})",
                )
        if self.place_iou != DEFAULT_IOU and self.effective_max_per_place is None:
            raise InvalidOption("place_iou", self.place_iou, "applies with max_per_place (or method rs-prune-dedup)")

    @property
    def removes_copies(self) -> bool:
        """Whether the selection skips copies (method rs-prune-dedup, or a copy option given)."""
        return self.effective_dedup_cosine is not None or self.effective_max_per_place is not None

    @property
    def effective_dedup_cosine(self) -> float | None:
        """τ of the near-copy test: the given one, rs-prune-dedup's default, or None (no test)."""
        if self.dedup_cosine is not None or self.method != "rs-prune-dedup":
            return self.dedup_cosine
        return DEFAULT_COSINE

    @property
    def effective_max_per_place(self) -> int | None:
        """Tiles kept per place: the given number, rs-prune-dedup's default, or None (no limit)."""
        if self.max_per_place is not None or self.method != "rs-prune-dedup":
            return self.max_per_place
        return DEFAULT_MAX_PER_PLACE

    @property
    def k_or_default(self) -> int:
        return DEFAULT_K if self.k is None else self.k

    def as_dict(self) -> dict:
        """The options; the copy options only where they act, so runs without them keep the stage
        keys and catalog metadata they had before those options existed."""
        out = asdict(self)
        for name in ("dedup_cosine", "max_per_place"):
            if out[name] is None:
                del out[name]
        if self.effective_max_per_place is None:
            del out["place_iou"]
        return out


__all__ = ["DEFAULT_K", "MAX_ENTROPY_BITS", "RunConfig", "TileConfig"]
