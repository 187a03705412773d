"""Shared training state: atomic weights_only checkpoints, RNG round trip, data order, exact resume."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from rsgeo_prune.errors import RSGeoPruneError
from rsgeo_prune.train.checkpoint import load_state, save_state
from rsgeo_prune.train.device import autocast, choose_device, uses_bf16
from rsgeo_prune.train.rng import EpochSampler, epoch_order, rng_state, set_rng_state
from rsgeo_prune.train.runlog import MetricsLog, read_metrics

torch.set_num_threads(1)


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    a = epoch_order(100, seed=1, epoch=3)
    assert sorted(a.tolist()) == list(range(100))
    np.testing.assert_array_equal(a, epoch_order(100, seed=1, epoch=3))
    assert not np.array_equal(a, epoch_order(100, seed=1, epoch=4))
    assert list(EpochSampler(100, 1, 3, start=40)) == a[40:].tolist()


def test_rng_state_round_trip():
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    st = rng_state()
    want = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(5), random.random()
    set_rng_state(st)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2]


def _train(model, opt, data, steps, start=0):
    for s in range(start, steps):
        x = data[s % len(data)] + 0.01 * torch.randn(8, 3)  # the global RNG takes part, as dropout/sampling would
        loss = (model(x) - 1).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_stopped_and_resumed_training_equals_uninterrupted(tmp_path):
    data = torch.randn(4, 8, 3, generator=torch.Generator().manual_seed(1))

    def fresh():
        torch.manual_seed(0)
        m = torch.nn.Linear(3, 2)
        return m, torch.optim.AdamW(m.parameters(), lr=1e-2)

    m1, o1 = fresh()
    _train(m1, o1, data, 10)
    m2, o2 = fresh()
    _train(m2, o2, data, 6)
    save_state(tmp_path / "state.pt", model=m2, optimizer=o2, step=6, epoch=1, position=2, extra={"best": 0.5})
    _train(m2, o2, data, 8, start=6)  # work after the save is lost, as in a kill
    m3, o3 = fresh()
    pos = load_state(tmp_path / "state.pt", model=m3, optimizer=o3)
    assert pos == {"step": 6, "epoch": 1, "position": 2, "extra": {"best": 0.5}}
    _train(m3, o3, data, 10, start=pos["step"])
    for a, b in zip(m1.state_dict().values(), m3.state_dict().values()):
        assert torch.equal(a, b)


def test_state_file_is_atomic_and_loaded_weights_only(tmp_path, monkeypatch):
    m = torch.nn.Linear(2, 2)
    path = save_state(tmp_path / "s.pt", model=m, step=1, epoch=0, position=0)
    assert [p.name for p in tmp_path.iterdir()] == ["s.pt"]
    seen = {}
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: seen.update(k) or real(*a, **k))
    load_state(path, model=torch.nn.Linear(2, 2))
    assert seen["weights_only"] is True
    # a failing save leaves neither a partial file nor a temporary one
    monkeypatch.setattr(
        torch, "save", lambda obj, f: (open(f, "wb").write(b"half"), (_ for _ in ()).throw(OSError("disk full")))
    )
    with pytest.raises(RSGeoPruneError, match="cannot be written"):
        save_state(tmp_path / "t.pt", model=m, step=1, epoch=0, position=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.pt"]


def test_bad_state_files(tmp_path):
    with pytest.raises(RSGeoPruneError, match="no training state"):
        load_state(tmp_path / "none.pt", model=torch.nn.Linear(2, 2))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RSGeoPruneError, match="not a readable training state"):
        load_state(tmp_path / "junk.pt", model=torch.nn.Linear(2, 2))
    save_state(tmp_path / "s.pt", model=torch.nn.Linear(2, 2), step=0, epoch=0, position=0)
    with pytest.raises(RSGeoPruneError, match="do not fit this model"):
        load_state(tmp_path / "s.pt", model=torch.nn.Linear(3, 2))


def test_device_autocast_and_metrics_log(tmp_path):
    assert choose_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert choose_device().type in ("cpu", "mps")
        with pytest.raises(RSGeoPruneError, match="CUDA is not available"):
            choose_device("cuda")
        with autocast(torch.device("cpu")):
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with MetricsLog(tmp_path / "m.jsonl") as log:
        log.log(step=1, loss=torch.tensor(0.5))
    with MetricsLog(tmp_path / "m.jsonl") as log:  # a resumed run appends
        log.log(step=2, loss=np.float32(0.25))
    recs = read_metrics(tmp_path / "m.jsonl")
    assert [(r["step"], r["loss"]) for r in recs] == [(1, 0.5), (2, 0.25)]


def test_precision_picks_the_autocast():
    x = torch.ones(2, 2)
    with autocast("cpu", "bf16"):  # the GPU's mixed-precision path, on the CPU
        assert (x @ x).dtype == torch.bfloat16
    for precision in ("auto", "fp32"):
        with autocast("cpu", precision):
            assert (x @ x).dtype == torch.float32
    assert uses_bf16("cuda") and not uses_bf16("cuda", "fp32") and uses_bf16("cpu", "bf16") and not uses_bf16("cpu")
    with pytest.raises(RSGeoPruneError, match="precision 'fp16'"):
        autocast("cpu", "fp16")


def test_cuda_rng_states_of_more_gpus_than_there_are_restore_the_ones_there_are(monkeypatch):
    """A state saved where 8 GPUs were visible resumes where 2 are: the first 2 are restored, nothing raises."""
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.append((device, int(s[0]))))
    state = {k: v for k, v in rng_state().items() if k != "cuda"}
    state["cuda"] = [torch.full((16,), i, dtype=torch.uint8) for i in range(8)]
    set_rng_state(state)
    assert restored == [(0, 0), (1, 1)]
