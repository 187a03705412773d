"""Shared helpers of the benchmark scripts: timing and the NAIP-sized synthetic scene."""

from __future__ import annotations

import platform
import time
from pathlib import Path

from rsgeo_prune.synth import write_scene

#: (bands, rows, cols) of a real NAIP quarter-quad at 1 m.
NAIP_SHAPE = (4, 7575, 5893)


def best_of(fn, repeat: int) -> float:
    """Fastest of ``repeat`` runs of ``fn()``, in seconds."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def naip_sized_scene(work: Path) -> Path:
    """A 4 x 7575 x 5893 uint8 deflate GeoTIFF with 512-px blocks (written once per work folder)."""
    path = work / "naip_sized.tif"
    if not path.exists():
        print(f"writing {path} ...", flush=True)
        write_scene(path, rows=29, cols=23, extra_px=(151, 5), blocksize=512, seed=0, nodata_rows=2)
    return path


def print_table(rows: list[tuple[str, str, str]]) -> None:
    w = max(len(r[0]) for r in rows)
    print(f"\n{'benchmark':<{w}}  {'figure':>12}  note")
    for name, fig, note in rows:
        print(f"{name:<{w}}  {fig:>12}  {note}")


def cpu_name() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
