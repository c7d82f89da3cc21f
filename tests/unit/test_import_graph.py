"""peftkit's modules form no import cycle: not at the top of a module, not inside a function.

A cycle hidden in a function-level import still ties two modules together (neither can be understood or
changed alone) and breaks as soon as someone moves the import to the top. The graph is read from the source
(ast), so every import counts, wherever it stands.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "peftkit"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """peftkit modules this file imports: `from peftkit.x import y` names peftkit.x.y if that is a module."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    # a package's own submodules importing siblings is not a dependency of the package on itself
    return {m for m in found if m in known and m != here and not m.startswith(here + ".")} - {"peftkit"}


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(f) for f in files}
    return {module_name(f): imported_modules(f, known) for f in files}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_function_level_imports():
    assert "peftkit.recipe" in import_graph()["peftkit.cli"]  # cli imports load_recipe inside cmd_train


def test_no_import_cycles_in_peftkit():
    assert cycles(import_graph()) == []


# ---------------------------------------------------------------------------------------------
# Folder floors: a module imports its own folder and folders on lower floors, never its floor's
# neighbours or anything above (function-level imports included). Top-level modules are boxes too.
# ---------------------------------------------------------------------------------------------

FLOORS = (
    ("__init__", "errors", "defaults"),  # the version, the one exception type, the quickstart's data script
    ("core", "recipe"),
    ("runs",),
    ("data",),
    ("model",),
    ("evaluation",),
    ("trainer",),
    ("inference",),
    ("tasks",),
    ("run",),
    ("init", "augment", "merge", "push", "report", "serve", "sweep"),  # the command folders
    ("auto",),  # a command built on two others: init's recipe writer and sweep's study
    ("cli",),
    ("__main__",),
)
FLOOR_OF = {box: level for level, boxes in enumerate(FLOORS) for box in boxes}


def box_of(module: str) -> str:
    """The folder (or top-level module) a module belongs to: peftkit.runs.read -> runs, peftkit.cli -> cli."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def folder_arrows(graph: dict[str, set[str]]) -> dict[tuple[str, str], list[str]]:
    """(importing box, imported box) -> the module imports behind that arrow."""
    arrows: dict[tuple[str, str], list[str]] = {}
    for module, imported in graph.items():
        for other in imported:
            if box_of(module) != box_of(other):
                arrows.setdefault((box_of(module), box_of(other)), []).append(f"{module} -> {other}")
    return arrows


def floor_violations(graph: dict[str, set[str]]) -> list[str]:
    """Each import of a box on the same floor or higher, and each box that has no floor."""
    found = []
    for (low, high), imports in sorted(folder_arrows(graph).items()):
        if low not in FLOOR_OF or high not in FLOOR_OF:
            found.append(f"{low if low not in FLOOR_OF else high}: no floor in FLOORS ({imports[0]})")
        elif FLOOR_OF[high] >= FLOOR_OF[low]:
            found += [f"{i} (floor {FLOOR_OF[low]} imports floor {FLOOR_OF[high]})" for i in imports]
    return found


def test_the_floor_check_finds_an_import_up_and_one_sideways():
    graph = {"peftkit.runs.read": {"peftkit.tasks"}, "peftkit.merge.check": {"peftkit.push.card"},
             "peftkit.tasks": {"peftkit.runs.read"}, "peftkit.runs.layout": {"peftkit.runs.read"}}
    assert floor_violations(graph) == ["peftkit.merge.check -> peftkit.push.card (floor 10 imports floor 10)",
                                       "peftkit.runs.read -> peftkit.tasks (floor 2 imports floor 8)"]
    assert floor_violations({"peftkit.newfolder.x": {"peftkit.errors"}}) == [
        "newfolder: no floor in FLOORS (peftkit.newfolder.x -> peftkit.errors)"]


def test_every_folder_imports_only_lower_floors():
    found = floor_violations(import_graph())
    assert not found, "move the code to the floor it belongs on:\n" + "\n".join(found)


if __name__ == "__main__":  # the floors as they are, and the arrows between boxes (for notes on the layout)
    arrows = folder_arrows(import_graph())
    for level, boxes in enumerate(FLOORS):
        print(f"floor {level}: " + ", ".join(f"{b} -> {sorted(h for lo, h in arrows if lo == b)}" for b in boxes))
    print(f"{len(FLOOR_OF)} boxes on {len(FLOORS)} floors, {len(arrows)} arrows between them")
