"""The TorchGeo bridge: CatalogDataset's pixels under TorchGeo queries, each kept tile once, time slicing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
import torch
from pyproj import CRS
from rasterio.transform import from_origin
from torchgeo.datasets import stack_samples
from torchgeo.samplers import GridGeoSampler, RandomGeoSampler

from rsgeo_prune import TileConfig, tiles_stage
from rsgeo_prune.catalog import write_geoparquet
from rsgeo_prune.errors import RSGeoPruneError
from rsgeo_prune.train.dataset import CatalogDataset
from rsgeo_prune.train.torchgeo_dataset import (
    CatalogGeoDataset,
    CatalogTileSampler,
    acquisition_intervals,
    time_interval,
)
from tests.conftest import shared

torch.set_num_threads(1)

#: Tiles the test catalog marks pruned (the rest are kept).
PRUNED = {"a/0_32", "b/32_64"}


def _raster(path, seed, dtype="uint16", crs="EPSG:32614"):
    """4 bands, 64 x 96 px of 1 m at (500000, 5000000): six 32 px tiles; a nodata corner in tile 0_0."""
    rng = np.random.default_rng(seed)
    data = rng.integers(1, 4000 if dtype == "uint16" else 255, (4, 64, 96)).astype(dtype)
    data[:, :5, :7] = 0
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=96,
        height=64,
        count=4,
        dtype=dtype,
        crs=crs,
        transform=from_origin(500000, 5000000, 1, 1),
        nodata=0,
    ) as dst:
        dst.write(data)
    return path


def _tiles(*paths) -> pd.DataFrame:
    return pd.concat(
        [pd.DataFrame(tiles_stage([p], TileConfig(tile_size=32, max_nodata=1.0), progress=False)) for p in paths],
        ignore_index=True,
    )


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """Two acquisitions of one footprint: ``a`` an instant (2020-06-01 10:00 UTC), ``b`` known only as a
    range (2021-05-01 .. 2021-09-30, no ``datetime``); two tiles pruned; written as GeoParquet."""
    root = tmp_path_factory.mktemp("tg")
    table = _tiles(_raster(root / "a.tif", 1), _raster(root / "b.tif", 2))
    is_a = table["scene_id"] == "a"
    instant = pd.Timestamp("2020-06-01T10:00:00Z")
    table["datetime"] = pd.Series(pd.NaT, index=table.index, dtype="datetime64[us, UTC]")
    table.loc[is_a, "datetime"] = instant
    table["start_datetime"] = table["datetime"].where(is_a, pd.Timestamp("2021-05-01T00:00:00Z"))
    table["end_datetime"] = table["datetime"].where(is_a, pd.Timestamp("2021-09-30T00:00:00Z"))
    table["datetime_source"] = np.where(is_a, "metadata", "range")
    table["kept"] = ~table["tile_id"].isin(PRUNED)
    return write_geoparquet(table, root / "catalog.parquet")


def _kept(scene=None) -> list[str]:
    ids = [f"{s}/{r}_{c}" for s in "ab" for r in (0, 32) for c in (0, 32, 64)]
    return sorted(t for t in ids if t not in PRUNED and (scene is None or t.startswith(scene)))


@pytest.mark.parametrize("output", ["float", "raw"])
def test_a_loader_over_the_tile_sampler_yields_each_kept_tile_once_equal_to_catalog_dataset(catalog, output):
    ds = CatalogGeoDataset(catalog, output=output)
    ref = CatalogDataset(catalog, output=output)
    pos = {t: i for i, t in enumerate(ref.tile_ids)}
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(
            ds, sampler=CatalogTileSampler(ds), batch_size=4, num_workers=workers, collate_fn=stack_samples
        )
        seen = []
        for batch in loader:
            assert batch["image"].dtype == (torch.float32 if output == "float" else torch.int32)
            for k, tid in enumerate(batch["tile_id"]):
                want = ref[pos[tid]]
                assert torch.equal(batch["image"][k], want["image"]) and torch.equal(batch["valid"][k], want["valid"])
                if output == "raw":
                    assert torch.equal(batch["stretch"][k], want["stretch"])
                seen.append(tid)
        assert sorted(seen) == _kept() and len(seen) == len(set(seen)) == 10
    assert not ref[pos["a/0_0"]]["valid"][:5, :7].any()  # the nodata corner came through as invalid


def test_samples_are_keyed_by_bounds_crs_and_acquisition_time(catalog):
    ds = CatalogGeoDataset(catalog)
    assert ds.crs == CRS.from_epsg(32614) and ds.res == (1.0, 1.0) and len(ds) == 10
    row = ds.index[ds.index["tile_id"] == "b/32_0"]
    assert row.geometry.iloc[0].bounds == (500000.0, 4999936.0, 500032.0, 4999968.0)
    assert (row.index[0].left, row.index[0].right) == (pd.Timestamp("2021-05-01"), pd.Timestamp("2021-09-30"))
    # a/32_0 and b/32_0 share the footprint: time picks the acquisition
    box = slice(500000.0, 500032.0), slice(4999936.0, 4999968.0)
    a = ds[(*box, slice(pd.Timestamp("2020-06-01 10:00"), pd.Timestamp("2020-06-01 10:00")))]
    b = ds[(*box, slice(pd.Timestamp("2021-07-01"), pd.Timestamp("2021-07-02")))]
    assert (a["tile_id"], b["tile_id"]) == ("a/32_0", "b/32_0")
    assert a["crs"] == CRS.from_epsg(32614) and a["bounds"][0] == box[0] and a["image"].shape == (4, 32, 32)
    ref = CatalogDataset(catalog, select=["b/32_0"])[0]
    assert torch.equal(b["image"], ref["image"])
    assert ref["crs"] == "EPSG:32614" and ref["bounds"].tolist() == [500000.0, 4999936.0, 500032.0, 4999968.0]
    with pytest.raises(IndexError, match="no tile"):  # between the acquisitions
        ds[(*box, slice(pd.Timestamp("2020-07-01"), pd.Timestamp("2020-08-01")))]
    with pytest.raises(IndexError, match="no tile"):  # across two tiles: no mosaics
        ds[slice(500016.0, 500048.0), slice(4999936.0, 4999968.0), slice(pd.Timestamp("2021-06-01"), None)]
    with pytest.raises(IndexError, match="never resampled"):
        ds[slice(500000.0, 500032.0, 2.0), slice(4999936.0, 4999968.0, 2.0)]


@pytest.mark.parametrize(
    "toi,scenes",
    [
        (("2021-01-01", "2021-12-31"), "b"),
        (("2020-06-01T10:00:00Z", "2020-06-01T10:00:00Z"), "a"),  # an instant on both ends of the range: in it
        (("2020-06-01T05:00:00-05:00", "2020-06-01T05:00:00-05:00"), "a"),  # the same instant in UTC-5
        ((None, "2020-12-31"), "a"),
        (("2021-09-30", None), "b"),  # the last day of b's range
        (pd.Interval(pd.Timestamp("2019-01-01"), pd.Timestamp("2022-01-01")), "ab"),
        (("2019-01-01", "2019-12-31"), ""),
    ],
)
def test_time_slicing_keeps_exactly_the_tiles_in_the_range(catalog, toi, scenes):
    ds = CatalogGeoDataset(catalog)
    sampler = CatalogTileSampler(ds, toi=toi)
    want = sorted(t for s in scenes for t in _kept(s))
    assert sorted(sampler.tile_ids) == want and len(sampler) == len(want)
    got = [ds[q]["tile_id"] for q in sampler]
    assert sorted(got) == want


def test_tiles_of_one_footprint_and_overlapping_times_each_answer_their_own_query(tmp_path):
    """``a`` acquired at an instant, ``c`` at an unknown time (unbounded): both intervals hold a's instant,
    so only the rule (the interval that contains the query's, then the narrowest) tells them apart."""
    table = _tiles(_raster(tmp_path / "c.tif", 3), _raster(tmp_path / "a.tif", 1))  # c first: order can't decide
    table["datetime"] = pd.Series(pd.NaT, index=table.index, dtype="datetime64[us, UTC]")
    table.loc[table["scene_id"] == "a", "datetime"] = pd.Timestamp("2020-06-01T10:00:00Z")
    ds, ref = CatalogGeoDataset(table, select="all"), CatalogDataset(table, select="all")
    batches = list(
        torch.utils.data.DataLoader(ds, sampler=CatalogTileSampler(ds), batch_size=5, collate_fn=stack_samples)
    )
    got = {t: img for b in batches for t, img in zip(b["tile_id"], b["image"])}
    assert sorted(got) == sorted(ref.tile_ids) and sum(len(b["tile_id"]) for b in batches) == 12
    assert all(torch.equal(got[t], ref[k]["image"]) for k, t in enumerate(ref.tile_ids))
    assert not torch.equal(got["a/0_0"], got["c/0_0"])  # the two acquisitions differ
    in_2020 = CatalogTileSampler(ds, toi=("2020-01-01", "2020-12-31"))
    assert sorted(ds[q]["tile_id"] for q in in_2020) == sorted(ref.tile_ids)  # c's time is unknown: it may be 2020


def test_region_and_shuffle(catalog):
    ds = CatalogGeoDataset(catalog)
    left_column = shapely.box(500000.0, 4999936.0, 500010.0, 5000000.0)  # touches the tiles at col 0 only
    assert sorted(CatalogTileSampler(ds, roi=left_column).tile_ids) == ["a/0_0", "a/32_0", "b/0_0", "b/32_0"]
    gen = torch.Generator().manual_seed(0)
    shuffled = [ds[q]["tile_id"] for q in CatalogTileSampler(ds, shuffle=True, generator=gen)]
    assert sorted(shuffled) == _kept() and shuffled != [ds[q]["tile_id"] for q in CatalogTileSampler(ds)]


def test_windows_of_a_tile_are_its_catalog_dataset_pixels(catalog):
    ds = CatalogGeoDataset(catalog, select="all")
    ref = CatalogDataset(catalog, select="all")
    full = ref[ref.tile_ids.index("a/32_64")]
    # x 500070..500086 is columns 6..22 of the tile at col 64; y 4999960..4999950 is rows 8..18 of row 32
    s = ds[
        slice(500070.0, 500086.0),
        slice(4999950.0, 4999960.0),
        slice(pd.Timestamp("2020-01-01"), pd.Timestamp("2020-12-31")),
    ]
    assert s["tile_id"] == "a/32_64"
    assert torch.equal(s["image"], full["image"][:, 8:18, 6:22]) and torch.equal(s["valid"], full["valid"][8:18, 6:22])
    # TorchGeo's own samplers draw windows within single tiles
    for q in [
        *RandomGeoSampler(ds, size=16, length=6, generator=torch.Generator().manual_seed(1)),
        *GridGeoSampler(ds, size=16, stride=16),
    ]:
        w = ds[q]
        assert w["image"].shape == (4, 16, 16)
        tile = ref[ref.tile_ids.index(w["tile_id"])]
        b = ref.tile_bounds(ref.tile_ids.index(w["tile_id"]))
        c0, r0 = int(round(q[0].start - b[0])), int(round(b[3] - q[1].stop))
        assert torch.equal(w["image"], tile["image"][:, r0 : r0 + 16, c0 : c0 + 16])


def test_acquisition_intervals_without_time_columns_are_unbounded(tmp_path):
    table = _tiles(_raster(tmp_path / "a.tif", 1))
    iv = acquisition_intervals(table)
    assert (iv.left == pd.Timestamp.min).all() and (iv.right == pd.Timestamp.max).all() and iv.closed == "both"
    ds = CatalogGeoDataset(table, select="all")
    assert len(CatalogTileSampler(ds, toi=("2019-01-01", "2019-01-02"))) == 6  # unknown time: in every range
    # an instant with no range columns
    iv = acquisition_intervals(table.assign(datetime=pd.Timestamp("2018-08-31T16:00:00Z")))
    assert (iv.left == pd.Timestamp("2018-08-31 16:00")).all() and (iv.right == iv.left).all()


def test_bad_input_is_one_clear_error(tmp_path):
    a, b = _raster(tmp_path / "a.tif", 1), _raster(tmp_path / "b.tif", 2)
    with pytest.raises(RSGeoPruneError, match="same footprint and acquisition time"):
        CatalogGeoDataset(_tiles(a, b), select="all")  # two acquisitions, no datetime columns
    c = _raster(tmp_path / "c.tif", 3, crs="EPSG:32615")
    with pytest.raises(RSGeoPruneError, match="2 CRSs.*crs == 'EPSG:32614'"):
        CatalogGeoDataset(_tiles(a, c), select="all")
    backwards = _tiles(a).assign(
        start_datetime=pd.Timestamp("2021-01-02", tz="UTC"), end_datetime=pd.Timestamp("2021-01-01", tz="UTC")
    )
    with pytest.raises(RSGeoPruneError, match="starts after it ends"):
        CatalogGeoDataset(backwards, select="all")
    with pytest.raises(RSGeoPruneError, match="time 'soon': not a date"):
        time_interval(("soon", None))
    with pytest.raises(RSGeoPruneError, match="tiles without a CRS"):
        CatalogGeoDataset(_tiles(a).drop(columns="crs"), select="all")
    ds = CatalogGeoDataset(_tiles(a), select="all")
    with pytest.raises(RSGeoPruneError, match="without reprojection"):
        ds.crs = CRS.from_epsg(4326)
    ds.crs = CRS.from_epsg(32614)  # its own CRS: nothing to do


def test_two_naip_years_time_sliced_through_a_loader():
    paths = [shared("naip", n) for n in ("m_4709963_se_14_1_20100629.tif", "m_4709963_se_14_1_20120731.tif")]
    table = _tiles(*paths)
    table["datetime"] = pd.to_datetime(table["href"].str.extract(r"_(\d{8})\.tif$")[0], utc=True)
    ds, ref = CatalogGeoDataset(table, select="all"), CatalogDataset(table, select="all")
    assert ds.crs == CRS.from_user_input(table["crs"].iloc[0]) and len(ds) == len(table)
    in_2012 = CatalogTileSampler(ds, toi=("2012-01-01", "2012-12-31"))
    want = sorted(table.loc[table["href"].str.contains("2012"), "tile_id"])
    assert sorted(in_2012.tile_ids) == want and len(want) > 0
    pos = {t: i for i, t in enumerate(ref.tile_ids)}
    got = []
    for batch in torch.utils.data.DataLoader(ds, sampler=in_2012, batch_size=8, collate_fn=stack_samples):
        for k, tid in enumerate(batch["tile_id"]):
            assert torch.equal(batch["image"][k], ref[pos[tid]]["image"])
            np.testing.assert_allclose(
                [
                    batch["bounds"][k][0].start,
                    batch["bounds"][k][1].start,
                    batch["bounds"][k][0].stop,
                    batch["bounds"][k][1].stop,
                ],
                ref[pos[tid]]["bounds"].numpy(),
            )
            got.append(tid)
    assert sorted(got) == want
