"""data_prep's modules import each other without a loop, and the shared names live in data_prep.units."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _project_imports(path: Path) -> set[str]:
    """Project modules a file imports, at the top level or inside functions (a lazy import is still a tie)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        modules = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
        names.update(m for m in modules if m.split(".")[0] in ("data_prep", "minialbert"))
    return names


def test_no_import_loop_in_data_prep_and_minialbert():
    graph = {}
    for package in ("data_prep", "minialbert"):
        for p in (REPO / package).rglob("*.py"):
            module = ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            graph[module] = {m for m in _project_imports(p) if m != module}
    loops, state = [], {}

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if target not in graph:
                continue
            if state.get(target) == "open":
                loops.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not loops, f"import loops: {[' -> '.join(loop) for loop in loops]}"


def test_shared_names_come_from_units():
    from data_prep import sources, units, windowing
    from minialbert import data

    assert data.mix64 is units.mix64 and windowing.mix64 is units.mix64
    assert sources.BROKEN_STREAM_ERRORS is units.BROKEN_STREAM_ERRORS
    assert units.mix64(0, 1) == 0xB285E918683657E4 and units.mix64(0, 1) != units.mix64(1, 0)
