"""Why a tile was pruned, and how many tiles each stage left: defined once.

Every catalog row has ``kept`` (bool) and ``pruned_by``: null for kept tiles, otherwise the first
stage that dropped it, in pipeline order.
"""

from __future__ import annotations

import pandas as pd

NODATA = "nodata"  # more nodata than ``max_nodata`` (pre-filter)
MASK = "mask"  # urban fraction below ``min_urban`` (pre-filter)
ENTROPY = "entropy"  # Stage I: low information
DUPLICATE = "duplicate"  # Stage II: a copy of a kept tile (exact, near, or the same place); see duplicate_of
SELECTION = "selection"  # Stage II: not chosen within the budget

REASONS = (NODATA, MASK, ENTROPY, DUPLICATE, SELECTION)  # pipeline order
PRE_FILTERS = (NODATA, MASK)


def pruned_counts(table: pd.DataFrame) -> dict[str, int]:
    """``{reason: tiles pruned by it}`` for every reason, in pipeline order (zeros included)."""
    why = table["pruned_by"].astype("string").value_counts()
    return {r: int(why.get(r, 0)) for r in REASONS}


def stage_counts(table: pd.DataFrame) -> dict[str, int]:
    """Tiles left after each stage: ``tiles``, ``after nodata``, ``after mask``, ``after entropy``,
    ``after duplicate``, ``after selection`` (the last equals the kept tiles of a finished catalog)."""
    left = len(table)
    out = {"tiles": left}
    for reason, n in pruned_counts(table).items():
        left -= n
        out[f"after {reason}"] = left
    return out


def summary_line(table: pd.DataFrame, *, reasons=REASONS) -> str:
    """``"N kept, a pruned by nodata, b pruned by mask, …"`` for the given reasons."""
    counts = pruned_counts(table)
    return f"{int(table['kept'].sum())} kept, " + ", ".join(f"{counts[r]} pruned by {r}" for r in reasons)


__all__ = [
    "DUPLICATE",
    "ENTROPY",
    "MASK",
    "NODATA",
    "PRE_FILTERS",
    "REASONS",
    "SELECTION",
    "pruned_counts",
    "stage_counts",
    "summary_line",
]
