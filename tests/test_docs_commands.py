"""Every ``rsgeo-prune`` command line written in the README and in docs/ parses with the real command
parser: the documented commands, flags and choices exist (a renamed flag breaks this test, not a reader's
run). Lines launched through torchrun (``-m rsgeo_prune``) are parsed the same way."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from rsgeo_prune.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_SHELL_BLOCK = re.compile(r"^```(?:bash|sh|shell)\n(.*?)^```", re.M | re.S)


def command_lines(text: str) -> list[list[str]]:
    """The argument lists after ``rsgeo-prune`` (or ``-m rsgeo_prune``) in a page's
    shell blocks, continuation lines joined and comments dropped."""
    found = []
    for block in _SHELL_BLOCK.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            try:
                words = shlex.split(line, comments=True)
            except ValueError:  # a line of a multi-line quoted string (python -c "..."), not a command
                if line.split()[0].endswith("rsgeo-prune"):
                    raise
                continue
            if words and (words[0] == "rsgeo-prune" or words[0].endswith("/rsgeo-prune")):
                found.append(words[1:])
            elif "-m" in words and words[words.index("-m") + 1 :][:1] == ["rsgeo_prune"]:
                found.append(words[words.index("-m") + 2 :])
    return found


def parse_error(argv: list[str]) -> str | None:
    """argparse's complaint about ``argv`` (None when it parses)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            build_parser().parse_args(argv)
    except SystemExit:
        return err.getvalue().strip().splitlines()[-1]
    return None


def test_the_pages_hold_the_curation_and_training_commands():
    commands = {argv[0] for page in PAGES for argv in command_lines(page.read_text(encoding="utf-8"))}
    assert {"run", "train-vae", "encode", "train-dit", "sample", "tiles", "entropy", "centroids"} <= commands


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_documented_command_line_parses(page):
    bad = [
        f"{' '.join(argv)}: {why}"
        for argv in command_lines(page.read_text(encoding="utf-8"))
        if (why := parse_error(argv))
    ]
    assert bad == []


def test_a_misspelt_flag_and_a_continuation_are_caught():
    text = (
        "```bash\n.venv/bin/rsgeo-prune run 'a/*.tif' --out r \\\n    --budjet 0.1   # typo\n"
        "torchrun --nproc_per_node 2 -m rsgeo_prune train-dit lat --out d\n```\n"
    )
    lines = command_lines(text)
    assert lines == [["run", "a/*.tif", "--out", "r", "--budjet", "0.1"], ["train-dit", "lat", "--out", "d"]]
    assert "unrecognized arguments: --budjet 0.1" in parse_error(lines[0])
    assert parse_error(lines[1]) is None
