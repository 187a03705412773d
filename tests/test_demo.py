"""`make demo` at a small size: every output it announces is written and readable, and RS-Prune keeps
the rare class (with a quota of one tile per centroid at this size)."""

import subprocess
import sys

import geopandas as gpd
import pandas as pd
import pytest

pytestmark = pytest.mark.slow  # minutes: left out of `make test-fast`


def test_demo_runs_small(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "rsgeo_prune.demo", "--out", str(out), "--rows", "8", "--cols", "10"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    for name in (
        "tiles.parquet",
        "tiles_urban.parquet",
        "stage1.parquet",
        "stage1_tau.parquet",
        "runs/rs-prune/catalog.parquet",
        "runs/random/catalog.parquet",
        "runs/rs-prune/map.html",
        "runs/rs-prune/report.html",
        "runs/rs-prune/stac/catalog.json",
    ):
        assert (out / name).exists(), name
        assert str(out / name).split("/demo/")[1] in proc.stdout or name.endswith("catalog.json")
    labels = pd.read_csv(out / "inputs" / "synth_naip_labels.csv")
    cat = gpd.read_parquet(out / "runs" / "rs-prune" / "catalog.parquet").merge(labels, on="tile_id")
    assert cat.loc[cat["class"] == "solar_farm", "kept"].any()  # B = 12, K = 7: a quota of 1 per centroid
    assert not cat.loc[cat["class"] == "cloud", "kept"].any()
    # the printed counts are the catalog's
    kept = int(cat["kept"].sum())
    assert f", {kept} kept" in proc.stdout
