"""The linters run as tests: ruff, mypy --strict and the import contracts must be clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).parent.parent


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False,
                          timeout=300)


def test_ruff() -> None:
    """ruff finds nothing in prober/, tests/, tools/ and examples/sidekiq-alive."""
    done = _run(sys.executable, "-m", "ruff", "check", "prober", "tests", "tools",
                "examples/sidekiq-alive")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict() -> None:
    """mypy --strict (configured in pyproject.toml) finds nothing."""
    done = _run(sys.executable, "-m", "mypy")
    assert done.returncode == 0, done.stdout + done.stderr


def test_import_contracts() -> None:
    """lint-imports (pyproject.toml's layers, and the core importing no I/O) finds nothing."""
    done = _run(str(Path(sys.executable).with_name("lint-imports")))
    assert done.returncode == 0, done.stdout + done.stderr


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The groups of modules that import each other, directly or through others (Tarjan)."""
    imports = {module: sorted(graph.find_modules_directly_imported_by(module))
               for module in graph.modules}
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        order[module] = low[module] = len(order)
        stack.append(module)
        for imported in imports[module]:
            if imported not in order:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], order[imported])
        if low[module] == order[module]:
            group = stack[stack.index(module):]
            del stack[stack.index(module):]
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in sorted(imports):
        if module not in order:
            visit(module)
    return cycles


def test_no_import_cycle() -> None:
    """No prober module imports itself through others, lazy imports inside functions included."""
    assert import_cycles(grimp.build_graph("prober")) == []


def test_import_cycles_are_found() -> None:
    """The cycle finder sees a cycle through three modules, and nothing in a chain."""
    graph = grimp.ImportGraph()
    for module in ("a", "b", "c", "d"):
        graph.add_module(module)
    graph.add_import(importer="a", imported="b")
    graph.add_import(importer="b", imported="c")
    assert import_cycles(graph) == []
    graph.add_import(importer="c", imported="a")
    assert import_cycles(graph) == [["a", "b", "c"]]
