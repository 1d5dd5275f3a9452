"""The rooms of `dcr` depend on each other one way only: read from the sources, no pair of subpackages
imports each other and no module imports itself through others (imports inside functions included); imports
sit at the top of a file unless a reason is stated; both packages declare their type hints."""

from __future__ import annotations

import ast
from pathlib import Path

import dcr
import dcr_kernels

ROOT = Path(dcr.__file__).parent
KERNELS = Path(dcr_kernels.__file__).parent
DEFERRED = "# deferred imports:"  # a file-level statement of why imports wait for the function that needs them


def _room_imports() -> dict[str, set[str]]:
    rooms = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    edges: dict[str, set[str]] = {room: set() for room in rooms}
    for room in rooms:
        for path in (ROOT / room).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
                names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
                for name in names:
                    parts = name.split(".")
                    if parts[0] == "dcr" and len(parts) > 1 and parts[1] in rooms and parts[1] != room:
                        edges[room].add(parts[1])
    return edges


def test_no_two_subpackages_import_each_other():
    edges = _room_imports()
    assert edges["training"] and edges["evaluation"]  # the graph was read
    pairs = sorted((a, b) for a in edges for b in edges[a] if a < b and a in edges.get(b, set()))
    assert not pairs, f"subpackages importing each other: {pairs}"


def test_packages_declare_their_type_hints():
    """PEP 561: both packages ship py.typed (listed in pyproject's package-data, so wheels carry it)."""
    for package in (dcr, dcr_kernels):
        assert (Path(package.__file__).parent / "py.typed").is_file(), package.__name__


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_graph() -> dict[str, set[str]]:
    """Module -> the `dcr` modules it imports; `from package import module` counts as importing that module."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                ]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def test_no_module_imports_itself_through_others():
    graph = _module_graph()
    assert "dcr.prompts.sets" in graph and graph["dcr.prompts.sets"]  # the graph was read
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                circles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def _guards_import_error(node: ast.Try) -> bool:
    names = (
        {n.id for h in node.handlers for n in ast.walk(h.type) if isinstance(n, ast.Name)} if node.handlers else set()
    )
    return bool(names & {"ImportError", "ModuleNotFoundError"})


def _late_imports(tree: ast.AST) -> list[int]:
    """Lines of imports inside functions that neither guard an optional dependency (try / except ImportError)
    nor sit in a file that states why its imports are deferred."""
    lines: list[int] = []

    def walk(node: ast.AST, in_function: bool, guarded: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)) and in_function and not guarded:
                lines.append(child.lineno)
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            walk(child, inner, guarded or (isinstance(child, ast.Try) and _guards_import_error(child)))

    walk(tree, False, False)
    return lines


def test_imports_sit_at_the_top_unless_a_reason_is_stated():
    late = []
    for path in [*ROOT.rglob("*.py"), *KERNELS.rglob("*.py")]:
        text = path.read_text()
        if DEFERRED not in text:
            late += [f"{path.relative_to(ROOT.parent)}:{line}" for line in _late_imports(ast.parse(text))]
    assert not late, f"imports inside functions without a stated reason: {late}"
