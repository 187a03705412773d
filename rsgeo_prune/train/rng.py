"""Randomness a resumed run must repeat: the data order, the global RNG states, and keyed generators.

* :func:`epoch_order` / :class:`EpochSampler`: the order of an epoch is a pure function of ``(seed, epoch)``,
  so a resumed run continues the same sequence from its saved position;
* :func:`rng_state` / :func:`set_rng_state`: torch (CPU, CUDA), numpy and python states as tensors and plain
  containers (what a ``weights_only`` checkpoint holds);
* :func:`seeded_generator`: a generator whose state is a function of a key such as (seed, step, rank), so nothing
  per step or per rank has to be saved.
"""

from __future__ import annotations

import random
from typing import Iterator

import numpy as np
import torch


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of ``range(n)`` used in ``epoch``: a pure function of ``(seed, epoch)``."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(int(n))


class EpochSampler(torch.utils.data.Sampler):
    """Indices of one epoch in :func:`epoch_order`, starting at ``start`` (the resume position).

    Example::

        for epoch in range(first_epoch, epochs):
            sampler = EpochSampler(len(ds), seed, epoch, start=position if epoch == first_epoch else 0)
            loader = DataLoader(ds, batch_size=b, sampler=sampler, drop_last=True)
    """

    def __init__(self, n: int, seed: int, epoch: int, start: int = 0):
        self.order = epoch_order(n, seed, epoch)[int(start) :]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order.tolist())

    def __len__(self) -> int:
        return len(self.order)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The RNG states of torch (CPU and CUDA), numpy and python as tensors and plain containers
    (so :func:`torch.load` with ``weights_only=True`` reads them back)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned (from a checkpoint loaded onto any device: RNG
    states are byte tensors that torch wants on the CPU)."""
    torch.set_rng_state(state["torch"].cpu())
    npy = state["numpy"]
    np.random.set_state(
        (npy["name"], npy["keys"].cpu().numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"])
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        # a run saved by a process that saw 8 GPUs may resume in one that sees fewer (another node, a narrower
        # CUDA_VISIBLE_DEVICES): restore the devices there are; the trainers draw from their own generators
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.cpu(), device=i)


def seeded_generator(device: torch.device | str, *key: int) -> torch.Generator:
    """A generator on ``device`` whose state is a pure function of the integers ``key``."""
    words = np.random.SeedSequence([int(k) for k in key]).generate_state(2, dtype=np.uint32)
    g = torch.Generator(device=torch.device(device))
    g.manual_seed((int(words[0]) << 31) ^ int(words[1]))  # < 2**63: fits every backend's seed type
    return g


__all__ = ["EpochSampler", "epoch_order", "rng_state", "seed_everything", "seeded_generator", "set_rng_state"]
