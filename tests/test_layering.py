"""The import layering of ``harness/`` and ``methods/`` (``docs/internals.md``), checked on the source with ``ast``.

Every import statement counts, also those inside functions (an import deferred to call time is still a dependency);
only those under ``if TYPE_CHECKING:`` (annotations) do not. The graph's strongly connected components
(``networkx``) are its cycles. Checked: no cycle; a package imports only from the layers below it and never from a
sibling on its own layer; the core never imports ``methods``; no module whose name starts with ``_`` is imported
from another package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
# Top to bottom; a package may import its own modules and anything on a lower line, nothing on its line or above.
LAYERS = [
    ["harness.cli", "harness.testing"],
    ["harness.sweep", "harness.report"],
    ["harness.run"],
    ["harness.tracking"],
    ["harness.config"],
    ["harness.tasks", "harness.models", "harness.data"],
    ["harness.api"],
    ["harness.registry"],
    ["harness"],  # the package itself: __version__
]
METHODS_MAY_IMPORT = ("harness.api", "harness.models", "harness.registry", "methods")


def modules() -> dict[str, Path]:
    out = {}
    for pkg in ("harness", "methods"):
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and getattr(test, "id", getattr(test, "attr", None)) == "TYPE_CHECKING"


def imports(path: Path, known: set[str], name: str) -> set[str]:
    """The project modules ``path`` imports (``from a.b import c`` is ``a.b.c`` when that is a module)."""
    found: set[str] = set()
    is_package = path.name == "__init__.py"

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking(child):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: resolved against this module's package
                    pkg = name.split(".") if is_package else name.split(".")[:-1]
                    base = ".".join(pkg[: len(pkg) - child.level + 1] + ([base] if base else []))
                for alias in child.names:
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in known}


@pytest.fixture(scope="module")
def graph() -> nx.DiGraph:
    mods = modules()
    g = nx.DiGraph()
    g.add_nodes_from(mods)
    for name, path in mods.items():
        g.add_edges_from((name, target) for target in imports(path, set(mods), name) if target != name)
    return g


def layer_of(module: str) -> tuple[int, str] | None:
    """(layer index, package) of a core module: the longest package prefix listed in LAYERS."""
    best = None
    for i, names in enumerate(LAYERS):
        for pkg in names:
            if (module == pkg or module.startswith(pkg + ".")) and (best is None or len(pkg) > len(best[1])):
                best = (i, pkg)
    return best


def test_the_graph_is_read(graph):
    assert graph.has_edge("harness.run.trial", "harness.config")
    assert graph.has_edge("methods.mbt", "harness.models.blocks")
    assert graph.has_edge("harness.cli.run", "harness.run.local")  # an import inside a function counts


def test_no_import_cycle(graph):
    cycles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_each_package_imports_only_lower_layers(graph):
    upward = []
    for a, b in graph.edges:
        la, lb = layer_of(a), layer_of(b)
        if la is None or lb is None or la[1] == lb[1]:
            continue
        if lb[0] <= la[0]:
            upward.append(f"{a} -> {b}")
    assert not upward, "imports of a package on the same or a higher layer:\n" + "\n".join(sorted(upward))


def test_the_core_never_imports_methods_and_methods_only_the_contracts(graph):
    core_to_methods = [f"{a} -> {b}" for a, b in graph.edges if a.startswith("harness") and b.startswith("methods")]
    assert not core_to_methods, core_to_methods
    methods_out = [f"{a} -> {b}" for a, b in graph.edges
                   if a.startswith("methods") and not b.startswith(METHODS_MAY_IMPORT)]  # fmt: skip
    assert not methods_out, f"methods import beyond {METHODS_MAY_IMPORT}: {methods_out}"


def test_no_underscore_module_is_imported_from_another_package(graph):
    private = []
    for a, b in graph.edges:
        last = b.rsplit(".", 1)[-1]
        if last.startswith("_") and b.rsplit(".", 1)[0] != a.rsplit(".", 1)[0]:
            private.append(f"{a} -> {b}")
    assert not private, private
