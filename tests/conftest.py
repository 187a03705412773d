"""Shared fixtures: synthetic scenes, a reference set and one finished run, each built once per
session; and the real samples in ../shared/data."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class World:
    """Two scenes (``a``: 6 x 8 tiles with a rare tile, ``b``: 4 x 5 tiles elsewhere) and an
    ImageFolder reference set of the synthetic classes, under ``root``."""

    root: Path
    a: synth.SynthScene
    b: synth.SynthScene
    ref: Path

    def __iter__(self):  # ``root, a, b, ref = world``
        return iter((self.root, self.a, self.b, self.ref))


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("world")
    a = synth.write_scene(root / "a.tif", rows=6, cols=8, rare_tiles=1, seed=11)
    b = synth.write_scene(root / "b.tif", rows=4, cols=5, rare_tiles=1, seed=12, origin=(610_000.0, 5_200_000.0))
    ref = synth.write_reference_set(root / "ref", per_class=6, seed=13)
    return World(root, a, b, ref)


#: The options of the shared small run (Stage I keeps 70 %, K = 7 centroids, 30 % budget, tasks of 8 tiles).
SMALL_RUN = dict(tile_entropy_keep=0.7, k=7, budget=0.3, chunk=8)


def small_run_configs():
    from rsgeo_prune.config import RunConfig, TileConfig

    return dict(
        tile_cfg=TileConfig(entropy_keep=SMALL_RUN["tile_entropy_keep"]),
        run_cfg=RunConfig(k=SMALL_RUN["k"], budget=SMALL_RUN["budget"], chunk=SMALL_RUN["chunk"]),
    )


@pytest.fixture(scope="session")
def small_run(world, tmp_path_factory):
    """A finished run of scene ``a`` with the reference set: ``(run_dir, catalog, counts)``.
    Tests must not modify the run directory (copy it first)."""
    from rsgeo_prune.pipeline import run_pipeline

    out = tmp_path_factory.mktemp("small_run") / "run"
    catalog, counts = run_pipeline([world.a.path], out, [world.ref], progress=False, **small_run_configs())
    return out, catalog, counts
