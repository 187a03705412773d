"""The loop every trainer of the wing runs; a trainer brings its step and its evaluation (a :class:`Task`).

What the loop does for each of them, in this order after every optimiser step::

    batch, epoch, position = next(task.batches(...))      the data order (epoch, position) the state records
    loss, items = task.step(batch, step)                  the trainer's own step
    loss finite?            checked on log, evaluation and save steps only (the check waits for the device)
    log step                mean loss of the window (over all ranks) and throughput → metrics.jsonl, progress bar
    evaluation step         task.evaluate(step) → metrics.jsonl (also on the last step)
    save step               out/state.pt (model, optimiser, RNG, step, epoch, position, task.state_extra())
    last step               task.finish(step) (e.g. the DiT's export)
    keep step               out/checkpoints/step-NNNNNNN.pt

The last step is ``steps``, or the one at which the minutes budget ran out: one process decides it after each
step; in a multi-process run rank 0 decides it on log steps and the log's one all-reduce tells every rank, so all
of them leave at the same step. Only rank 0 writes (log, states, finish); a resumed run appends to its log.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import torch

from ..atomic import check_writable, output_folder
from ..errors import RSGeoPruneError
from .checkpoint import read_state, save_state
from .distributed import Dist, all_reduce_min, all_reduce_sum, barrier
from .runlog import MetricsLog, open_log, progress_bar

STATE_FILE = "state.pt"
KEEP_DIR = "checkpoints"


def claim_out(out: Path, resume: bool) -> Path:
    """The state file of a run in ``out``, after refusing an unwritable place and a used folder without ``resume``
    (nothing is created here)."""
    state_path = Path(out) / STATE_FILE
    check_writable(state_path, create=False)
    if not resume and state_path.exists():
        raise RSGeoPruneError(
            f"{out}: holds a training run already; pass --resume to continue it or choose a new --out"
        )
    return state_path


def run_folder(out: Path, writer: bool = True) -> contextlib.AbstractContextManager:
    """The run's folder while it trains: one that a failed new run made before its first saved state is removed
    again (:func:`~rsgeo_prune.atomic.output_folder`); processes that do not write leave it alone."""
    if not writer:
        return contextlib.nullcontext(out)
    return output_folder(out, keep=(Path(out) / STATE_FILE).exists)


class LossNotFinite(RSGeoPruneError):
    """Training stopped: the loss became NaN or infinite (nothing after the last finite step was saved)."""


class FiniteWatch:
    """The first step whose loss was not finite, kept on the loss's device: :meth:`update` queues two small
    kernels and never waits for the device; :meth:`check` (at log, validation and save steps) reads it."""

    def __init__(self, device: torch.device | str):
        self.step = torch.full((), -1, dtype=torch.long, device=device)
        self.value = torch.zeros((), dtype=torch.float32, device=device)

    def update(self, loss: torch.Tensor, step: int) -> None:
        """Record ``loss`` of optimiser step ``step`` (1-based: the step it was computed for)."""
        loss = loss.detach().float()
        first = (self.step < 0) & ~torch.isfinite(loss)
        self.step.masked_fill_(first, step)
        self.value = torch.where(first, loss, self.value)

    def check(self, hint, d: Dist = Dist()) -> None:
        """Raise :class:`LossNotFinite` (``loss became NaN at step N; <hint()>``) if a loss was not finite on any
        rank of ``d`` (a collective call in a multi-process run: every rank makes it at the same step, so that all
        of them stop together)."""
        none = torch.iinfo(torch.long).max
        step = torch.where(self.step < 0, torch.full_like(self.step, none), self.step)
        all_reduce_min(step, d)
        step = torch.where(step == none, torch.full_like(step, -1), step)
        step = int(step.item())
        if step >= 0:
            what = "infinite" if math.isinf(float(self.value.item())) else "NaN"
            raise LossNotFinite(f"loss became {what} at step {step}; {hint()}")


def saved_hint(path: Path) -> str:
    """How to go on after a run stopped on a non-finite loss: from the last state saved at ``path``, if any."""
    if path.exists():
        step = read_state(path)["step"]
        return (
            f"the state of step {step} in {path.parent} is kept: continue it with --resume and a lower --lr "
            "(or stronger clipping)"
        )
    return "nothing was saved; rerun with a lower --lr"


@dataclass(frozen=True)
class Cadence:
    """How long a run goes and how often it logs, evaluates, saves ``state.pt`` and keeps a copy (0: never)."""

    steps: int
    log_every: int
    save_every: int
    eval_every: int = 0
    keep_every: int = 0


class Budget:
    """The wall-clock budget of a run: ``minutes`` of this process (``None``: none). ``elapsed()`` adds the time
    of the processes a resumed run continues (``elapsed_before``), for schedules over the whole run."""

    def __init__(self, minutes: float | None, elapsed_before: float = 0.0):
        self.minutes, self.elapsed_before = minutes, float(elapsed_before)
        self.t_start = time.perf_counter()

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t_start

    def spent(self) -> bool:
        return self.minutes is not None and time.perf_counter() - self.t_start > self.minutes * 60


class Window:
    """The steps since the last log: the loss summed on the device (no wait per step), items and time."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device)
        self.steps, self.items, self.t0 = 0, 0, time.perf_counter()

    def add(self, loss: torch.Tensor, items: int) -> None:
        self.loss_sum += loss.detach().float()
        self.steps += 1
        self.items += items

    def close(self, d: Dist, stop: bool) -> tuple[float, bool, float, float]:
        """Mean loss over the window and the ranks, whether any rank asked to ``stop``, items per second and
        seconds per step; then a new window. One all-reduce of [loss sum, stop flag] in a multi-process run."""
        packed = torch.stack([self.loss_sum, torch.tensor(float(stop), device=self.loss_sum.device)])
        all_reduce_sum(packed, d)
        loss = packed[0].item() / (self.steps * d.world)  # .item() waits for the device: the window's time is done
        now = time.perf_counter()
        rate, step_time = self.items / max(now - self.t0, 1e-9), (now - self.t0) / self.steps
        stopped = packed[1].item() > 0
        self.loss_sum.zero_()
        self.steps, self.items, self.t0 = 0, 0, now
        return loss, stopped, rate, step_time


class Task(Protocol):
    """What a trainer brings to :func:`run_loop`."""

    model: torch.nn.Module  # the bare model whose weights the state holds
    optimizer: torch.optim.Optimizer
    device: torch.device
    rate_name: str  # the progress bar's name of items per second, e.g. "img_s"

    def batches(self, epoch: int, position: int) -> Iterator[tuple[object, int, int]]:
        """Batches from ``(epoch, position)`` on, each with the ``(epoch, position)`` after it."""

    def step(self, batch, step: int) -> tuple[torch.Tensor, int]:
        """One optimiser step after ``step`` done: the loss (a device tensor) and the items it trained on."""

    def log_record(self, step: int, epoch: int, loss: float, rate: float, step_time: float) -> dict:
        """The log record of a log step (``loss``: the window's mean over all ranks)."""

    def evaluate(self, step: int) -> dict | None:
        """The evaluation record of an evaluation step (None: nothing to log)."""

    def state_extra(self) -> dict:
        """What the trainer keeps in ``state.pt`` beside model, optimiser, RNG and data position."""

    def finish(self, step: int) -> None:
        """After the last step's state is saved (rank 0)."""


def run_loop(
    task: Task,
    cadence: Cadence,
    *,
    out: Path,
    start: tuple[int, int, int],
    d: Dist,
    budget: Budget,
    log: MetricsLog | None,
    progress: bool = True,
) -> tuple[int, float | None, dict]:
    """Train from ``start = (step, epoch, position)`` to the last step; returns the step reached, the last logged
    mean loss and the last log and evaluation records. Closes ``log``."""
    step, epoch, position = start
    state_path = Path(out) / STATE_FILE
    watch, window = FiniteWatch(task.device), Window(task.device)
    bar = progress_bar(cadence.steps, step, progress and d.is_main)
    last_loss, last = None, {}

    def checkpoint(path: Path) -> None:
        save_state(
            path,
            model=task.model,
            optimizer=task.optimizer,
            step=step,
            epoch=epoch,
            position=position,
            extra=task.state_extra(),
        )

    try:
        batches = task.batches(epoch, position)
        while step < cadence.steps:
            batch, epoch, position = next(batches)
            loss, items = task.step(batch, step)
            step += 1
            watch.update(loss, step)
            window.add(loss, items)
            bar.update(1)
            # one process stops on its own clock; ranks stop together at a log step (below)
            final = step >= cadence.steps or (not d.active and budget.spent())
            log_now = step % cadence.log_every == 0 or final
            eval_now = bool(cadence.eval_every) and step % cadence.eval_every == 0
            save_now = step % cadence.save_every == 0
            keep_now = bool(cadence.keep_every) and step % cadence.keep_every == 0
            if log_now or eval_now or save_now or keep_now:
                # a diverged run logs, evaluates and saves nothing; the same steps on every rank (a collective check)
                watch.check(lambda: saved_hint(state_path), d)
            if log_now:
                last_loss, stop, rate, step_time = window.close(d, d.is_main and budget.spent())
                final = final or stop
                record = task.log_record(step, epoch, last_loss, rate, step_time)
                last.update(record)
                if log is not None:
                    log.log(**record)
                    bar.set_postfix({"loss": f"{record['loss']:.4f}", task.rate_name: f"{rate:.1f}"})
            if eval_now or final:
                record = task.evaluate(step)
                if record:
                    if log is not None:
                        log.log(step=step, **record)
                    last.update(record)
            if d.is_main and (save_now or final):
                checkpoint(state_path)
            if d.is_main and final:
                task.finish(step)
            if d.is_main and keep_now:
                checkpoint(Path(out) / KEEP_DIR / f"step-{step:07d}.pt")
            if final:
                break
        barrier(d)  # rank 0's last writes are done before anyone reports the run finished
    finally:
        bar.close()
        if log is not None:
            log.close()
    return step, last_loss, last


__all__ = [
    "Budget",
    "Cadence",
    "FiniteWatch",
    "KEEP_DIR",
    "LossNotFinite",
    "STATE_FILE",
    "Task",
    "Window",
    "claim_out",
    "open_log",
    "run_folder",
    "run_loop",
    "saved_hint",
]
