"""`rsgeo-prune run` without copies: byte copies found by pixel digest, the eight NAIP years kept once
per place, the exact budget, identical bytes on rerun and under the process scheduler, the report and
the map; and runs without the options unchanged."""

import hashlib
import shutil

import pytest
import rasterio

from rsgeo_prune.catalog import catalog_metadata, read_catalog
from rsgeo_prune.cli import main
from rsgeo_prune.config import RunConfig, TileConfig
from rsgeo_prune.pipeline import run_pipeline
from rsgeo_prune.places import same_place_partners
from rsgeo_prune.viz import STATUS_COLOURS, write_map_html, write_report

from .conftest import shared

pytestmark = pytest.mark.slow  # minutes: left out of `make test-fast`


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def reexport_elsewhere(src, dst, dx=50_000.0):
    """The same pixels in another file, placed ``dx`` metres east (a re-export: byte copies, not the same place)."""
    with rasterio.open(src) as s:
        profile, data = s.profile, s.read()
    t = profile["transform"]
    profile["transform"] = rasterio.Affine(t.a, t.b, t.c + dx, t.d, t.e, t.f)
    with rasterio.open(dst, "w", **profile) as d:
        d.write(data)
    return dst


def check_kept_once(catalog, budget):
    """Exactly ``budget`` kept; every duplicate names a tile that is no duplicate itself (a kept one,
    or for exact copies possibly one the budget left out); no two kept tiles share a place."""
    kept = catalog[catalog["kept"].astype(bool)].reset_index(drop=True)
    assert len(kept) == budget
    dup = catalog[catalog["pruned_by"] == "duplicate"]
    assert dup["duplicate_of"].notna().all() and not set(dup["duplicate_of"]) & set(dup["tile_id"])
    assert catalog.loc[catalog["pruned_by"] != "duplicate", "duplicate_of"].isna().all()
    assert same_place_partners(kept).pairs == 0


def test_byte_copies_in_another_file_are_exact_duplicates(world, tmp_path):
    root, a, _, ref = world
    copy = reexport_elsewhere(a.path, tmp_path / "a_copy.tif")
    cfg = dict(tile_cfg=TileConfig(entropy_keep=0.7), run_cfg=RunConfig(k=7, budget_count=10, dedup_cosine=0.999))
    cat, counts = run_pipeline([a.path, copy], tmp_path / "run", [ref], progress=False, **cfg)
    check_kept_once(cat, 10)
    exact = catalog_metadata(tmp_path / "run" / "catalog.parquet")["copies"]["exact"]
    assert exact == counts["exact copies"] == counts["after entropy"] // 2  # every candidate has its twin
    named = cat.set_index("tile_id")["duplicate_of"].dropna().to_dict()
    copies = [t for t in named if t.startswith("a_copy/")]  # ties go to the lower tile id: scene a's tile
    assert len(copies) == exact
    for t in copies:  # the twin in scene a, or, when the twin is a near copy, the tile the twin copies
        twin = t.replace("a_copy/", "a/")
        assert named[t] == named.get(twin, twin)


def test_a_plain_run_then_copy_removal_digests_without_embedding_again(world, tmp_path):
    root, a, _, ref = world
    copy = reexport_elsewhere(a.path, tmp_path / "a_copy.tif")
    plain = dict(tile_cfg=TileConfig(entropy_keep=0.7), run_cfg=RunConfig(k=7, budget_count=10))
    cat, _ = run_pipeline([a.path, copy], tmp_path / "run", [ref], progress=False, **plain)
    assert "duplicate_of" not in cat and "copies" not in catalog_metadata(tmp_path / "run" / "catalog.parquet")
    assert set(catalog_metadata(tmp_path / "run" / "catalog.parquet")["config"]["run"]) == set(RunConfig().as_dict())
    dedup = dict(plain, run_cfg=RunConfig(k=7, budget_count=10, dedup_cosine=0.999))
    cat, counts = run_pipeline([a.path, copy], tmp_path / "run", [ref], progress=False, **dedup)
    assert counts["embedded"] == 0 and counts["exact copies"] == counts["after entropy"] // 2
    alone = run_pipeline([a.path, copy], tmp_path / "fresh", [ref], progress=False, **dedup)[0]
    assert sha(tmp_path / "run" / "catalog.parquet") == sha(tmp_path / "fresh" / "catalog.parquet")
    assert alone["kept"].sum() == 10


@pytest.fixture(scope="module")
def naip_run(tmp_path_factory):
    """The eight NAIP years at 128-px tiles, AID reference centroids, --dedup-cosine 0.97 --max-per-place 1."""
    naip = shared("naip")
    ref = shared("reference", "aid_150px")
    root = tmp_path_factory.mktemp("naip_dedup")
    args = [
        "run",
        str(naip / "m_*.tif"),
        "--reference",
        str(ref),
        "--k",
        "10",
        "--tile-size",
        "128",
        "--budget-count",
        "20",
        "--dedup-cosine",
        "0.97",
        "--max-per-place",
        "1",
        "--quiet",
    ]
    assert main(args + ["--out", str(root / "threads")]) == 0
    return root, args


def test_naip_years_keep_one_tile_per_place_and_the_exact_budget(naip_run):
    root, _ = naip_run
    cat = read_catalog(root / "threads" / "catalog.parquet")
    check_kept_once(cat, 20)
    copies = catalog_metadata(root / "threads" / "catalog.parquet")["copies"]
    assert copies["same place"] == (cat["pruned_by"] == "duplicate").sum() > 0 and copies["exact"] == 0
    # the whole budget: every place (35 tile positions) kept exactly once, the 7 other years dropped
    everything = dict(
        tile_cfg=TileConfig(tile_size=128), run_cfg=RunConfig(k=10, budget=1.0, dedup_cosine=0.97, max_per_place=1)
    )
    cat, counts = run_pipeline(
        [str(p) for p in cat["href"].unique()],
        root / "all",
        [shared("reference", "aid_150px")],
        progress=False,
        **everything,
    )
    check_kept_once(cat, 35)
    assert counts["same place copies"] == 7 * 35 and cat["href"].nunique() == 8


def test_naip_dedup_run_gives_the_same_bytes_on_rerun_and_under_processes(naip_run):
    root, args = naip_run
    first = sha(root / "threads" / "catalog.parquet")
    assert main(args + ["--out", str(root / "threads")]) == 0  # rerun: nothing to do
    assert main(args + ["--out", str(root / "processes"), "--scheduler", "processes"]) == 0
    assert sha(root / "threads" / "catalog.parquet") == first == sha(root / "processes" / "catalog.parquet")


def test_report_and_map_show_the_duplicates(naip_run, tmp_path):
    root, _ = naip_run
    page = write_report(root / "threads", tmp_path / "report.html").read_text()
    assert "Copies skipped by the selection" in page and "<th>after duplicate</th>" in page
    cat = read_catalog(root / "threads" / "catalog.parquet")
    try:
        html = write_map_html(cat, tmp_path / "map.html").read_text()
    except Exception as exc:  # Leaflet is installed by `make install`
        pytest.skip(f"no offline map here: {exc}")
    red = "#%02x%02x%02x" % STATUS_COLOURS["duplicate"]
    assert f'"duplicate", "{red}"' in html and '"duplicate_of": "m_4709963_se_14_1_' in html


def test_the_run_summary_counts_copies_by_kind(naip_run, capsys):
    root, args = naip_run
    assert main([a for a in args if a != "--quiet"] + ["--out", str(root / "threads")]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "pruned by duplicate" in x)
    assert "0 exact copies" in line and "same place copies" in line


def test_ties_go_to_the_most_recent_acquisition(tmp_path):
    """Three years of one place with identical pixels (equal similarities): the newest year is kept,
    by the pixel digest (exact copies) as by the place limit (same place)."""
    from rsgeo_prune import synth

    a = synth.write_scene(tmp_path / "x_20100629.tif", rows=2, cols=2, tile_size=64, seed=1, nodata_rows=0)
    for year in ("20180716", "20140720"):
        shutil.copy(a.path, tmp_path / f"x_{year}.tif")
    ref = synth.write_reference_set(tmp_path / "ref", per_class=3, size=64, seed=2)
    inputs = sorted(str(p) for p in tmp_path.glob("x_*.tif"))
    for name, rule, kind in (
        ("digest", dict(dedup_cosine=1.0), "exact"),
        ("place", dict(max_per_place=1), "same place"),
    ):
        cat, counts = run_pipeline(
            inputs, tmp_path / name, [ref], TileConfig(tile_size=64), RunConfig(k=3, budget=1.0, **rule), progress=False
        )
        kept = cat[cat["kept"].astype(bool)]
        assert len(kept) == 4 and kept["tile_id"].str.startswith("x_20180716/").all()
        copies = cat[~cat["kept"].astype(bool)]
        assert (copies["duplicate_of"] == copies["tile_id"].str.replace(r"x_\d+/", "x_20180716/", regex=True)).all()
        assert counts[f"{kind} copies"] == 8
