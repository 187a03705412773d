"""Training states and weight files, written and read in one place.

* :func:`save_state` / :func:`load_state` / :func:`read_state`: model, optimiser, RNG states (torch, numpy,
  python, CUDA), step, epoch and data position in one file, written atomically and read back with
  ``torch.load(weights_only=True, mmap=True)`` (nothing but tensors and plain containers is unpickled);
* :func:`read_checkpoint`: a DiT training state (``extra["kind"]`` checked), what ``sample`` and the trainer read;
* :func:`config_from_saved`: a config dataclass from the settings a file stored (the rule for other versions);
* :func:`write_safetensors`: a safetensors file whose bytes are a function of its tensors and metadata.

On CPU with a fixed thread count, a run stopped at step k and resumed ends with the same weights,
bit for bit, as an uninterrupted one (tested in ``tests/train/test_state.py``, ``test_vae.py`` and
``test_trainer.py``).
"""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import torch

from ..atomic import atomic_output
from ..errors import InvalidOption, RSGeoPruneError
from .rng import rng_state, set_rng_state

#: Format tag of the state files; bumped when the layout changes.
STATE_FORMAT = "rsgeo-train-state/1"

#: ``extra["kind"]`` of a DiT training state (a VAE state has none).
DIT_STATE_KIND = "rsgeo-dit/1"


def save_state(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    step: int,
    epoch: int,
    position: int,
    extra: dict | None = None,
) -> Path:
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
        "step": int(step),
        "epoch": int(epoch),
        "position": int(position),
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
    if not path.exists():
        raise RSGeoPruneError(f"{path}: no training state to resume from; drop --resume or give the run's --out")
    return _load(
        path,
        map_location,
        "not a readable training state ({}); delete it or start a new --out",
        "not an rsgeo-prune training state; start a new --out",
    )


def _load(path: Path, map_location, unreadable: str, foreign: str) -> dict:
    """``torch.load(weights_only=True, mmap=True)`` of a state file; one error line naming ``path`` when it cannot
    be read (``unreadable`` with the reason's first line in ``{}``) or is not a training state (``foreign``).
    Memory-mapped: ranks resuming together do not each read a whole file (an XL/2 state is ~11 GB) into RAM."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except Exception as exc:  # truncated zip, random bytes, a pickle with foreign objects
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RSGeoPruneError(f"{path}: {unreadable.format(first)}") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise RSGeoPruneError(f"{path}: {foreign}")
    return state


def read_checkpoint(path: str | Path, *, hint: str = "start a new --out") -> dict:
    """The raw DiT training state at ``path`` (``torch.load(weights_only=True, mmap=True)``: nothing but
    tensors and plain containers is unpickled, and tensors are paged in only when used, so peeking at
    ``extra["config"]`` of a 10 GB XL state costs nothing).

    Raises :class:`RSGeoPruneError` (one line, naming the file) when it is missing, unreadable or truncated,
    not an rsgeo-prune training state, or the state of another trainer (e.g. the VAE's ``state.pt``).
    """
    path = Path(path)
    if not path.is_file():
        raise RSGeoPruneError(f"{path}: no DiT checkpoint here; give the state.pt of a train-dit --out")
    state = _load(
        path,
        "cpu",
        f"not a readable checkpoint (corrupt or truncated: {{}}); delete it and {hint}",
        f"not an rsgeo-prune training state; {hint}",
    )
    extra = state.get("extra") or {}
    if extra.get("kind") != DIT_STATE_KIND:
        raise RSGeoPruneError(f"{path}: a training state of another model (not train-dit); give a train-dit state.pt")
    return state


def config_from_saved(cls, saved: dict):
    """The config dataclass ``cls`` of settings read back from a checkpoint or an export. The rule for files of
    other versions: settings this version does not know (an older version's, since removed) are ignored, and
    settings the file lacks take this version's defaults."""
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in saved.items() if k in known})


def check_resume_steps(path: Path, saved_step: int, steps: int) -> None:
    """A resumed run continues forward: ``steps`` (the run's total) below the saved step is refused."""
    if steps < saved_step:
        raise InvalidOption(
            "steps",
            steps,
            f"the run in {path.parent} is at step {saved_step} already; give "
            f"--steps {saved_step} or more to continue it",
        )


def load_state(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    map_location: str | torch.device = "cpu",
    restore_rng: bool = True,
) -> dict:
    """Load a :func:`save_state` file (``weights_only=True``) into ``model`` and ``optimizer`` and
    restore the RNG states; returns ``{"step", "epoch", "position", "extra"}``."""
    path = Path(path)
    state = read_state(path, map_location)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise RSGeoPruneError(
            f"{path}: its weights do not fit this model (another preset?); resume with the run's own settings"
        ) from exc
    if optimizer is not None and state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    if restore_rng:
        set_rng_state(state["rng"])
    return {k: state[k] for k in ("step", "epoch", "position", "extra")}


#: safetensors' names of the tensor dtypes written by :func:`write_safetensors`.
SAFETENSORS_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.uint8: "U8",
}


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
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
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


__all__ = [
    "DIT_STATE_KIND",
    "SAFETENSORS_DTYPES",
    "STATE_FORMAT",
    "check_resume_steps",
    "config_from_saved",
    "load_state",
    "read_checkpoint",
    "read_state",
    "save_state",
    "write_safetensors",
]
