"""The rooms of `dcr` depend on each other one way only: read from the sources, no pair of subpackages
imports each other (imports inside functions included); both packages declare their type hints."""

from __future__ import annotations

import ast
from pathlib import Path

import dcr
import dcr_kernels

ROOT = Path(dcr.__file__).parent


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
