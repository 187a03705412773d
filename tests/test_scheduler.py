"""Tasks give the same answer as the in-memory functions for any chunk size and scheduler spec."""

import numpy as np
import pytest

from rsgeo_prune.errors import InvalidOption
from rsgeo_prune.kmeans import assign
from rsgeo_prune.scheduler import assign_in_tasks, check_scheduler, dask_scheduler


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("spec", ["threads", "synchronous"])
@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_assign_in_tasks_equals_assign_bit_for_bit(spec, chunk, tmp_path):
    rng = np.random.default_rng(2)
    z, c = _unit(rng, 130, 32), _unit(rng, 9, 32)
    want = assign(z, c)
    with dask_scheduler(spec):
        got = assign_in_tasks(z, c, chunk)
        np.save(tmp_path / "z.npy", z)
        from_file = assign_in_tasks(tmp_path / "z.npy", c, chunk)  # memory-mapped rows per task
    for a, b in ((want, got), (want, from_file)):
        assert np.array_equal(a[0], b[0]) and a[1].tobytes() == b[1].tobytes()


def test_empty_input_and_bad_specs():
    with dask_scheduler("synchronous"):
        cluster, sim = assign_in_tasks(np.zeros((0, 4), np.float32), np.eye(4, dtype=np.float32), 8)
    assert cluster.shape == sim.shape == (0,)
    for bad in ("bogus", "http://host:8786"):
        with pytest.raises(InvalidOption, match="tcp://HOST:PORT"):
            check_scheduler(bad)
