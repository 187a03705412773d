"""Stage I: entropy with known answers, the compiled kernel against a plain float64 reference, filters."""

import numpy as np
import pandas as pd
import pytest
import rasterio

from rsgeo_prune import RSGeoPruneError, TileConfig, tiles_stage
from rsgeo_prune.cli import main
from rsgeo_prune.entropy import entropy_filter, tile_entropy, tile_histograms
from rsgeo_prune.pixels import stretch_levels
from tests.conftest import shared


def reference_entropy(tile: np.ndarray, nodata=None, lo=None, hi=None):
    """Plain float64 definition: gray = BT.601 integer luma of bands 1-3 (band 1 if fewer bands),
    nodata pixels (all bands == nodata) left out, H = -sum p log2 p over 256 levels."""
    tile = np.asarray(tile)
    valid = np.ones(tile.shape[1:], bool) if nodata is None else ~(tile == nodata).all(axis=0)
    if tile.dtype != np.uint8:
        lo = np.asarray(lo, float)[:, None, None]
        hi = np.asarray(hi, float)[:, None, None]
        tile = np.rint(np.clip((tile.astype(float) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    t = tile.astype(np.int64)
    gray = (77 * t[0] + 150 * t[1] + 29 * t[2] + 128) >> 8 if len(t) >= 3 else t[0]

    def h(values):
        if values.size == 0:
            return np.nan
        counts = np.bincount(values, minlength=256).astype(np.float64)
        p = counts[counts > 0] / values.size
        return float(-(p * np.log2(p)).sum())

    return h(gray[valid]), [h(b[valid]) for b in t]


def test_constant_tile_has_zero_entropy():
    gray, bands = tile_entropy(np.full((1, 4, 64, 64), 93, np.uint8))
    assert gray[0] == 0.0 and bands[0].tolist() == [0.0] * 4


def test_two_equal_values_give_one_bit():
    t = np.zeros((1, 1, 64, 64), np.uint8)
    t[0, 0, :, ::2] = 200
    gray, bands = tile_entropy(t)
    assert gray[0] == pytest.approx(1.0, abs=1e-12) and bands[0, 0] == pytest.approx(1.0, abs=1e-12)


def test_all_256_levels_equally_give_eight_bits():
    t = np.tile(np.arange(256, dtype=np.uint8), 256).reshape(1, 1, 256, 256)
    assert tile_entropy(t)[0][0] == pytest.approx(8.0, abs=1e-12)


def test_nodata_pixels_do_not_count():
    t = np.zeros((1, 3, 32, 32), np.uint8)  # nodata 0 everywhere ...
    t[0, :, :16, :] = 50  # ... except half the tile, constant
    t[0, 0, 16:, :8] = 200  # band 1 = 200, bands 2-3 = 0 (nodata) here: not nodata in every band
    assert (t[0, 1:, 16:, :8] == 0).all() and (t[0, 0, 16:, :8] != 0).all()  # the bands really differ
    gray, bands = tile_entropy(t, nodata=0)
    g_ref, b_ref = reference_entropy(t[0], nodata=0)
    assert gray[0] == pytest.approx(g_ref, abs=1e-12) and bands[0].tolist() == pytest.approx(b_ref, abs=1e-12)
    # 512 valid px at 50 and 128 at (200, 0, 0): an "any band is nodata" rule would drop the 128
    # and give 0 bits everywhere; counting nodata pixels would add a third value.
    assert tile_histograms(t, nodata=0)[0].sum(axis=1).tolist() == [640] * 4
    assert 0 < gray[0] < 1 and (0 < bands[0]).all() and (bands[0] < 1).all()
    p = np.array([512, 128]) / 640
    assert bands[0, 1] == pytest.approx(-(p * np.log2(p)).sum(), abs=1e-12)  # band 2 counts its zeros
    empty = np.zeros((1, 4, 8, 8), np.uint8)
    g, b = tile_entropy(empty, nodata=0)
    assert np.isnan(g[0]) and np.isnan(b[0]).all()  # no data, no entropy


@pytest.mark.parametrize("shape", [(5, 4, 256, 256), (3, 3, 37, 53), (4, 1, 64, 64), (2, 6, 17, 9), (3, 2, 40, 41)])
@pytest.mark.parametrize("nodata", [None, 0])
def test_kernel_matches_float64_reference_uint8(shape, nodata):
    rng = np.random.default_rng(sum(shape))
    tiles = rng.integers(0, 256, shape, dtype=np.uint8)
    tiles[0, :, : shape[2] // 2] = 0  # a nodata block
    tiles[-1] = rng.integers(0, 3, shape[1:], dtype=np.uint8) * 120  # few levels, long runs
    gray, bands = tile_entropy(tiles, nodata=nodata)
    for i, t in enumerate(tiles):
        g, b = reference_entropy(t, nodata)
        assert abs(gray[i] - g) <= 1e-9 and np.allclose(bands[i], b, rtol=0, atol=1e-9)


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float32])
def test_kernel_matches_float64_reference_other_dtypes(dtype):
    rng = np.random.default_rng(3)
    tiles = (rng.random((4, 4, 48, 48)) * 3000).astype(dtype)
    lo, hi = np.array([100.0, 200, 300, 50]), np.array([2500.0, 2800, 2900, 2000])
    gray, bands = tile_entropy(tiles, nodata=None, lo=lo, hi=hi)
    for i, t in enumerate(tiles):
        g, b = reference_entropy(t, None, lo, hi)
        assert abs(gray[i] - g) <= 1e-9 and np.allclose(bands[i], b, rtol=0, atol=1e-9)
    levels = stretch_levels(np.array([[[100.0, 2500.0, 5000.0, -1.0]]]), lo[:1], hi[:1])
    assert levels.tolist() == [[[0, 255, 255, 0]]]


def test_histograms_count_every_valid_pixel():
    tiles = np.random.default_rng(0).integers(0, 256, (3, 4, 30, 20), dtype=np.uint8)
    hist = tile_histograms(tiles)
    assert hist.shape == (3, 5, 256) and (hist.sum(axis=2) == 600).all()


def test_entropy_keep_is_an_exact_ranking_with_tile_id_ties():
    e = np.array([5.0, 1.0, 3.0, 3.0, np.nan, 7.0, 3.0])
    ids = np.array(["f", "a", "d", "b", "z", "e", "c"])
    cand = np.array([True, True, True, True, False, True, True])
    # 6 candidates, keep round(0.5 * 6) = 3: 7.0 (e), 5.0 (f), then the 3.0 tie broken by tile_id: b
    pruned = entropy_filter(e, ids, cand, entropy_keep=0.5)
    assert ids[cand & ~pruned].tolist() == ["f", "b", "e"]
    assert not pruned[4]  # not a candidate: untouched
    assert ids[cand & ~entropy_filter(e, ids, cand, entropy_min=3.0)].tolist() == ["f", "d", "b", "e", "c"]
    assert (cand & ~entropy_filter(e, ids, cand, entropy_keep=0.25)).sum() == 2  # round(1.5) = 2 (half up)
    with pytest.raises(RSGeoPruneError, match="not both"):
        entropy_filter(e, ids, cand, entropy_min=1, entropy_keep=0.5)


def test_planted_cloud_and_water_have_the_lowest_entropy_and_are_pruned(scene):
    labels = scene.labels.set_index("tile_id")["class"]
    n_low = int(labels.isin(["cloud", "water"]).sum())
    n_cand = int((labels != "nodata").sum())
    keep = (n_cand - n_low) / n_cand
    table = tiles_stage([scene.path], TileConfig(entropy_keep=keep), progress=False)
    cls = table["tile_id"].map(labels)
    ranked = table[cls != "nodata"].sort_values("entropy")
    assert set(cls[ranked.index[:n_low]]) == {"cloud", "water"}
    assert (table.loc[cls.isin(["cloud", "water"]), "pruned_by"] == "entropy").all()
    assert (table.loc[cls == "nodata", "pruned_by"] == "nodata").all() and table.loc[
        cls == "nodata", "entropy"
    ].isna().all()
    assert table.loc[~cls.isin(["cloud", "water", "nodata"]), "kept"].all()
    # same answer from the separate `entropy` pass over a tile table
    assert table["nodata_frac"].tolist() == tiles_stage([scene.path], progress=False)["nodata_frac"].tolist()


def test_entropy_cli_matches_tiles_cli(scene, tmp_path, capsys):
    one = tmp_path / "one.parquet"
    assert main(["tiles", str(scene.path), "--out", str(one), "--entropy-min", "3.5"]) == 0
    assert "pruned by entropy" in capsys.readouterr().out
    plain = tmp_path / "tiles.parquet"
    assert main(["tiles", str(scene.path), "--out", str(plain), "--quiet"]) == 0
    two = tmp_path / "two.parquet"
    assert main(["entropy", str(plain), "--out", str(two), "--entropy-min", "3.5", "--quiet"]) == 0
    a, b = pd.read_parquet(one), pd.read_parquet(two)
    assert a["entropy"].equals(b["entropy"]) and a["kept"].equals(b["kept"])
    assert (a["pruned_by"] == "entropy").sum() == 8  # 4 cloud + 4 water tiles below 3.5 bits
    with pytest.raises(SystemExit) as exit_:  # argparse: the two filters exclude each other
        main(["entropy", str(plain), "--out", str(two), "--entropy-min", "1", "--entropy-keep", "0.3"])
    assert exit_.value.code == 2


def test_strided_grid_matches_in_memory_tiles(scene):
    table = tiles_stage([scene.path], TileConfig(tile_size=256, stride=128, entropy_min=0.0), progress=False)
    with rasterio.open(scene.path) as src:
        px = src.read()
    half = table.index[(table["nodata_frac"] > 0) & (table["nodata_frac"] < 1)]
    assert len(half) > 0 and table["entropy"].isna().sum() > 0
    for i in (0, 17, half[0], half[-1]):
        r = table.loc[i]
        t = px[:, r.row_off : r.row_off + r.height, r.col_off : r.col_off + r.width]
        g, b = reference_entropy(t, nodata=0)
        assert abs(r.entropy - g) <= 1e-9 and np.allclose(r.entropy_bands, b, atol=1e-9)


def test_image_collection_entropy(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    root.mkdir()
    Image.fromarray(np.full((32, 32, 3), 9, np.uint8)).save(root / "flat.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "noisy.png")
    table = tiles_stage([root], TileConfig(entropy_keep=0.5), progress=False)
    assert table["entropy"].tolist()[0] == 0.0 and table["entropy"].tolist()[1] > 7
    assert table["pruned_by"].tolist()[0] == "entropy" and table["kept"].tolist() == [False, True]


def test_north_dakota_water_ranks_below_fields():
    path = shared("naip", "m_4709963_se_14_1_20180716.tif")
    table = tiles_stage([path], TileConfig(tile_size=64, entropy_min=0.0), progress=False)
    with rasterio.open(path) as src:
        px = src.read()
    # open water: dark NIR (band 4) over the whole tile; fields: bright NIR
    nir = np.array([px[3, r : r + 64, c : c + 64].mean() for r, c in table[["row_off", "col_off"]].to_numpy()])
    water, field = nir < 40, nir > 90
    assert water.sum() >= 3 and field.sum() >= 10
    assert np.median(table["entropy"][water]) < np.median(table["entropy"][field])
    assert table["entropy"][water].max() < np.percentile(table["entropy"][field], 25)


def test_napa_uint16_entropy_uses_the_scene_stretch():
    path = shared("naip", "napa_block_1m_uint16.tif")
    table = tiles_stage([path], TileConfig(tile_size=64, partial=True, entropy_min=0.0, max_nodata=1.0), progress=False)
    assert table["entropy"].notna().sum() >= 9 and table["entropy"].max() > 4
    from rsgeo_prune.pixels import scene_percentiles

    lo, hi = scene_percentiles(str(path), 256)
    with rasterio.open(path) as src:
        px = src.read()
    r = table.dropna(subset=["entropy"]).iloc[0]
    t = px[:, r.row_off : r.row_off + r.height, r.col_off : r.col_off + r.width]
    g, _ = reference_entropy(t, 256, lo, hi)
    assert abs(r.entropy - g) <= 1e-9


def test_mixed_band_counts_keep_gray_last(tmp_path):
    from PIL import Image

    from rsgeo_prune.entropy import image_histograms

    Image.fromarray(np.full((8, 8, 3), 5, np.uint8)).save(tmp_path / "rgb.png")
    Image.fromarray(np.full((8, 8), 9, np.uint8)).save(tmp_path / "gray.png")
    hist = image_histograms([tmp_path / "rgb.png", tmp_path / "gray.png"])
    assert hist.shape == (2, 4, 256)
    assert hist[0, :, 5].tolist() == [64, 64, 64, 64]  # R, G, B and gray
    assert hist[1, 0, 9] == 64 and hist[1, 3, 9] == 64 and hist[1, 1:3].sum() == 0  # gray last, G/B empty


def test_entropy_bits_do_not_depend_on_bin_order_and_match_the_definition():
    """The fixed-point sum is exact, so permuting the bins gives the same bits (a float sum would
    not); portable_log2 stays within one ulp of numpy's log2."""
    from rsgeo_prune.entropy import entropy_from_histograms
    from rsgeo_prune.exact import portable_log2

    rng = np.random.default_rng(3)
    hist = rng.integers(0, 400, size=(64, 256))
    hist[:, rng.integers(0, 256, 40)] = 0
    h = entropy_from_histograms(hist)
    for _ in range(3):
        perm = rng.permutation(256)
        assert entropy_from_histograms(hist[:, perm]).tobytes() == h.tobytes()
    p = hist / hist.sum(axis=1, keepdims=True)
    reference = -(p * np.log2(np.where(p > 0, p, 1.0))).sum(axis=1)
    assert np.abs(h - reference).max() < 1e-9
    x = rng.uniform(1.0, 1e9, 10_000)
    assert (np.abs(portable_log2(x) - np.log2(x)) <= np.spacing(np.log2(x))).all()
    assert portable_log2(np.array([1.0, 2.0, 1024.0])).tolist() == [0.0, 1.0, 10.0]
