"""The package's import graph follows the layering rule of the README's "Design" section: a module
imports only modules listed above it in LAYERS (function-local imports included), so there is no
cycle and no stage imports the orchestrator or a front end; the training wing never imports the
selection code."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rsgeo_prune"

#: Bottom to top. A module may import only modules listed before it.
LAYERS = [
    "errors", "status", "atomic", "_parallel", "exact", "synth",
    "acquisition", "sources", "tiling", "masks", "entropy", "pixels", "embed",
    "kmeans", "centroids", "places", "dedup", "select", "catalog", "stac", "rundir",
    "train",
    "config", "scheduler", "embed_cache", "tile_table", "pipeline",
    "viz", "demo", "cli",
]
FRONT_ENDS = {"pipeline", "cli", "viz", "demo"}
SELECTION_CODE = {"select", "kmeans", "centroids"}


def _modules():
    """``{dotted name: path}`` of every module of the package (``embed.default``, ``train.dit``, …)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Package modules that ``name`` imports anywhere in its file (top level or inside functions)."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] + [f"{target}.{a.name}" if target else a.name for a in node.names]
            elif node.module and node.module.startswith("rsgeo_prune"):
                target = node.module.removeprefix("rsgeo_prune").lstrip(".")
                names = [target] + [f"{target}.{a.name}" if target else a.name for a in node.names]
            else:
                continue
            found.update(n for n in names if n)
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("rsgeo_prune.") for a in node.names if a.name.startswith("rsgeo_prune."))
    return found


def _graph():
    modules = _modules()
    return {name: {m for m in _imports(name, path) if m in modules and m != name} for name, path in modules.items()}


def _top(name: str) -> str:
    return name.split(".")[0]


def test_every_module_has_a_layer():
    missing = sorted({_top(m) for m in _modules() if m} - set(LAYERS))
    assert not missing, f"add {missing} to LAYERS here and to the README's layering rule"


def test_imports_only_go_down():
    rank = {m: i for i, m in enumerate(LAYERS)}
    bad = [f"{a} imports {b}" for a, deps in _graph().items() if a for b in deps
           if _top(a) != _top(b) and rank[_top(b)] >= rank[_top(a)]]
    assert not bad, "imports against the layering rule: " + "; ".join(sorted(bad))


def test_no_cycle():
    graph = _graph()
    # a package's __init__ may load its own submodules on demand (embed.load_embedder): not a cycle
    edges = {a: {b for b in deps if not (a and b.startswith(a + "."))} for a, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " → ".join(trail[trail.index(nxt):] + [nxt]) if nxt in trail
                            else f"import cycle through {nxt}")
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n, [n])


def test_stages_never_import_the_front_ends():
    bad = [f"{a} imports {b}" for a, deps in _graph().items() for b in deps
           if _top(b) in FRONT_ENDS and _top(a) not in FRONT_ENDS]
    assert not bad, "; ".join(sorted(bad))


def test_training_wing_never_imports_the_selection_code():
    bad = [f"{a} imports {b}" for a, deps in _graph().items() if _top(a) == "train" for b in deps
           if _top(b) in SELECTION_CODE | FRONT_ENDS]
    assert not bad, "; ".join(sorted(bad))


def test_the_checker_sees_function_local_imports(tmp_path):
    """The parser must find an import inside a function (the kind that hid the old cycle)."""
    src = tmp_path / "mod.py"
    src.write_text("def f():\n    from .pipeline import run_pipeline\n    from ..x import y\n")
    assert "pipeline" in _imports("centroids", src) and "pipeline.run_pipeline" in _imports("centroids", src)


def test_no_module_imports_the_package_root():
    """``from . import __version__`` in a stage loads the whole package (the root imports the stages)."""
    bad = []
    for name, path in _modules().items():
        if not name:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and ((node.level == len(name.split(".")) and not node.module
                                                      and path.name != "__init__.py")
                                                     or node.module == "rsgeo_prune"):
                bad.append(f"{name}: from {'.' * node.level}{node.module or ''} import "
                           + ", ".join(a.name for a in node.names))
    assert not bad, "; ".join(bad)
