"""Same place, other time (rsgeo_prune.places): footprint overlaps with known intersection over union,
in the tiles' own projected CRS or an equal-area one, and acquisition dates for ties."""

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from pyproj import Transformer

from rsgeo_prune.errors import InvalidOption
from rsgeo_prune.places import Places, acquisition_dates, check_iou, same_place_partners


def grid(href, crs, x0, y0, px=10.0, cols=3, rows=2, size=64):
    """Rows of a tile table for a ``rows x cols`` grid of ``size``-px tiles, origin (x0, y0) in ``crs``."""
    to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    out = []
    for r in range(rows):
        for c in range(cols):
            x, y = x0 + c * size * px, y0 - r * size * px
            ring = np.array([(x, y), (x + size * px, y), (x + size * px, y - size * px), (x, y - size * px)])
            lon, lat = to_lonlat.transform(ring[:, 0], ring[:, 1])
            out.append(
                dict(
                    tile_id=f"{href}/{r}_{c}",
                    href=href,
                    crs=crs,
                    width=size,
                    height=size,
                    transform=np.array([px, 0.0, x, 0.0, -px, y]),
                    geometry=shapely.Polygon(np.c_[lon, lat]),
                )
            )
    return out


def table(*grids):
    return gpd.GeoDataFrame([row for g in grids for row in g], geometry="geometry", crs="EPSG:4326")


def pairs(places: Places):
    return sorted((i, int(j)) for i in range(len(places.start) - 1) for j in places.of(i) if i < j)


def test_same_grid_in_two_files_pairs_each_tile_with_its_twin_only():
    rows = table(
        grid("a_20100629.tif", "EPSG:26914", 485_900, 5_209_245),
        grid("b_20120731.tif", "EPSG:26914", 485_900, 5_209_245),
    )
    places = same_place_partners(rows)
    assert pairs(places) == [(i, i + 6) for i in range(6)]  # touching neighbours and same-file tiles never pair
    assert places.pairs == 6 and places.of(7).tolist() == [1]


def test_a_half_tile_shift_overlaps_by_one_third():
    rows = table(grid("a.tif", "EPSG:26914", 0, 0, cols=1, rows=1), grid("b.tif", "EPSG:26914", 320, 0, cols=1, rows=1))
    assert pairs(same_place_partners(rows, iou=0.33)) == [(0, 1)]
    assert pairs(same_place_partners(rows, iou=0.34)) == []  # IoU = 320 / 960


def test_other_crs_are_compared_in_an_equal_area_crs():
    """The same ground as a NAD83 UTM tile, a WGS 84 UTM tile and a lon/lat tile: one place."""
    utm = grid("a.tif", "EPSG:26914", 485_900, 5_209_245, cols=1, rows=1)
    wgs = grid("b.tif", "EPSG:32614", 485_900, 5_209_245, cols=1, rows=1)
    west, south, east, north = utm[0]["geometry"].bounds  # a lon/lat raster tile over the same ground
    deg = [
        dict(
            utm[0],
            href="c.tif",
            crs="EPSG:4326",
            geometry=shapely.box(west, south, east, north),
            transform=np.array([(east - west) / 64, 0.0, west, 0.0, -(north - south) / 64, north]),
        )
    ]
    far = grid("d.tif", "EPSG:32615", 300_000, 5_209_245, cols=1, rows=1)  # another zone, elsewhere
    places = same_place_partners(table(utm, wgs, deg, far), iou=0.8)
    assert pairs(places) == [(0, 1), (0, 2), (1, 2)]


def test_tiles_without_a_footprint_have_no_place():
    rows = table(grid("a.tif", "EPSG:26914", 0, 0, cols=1, rows=1), grid("b.tif", "EPSG:26914", 0, 0, cols=1, rows=1))
    rows = pd.concat(
        [
            rows,
            gpd.GeoDataFrame(
                [
                    dict(
                        tile_id="imgs/x/0_0",
                        href="imgs/x.png",
                        crs=None,
                        width=64,
                        height=64,
                        transform=None,
                        geometry=None,
                    )
                ],
                geometry="geometry",
                crs="EPSG:4326",
            ),
        ],
        ignore_index=True,
    )
    assert pairs(same_place_partners(rows)) == [(0, 1)]
    assert pairs(same_place_partners(rows.iloc[:0])) == []


def test_acquisition_dates_from_the_datetime_column_then_the_file_name():
    rows = pd.DataFrame(
        {
            "href": [
                "naip/m_4709963_se_14_1_20100629.tif",
                "x/scene_20201301.tif",
                "y/plain.tif",
                "z/m_4709963_se_14_1_20180716.tif",
            ]
        }
    )
    got = acquisition_dates(rows)
    assert (
        str(got[0])[:10] == "2010-06-29" and np.isnat(got[1]) and np.isnat(got[2]) and str(got[3])[:10] == "2018-07-16"
    )
    rows["datetime"] = pd.to_datetime(["2021-05-01T10:00:00Z", None, "2019-01-02T00:00:00Z", None], utc=True)
    got = acquisition_dates(rows)
    assert [str(d)[:10] for d in got] == ["2021-05-01", "NaT", "2019-01-02", "2018-07-16"]


@pytest.mark.parametrize("iou", [0, -0.5, 1.5, float("nan"), True, "0.5"])
def test_bad_iou(iou):
    with pytest.raises(InvalidOption, match="place_iou"):
        check_iou(iou)


def test_acquisition_dates_read_a_day_range_when_no_instant_is_known():
    import pandas as pd

    from rsgeo_prune.places import acquisition_dates

    day = pd.Timestamp("2014-07-20", tz="UTC")
    rows = pd.DataFrame(
        {
            "datetime": [pd.NaT, pd.Timestamp("2016-01-02 10:00", tz="UTC"), pd.NaT],
            "start_datetime": [day, pd.Timestamp("2016-01-02 10:00", tz="UTC"), pd.NaT],
            "href": ["a.tif", "m_1_20100101.tif", "m_1_20100101.tif"],
        }
    )
    got = acquisition_dates(rows).astype("datetime64[s]").astype(str).tolist()
    assert got == ["2014-07-20T00:00:00", "2016-01-02T10:00:00", "2010-01-01T00:00:00"]
