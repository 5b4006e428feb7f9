"""The project's architecture, checked statically over every non-test module.

Why: the rules of docs/CONTRACTS.md (who may import whom, one registry per concept, a thin
worker) erode one convenient import at a time, and a runtime import test only sees the modules
it happens to load. This test reads the source with ``ast`` instead: every import statement of
every module of our packages, module-level and lazy (inside a function) alike, plus
``importlib.import_module("literal")``. Imports under ``if TYPE_CHECKING:`` never run: they
count for the forbidden edges (a type-only dependency is still a dependency) but not for cycles.

An import resolves to the most specific module of ours it names (``from pft.soups.registry
import MERGE_METHODS`` is an edge to ``pft.soups.registry``, ``from pft import strategies`` one
to ``pft.strategies``); anything else is external and kept as written.

The rules (docs/CONTRACTS.md): no import cycle; no forbidden edge between packages (FORBIDDEN);
contract/ imports only the standard library and pydantic; only backend/ touches the database;
contract/, backend/ and dashboard/ load no torch at import time (module-level chains); strategy
and merge-method names are spelled only in their registries (and the study's plan); worker/ is
under 500 lines.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("contract", "pft", "backend", "worker", "dashboard", "lab")
HEAVY = frozenset({"torch", "torchvision", "timm"})

# Top-level names (our packages or external distributions) a package must never import.
FORBIDDEN: dict[str, frozenset[str]] = {
    "worker": frozenset({"backend", "sqlalchemy", "fastapi"}),
    "dashboard": frozenset({"pft", "backend", "worker", "torch", "sqlalchemy", "celery"}),
    "backend": frozenset({"worker", "dashboard", "torch", "timm"}),
    "pft": frozenset(
        {"backend", "worker", "dashboard", "lab", "fastapi", "celery", "streamlit", "sqlalchemy"}
    ),
    "contract": frozenset({"pft", "backend", "worker", "dashboard", "lab", "torch"}),
}
# contract/ is the vocabulary both sides share: the standard library and pydantic only.
CONTRACT_ALLOWED = frozenset({"contract", "pydantic", "pydantic_settings"}) | frozenset(
    sys.stdlib_module_names
)
DATABASE = frozenset({"sqlalchemy", "alembic", "psycopg", "psycopg2"})
# Packages whose modules must import without torch (the API and dashboard images have none).
TORCH_FREE = ("contract", "backend", "dashboard")

# Where strategy and soup-method names may be spelled: their registries and the study's plan.
NAME_HOMES = ("pft.strategies", "pft.soups", "pft.reproduce.plan")
WORKER_MAX_LINES = 500


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # a module of ours (most specific) or an external dotted name
    line: int
    lazy: bool  # inside a function body: runs when called, not at import
    typing_only: bool  # under `if TYPE_CHECKING:`: never runs

    @property
    def top(self) -> str:
        return self.target.split(".")[0]

    def where(self, modules: dict[str, Path]) -> str:
        path = modules[self.source].relative_to(ROOT)
        kind = "lazy " if self.lazy else ""
        kind += "type-only " if self.typing_only else ""
        return f"{path}:{self.line} ({kind}import {self.target})"


# --- reading the tree -----------------------------------------------------------------------


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    """Every non-test module of our packages, by dotted name."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "__pycache__" not in path.parts:
                found[_module_name(path)] = path
    return found


@cache
def trees() -> dict[str, ast.Module]:
    return {name: ast.parse(path.read_text(), str(path)) for name, path in modules().items()}


def _resolve(name: str) -> str:
    """The most specific module of ours that ``name`` names, else ``name`` (external)."""
    ours = modules()
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in ours:
            return candidate
    return name


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.depth = 0  # function nesting
        self.typing = 0  # `if TYPE_CHECKING:` nesting
        self.found: list[Import] = []

    def _add(self, name: str, node: ast.AST) -> None:
        target = _resolve(name)
        if target != self.module:
            self.found.append(
                Import(self.module, target, node.lineno, self.depth > 0, self.typing > 0)
            )

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self.typing += 1
            for child in node.body:
                self.visit(child)
            self.typing -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            origin = ".".join([*base, node.module] if node.module else base)
        else:
            origin = node.module or ""
        for alias in node.names:
            submodule = f"{origin}.{alias.name}"
            self._add(submodule if submodule in modules() else origin, node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if (
            name == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and not node.args[0].value.startswith(".")
        ):
            self._add(node.args[0].value, node)
        self.generic_visit(node)


@cache
def imports() -> tuple[Import, ...]:
    out: list[Import] = []
    for name, tree in trees().items():
        collector = _Collector(name, modules()[name].name == "__init__.py")
        collector.visit(tree)
        out += collector.found
    return tuple(out)


# --- graph helpers --------------------------------------------------------------------------


def _graph(edges: list[Import]) -> dict[str, dict[str, Import]]:
    graph: dict[str, dict[str, Import]] = defaultdict(dict)
    for edge in edges:
        if edge.target in modules():
            graph[edge.source].setdefault(edge.target, edge)
    return graph


def _strongly_connected(graph: dict[str, dict[str, Import]], nodes: list[str]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit on deep chains)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, {}))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    components.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, {})))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components


def _cycle_in(component: list[str], graph: dict[str, dict[str, Import]]) -> list[str]:
    """One shortest cycle through the component's first module (breadth-first)."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph.get(node, {})):
            if child == start:
                return [*paths[node], start]
            if child in members and child not in paths:
                paths[child] = [*paths[node], child]
                queue.append(child)
    return component  # unreachable for a strongly connected component


def _parents(module: str) -> list[str]:
    """The packages whose ``__init__`` runs before ``module`` (``a.b.c``: ``a``, ``a.b``)."""
    parts = module.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts)) if ".".join(parts[:end])]


def _listing(found: Iterator[Import]) -> list[str]:
    """One line per offending import statement, in file order."""
    unique = {(modules()[i.source], i.line, i.target): i for i in found}
    return [unique[key].where(modules()) for key in sorted(unique)]


# --- the rules ------------------------------------------------------------------------------


def test_every_package_is_found() -> None:
    found = {name.split(".")[0] for name in modules()}
    assert found == set(PACKAGES), f"missing packages: {set(PACKAGES) - found}"
    assert len(imports()) > 100, "the import collector found almost nothing"


def test_the_collector_sees_lazy_relative_and_type_only_imports() -> None:
    # A control on a synthetic module: the rules below are only as good as the collector.
    source = (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "import json\n"
        "from . import launcher\n"
        "if TYPE_CHECKING:\n"
        "    import torch\n"
        "def f():\n"
        "    from pft.strategies import STRATEGIES\n"
        "    import importlib\n"
        "    return importlib.import_module('backend.main')\n"
    )
    collector = _Collector("lab.sample", is_package=False)
    collector.visit(ast.parse(source))
    seen = {(i.target, i.lazy, i.typing_only) for i in collector.found}
    assert ("json", False, False) in seen
    assert ("lab.launcher", False, False) in seen
    assert ("torch", False, True) in seen
    assert ("pft.strategies", True, False) in seen
    assert ("backend.main", True, False) in seen


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    edge = Import("x", "y", 1, lazy=False, typing_only=False)
    graph = {"a": {"b": edge}, "b": {"c": edge}, "c": {"a": edge, "d": edge}, "d": {}}
    components = [c for c in _strongly_connected(graph, list("abcde")) if len(c) > 1]
    assert components == [["a", "b", "c"]]
    assert _cycle_in(components[0], graph) == ["a", "b", "c", "a"]


def test_no_import_cycles() -> None:
    runtime = [i for i in imports() if not i.typing_only]
    graph = _graph(runtime)
    cycles = []
    for component in _strongly_connected(graph, list(modules())):
        if len(component) > 1:
            cycle = _cycle_in(component, graph)
            steps = [graph[a][b].where(modules()) for a, b in zip(cycle, cycle[1:], strict=False)]
            cycles.append(" -> ".join(cycle) + "\n      " + "\n      ".join(steps))
    assert not cycles, f"{len(cycles)} import cycle(s):\n  " + "\n  ".join(cycles)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_forbidden_imports(package: str) -> None:
    banned = FORBIDDEN[package]
    bad = _listing(i for i in imports() if i.source.split(".")[0] == package and i.top in banned)
    assert not bad, f"{package} must not import {sorted(banned)}:\n  " + "\n  ".join(bad)


def test_only_the_backend_touches_the_database() -> None:
    # The API is the database's only writer (issue 12): nothing outside backend/ (the launcher
    # included) imports the database layer, ours or SQLAlchemy's.
    bad = _listing(
        i
        for i in imports()
        if i.source.split(".")[0] != "backend"
        and (i.top in DATABASE or i.target == "backend.db" or i.target.startswith("backend.db."))
    )
    assert not bad, "the database layer imported outside backend/:\n  " + "\n  ".join(bad)


def test_contract_imports_only_the_standard_library_and_pydantic() -> None:
    bad = _listing(
        i
        for i in imports()
        if i.source.split(".")[0] == "contract" and i.top not in CONTRACT_ALLOWED
    )
    assert not bad, "contract/ imports beyond stdlib + pydantic:\n  " + "\n  ".join(bad)


@pytest.mark.parametrize("package", TORCH_FREE)
def test_torch_free_packages_do_not_load_torch_at_import_time(package: str) -> None:
    # Follows module-level imports only (a lazy import runs when its function is called), and
    # the parent packages each import runs first; names the chain to the first heavy import.
    eager = [i for i in imports() if not i.lazy and not i.typing_only]
    by_source: dict[str, list[Import]] = defaultdict(list)
    for edge in eager:
        by_source[edge.source].append(edge)
    bad = []
    for start in sorted(m for m in modules() if m.split(".")[0] == package):
        chain = {start: [start]}
        queue = [start]
        while queue:
            node = queue.pop(0)
            nexts = [(e.target, e) for e in by_source.get(node, [])]
            nexts += [(p, None) for p in _parents(node) if p in modules()]
            hit = next((e for _, e in nexts if e is not None and e.top in HEAVY), None)
            if hit is not None:
                bad.append(" -> ".join(chain[node]) + f"  [{hit.where(modules())}]")
                break
            for target, _ in nexts:
                if target in modules() and target not in chain:
                    chain[target] = [*chain[node], target]
                    queue.append(target)
    assert not bad, f"{package} modules load torch at import time:\n  " + "\n  ".join(bad)


def _string_literals(tree: ast.Module) -> Iterator[ast.Constant]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node


def _spelled(names: set[str]) -> list[str]:
    """Exact string literals equal to one of ``names`` outside the modules that own them."""
    out: list[tuple[Path, int, str]] = []
    for module, tree in trees().items():
        if any(module == home or module.startswith(home + ".") for home in NAME_HOMES):
            continue
        for node in _string_literals(tree):
            if node.value in names:
                out.append((modules()[module].relative_to(ROOT), node.lineno, node.value))
    return [f"{path}:{line}: {value!r}" for path, line, value in sorted(set(out))]


def test_strategy_names_are_spelled_only_in_the_registry() -> None:
    from pft.strategies import STRATEGIES

    bad = _spelled(set(STRATEGIES))
    assert not bad, (
        "strategy names spelled outside pft/strategies.py (take them from "
        "pft.strategies.STRATEGIES or a registry attribute):\n  " + "\n  ".join(bad)
    )


def test_soup_method_names_are_spelled_only_in_the_merge_registry() -> None:
    try:
        from pft.soups.registry import MERGE_METHODS
    except ModuleNotFoundError as exc:
        pytest.skip(f"the merge registry pft.soups.registry does not exist yet ({exc})")
    bad = _spelled(set(MERGE_METHODS))
    assert not bad, (
        "soup-method names spelled outside pft/soups/ (take them from "
        "pft.soups.registry.MERGE_METHODS):\n  " + "\n  ".join(bad)
    )


def test_the_worker_is_thin() -> None:
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for name, path in modules().items()
        if name.split(".")[0] == "worker"
    }
    total = sum(sizes.values())
    listing = ", ".join(f"{p} {n}" for p, n in sorted(sizes.items(), key=lambda x: -x[1]))
    assert total < WORKER_MAX_LINES, f"worker/ has {total} lines (< {WORKER_MAX_LINES}): {listing}"
