"""Maps and reports: the offline map drawn by a real headless Chromium, the report's content."""

import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from rsgeo_prune.cli import main
from rsgeo_prune.status import stage_counts
from rsgeo_prune.viz import STATUS_COLOURS, interactive_map


@pytest.fixture(scope="module")
def run(world, small_run):
    """``(folder holding the run directory "run", the scene, the catalog)``."""
    run_dir, catalog, _ = small_run
    return run_dir.parent, world.a, catalog


def _chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("Debian's chromium is missing in CI: `make install` installs it (apt-get install chromium)")
        pytest.skip("chromium not installed (make install installs Debian's chromium when run as root)")
    return exe


def test_map_draws_offline_in_headless_chromium(run, tmp_path, capsys):
    root, _, catalog = run
    out = tmp_path / "map.html"
    assert main(["map", str(root / "run"), "--out", str(out)]) == 0
    page = out.read_text()
    # self-contained: no script or stylesheet is fetched (only the optional basemap tile URL is remote)
    assert not re.search(r'<script[^>]+src=|<link[^>]+href=["\']http', page)
    assert "L.geoJSON" in page and catalog["tile_id"].iloc[0] in page
    shot = tmp_path / "map.png"
    subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--proxy-server=127.0.0.1:9",
            "--proxy-bypass-list=<-loopback>",  # no network at all
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=900,700",
            "--virtual-time-budget=5000",
            f"--screenshot={shot}",
            out.as_uri(),
        ],
        check=True,
        timeout=120,
        capture_output=True,
    )
    from PIL import Image

    px = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # kept tiles: the kept colour at 75 % over the page background (#f4f4f0)
    kept = 0.75 * np.array(STATUS_COLOURS["kept"]) + 0.25 * np.array([244, 244, 240])
    close = (np.abs(px - kept).max(axis=2) <= 6).sum()
    assert close > 500, f"only {close} pixels of the kept-tile colour"
    pruned = 0.75 * np.array(STATUS_COLOURS["selection"]) + 0.25 * np.array([244, 244, 240])
    assert (np.abs(px - pruned).max(axis=2) <= 6).sum() > 500


def test_report_has_every_plot_and_matching_counts(run, tmp_path):
    root, scene, catalog = run
    out = tmp_path / "report.html"
    labels = tmp_path / "labels.csv"
    scene.labels.to_csv(labels, index=False)
    assert main(["report", str(root / "run"), "--out", str(out), "--labels", str(labels)]) == 0
    page = out.read_text()
    for plot in (
        "entropy histogram",
        "tiles per cluster",
        "similarity",
        "class mix",
        "kept tiles (RGB)",
        "pruned tiles (RGB)",
        "kept tiles (NIR, R, G false colour)",
    ):
        assert f'alt="{plot}" src="data:image/png;base64,' in page, plot
    counts = stage_counts(catalog)
    for stage, n in counts.items():  # the per-stage table of the page
        assert re.search(rf"<th>{stage}</th>\s*<td>{n}</td>", page), stage
    assert counts["after selection"] == int(catalog["kept"].sum())
    assert counts["tiles"] - counts["after nodata"] == int((catalog["pruned_by"] == "nodata").sum())
    assert main(["report", str(root / "run"), "--out", str(tmp_path / "nolabels.html")]) == 0
    assert 'alt="reference-class mix"' in (tmp_path / "nolabels.html").read_text()  # from the bank's classes
    assert "random subset" in page and "&quot;entropy_keep&quot;: 0.7" in page  # the config, HTML-escaped


def test_interactive_map_for_notebooks(run):
    _, _, catalog = run
    m = interactive_map(catalog, color_by="cluster")
    assert len(m.layers) == 1 and m.layers[0].table.num_rows == len(catalog)
