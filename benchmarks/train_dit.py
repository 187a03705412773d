"""DiT training benchmark: prints one table (no assertions).

* CPU: the real trainer (``train_dit``: data order, latent sampling, DDPM loss, AdamW, clipping, EMA, metrics log)
  with DiT-tiny/2 on a synthetic latent set (structured 4 x 16 x 16 latents): step time and the loss at a few
  steps. One thread, as the tests run.
* GPU (only when CUDA is there; the rows say "no GPU" otherwise): images/s per GPU and MFU of DiT-B/2 and DiT-XL/2
  at 256 px (4 x 32 x 32 latents) in bf16 autocast with fused AdamW, timed on the trainer's own ``TrainStep``
  (latent sampling, loss, backward, clipping, AdamW, EMA). MFU counts 3x the forward FLOPs per trained image
  (``dit_flops(..., unit="flops") * 3``: backward ≈ 2x forward) against the H100 SXM's 989 TFLOP/s dense bf16 peak.
  A batch that runs out of memory is halved until it fits (the row says which batch was timed).
  Anchors (shared/TRAINING-NOTES.md): official DiT ≈ 12 % of A100 peak, fast-DiT ≈ 24 %, LightningDiT ≈ 20 %.

Usage: python benchmarks/train_dit.py [--cpu-steps 60] [--gpu-steps 20] [--compile] [--b-batch 256] [--xl-batch 128]
"""

from __future__ import annotations

import argparse  # noqa: E402
import gc  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from _common import print_table  # noqa: E402

from rsgeo_prune.train.device import enable_tf32  # noqa: E402
from rsgeo_prune.train.diffusion import diffusion_of  # noqa: E402
from rsgeo_prune.train.dit import dit_flops  # noqa: E402
from rsgeo_prune.train.latents import write_synthetic_latents  # noqa: E402
from rsgeo_prune.train.rng import seeded_generator  # noqa: E402
from rsgeo_prune.train.runlog import read_metrics  # noqa: E402
from rsgeo_prune.train.trainer import DiTTrainConfig, TrainStep, build_training, train_dit  # noqa: E402

H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s, H100 SXM: the yardstick of the MFU target
#: dense bf16 peaks by device name (vendor data sheets), so a PCIe or NVL card is also judged by its own peak
BF16_PEAKS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
)


def device_peak(name: str) -> float | None:
    return next((peak for key, peak in BF16_PEAKS if key in name), None)


def cpu_rows(steps: int, lr: float) -> list[tuple[str, str, str]]:
    """Step time and loss curve of DiT-tiny/2 through the trainer, on one CPU thread."""
    torch.set_num_threads(1)
    log_every = 10
    with tempfile.TemporaryDirectory() as tmp:
        lat = write_synthetic_latents(Path(tmp) / "lat", n=256, shape=(4, 16, 16), seed=0)
        cfg = DiTTrainConfig(
            model="DiT-tiny/2",
            batch_size=16,
            lr=lr,
            steps=steps,
            log_every=log_every,
            save_every=steps,
            sample_every=0,
            device="cpu",
        )
        t0 = time.perf_counter()
        train_dit(lat, Path(tmp) / "run", cfg, progress=False)
        wall = time.perf_counter() - t0
        recs = [r for r in read_metrics(Path(tmp) / "run" / "metrics.jsonl") if "loss" in r]
    step_s = statistics.median(r["step_time_s"] for r in recs[1:] or recs)  # first window: warm-up
    curve = ", ".join(f"{r['step']}: {r['loss']:.3f}" for r in recs if r["step"] in _curve_steps(steps, log_every))
    return [
        (
            "CPU DiT-tiny/2 (0.18 M) 4x16x16, batch 16, 1 thread: step",
            f"{step_s * 1e3:.1f} ms",
            f"{16 / step_s:.0f} img/s; {steps} steps in {wall:.1f} s with startup and checkpoint",
        ),
        (
            f"CPU DiT-tiny/2 loss, mean of {log_every} steps: first → last",
            f"{recs[0]['loss']:.3f} → {recs[-1]['loss']:.3f}",
            f"step: loss = {curve}; lr {lr:g}, DDPM eps-MSE (1.0 at init)",
        ),
    ]


def _curve_steps(steps: int, every: int) -> set[int]:
    picks = {every, steps}
    for frac in (0.25, 0.5, 0.75):
        picks.add(max(every, int(round(steps * frac / every)) * every))
    return picks


class _UnitLatents:
    """What :class:`TrainStep` needs of a LatentShards: the posterior draw and an (identity) normalisation."""

    @staticmethod
    def sample(mean, logvar, generator=None):
        eps = torch.randn(mean.shape, generator=generator, device=mean.device)
        return mean.float() + torch.exp(0.5 * logvar.float()) * eps

    @staticmethod
    def normalise(z):
        return z


def gpu_rows(models: dict[str, int], steps: int, compile_: bool) -> list[tuple[str, str, str]]:
    """Images/s per GPU and MFU of each model at its per-GPU batch, bf16 autocast, on cuda:0."""
    if not torch.cuda.is_available():
        return [(f"GPU {name} 256 px bf16: images/s per GPU", "no GPU", "CUDA not available here") for name in models]
    enable_tf32()
    device = torch.device("cuda")
    gpu = torch.cuda.get_device_name(device)
    rows = []
    for name, batch in models.items():
        while batch >= 1:
            oom = False
            try:
                ips, mem = _time_model(name, batch, steps, compile_, device)
                break
            except torch.OutOfMemoryError:
                oom = True  # the exception's frames hold the model and activations: free them outside the handler
            if oom:
                gc.collect()
                torch.cuda.empty_cache()
                batch //= 2
        else:
            rows.append((f"GPU {name} 256 px bf16", "OOM", "does not fit at batch 1"))
            continue
        train_flops = 3 * dit_flops(name, 32, 4, unit="flops")
        mfu = ips * train_flops / H100_BF16_PEAK
        own = device_peak(gpu)
        own_note = (
            f"; {100 * ips * train_flops / own:.1f} % of this device's {own / 1e12:.0f} TFLOP/s"
            if own and own != H100_BF16_PEAK
            else ""
        )
        rows += [
            (
                f"GPU {name} 256 px bf16, batch {batch}: images/s per GPU",
                f"{ips:.1f}",
                f"{gpu}; {'compiled' if compile_ else 'eager'}; peak memory {mem / 2**30:.1f} GiB",
            ),
            (
                f"GPU {name} MFU (3 x {train_flops / 3 / 1e9:.1f} GFLOP fwd / image)",
                f"{100 * mfu:.1f} %",
                "vs 989 TFLOP/s dense bf16 (H100 SXM)" + own_note,
            ),
        ]
    return rows


def _time_model(name: str, batch: int, steps: int, compile_: bool, device) -> tuple[float, int]:
    """Images/s of the trainer's step on one GPU and the peak memory, after warm-up steps (compilation included)."""
    cfg = DiTTrainConfig(model=name, batch_size=batch, compile=compile_, device="cuda")
    torch._dynamo.reset()  # each model and batch compiled afresh, static shapes: no dynamic-batch kernels timed
    model, ema, opt = build_training(cfg, (4, 32, 32), device)
    train_model = torch.compile(model, dynamic=False) if compile_ else model
    step = TrainStep(train_model, model, ema, opt, diffusion_of(asdict(cfg)), _UnitLatents(), cfg, device)
    g = torch.Generator(device="cpu").manual_seed(0)
    mean = torch.randn(batch, 4, 32, 32, generator=g).half().to(device)
    logvar = torch.full_like(mean, -6.0)
    try:
        torch.cuda.reset_peak_memory_stats(device)
        for s in range(5 if not compile_ else 10):  # warm-up: allocator, cuBLAS heuristics, compilation
            step(mean, logvar, seeded_generator(device, 0, s, 0), s)
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for s in range(steps):
            loss, _ = step(mean, logvar, seeded_generator(device, 0, 100 + s, 0), 100 + s)
        loss.item()  # waits for the queue
        torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        return batch * steps / dt, torch.cuda.max_memory_allocated(device)
    finally:
        del step, train_model, model, ema, opt
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-steps", type=int, default=60)
    ap.add_argument("--cpu-lr", type=float, default=1e-3, help="higher than the paper's 1e-4 so 60 steps show a curve")
    ap.add_argument("--gpu-steps", type=int, default=20)
    ap.add_argument("--b-batch", type=int, default=256, help="per-GPU batch of DiT-B/2")
    ap.add_argument("--xl-batch", type=int, default=128, help="per-GPU batch of DiT-XL/2")
    ap.add_argument("--compile", action="store_true", help="torch.compile the models on GPU")
    ap.add_argument("--no-cpu", action="store_true")
    args = ap.parse_args()
    rows = [] if args.no_cpu else cpu_rows(args.cpu_steps, args.cpu_lr)
    rows += gpu_rows({"DiT-B/2": args.b_batch, "DiT-XL/2": args.xl_batch}, args.gpu_steps, args.compile)
    print_table(rows)


if __name__ == "__main__":
    main()
