"""The `rsgeo-prune tiles` command end to end, and its bad-input contract (exit 2, one line, no output)."""

import json
import re
import shutil
import subprocess
import sys

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio

from rsgeo_prune.cli import main


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_tiles_writes_geoparquet_1_1(scene, tmp_path, capsys):
    out = tmp_path / "tiles.parquet"
    code, stdout, _ = run(["tiles", scene.path, "--out", out, "--mask", scene.urban_path, "--min-urban", "0.5"], capsys)
    assert code == 0 and "48 tiles" in stdout
    geo = json.loads(pq.read_metadata(out).metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    col = geo["columns"]["geometry"]
    assert col["encoding"] == "WKB" and "bbox" in col["covering"]
    assert pq.read_metadata(out).row_group(0).column(0).compression == "ZSTD"
    table = gpd.read_parquet(out)
    assert table.crs.to_epsg() == 4326
    labels = scene.labels.set_index("tile_id")["class"]
    cls = table["tile_id"].map(labels)
    assert (table.loc[cls == "nodata", "pruned_by"] == "nodata").all()
    assert (table.loc[cls == "urban", "kept"]).all()
    assert (table.loc[~cls.isin(["urban", "nodata"]), "pruned_by"] == "mask").all()
    assert list(table.columns[:10]) == [
        "tile_id",
        "scene_id",
        "href",
        "row_off",
        "col_off",
        "height",
        "width",
        "crs",
        "transform",
        "geometry",
    ]
    assert table["transform"].iloc[0].tolist() == [1.0, 0.0, 600000.0, 0.0, -1.0, 5200000.0]


def test_help_lists_every_option_with_its_default():
    out = subprocess.run(
        [sys.executable, "-m", "rsgeo_prune.cli", "tiles", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for opt in ("--tile-size", "--stride", "--mask", "--min-urban", "--max-nodata", "--partial", "--nodata", "--out"):
        assert opt in out
    assert "(default: 256)" in out and "(default: 0.5)" in out
    top = subprocess.run([sys.executable, "-m", "rsgeo_prune.cli", "--help"], capture_output=True, text=True).stdout
    listed = {m.group(1) for m in re.finditer(r"^    ([a-z][a-z-]+)\s{2,}\S", top, re.M)}  # the COMMAND table
    from rsgeo_prune.cli import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)
    assert commands <= listed and {"tiles", "entropy", "centroids", "run", "map", "report"} <= commands


def _expect_error(args, capsys, out, *needles):
    code, _, err = run([*args, "--out", out], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rsgeo-prune: error: "), err
    for n in needles:
        assert n in lines[0], lines[0]
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.stem}.tmp*"))  # nothing half-written


def test_corrupt_file(tmp_path, capsys):
    bad = tmp_path / "corrupt.tif"
    bad.write_bytes(b"II*\x00 this is not a tiff")
    _expect_error(["tiles", bad], capsys, tmp_path / "o.parquet", "corrupt.tif", "re-download")


def test_truncated_file(scene, tmp_path, capsys):
    cut = tmp_path / "truncated.tif"
    data = scene.path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    _expect_error(["tiles", cut], capsys, tmp_path / "o.parquet", "truncated.tif", "re-download")


def test_raster_without_crs(tmp_path, capsys):
    path = tmp_path / "nocrs.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=300,
        height=300,
        count=1,
        dtype="uint8",
        transform=rasterio.transform.from_origin(600_000, 5_200_000, 1, 1),
    ) as dst:
        dst.write(np.ones((1, 300, 300), np.uint8))
    _expect_error(["tiles", path], capsys, tmp_path / "o.parquet", "nocrs.tif", "no CRS", "gdal_edit.py -a_srs")


def test_vector_without_crs(scene, tmp_path, capsys):
    shp = tmp_path / "urban_nocrs.shp"
    with pytest.warns(UserWarning):
        gpd.read_file(scene.urban_path).set_crs(None, allow_override=True).to_file(shp)
    _expect_error(["tiles", scene.path, "--mask", shp], capsys, tmp_path / "o.parquet", "urban_nocrs.shp", "no CRS")


def test_raster_smaller_than_a_tile(scene, tmp_path, capsys):
    _expect_error(
        ["tiles", scene.path, "--tile-size", "4096"],
        capsys,
        tmp_path / "o.parquet",
        "scene.tif",
        "smaller than one 4096-px tile",
        "--tile-size",
    )


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _expect_error(["tiles", tmp_path / "empty"], capsys, tmp_path / "o.parquet", "empty", "no images")


@pytest.mark.parametrize("size", ["0", "-256"])
def test_tile_size_not_positive(scene, tmp_path, capsys, size):
    _expect_error(["tiles", scene.path, "--tile-size", size], capsys, tmp_path / "o.parquet", "--tile-size", "positive")


def test_output_that_cannot_be_written(scene, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, _, err = run(["tiles", scene.path, "--out", blocker / "tiles.parquet"], capsys)
    assert (
        code == 2
        and "--out" in err
        and "a_file/tiles.parquet" in err
        and "cannot be created (File exists); choose another" in err
    )


def test_failed_run_keeps_the_previous_output(scene, tmp_path, capsys):
    out = tmp_path / "tiles.parquet"
    assert run(["tiles", scene.path, "--out", out], capsys)[0] == 0
    before = out.read_bytes()
    cut = tmp_path / "truncated.tif"
    cut.write_bytes(scene.path.read_bytes()[:20_000])
    assert run(["tiles", cut, "--out", out], capsys)[0] == 2
    assert out.read_bytes() == before


def test_console_script_exit_code(tmp_path):
    exe = shutil.which("rsgeo-prune", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe, "console script rsgeo-prune is installed"
    proc = subprocess.run(
        [exe, "tiles", str(tmp_path / "missing.tif"), "--out", str(tmp_path / "o.parquet")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "missing.tif: no such file" in proc.stderr


# ---------------------------------------------------------------------------------------------
# Bad options and inputs of the run, entropy, map and centroids commands: one line, exit 2,
# nothing written (a table of bad inputs)
# ---------------------------------------------------------------------------------------------


def _bad_cases(world, small_run):
    run_dir = small_run[0]
    a, ref = str(world.a.path), str(world.ref)
    run = ["run", a, "--reference", ref, "--k", "7", "--quiet"]
    return {
        "chunk negative": (run + ["--chunk", "-5"], ["--chunk -5", "positive"]),
        "chunk zero": (run + ["--chunk", "0"], ["--chunk 0", "positive"]),
        "seed negative": (run + ["--seed", "-1"], ["--seed -1", "whole number"]),
        "reference missing": (
            ["run", a, "--reference", str(world.root / "nope"), "--quiet"],
            ["nope", "reference not found"],
        ),
        "entropy-min nan": (run + ["--entropy-min", "nan"], ["--entropy-min nan", "[0, 8]"]),
        "entropy-min above 8 bits": (run + ["--entropy-min", "9"], ["--entropy-min 9.0", "[0, 8]"]),
        "k with a bank of another K": (
            ["run", a, "--reference", str(run_dir / "bank.npz"), "--k", "5", "--quiet"],
            ["--k 5", "has 7 centroids"],
        ),
        "bad embedder before tiling": (
            run + ["--embedder", "openclip:ViT-B-32:" + str(world.root / "missing.pt")],
            ["missing.pt"],
        ),
        "bad scheduler before tiling": (run + ["--scheduler", "bogus"], ["--scheduler 'bogus'", "tcp://"]),
        "entropy on STAC items": (
            ["entropy", str(run_dir / "items.parquet"), "--entropy-min", "1"],
            ["items.parquet", "not an rsgeo_prune tile table"],
        ),
        "map of STAC items": (
            ["map", str(run_dir / "items.parquet")],
            ["items.parquet", "not an rsgeo_prune tile table"],
        ),
        "map by cluster of a tile table": (
            ["map", str(run_dir / "tiles.parquet"), "--color-by", "cluster"],
            ["--color-by 'cluster'", "no cluster column"],
        ),
        "dedup-cosine zero": (run + ["--dedup-cosine", "0"], ["--dedup-cosine 0.0", "(0, 1]"]),
        "dedup-cosine above 1": (run + ["--dedup-cosine", "1.5"], ["--dedup-cosine 1.5", "(0, 1]"]),
        "dedup-cosine nan": (run + ["--dedup-cosine", "nan"], ["--dedup-cosine nan", "(0, 1]"]),
        "max-per-place zero": (run + ["--max-per-place", "0"], ["--max-per-place 0", ">= 1"]),
        "max-per-place negative": (run + ["--max-per-place", "-2"], ["--max-per-place -2", ">= 1"]),
        "place-iou above 1": (run + ["--max-per-place", "1", "--place-iou", "1.2"], ["--place-iou 1.2", "(0, 1]"]),
        "copy options with another method": (
            run + ["--method", "random", "--dedup-cosine", "0.9"],
            ["--dedup-cosine 0.9", "rs-prune or rs-prune-dedup"],
        ),
        "centroids seed negative": (["centroids", ref, "--seed", "-1"], ["--seed -1"]),
        "centroids k above the images": (["centroids", ref, "--k", "100000"], ["k 100000", "reference images"]),
    }


CASES = [
    "chunk negative",
    "chunk zero",
    "seed negative",
    "reference missing",
    "entropy-min nan",
    "entropy-min above 8 bits",
    "k with a bank of another K",
    "bad embedder before tiling",
    "bad scheduler before tiling",
    "entropy on STAC items",
    "map of STAC items",
    "map by cluster of a tile table",
    "dedup-cosine zero",
    "dedup-cosine above 1",
    "dedup-cosine nan",
    "max-per-place zero",
    "max-per-place negative",
    "place-iou above 1",
    "copy options with another method",
    "centroids seed negative",
    "centroids k above the images",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_run_options_give_one_line(case, world, small_run, tmp_path, capsys):
    args, needles = _bad_cases(world, small_run)[case]
    out = tmp_path / ("out.npz" if args[0] == "centroids" else "out.html" if args[0] == "map" else "out")
    code, _, err = run([*args, "--out", out], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("rsgeo-prune: error: "), err
    for n in needles:
        assert n in lines[0], lines[0]
    assert not out.exists() or not any(out.iterdir())  # nothing written: no stage ran


def test_the_case_table_is_complete(world, small_run):
    assert sorted(CASES) == sorted(_bad_cases(world, small_run))


def test_ctrl_c_prints_one_line_and_the_run_resumes(world, small_run, tmp_path):
    """A real SIGINT in the middle of embedding: exit 130, one line, and a rerun gives the same bytes."""
    import hashlib

    out = tmp_path / "run"
    args = [
        "run",
        str(world.a.path),
        "--reference",
        str(world.ref),
        "--k",
        "7",
        "--entropy-keep",
        "0.7",
        "--budget",
        "0.3",
        "--chunk",
        "8",
        "--scheduler",
        "synchronous",
        "--quiet",
        "--out",
        str(out),
    ]
    # a shell that starts a job in the background makes it ignore SIGINT, and Python keeps that:
    # install Python's own handler, as a terminal session has it
    code = (
        "import os, signal, sys\nimport rsgeo_prune.embed_cache as ec\nfrom rsgeo_prune.cli import main\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "real = ec.write_part\n"
        "def write_then_interrupt(path, *a, **k):\n"
        "    real(path, *a, **k)\n"
        "    if 'part-' in str(path):\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "ec.write_part = write_then_interrupt\n"
        f"sys.exit(main({args!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 130 and len(lines) == 1 and "interrupted" in lines[0] and "resume" in lines[0], (
        proc.stderr
    )
    assert not (out / "catalog.parquet").exists() and list((out / "embed.parts").glob("part-*.parquet"))
    assert main(args) == 0
    digest = [hashlib.sha256((d / "catalog.parquet").read_bytes()).hexdigest() for d in (out, small_run[0])]
    assert digest[0] == digest[1]


def test_entropy_recomputes_stage_one_from_the_pre_filters(world, tmp_path, capsys):
    """`entropy --entropy-min 0` on a table an earlier filter pruned gives back every tile with data."""
    import geopandas as gpd

    filtered = tmp_path / "filtered.parquet"
    assert run(["tiles", world.a.path, "--entropy-keep", "0.5", "--out", filtered], capsys)[0] == 0
    assert (gpd.read_parquet(filtered)["pruned_by"] == "entropy").sum() > 0
    again = tmp_path / "again.parquet"
    assert run(["entropy", filtered, "--entropy-min", "0", "--out", again], capsys)[0] == 0
    table = gpd.read_parquet(again)
    assert (table["pruned_by"] == "entropy").sum() == 0
    assert table["kept"].sum() == (~table["pruned_by"].isin(["nodata", "mask"])).sum()
