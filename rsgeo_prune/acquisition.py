"""When a source was acquired: an instant, a range (a day known only by its date), or unknown.

One rule, in this priority, gives each source its acquisition time (docs/stac.md):

1. an explicit value (``--datetime``): ``argument``;
2. an image collection's manifest column ``datetime`` (or ``start_datetime`` + ``end_datetime``): ``manifest``;
3. the STAC Item an input raster was given by (its ``datetime``, or its range): ``stac``;
4. the raster's own metadata tags (:data:`TIME_TAGS`, first found wins): ``tag:<TAGNAME>``;
5. a file-name convention: NAIP ``..._YYYYMMDD.tif`` (``filename:naip``), Sentinel-2 product ids
   ``S2A_MSIL2A_20200831T170851_...`` (``filename:sentinel2``), Landsat Collection-2 ids
   ``LC08_L2SP_027026_20200831_20200906_02_T1`` (``filename:landsat``).

A file's modification time is never used: it says when the file was copied, not when the ground
was seen. A date without a time of day is the UTC day it names, a range
``[YYYY-MM-DDT00:00:00Z, YYYY-MM-DDT23:59:59.999999Z]`` with no instant (as STAC writes a time known only
to a range); a value with a time of day and no zone is taken as UTC.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import Mapping

UTC = dt.timezone.utc

#: Metadata tags read for the acquisition time, most specific first. ``TIFFTAG_DATETIME`` comes
#: last: the TIFF spec defines it as the image's creation time, which for many files is the time
#: it was processed; it is used only when nothing better is there.
TIME_TAGS = (
    "ACQUISITION_DATETIME",
    "ACQUISITIONDATETIME",
    "ACQUISITION_DATE",
    "ACQUISITIONDATE",
    "DATE_ACQUIRED",
    "ACQUISITION_TIME",
    "SENSING_TIME",
    "SENSING_DATE",
    "DATATAKE_SENSING_START",
    "PRODUCT_START_TIME",
    "IMAGE_DATE",
    "DATE_TIME",
    "TIFFTAG_DATETIME",
)

_DATE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")
_TIFF_DATETIME = re.compile(r"^(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})$")
# Sentinel-2 product id: mission, MSI level, datatake sensing start (UTC), then the rest
_SENTINEL2 = re.compile(r"(?:^|[^A-Za-z0-9])S2[A-D]_MSIL(?:1C|2A)_(\d{8}T\d{6})_")
# Landsat Collection 2 id: LXSS_LLLL_PPPRRR_YYYYMMDD(acquired)_yyyymmdd(processed)_CC_TX
_LANDSAT = re.compile(r"(?:^|[^A-Za-z0-9])L[COTEM]0\d_L[12][A-Z0-9]{2}_\d{6}_(\d{8})_\d{8}_0[12]_(?:T1|T2|RT)")
# NAIP: the acquisition date is the last part of the name, just before the extension
_NAIP = re.compile(r"_(\d{8})(?:\.[A-Za-z0-9]+)?$")
#: any plausible YYYYMMDD (1900-2099) standing alone among the digits of a name
_DATE_IN_NAME = re.compile(r"(?<!\d)((?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01]))(?!\d)")


@dataclass(frozen=True)
class AcquisitionTime:
    """An acquisition instant (``datetime``, with ``start == end == datetime``), a range
    (``datetime`` None), or nothing known (all None). Times are aware, UTC. ``source`` says where
    the value came from (see the module doc), None when unknown."""

    datetime: dt.datetime | None = None
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    source: str | None = None

    @property
    def known(self) -> bool:
        return self.start is not None

    @classmethod
    def instant(cls, when: dt.datetime, source: str) -> AcquisitionTime:
        when = _utc(when)
        return cls(when, when, when, source)

    @classmethod
    def day(cls, day: dt.date, source: str) -> AcquisitionTime:
        start = dt.datetime(day.year, day.month, day.day, tzinfo=UTC)
        return cls(None, start, start + dt.timedelta(days=1) - dt.timedelta(microseconds=1), source)

    def with_source(self, source: str) -> AcquisitionTime:
        return AcquisitionTime(self.datetime, self.start, self.end, source)


UNKNOWN = AcquisitionTime()


def _utc(when: dt.datetime) -> dt.datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def parse_time(text: str, source: str) -> AcquisitionTime:
    """An acquisition time from text: a date (``2020-08-31``, ``20200831``: that UTC day), an
    instant (ISO 8601 / RFC 3339 ``2020-08-31T17:08:51Z``, or TIFF ``2020:08:31 17:08:51``; no zone
    means UTC), or a range ``START/END`` of either (a date as END means the end of that day).

    Raises:
        ValueError: the text is none of these, or a range ends before it starts.
    """
    text = str(text).strip()
    if "/" in text:
        first, _, last = text.partition("/")
        start, end = parse_time(first, source), parse_time(last, source)
        if end.end < start.start:
            raise ValueError(f"range {text!r} ends before it starts")
        return AcquisitionTime(None, start.start, end.end, source)
    if m := _DATE.match(text):
        return AcquisitionTime.day(dt.date(*map(int, m.groups())), source)
    if m := _TIFF_DATETIME.match(text):
        return AcquisitionTime.instant(dt.datetime(*map(int, m.groups())), source)
    try:
        return AcquisitionTime.instant(dt.datetime.fromisoformat(text.replace(" ", "T", 1)), source)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a date (2020-08-31), an instant (2020-08-31T17:08:51Z) or a range (START/END)"
        ) from None


def parse_option(text: str | None) -> AcquisitionTime | None:
    """The ``--datetime`` value (``TileConfig.datetime``) as an acquisition time of source
    ``argument``; None when not given.

    Raises:
        InvalidOption: the text is not a date, instant or range.
    """
    from .errors import InvalidOption

    if text is None:
        return None
    try:
        return parse_time(text, "argument")
    except ValueError as exc:
        raise InvalidOption("datetime", text, f"{exc}; e.g. 2020-08-31T17:08:51Z") from None


def from_tags(tags: Mapping[str, str]) -> AcquisitionTime:
    """The acquisition time a raster's metadata tags give (default GDAL domain), or :data:`UNKNOWN`.

    Tag names match without regard to case. A Landsat-style ``DATE_ACQUIRED`` is completed by
    ``SCENE_CENTER_TIME`` when that is there too. Values that do not parse are passed over.
    """
    upper = {str(k).upper(): str(v) for k, v in tags.items()}
    for tag in TIME_TAGS:
        value = upper.get(tag, "").strip().strip('"')
        if not value:
            continue
        if tag == "DATE_ACQUIRED" and upper.get("SCENE_CENTER_TIME"):
            value = f"{value}T{upper['SCENE_CENTER_TIME'].strip().strip(chr(34))}"
        try:
            return parse_time(value, f"tag:{tag}")
        except ValueError:
            continue
    return UNKNOWN


def from_filename(name: str) -> AcquisitionTime:
    """The acquisition time a file name gives by a known convention (see the module doc), or :data:`UNKNOWN`.

    Only the last path component is read; a match that is not a calendar date is no match.
    """
    base = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    try:
        if m := _SENTINEL2.search(base):
            return AcquisitionTime.instant(dt.datetime.strptime(m.group(1), "%Y%m%dT%H%M%S"), "filename:sentinel2")
        if m := _LANDSAT.search(base):
            return AcquisitionTime.day(dt.datetime.strptime(m.group(1), "%Y%m%d").date(), "filename:landsat")
        if m := _NAIP.search(base):
            return AcquisitionTime.day(dt.datetime.strptime(m.group(1), "%Y%m%d").date(), "filename:naip")
    except ValueError:  # e.g. month 13: digits that are not a date
        pass
    return UNKNOWN


def first_known(*candidates: AcquisitionTime | None) -> AcquisitionTime:
    """The first candidate that knows a time (the priority order is the caller's), or :data:`UNKNOWN`."""
    for c in candidates:
        if c is not None and c.known:
            return c
    return UNKNOWN


def time_columns(times) -> dict:
    """The contract's four columns for a sequence of :class:`AcquisitionTime`: ``datetime``,
    ``start_datetime``, ``end_datetime`` (pandas ``datetime64[us, UTC]``, NaT where unknown) and
    ``datetime_source`` (string, null where unknown)."""
    import pandas as pd

    times = list(times)

    def column(values):
        return pd.array(pd.to_datetime(values, utc=True)).astype("datetime64[us, UTC]")

    return {
        "datetime": column([t.datetime for t in times]),
        "start_datetime": column([t.start for t in times]),
        "end_datetime": column([t.end for t in times]),
        "datetime_source": pd.array([t.source for t in times], dtype="string"),
    }


def dates_in_name(name: str) -> list[str]:
    """Every ``YYYYMMDD`` in a file name's stem, in order: the loose reading of tables made before the
    acquisition-time columns existed (:func:`from_filename` is the convention-aware one)."""
    return _DATE_IN_NAME.findall(PurePath(name).stem)


__all__ = [
    "dates_in_name",
    "AcquisitionTime",
    "TIME_TAGS",
    "UNKNOWN",
    "first_known",
    "from_filename",
    "from_tags",
    "parse_option",
    "parse_time",
    "time_columns",
]
