"""The package's module structure: no import circle, every module importable on its own, none too long to read."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_sanity"
MAX_LINES = 800
"""Issue #22: a module longer than this does more than one thing."""


def package_imports(path: Path) -> set[str]:
    """The package modules ``path`` imports anywhere: at module top, under ``TYPE_CHECKING``, or inside a function
    (a late import hides a circle, it does not remove it)."""
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            if node.module.startswith("lightning_sanity."):
                imported.add(node.module.removeprefix("lightning_sanity."))
            elif node.module == "lightning_sanity":
                imported.update(alias.name for alias in node.names if (PACKAGE / f"{alias.name}.py").exists())
        elif isinstance(node, ast.Import):
            imported.update(
                alias.name.removeprefix("lightning_sanity.")
                for alias in node.names
                if alias.name.startswith("lightning_sanity.")
            )
    return imported


def import_graph() -> dict[str, set[str]]:
    modules = {path.stem: path for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    return {name: package_imports(path) & modules.keys() for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as the list of modules along it, ``None`` if it has none."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for successor in sorted(graph.get(node, ())):
            cycle = visit(successor, [*path, node])
            if cycle is not None:
                return cycle
        done.add(node)
        return None

    return next((cycle for node in sorted(graph) if (cycle := visit(node, [])) is not None), None)


def test_find_cycle_sees_a_late_import_circle() -> None:
    assert find_cycle({"confusion": {"losses"}, "losses": {"confusion"}}) == ["confusion", "losses", "confusion"]
    assert find_cycle({"confusion": {"losses", "outputs"}, "losses": {"outputs"}, "outputs": set()}) is None


def test_the_package_has_no_import_circle() -> None:
    assert find_cycle(import_graph()) is None


def test_every_module_imports_on_its_own() -> None:
    """Each module imported first, in a fresh package (its ``sys.modules`` entries cleared before each one)."""
    names = sorted(f"lightning_sanity.{path.stem}" for path in PACKAGE.glob("*.py") if path.stem != "__init__")
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'lightning_sanity' or m.startswith('lightning_sanity.')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_no_module_is_too_long_to_read() -> None:
    lengths = {path.name: len(path.read_text().splitlines()) for path in PACKAGE.glob("*.py")}
    assert {name: lines for name, lines in lengths.items() if lines > MAX_LINES} == {}
