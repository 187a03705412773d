"""Training state shared by every trainer of the wing (VAE now, DiT later).

* **device and precision** — :func:`choose_device` (CUDA, then MPS, then CPU; ``--device`` overrides)
  and :func:`autocast` (bf16 on CUDA, fp32 elsewhere: fp16 autocast gives NaNs in diffusion training
  and CPU bf16 is slower than fp32 on most CPUs);
* **data order** — :func:`epoch_order` / :class:`EpochSampler`: the order of an epoch is a pure function
  of ``(seed, epoch)``, so a resumed run continues the same sequence from its saved position;
* **checkpoints** — :func:`save_state` / :func:`load_state`: model, optimiser, RNG states (torch, numpy,
  python, CUDA), step, epoch and data position in one file, written atomically and read back with
  ``torch.load(weights_only=True)`` (nothing but tensors and plain containers is unpickled);
* **weight files** — :func:`write_safetensors`: a safetensors file whose bytes are a function of its tensors
  and metadata (written atomically);
* **logging** — :class:`MetricsLog`, one JSON object per line, flushed per record, and with
  ``log="tensorboard"`` the same scalars (and pictures) as TensorBoard event files.

On CPU with a fixed thread count, a run stopped at step k and resumed ends with the same weights,
bit for bit, as an uninterrupted one (tested in ``tests/train/test_state.py`` and ``test_vae.py``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import random
import struct
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..atomic import atomic_output
from ..errors import InvalidOption, RSGeoPruneError

#: Format tag of the state files; bumped when the layout changes.
STATE_FORMAT = "rsgeo-train-state/1"


# -- device and precision -------------------------------------------------------------------------
def choose_device(name: str | None = None) -> torch.device:
    """The device to train on: ``name`` when given (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``),
    else CUDA when present, else MPS, else CPU."""
    if name:
        try:
            device = torch.device(name)
        except RuntimeError as exc:
            raise RSGeoPruneError(f"device {name!r}: not a torch device name; use cpu, cuda, cuda:N or mps") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RSGeoPruneError(f"device {name!r}: CUDA is not available here; use --device cpu")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise RSGeoPruneError(f"device {name!r}: MPS is not available here; use --device cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


#: ``--precision`` choices: ``auto`` is bf16 autocast on CUDA and fp32 elsewhere (CPU bf16 is slower than
#: fp32 on most CPUs); ``bf16`` forces autocast (on CPU too: how the tests run the GPU's mixed-precision
#: path); ``fp32`` turns it off (debugging a GPU run). Weights, optimiser and EMA stay fp32 in every case.
PRECISIONS = ("auto", "bf16", "fp32")


def autocast(device: torch.device | str, precision: str = "auto") -> contextlib.AbstractContextManager:
    """bf16 autocast where :func:`uses_bf16` says so; a no-op (fp32) otherwise."""
    if uses_bf16(device, precision):
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def uses_bf16(device: torch.device | str, precision: str = "auto") -> bool:
    """bf16 on CUDA (``auto``) or wherever ``precision`` is ``bf16``."""
    if precision not in PRECISIONS:
        raise RSGeoPruneError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    return precision == "bf16" or (precision == "auto" and torch.device(device).type == "cuda")


# -- data order -----------------------------------------------------------------------------------
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
        self.order = epoch_order(n, seed, epoch)[int(start):]

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
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
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
    np.random.set_state((npy["name"], npy["keys"].cpu().numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        # a run saved by a process that saw 8 GPUs may resume in one that sees fewer (another node, a narrower
        # CUDA_VISIBLE_DEVICES): restore the devices there are; the trainers draw from their own generators
        for i, s in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.cpu(), device=i)


# -- checkpoints ----------------------------------------------------------------------------------
def save_state(path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
               step: int, epoch: int, position: int, extra: dict | None = None) -> Path:
    """Write the full training state to ``path`` atomically (a temporary file renamed on success).

    Args:
        step: optimiser steps done.
        epoch, position: where the data order stands: the next batch starts at sample ``position``
            of epoch ``epoch``'s :func:`epoch_order`.
        extra: plain values (numbers, strings, lists, dicts, tensors) the trainer wants back,
            e.g. the best validation loss so far or an EMA's weights.
    """
    state = {
        "format": STATE_FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "rng": rng_state(),
        "step": int(step), "epoch": int(epoch), "position": int(position),
        "extra": extra or {},
    }
    path = Path(path)
    with atomic_output(path) as tmp:
        torch.save(state, tmp)
    return path


def read_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """The raw :func:`save_state` dictionary at ``path`` (``weights_only``, memory-mapped: reading its
    ``step`` and ``extra`` costs nothing), or one clear error for a missing, truncated or foreign file."""
    path = Path(path)
    try:
        # mmap: ranks resuming together do not each read the whole file (an XL/2 state is ~11 GB) into RAM
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except FileNotFoundError as exc:
        raise RSGeoPruneError(f"{path}: no training state to resume from; drop --resume or give the run's --out") from exc
    except Exception as exc:  # a truncated or foreign file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RSGeoPruneError(f"{path}: not a readable training state ({first}); delete it or start a new --out") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise RSGeoPruneError(f"{path}: not an rsgeo-prune training state; start a new --out")
    return state


def config_from_saved(cls, saved: dict):
    """The config dataclass ``cls`` of settings read back from a checkpoint or an export. The rule for files of
    other versions: settings this version does not know (an older version's, since removed) are ignored, and
    settings the file lacks take this version's defaults."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in saved.items() if k in known})


def check_resume_steps(path: Path, saved_step: int, steps: int) -> None:
    """A resumed run continues forward: ``steps`` (the run's total) below the saved step is refused."""
    if steps < saved_step:
        raise InvalidOption("steps", steps, f"the run in {path.parent} is at step {saved_step} already; give "
                                            f"--steps {saved_step} or more to continue it")


def load_state(path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
               map_location: str | torch.device = "cpu", restore_rng: bool = True) -> dict:
    """Load a :func:`save_state` file (``weights_only=True``) into ``model`` and ``optimizer`` and
    restore the RNG states; returns ``{"step", "epoch", "position", "extra"}``."""
    path = Path(path)
    state = read_state(path, map_location)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise RSGeoPruneError(f"{path}: its weights do not fit this model (another preset?); "
                              "resume with the run's own settings") from exc
    if optimizer is not None and state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    if restore_rng:
        set_rng_state(state["rng"])
    return {k: state[k] for k in ("step", "epoch", "position", "extra")}


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

    def check(self, hint, *, all_ranks: bool = False) -> None:
        """Raise :class:`LossNotFinite` (``loss became NaN at step N; <hint()>``) if a loss was not finite;
        with ``all_ranks`` (a collective call: every process of a DDP run makes it at the same step) if one
        was on any rank, so that all of them stop together."""
        step = self.step
        if all_ranks:
            import torch.distributed as dist

            none = torch.iinfo(torch.long).max
            step = torch.where(step < 0, torch.full_like(step, none), step)
            dist.all_reduce(step, op=dist.ReduceOp.MIN)
            step = torch.where(step == none, torch.full_like(step, -1), step)
        step = int(step.item())
        if step >= 0:
            what = "infinite" if math.isinf(float(self.value.item())) else "NaN"
            raise LossNotFinite(f"loss became {what} at step {step}; {hint()}")


def saved_hint(path: Path) -> str:
    """How to go on after a run stopped on a non-finite loss: from the last state saved at ``path``, if any."""
    if path.exists():
        step = read_state(path)["step"]
        return (f"the state of step {step} in {path.parent} is kept: continue it with --resume and a lower --lr "
                "(or stronger clipping)")
    return "nothing was saved; rerun with a lower --lr"


def progress_bar(total: int, initial: int = 0, enabled: bool = True, unit: str = "step"):
    """A tqdm bar over optimiser steps (shown on a terminal only, so captured logs stay clean)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit=unit, dynamic_ncols=True, disable=None if enabled else True)


# -- weight files ---------------------------------------------------------------------------------
#: safetensors' names of the tensor dtypes written by :func:`write_safetensors`.
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
                      torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8"}


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> Path:
    """A safetensors file of ``tensors`` (names in sorted order) with string ``metadata``, written to a temporary
    name and renamed. Written here rather than by ``safetensors.save_file``, whose header order varies from call
    to call: the same tensors and metadata give the same bytes. Any safetensors reader opens it."""
    header, blobs, offset = {}, [], 0
    for name, t in sorted(tensors.items()):
        t = t.detach().to("cpu").contiguous()
        if t.dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"{name}: dtype {t.dtype} is not written to safetensors here")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        blobs.append(t.reshape(-1).view(torch.uint8).numpy() if size else b"")  # the tensor's bytes, not a copy
        offset += size
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    path = Path(path)
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)) + text)
        for data in blobs:
            fh.write(data)
    return path


# -- logging --------------------------------------------------------------------------------------
#: ``--log`` choices: ``jsonl`` (``metrics.jsonl`` only) or ``tensorboard`` (the same records also as TensorBoard
#: event files in ``tensorboard/`` beside it, with the run's pictures).
LOGS = ("jsonl", "tensorboard")
TENSORBOARD_DIR = "tensorboard"


def check_log(log: str) -> None:
    """``log`` is one of :data:`LOGS`, and TensorBoard's writer is installed when it is asked for."""
    if log not in LOGS:
        raise InvalidOption("log", log, f"choose one of {', '.join(LOGS)}")
    if log == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise InvalidOption("log", log, "needs the tensorboard package (pip install 'rsgeo_prune[train]'); "
                                        "or log to jsonl")


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
        record = {"time": round(time.time(), 3), **{k: _plain(v) for k, v in record.items()}}
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


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a :class:`MetricsLog` file."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _plain(v):
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


__all__ = ["EpochSampler", "FiniteWatch", "LOGS", "LossNotFinite", "MetricsLog", "PRECISIONS", "SAFETENSORS_DTYPES",
           "STATE_FORMAT", "TENSORBOARD_DIR", "autocast", "check_log", "choose_device", "epoch_order", "write_safetensors",
           "check_resume_steps", "config_from_saved", "load_state", "progress_bar", "read_metrics", "read_state", "saved_hint", "rng_state", "save_state", "seed_everything", "set_rng_state", "uses_bf16"]
