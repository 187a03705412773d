import geopandas as gpd
import numpy as np
import pytest
import shapely

from rsgeo_prune import RSGeoPruneError, describe_raster, mask_filter, read_vector, tile_grid, urban_fraction
from rsgeo_prune.masks import polygons_in_crs


def _tiles():
    # four 10 x 10 tiles in a row: x in [0,10), [10,20), [20,30), [30,40)
    return np.array([shapely.box(10 * i, 0, 10 * i + 10, 10) for i in range(4)])


def test_exact_fractions_known_by_hand():
    polys = np.array(
        [
            shapely.box(0, 0, 5, 10),  # half of tile 0
            shapely.box(12, 0, 40, 10),  # 0.8 of tile 1, all of tiles 2 and 3 ...
            shapely.box(25, 0, 40, 10),  # ... overlapping: must not count twice
        ]
    )
    assert urban_fraction(_tiles(), polys).tolist() == [0.5, 0.8, 1.0, 1.0]


def test_holes_and_no_overlap():
    ring = shapely.Polygon(shapely.box(0, 0, 20, 10).exterior.coords, [shapely.box(2, 2, 8, 8).exterior.coords])
    frac = urban_fraction(_tiles(), np.array([ring, shapely.box(100, 100, 110, 110)]))
    assert np.allclose(frac, [1 - 36 / 100, 1.0, 0.0, 0.0], atol=1e-12)


def test_many_tiles_match_the_slow_definition():
    rng = np.random.default_rng(0)
    tiles = np.array([shapely.box(x, y, x + 1, y + 1) for x in range(30) for y in range(30)])
    polys = shapely.buffer(shapely.points(rng.random((60, 2)) * 30), rng.random(60) * 3)
    union = shapely.union_all(polys)
    slow = shapely.area(shapely.intersection(tiles, union))
    assert np.allclose(urban_fraction(tiles, polys), slow, atol=1e-9)


def test_synthetic_urban_tiles_are_urban_after_reprojection(scene):
    vector = read_vector(scene.urban_path)
    assert vector.crs.to_epsg() == 4326  # stored in another CRS than the raster: must be reprojected
    s = describe_raster(scene.path)
    table, native = tile_grid(s)
    frac = urban_fraction(native, polygons_in_crs(vector, s.crs))
    urban = table["tile_id"].isin(scene.labels.loc[scene.labels["class"] == "urban", "tile_id"]).to_numpy()
    assert urban.sum() >= 5
    assert np.all(frac[urban] > 1 - 1e-6) and np.all(frac[~urban] < 1e-6)


def test_vector_without_crs_is_rejected(tmp_path):
    # (GeoJSON is EPSG:4326 by definition; a Shapefile without .prj truly has no CRS)
    path = tmp_path / "nocrs.shp"
    with pytest.warns(UserWarning, match="'crs' was not provided"):
        gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 1, 1)]).to_file(path)
    with pytest.raises(RSGeoPruneError, match="nocrs.shp: vector file has no CRS; set one"):
        read_vector(path)


def test_every_vector_format(tmp_path):
    gdf = gpd.GeoDataFrame({"k": [1]}, geometry=[shapely.box(0, 0, 1, 1)], crs="EPSG:4326")
    gdf.to_file(tmp_path / "a.gpkg")
    gdf.to_file(tmp_path / "a.shp")
    gdf.to_file(tmp_path / "a.geojson")
    gdf.to_parquet(tmp_path / "a.parquet")
    for name in ("a.gpkg", "a.shp", "a.geojson", "a.parquet"):
        assert read_vector(tmp_path / name).geometry.iloc[0].equals(shapely.box(0, 0, 1, 1))


def test_filters():
    nodata = np.array([0.0, 0.6, 0.5, 0.0, 1.0])
    urban = np.array([0.9, 0.9, 0.1, np.nan, 0.0])
    assert mask_filter(nodata, urban).tolist() == [None, "nodata", None, None, "nodata"]
    assert mask_filter(nodata, urban, min_urban=0.5).tolist() == [None, "nodata", "mask", "mask", "nodata"]
    with pytest.raises(RSGeoPruneError, match="needs the urban polygons"):
        mask_filter(nodata, None, min_urban=0.5)
