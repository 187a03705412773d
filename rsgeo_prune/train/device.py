"""Where and in what precision a trainer runs: the device (CUDA, then MPS, then CPU; ``--device`` overrides)
and bf16 autocast (weights, optimiser and EMA always stay fp32).

Two "auto" rules: :func:`uses_bf16` (the DiT: bf16 on CUDA, fp32 elsewhere, since CPU bf16 is slower than fp32 on
most CPUs) and :func:`resolve_precision` (the VAE: also bf16 on CPUs with AMX tiles, where oneDNN's bf16
convolutions are ~1.8x faster than fp32). fp16 autocast is never used: it gives NaNs in diffusion training.
"""

from __future__ import annotations

import contextlib

import torch

from ..errors import RSGeoPruneError


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


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"bf16"`` or ``"fp32"`` for ``precision`` on ``device`` (the VAE's rule: see the module docstring)."""
    if precision not in PRECISIONS:
        raise RSGeoPruneError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    return "bf16" if device.type == "cpu" and cpu_has_amx() else "fp32"


def cpu_has_amx() -> bool:
    """True on CPUs with AMX tiles (Intel Sapphire Rapids and later), where oneDNN runs bf16 on them."""
    try:
        return bool(torch._C._cpu._init_amx())
    except Exception:  # an older torch, or a platform without the probe
        return False


def enable_tf32() -> None:
    """TF32 for fp32 matmuls and convolutions on GPU (what is left outside bf16 autocast)."""
    torch.set_float32_matmul_precision("high")
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        conv.fp32_precision = "tf32"
    else:
        torch.backends.cudnn.allow_tf32 = True


__all__ = ["PRECISIONS", "autocast", "choose_device", "cpu_has_amx", "enable_tf32", "resolve_precision", "uses_bf16"]
