"""Every relative link in the repository's markdown resolves: the file or folder exists inside the
repository (a clone has nothing outside it), and a ``#fragment`` names a heading of the target page,
as GitHub makes heading anchors. Links inside code blocks and code spans are not links."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Folders that hold no documentation of this repository: environments, caches and generated outputs.
SKIP_DIRS = {".git", ".venv", "node_modules", ".pytest_cache", "catalogs/demo", "catalogs/notebooks"}

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.S)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'(][^)]*)?\)")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)


def markdown_files(root: Path = ROOT) -> list[Path]:
    found = []
    for path in sorted(root.rglob("*.md")):
        rel = path.relative_to(root).as_posix()
        if not any(rel == d or rel.startswith(d + "/") for d in SKIP_DIRS):
            found.append(path)
    return found


def prose(text: str) -> str:
    """The text without fenced code blocks and code spans (a link inside them is an example)."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def links(text: str) -> list[str]:
    """Targets of the inline links and images of a markdown text, in order."""
    return _LINK.findall(prose(text))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading anchor of a page; a repeated heading gets ``-1``, ``-2``, … as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for heading in _HEADING.findall(_FENCE.sub("", text)):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """``"target: why"`` for each relative link of ``page`` that does not resolve."""
    bad = []
    text = page.read_text(encoding="utf-8")
    for target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:, …
            continue
        path_part, _, fragment = target.partition("#")
        dest = (page.parent / unquote(path_part)).resolve() if path_part else page
        if not dest.is_relative_to(root):
            bad.append(f"{target}: outside the repository")
            continue
        if not dest.exists():
            bad.append(f"{target}: no such file")
            continue
        if fragment and dest.suffix == ".md" and fragment not in anchors(dest.read_text(encoding="utf-8")):
            bad.append(f"{target}: no heading #{fragment} in {dest.relative_to(root)}")
    return bad


def test_the_readme_and_the_docs_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in markdown_files()}
    assert {"README.md", "docs/README.md", "docs/commands.md", "docs/catalog.md", "docs/training.md"} <= names


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    assert broken_links(page) == [], f"{page.relative_to(ROOT)}: broken links"


def test_links_skip_code_and_find_images_and_titles():
    text = (
        'See [a](docs/a.md) and ![map](docs/map.png "the map") and [`b`](b.md#x).\n'
        "`[not](code.md)`\n```\n[nor](fenced.md)\n```\n[e](https://example.org) [f](<f.md>)\n"
    )
    assert links(text) == ["docs/a.md", "docs/map.png", "b.md#x", "https://example.org", "f.md"]


def test_slug_matches_github_anchors():
    assert (
        slug("Stage II — embed, centroids, assign, select (`rsgeo-prune centroids`, `rsgeo-prune run`)")
        == "stage-ii--embed-centroids-assign-select-rsgeo-prune-centroids-rsgeo-prune-run"
    )
    assert slug('What "identical" guarantees') == "what-identical-guarantees"
    assert slug("Loading the DiT elsewhere") == "loading-the-dit-elsewhere"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n## B_c\n") == {"a", "a-1", "b_c"}


def test_a_broken_link_an_escape_and_a_missing_anchor_are_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "ok.md").write_text("# Here\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "[1](ok.md) [2](ok.md#here) [3](missing.md) [4](../../outside.md) [5](ok.md#nowhere)\n"
        "[6](#top) # Top\n\n# Top\n"
    )
    assert broken_links(page, tmp_path) == [
        "missing.md: no such file",
        "../../outside.md: outside the repository",
        "ok.md#nowhere: no heading #nowhere in docs/ok.md",
    ]
