"""Shared fixtures: a synthetic scene written once per session, and the real samples in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

from rsgeo_prune import synth

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared(*parts: str) -> Path:
    """Path of a real sample; skips the test with the reason when the shared folder is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real sample {path} not present (the ../shared/data folder ships only with the dev checkout)")
    return path


@pytest.fixture(scope="session")
def scene(tmp_path_factory) -> synth.SynthScene:
    """6 x 8 tiles of 256 px + partial edges (100 rows, 50 cols), 1 rare tile, 1 nodata row."""
    root = tmp_path_factory.mktemp("synth")
    return synth.write_scene(root / "scene.tif", rows=6, cols=8, seed=7, extra_px=(100, 50))
