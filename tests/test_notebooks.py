"""The notebooks run top to bottom, headless, without editing (nbclient), and print what they promise."""

import re
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # minutes: left out of `make test-fast`

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))

#: Per notebook, patterns its printed output must contain (a cell that fails raises before this).
EXPECTED = {
    "01_regional_curation.ipynb": [
        r"STAC items in the region: \[",
        r"'selected': \d+",
        r"\d+ catalog rows; \d+ STAC items",
    ],
    "02_training_catalog.ipynb": [r"rsgeo_prune \d", r"\d+ training tiles; a batch: \(8, 4, \d+, \d+\) torch\.float32"],
    "03_train_from_catalog.ipynb": [
        r"VAE: validation PSNR \d+\.\d+ dB",
        r"latents: \d+ x \(4, 8, 8\)",
        r"DiT: 200 steps",
        r"FD at step 200: \d+\.\d+, precision [01]\.\d{3}, recall [01]\.\d{3}",
        r"feature space random-cnn-0 sha256:[0-9a-f]{16}",
    ],
}


def _stdout(nb) -> str:
    return "".join(
        o.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for o in cell.get("outputs", [])
        if o.get("output_type") == "stream"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("RSGEO_NB_WORK", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    # execute() raises CellExecutionError at the first failing cell
    NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    print(f"{path.name}: {time.perf_counter() - t0:.1f} s")
    text = _stdout(nb)
    for pattern in EXPECTED[path.name]:
        assert re.search(pattern, text), f"{path.name}: no output matches {pattern!r}"


def test_every_notebook_has_expectations():
    assert [p.name for p in NOTEBOOKS] == sorted(EXPECTED)
