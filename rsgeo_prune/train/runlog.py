"""The run's record: ``metrics.jsonl`` (one JSON object per line, flushed per record), with ``log="tensorboard"``
the same scalars (and pictures) as TensorBoard event files, and the progress bar."""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidOption
from .convert import json_safe

#: ``--log`` choices: ``jsonl`` (``metrics.jsonl`` only) or ``tensorboard`` (the same records also as TensorBoard
#: event files in ``tensorboard/`` beside it, with the run's pictures).
LOGS = ("jsonl", "tensorboard")
TENSORBOARD_DIR = "tensorboard"


def check_log(log: str) -> None:
    """``log`` is one of :data:`LOGS`, and TensorBoard's writer is installed when it is asked for."""
    if log not in LOGS:
        raise InvalidOption("log", log, f"choose one of {', '.join(LOGS)}")
    if log == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise InvalidOption(
            "log", log, "needs the tensorboard package (pip install 'rsgeo_prune[train]'); or log to jsonl"
        )


def _scalar_tag(name: str) -> str:
    """TensorBoard tag of a record field: validation and sample-quality numbers in their own sections."""
    if name.startswith(("val", "fd", "kid")):
        return f"eval/{name}"
    return f"train/{name}"


class MetricsLog:
    """Append-only JSONL metrics log: ``log(step=..., loss=...)`` writes one line, flushed at once,
    with the wall-clock time; a resumed run appends to the same file.

    With ``tensorboard=True`` every numeric field of a record with a ``step`` is also a TensorBoard scalar
    (``train/loss``, ``eval/fd``, …) in ``tensorboard/`` beside the JSONL file, a record with an ``event`` (the
    run's header) is text, and :meth:`image` adds pictures. ``resume_step``: the step of the state a
    resumed run continues from; TensorBoard drops what an earlier process logged after it (steps trained again).
    """

    def __init__(self, path: str | Path, *, tensorboard: bool = False, resume_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # points after the saved step were logged by a process whose later steps are trained again
            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(self.path.parent / TENSORBOARD_DIR), purge_step=purge)

    @property
    def tensorboard_dir(self) -> Path | None:
        return self.path.parent / TENSORBOARD_DIR if self._tb is not None else None

    def log(self, **record: Any) -> None:
        record = {"time": round(time.time(), 3), **{k: json_safe(v) for k, v in record.items()}}
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        if self._tb is not None:
            step = record.get("step")
            if "event" in record or step is None:
                self._tb.add_text("run", json.dumps(record, indent=1).replace("\n", "  \n"), step or 0)
            else:
                for k, v in record.items():
                    if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
                        self._tb.add_scalar(_scalar_tag(k), v, step, walltime=record["time"])
            self._tb.flush()

    def image(self, tag: str, picture: np.ndarray, step: int) -> None:
        """An ``(H, W, 3)`` uint8 picture (a sample or reconstruction grid) as TensorBoard image ``tag``; a no-op
        without TensorBoard."""
        if self._tb is not None:
            self._tb.add_image(tag, picture, step, dataformats="HWC")
            self._tb.flush()

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


#: The run's log file in its folder.
METRICS_FILE = "metrics.jsonl"


def open_log(out: str | Path, log: str, resume_step: int | None) -> MetricsLog:
    """The ``metrics.jsonl`` of the run in ``out`` (and, with ``log="tensorboard"``, its event files)."""
    return MetricsLog(Path(out) / METRICS_FILE, tensorboard=log == "tensorboard", resume_step=resume_step)


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a :class:`MetricsLog` file."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def progress_bar(total: int, initial: int = 0, enabled: bool = True, unit: str = "step"):
    """A tqdm bar over optimiser steps (shown on a terminal only, so captured logs stay clean)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit=unit, dynamic_ncols=True, disable=None if enabled else True)


__all__ = [
    "LOGS",
    "METRICS_FILE",
    "MetricsLog",
    "TENSORBOARD_DIR",
    "check_log",
    "open_log",
    "progress_bar",
    "read_metrics",
]
