"""The package's import graph, read from the source with ``ast``: no import cycles inside
``batch_provider``, and the core depends on nothing above it (backends, the Airflow layer, the
emulator, the integrations).

Every import counts: those inside functions (a lazy import still closes a cycle at run time) and
those under ``if TYPE_CHECKING:`` (a cycle of types is a cycle of knowledge). An import names
the module it reads from (``from a.b import c`` is an edge to ``a.b.c`` when that is a module,
else to ``a.b``); a package's ``__init__`` running first is not counted as an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import batch_provider

# The package that is imported: this checkout, or the installed wheel when the tests run apart.
PACKAGE = Path(batch_provider.__file__).resolve().parent
ABOVE_CORE = (
    "batch_provider.backends",
    "batch_provider.emulator",
    "batch_provider.hooks",
    "batch_provider.operators",
    "batch_provider.sensors",
    "batch_provider.triggers",
    "batch_provider.links",
    "batch_provider.task_group",
    "batch_provider.decorators",
    "batch_provider.ui",
    "batch_provider.plugin",
    "batch_provider.callbacks",
    "batch_provider.results",
    "batch_provider.integrations",
)


def module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = {name for name, _ in files}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for (name, is_package), path in files.items():
        here = name.split(".") if is_package else name.split(".")[:-1]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = here[: len(here) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [
                    f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                    for alias in node.names
                ]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_graph_sees_the_package() -> None:
    graph = import_graph()
    assert "batch_provider.core.poller" in graph
    assert "batch_provider.core.contract" in graph["batch_provider.core.poller"]
    assert "batch_provider.emulator.store" in graph["batch_provider.emulator.app"]
    # a type-only import (under TYPE_CHECKING) is an edge too
    assert "batch_provider.emulator.openai.batch" in graph["batch_provider.emulator.openai.output_files"]


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_cycle_finder_reports_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_core_imports_nothing_above_it() -> None:
    graph = import_graph()
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if module.startswith("batch_provider.core.") or module == "batch_provider.core"
        for target in targets
        if target.startswith(ABOVE_CORE)
    )
    assert upward == []
