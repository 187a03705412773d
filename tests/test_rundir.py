"""The run directory: identical catalogs (reruns, schedulers), resume after SIGKILL, incremental
embedding, and bad run directories."""

import hashlib
import json
import subprocess
import sys

import pytest

from rsgeo_prune import RSGeoPruneError
from rsgeo_prune.catalog import catalog_metadata, read_embeddings
from rsgeo_prune.pipeline import RunConfig, TileConfig, run_pipeline
from tests.conftest import small_run_configs


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


CFG = small_run_configs()


def test_catalog_metadata_and_embeddings(world):
    root, a, _, ref = world
    cat, counts = run_pipeline([a.path], root / "meta", [ref], progress=False, **CFG)
    meta = catalog_metadata(root / "meta" / "catalog.parquet")
    assert meta["version"] and meta["config"]["run"]["k"] == 7 and len(meta["centroid_bank_digest"]) == 64
    import pyarrow.parquet as pq

    table = pq.read_table(root / "meta" / "catalog.parquet")  # plain pyarrow reads it
    geo = json.loads(table.schema.metadata[b"geo"])
    # GeoParquet 1.1 rules: version, primary column, WKB encoding, geometry types, bbox covering
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    col = geo["columns"]["geometry"]
    assert col["encoding"] == "WKB" and col["geometry_types"] == ["Polygon"]
    assert col["covering"]["bbox"] == {
        "xmin": ["bbox", "xmin"],
        "ymin": ["bbox", "ymin"],
        "xmax": ["bbox", "xmax"],
        "ymax": ["bbox", "ymax"],
    }
    assert (
        table.schema.field("bbox").type.num_fields == 4
        and table.schema.field("geometry").type == __import__("pyarrow").binary()
    )
    assert len(col["bbox"]) == 4 and table.num_rows == len(cat)
    assert pq.read_metadata(root / "meta" / "catalog.parquet").row_group(0).column(0).compression == "ZSTD"
    # rows in spatial (Hilbert) order, reproducible from the columns alone
    from rsgeo_prune.catalog import spatial_order

    assert spatial_order(cat)["tile_id"].tolist() == cat["tile_id"].tolist()
    ids, z = read_embeddings(root / "meta" / "embeddings.parquet")
    assert len(ids) == counts["after entropy"] and z.shape[1] > 0
    manifest = json.loads((root / "meta" / "run.json").read_text())
    assert (
        set(manifest["stages"]) == {"tiles", "centroids", "embed", "select", "stac"} and manifest["packages"]["numpy"]
    )


def test_rerun_skips_finished_stages_and_is_identical(world, small_run, tmp_path, caplog):
    _, a, _, ref = world
    # run folders placed as small_run's is (hrefs are relative to the run folder: equal bytes need
    # an equal relative position of the inputs)
    root = tmp_path
    first = sha(small_run[0] / "catalog.parquet")
    run_pipeline([a.path], root / "r1", [ref], progress=False, **CFG)
    assert sha(root / "r1" / "catalog.parquet") == first
    caplog.set_level("INFO")
    _, counts = run_pipeline([a.path], root / "r1", [ref], progress=False, **CFG)
    assert counts["embedded"] == 0 and "unchanged" in caplog.text
    assert sha(root / "r1" / "catalog.parquet") == first
    run_pipeline([a.path], root / "r2", [ref], progress=False, **CFG)
    assert sha(root / "r2" / "catalog.parquet") == first


def test_sigkill_during_embedding_then_resume(world, caplog):
    root, a, _, ref = world
    reference = run_pipeline([a.path], root / "ref_run", [ref], progress=False, **CFG)[1]
    # the fault is injected here, not in the library: the subprocess wraps the part writer so that
    # the process kills itself with SIGKILL right after the second finished part
    code = (
        "import os\nimport rsgeo_prune.embed_cache as ec\n"
        "from rsgeo_prune.pipeline import RunConfig, TileConfig, run_pipeline\n"
        "real, done = ec.write_part, []\n"
        "def write_then_die(path, *args, **kwargs):\n"
        "    real(path, *args, **kwargs)\n"
        "    done.append(path)\n"
        "    if len(done) == 2:\n"
        "        os.kill(os.getpid(), 9)\n"
        "ec.write_part = write_then_die\n"
        f"run_pipeline([{str(a.path)!r}], {str(root / 'killed')!r}, [{str(ref)!r}], TileConfig(entropy_keep=0.7), "
        "RunConfig(k=7, budget=0.3, chunk=8), scheduler='synchronous', progress=False)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == -9  # killed with SIGKILL in the middle of embedding
    parts = list((root / "killed" / "embed.parts").glob("part-*.parquet"))
    assert len(parts) == 2 and not (root / "killed" / "catalog.parquet").exists()
    import logging

    with caplog.at_level(logging.INFO):
        _, counts = run_pipeline([a.path], root / "killed", [ref], progress=False, **CFG)
    assert "tiles: unchanged" in caplog.text  # the finished stages are not redone
    assert counts["embedded"] == reference["after entropy"] - 16  # the two finished parts of 8 are kept
    assert sha(root / "killed" / "catalog.parquet") == sha(root / "ref_run" / "catalog.parquet")


def test_adding_a_scene_embeds_only_its_tiles(world):
    root, a, b, ref = world
    _, one = run_pipeline([a.path], root / "grow", [ref], progress=False, **CFG)
    _, two = run_pipeline([a.path, b.path], root / "grow", [ref], progress=False, **CFG)
    only_b = run_pipeline([b.path], root / "b_only", [ref], progress=False, **CFG)[1]
    assert two["embedded"] == only_b["after entropy"] < two["after entropy"]


def test_local_cluster_gives_the_same_bytes(world):
    import distributed

    root, a, _, ref = world
    run_pipeline([a.path], root / "threads", [ref], progress=False, **CFG)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        run_pipeline([a.path], root / "cluster", [ref], scheduler=cluster.scheduler_address, progress=False, **CFG)
    assert sha(root / "cluster" / "catalog.parquet") == sha(root / "threads" / "catalog.parquet")


def test_processes_scheduler_gives_the_same_bytes(world):
    root, a, _, ref = world
    run_pipeline([a.path], root / "t2", [ref], progress=False, **CFG)
    run_pipeline([a.path], root / "p2", [ref], scheduler="processes", progress=False, **CFG)
    assert sha(root / "p2" / "catalog.parquet") == sha(root / "t2" / "catalog.parquet")


def test_bad_run_directories(world, tmp_path):
    root, a, _, ref = world
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RSGeoPruneError, match="cannot be created .*; choose another"):
        run_pipeline([a.path], blocker / "run", [ref], progress=False, **CFG)
    # a run directory made with another config is recomputed, not reused
    run_pipeline([a.path], tmp_path / "run", [ref], progress=False, **CFG)
    cat, counts = run_pipeline(
        [a.path],
        tmp_path / "run",
        [ref],
        tile_cfg=TileConfig(entropy_keep=0.5),
        run_cfg=RunConfig(k=7, budget=0.3, chunk=8),
        progress=False,
    )
    assert counts["after entropy"] < CFG["tile_cfg"].entropy_keep * counts["after nodata/mask"]
    # a damaged artifact is recomputed
    good = sha(tmp_path / "run" / "catalog.parquet")
    (tmp_path / "run" / "catalog.parquet").write_bytes(b"garbage")
    (tmp_path / "run" / "embeddings.parquet").write_bytes(b"garbage")
    run_pipeline(
        [a.path],
        tmp_path / "run",
        [ref],
        tile_cfg=TileConfig(entropy_keep=0.5),
        run_cfg=RunConfig(k=7, budget=0.3, chunk=8),
        progress=False,
    )
    assert sha(tmp_path / "run" / "catalog.parquet") == good
    (tmp_path / "run" / "run.json").write_text("{not json")
    run_pipeline(
        [a.path],
        tmp_path / "run",
        [ref],
        tile_cfg=TileConfig(entropy_keep=0.5),
        run_cfg=RunConfig(k=7, budget=0.3, chunk=8),
        progress=False,
    )
    assert sha(tmp_path / "run" / "catalog.parquet") == good


def test_stac_catalog_and_stac_geoparquet(world, tmp_path):
    import pyarrow.parquet as pq
    import pystac
    import stac_geoparquet.arrow as sga

    root, a, _, ref = world
    out = tmp_path / "stacrun"
    cat, counts = run_pipeline(
        [a.path],
        out,
        [ref],
        tile_cfg=CFG["tile_cfg"],
        run_cfg=RunConfig(k=7, budget=0.3, chunk=8, export_tiles=True),
        progress=False,
    )
    stac_cat = pystac.Catalog.from_file(str(out / "stac" / "catalog.json"))
    items = list(stac_cat.get_items(recursive=True))
    assert len(items) == counts["selected"]
    kept = cat[cat["kept"]].set_index("tile_id")
    for item in items[:5]:
        row = kept.loc[item.properties["rsgeo:tile_id"]]
        assert item.properties["proj:code"] == "EPSG:26914" and item.properties["proj:shape"] == [256, 256]
        assert item.properties["proj:transform"] == list(row["transform"])
        assert item.properties["rsgeo:cluster"] == row["cluster"] and item.properties["rsgeo:entropy"] == row["entropy"]
        assert [b["eo:common_name"] for b in item.assets["data"].extra_fields["bands"]] == [
            "red",
            "green",
            "blue",
            "nir",
        ]
        assert not item.assets["data"].href.startswith("/")  # relative href
        cog = item.assets["data"].get_absolute_href()
        import rasterio

        with rasterio.open(cog) as src:
            assert src.shape == (256, 256) and tuple(src.transform)[:6] == tuple(row["transform"])
        assert item.bbox == list(row.geometry.bounds)
    back = list(sga.stac_table_to_items(pq.read_table(out / "items.parquet")))
    assert sorted(b["id"] for b in back) == sorted(i.id for i in items)


def test_globs_and_stac_items_are_inputs_too(world, tmp_path):
    root, a, b, ref = world
    _, counts = run_pipeline([str(root / "[ab].tif")], tmp_path / "glob", [ref], progress=False, **CFG)
    _, both = run_pipeline([a.path, b.path], tmp_path / "list", [ref], progress=False, **CFG)
    assert counts == both


def test_another_tile_size_never_reuses_old_embeddings(world, small_run, tmp_path):
    """Tile ids do not say the window size: a rerun with 128-px tiles must embed every tile anew and
    give the same catalog as a fresh 128-px run (85 of 352 tiles reused old vectors before)."""
    import shutil

    root, a, _, ref = world
    run_dir = tmp_path / "run"
    shutil.copytree(small_run[0], run_dir)
    cfg = dict(tile_cfg=TileConfig(tile_size=128, entropy_keep=0.7), run_cfg=CFG["run_cfg"])
    _, counts = run_pipeline([a.path], run_dir, [ref], progress=False, **cfg)
    assert counts["embedded"] == counts["after entropy"]
    run_pipeline([a.path], tmp_path / "fresh", [ref], progress=False, **cfg)
    assert sha(run_dir / "catalog.parquet") == sha(tmp_path / "fresh" / "catalog.parquet")


def test_zero_embeddings_are_never_reused(world, small_run, tmp_path):
    """An embeddings file of all-zero vectors (what `--chunk -5` once wrote) is recomputed, not trusted."""
    import shutil

    import numpy as np
    import pyarrow.parquet as pq

    from rsgeo_prune.embed_cache import EMBEDDER_KEY, write_part

    root, a, _, ref = world
    run_dir = tmp_path / "run"
    shutil.copytree(small_run[0], run_dir)
    emb = run_dir / "embeddings.parquet"
    ids, z = read_embeddings(emb)
    keys = pq.read_table(emb, columns=["source"]).column("source").to_pylist()
    embedder_id = pq.read_schema(emb).metadata[EMBEDDER_KEY].decode()
    write_part(emb, ids, keys, np.zeros_like(z), embedder_id)
    (run_dir / "catalog.parquet").unlink()
    _, counts = run_pipeline([a.path], run_dir, [ref], progress=False, **CFG)
    assert counts["embedded"] == len(ids)
    assert sha(run_dir / "catalog.parquet") == sha(small_run[0] / "catalog.parquet")
