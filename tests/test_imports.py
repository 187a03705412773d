"""The package's import graph follows the rule in docs/import-rule.md, whose ``import-order`` block
is read here (the order lives only there): a module imports only modules ranked before it
(function-local imports included), inside ``train/`` and ``embed/`` too, so there is no cycle and no
stage imports the orchestrator or a front end; the training wing never imports the selection code."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rsgeo_prune"
RULE = ROOT / "docs" / "import-rule.md"
FRONT_ENDS = {"pipeline", "cli", "viz", "demo", "__main__"}
SELECTION_CODE = {"select", "kmeans", "centroids"}


def parse_import_order(text: str) -> tuple[list[str], dict[str, list[str]]]:
    """``(top-level modules bottom to top, {subpackage: its modules bottom to top})`` from the
    ``import-order`` fenced block: one module a line, indented lines belong to the subpackage above."""
    blocks = re.findall(r"^```import-order\n(.*?)^```", text, flags=re.S | re.M)
    if len(blocks) != 1:
        raise ValueError(f"{RULE.name} must hold exactly one ```import-order block; found {len(blocks)}")
    top: list[str] = []
    inside: dict[str, list[str]] = {}
    for line in blocks[0].splitlines():
        name = line.split("#")[0].strip()
        if not name:
            continue
        if line[0].isspace():
            if not top:
                raise ValueError(f"{RULE.name}: indented {name!r} has no subpackage line above it")
            inside.setdefault(top[-1], []).append(name)
        else:
            top.append(name)
    for where, names in [("", top), *inside.items()]:
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"{RULE.name}: {twice} ranked twice{' in ' + where if where else ''}")
    return top, inside


LAYERS, SUBLAYERS = parse_import_order(RULE.read_text())


def _rank(name: str) -> tuple[int, int] | None:
    """``(rank of the top-level module, rank inside its subpackage)``, a subpackage's ``__init__``
    ranking -1 inside it; None for a module without a rank (:func:`test_every_module_has_a_rank`)."""
    parts = name.split(".")
    inner = SUBLAYERS.get(parts[0], [])
    if parts[0] not in LAYERS or (len(parts) > 1 and parts[1] not in inner):
        return None
    return LAYERS.index(parts[0]), inner.index(parts[1]) if len(parts) > 1 else -1


def _modules():
    """``{dotted name: path}`` of every module of the package (``embed.default``, ``train.dit``, …)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


def _import_nodes(tree: ast.AST, *, top_level_only: bool = False):
    """The import statements of a module; with ``top_level_only``, those outside functions."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if top_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        stack.extend(ast.iter_child_nodes(node))


def _imports(name: str, path: Path, *, top_level_only: bool = False) -> set[str]:
    """Package modules that ``name`` imports anywhere in its file (top level or inside functions)."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in _import_nodes(ast.parse(path.read_text()), top_level_only=top_level_only):
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


def test_every_module_has_a_rank():
    """A new module fails here until docs/import-rule.md ranks it (indented under its subpackage)."""
    missing = []
    for name in _modules():
        parts = name.split(".") if name else []
        if parts and parts[0] not in LAYERS:
            missing.append(parts[0])
        elif len(parts) > 1 and parts[1] not in SUBLAYERS.get(parts[0], []):
            missing.append(f"{parts[0]}/{parts[1]}")
    assert not missing, (
        f"no rank in docs/import-rule.md for {sorted(set(missing))}: add each to its "
        "import-order block (a subpackage's module indented under it), after every module it "
        "imports and before every module that imports it"
    )


def test_every_ranked_module_exists():
    modules = set(_modules())
    stale = [n for n in LAYERS if n not in modules] + [
        f"{p}/{m}" for p, ms in SUBLAYERS.items() for m in ms if f"{p}.{m}" not in modules
    ]
    assert not stale, f"docs/import-rule.md ranks modules that do not exist: {stale}; remove or rename them"
    assert FRONT_ENDS | SELECTION_CODE <= set(LAYERS)


def test_imports_only_go_down():
    bad = []
    for a, deps in _graph().items():
        if not a or _rank(a) is None:
            continue
        for b in deps:
            if _rank(b) is None:
                continue
            inner = _rank(a)[0] == _rank(b)[0]
            if inner and a == _top(a) and b.startswith(a + "."):
                continue  # a subpackage's __init__ loading its own module on demand: checked below
            if (inner and _rank(b)[1] >= _rank(a)[1]) or (not inner and _rank(b)[0] >= _rank(a)[0]):
                bad.append(f"{a} imports {b}")
    assert not bad, "imports against the order of docs/import-rule.md: " + "; ".join(sorted(bad))


def test_a_subpackage_init_loads_its_modules_only_on_demand():
    modules = _modules()
    bad = [
        f"{name} imports {m} at its top level"
        for name, path in modules.items()
        if name and "." not in name and path.name == "__init__.py"
        for m in _imports(name, path, top_level_only=True)
        if m in modules and m.startswith(name + ".")
    ]
    assert not bad, "; ".join(sorted(bad)) + ": import it inside the function that needs it"


def test_the_order_is_read_from_the_docs_block():
    """The parser's known answers: indented lines rank inside the subpackage above; comments and
    blank lines are ignored; a name ranked twice or an indented first line is an error."""
    text = "x\n```import-order\nerrors  # bottom\n\nembed\n    _torch\n    default\ncli\n```\n```python\nno\n```\n"
    assert parse_import_order(text) == (["errors", "embed", "cli"], {"embed": ["_torch", "default"]})
    with pytest.raises(ValueError, match="ranked twice in embed"):
        parse_import_order("```import-order\nembed\n    a\n    a\n```\n")
    with pytest.raises(ValueError, match="has no subpackage line"):
        parse_import_order("```import-order\n    a\n```\n")
    with pytest.raises(ValueError, match="exactly one"):
        parse_import_order("no block")


def test_no_cycle():
    graph = _graph()
    # a package's __init__ may load its own submodules on demand (embed.load_embedder): not a cycle
    edges = {a: {b for b in deps if not (a and b.startswith(a + "."))} for a, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail(
                    "import cycle: " + " → ".join(trail[trail.index(nxt) :] + [nxt])
                    if nxt in trail
                    else f"import cycle through {nxt}"
                )
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n, [n])


def test_stages_never_import_the_front_ends():
    bad = [
        f"{a} imports {b}"
        for a, deps in _graph().items()
        for b in deps
        if _top(b) in FRONT_ENDS and _top(a) not in FRONT_ENDS
    ]
    assert not bad, "; ".join(sorted(bad))


def test_training_wing_never_imports_the_selection_code():
    bad = [
        f"{a} imports {b}"
        for a, deps in _graph().items()
        if _top(a) == "train"
        for b in deps
        if _top(b) in SELECTION_CODE | FRONT_ENDS
    ]
    assert not bad, "; ".join(sorted(bad))


def test_the_checker_sees_function_local_imports(tmp_path):
    """The parser must find an import inside a function (the kind that hid the old cycle)."""
    src = tmp_path / "mod.py"
    src.write_text("def f():\n    from .pipeline import run_pipeline\n    from ..x import y\n")
    assert "pipeline" in _imports("centroids", src) and "pipeline.run_pipeline" in _imports("centroids", src)


def test_no_module_imports_the_package_root():
    """The root re-exports names of every stage, so it sits above them all: ``from . import __version__``
    in a stage would close a cycle through the root."""
    bad = []
    for name, path in _modules().items():
        if not name:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (
                (node.level == len(name.split(".")) and not node.module and path.name != "__init__.py")
                or node.module == "rsgeo_prune"
            ):
                bad.append(
                    f"{name}: from {'.' * node.level}{node.module or ''} import "
                    + ", ".join(a.name for a in node.names)
                )
    assert not bad, "; ".join(bad)


HEAVY = ("geopandas", "dask", "numba", "rasterio")


def _loaded_after(statement: str) -> set[str]:
    """Top-level packages in ``sys.modules`` after ``statement`` runs in a fresh interpreter."""
    code = f"import sys\n{statement}\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, timeout=300)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_importing_the_dit_loads_no_geodata_stack():
    """The package root is lazy (PEP 562): a training module does not pay for the curation stages."""
    loaded = _loaded_after("import rsgeo_prune.train.dit")
    assert "torch" in loaded  # the probe sees what the import loads
    assert not loaded & set(HEAVY), f"import rsgeo_prune.train.dit loaded {sorted(loaded & set(HEAVY))}"


def test_the_training_dataset_reads_pixels_without_the_lazy_raster_stack():
    """A training dataset reads windows with rasterio alone: xarray and dask (the curation's lazy rasters) and the
    numba kernels stay out of the training wing's data path."""
    loaded = _loaded_after("import rsgeo_prune.train.dataset")
    assert "rasterio" in loaded  # the probe sees what the import loads
    assert not loaded & {"xarray", "dask", "numba", "geopandas"}, sorted(
        loaded & {"xarray", "dask", "numba", "geopandas"}
    )


def test_the_root_loads_a_name_on_first_use():
    """``rsgeo_prune.<name>`` still resolves every re-exported name; only then is its stage imported."""
    assert not _loaded_after("import rsgeo_prune") & set(HEAVY)
    loaded = _loaded_after("import rsgeo_prune\nassert rsgeo_prune.tiles_stage.__module__ == 'rsgeo_prune.tile_table'")
    assert {"geopandas", "rasterio"} <= loaded
    import rsgeo_prune

    for name in rsgeo_prune.__all__:
        assert getattr(rsgeo_prune, name).__name__ == name
    assert rsgeo_prune.pipeline.__name__ == "rsgeo_prune.pipeline"  # modules too, after a plain import
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        rsgeo_prune.no_such_name


def test_pixels_does_not_load_stage_one():
    """The pixel scaling lives in pixels: reading pixels needs neither entropy nor numba."""
    loaded = _loaded_after("import rsgeo_prune.pixels; assert 'rsgeo_prune.entropy' not in sys.modules")
    assert "numba" not in loaded and "rasterio" in loaded
