"""The package's import graph against its layers: which arrows run back up, which modules form cycles.

``python -m tests.architecture`` prints the counts; ``tests/unit/test_architecture.py`` requires both
to be zero. Every import counts, also one inside a function: a lazy import that dodges a cycle is
still an arrow.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

PACKAGE = "persona_spark"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# Lowest first. A module may import from its own layer and those below; a name covers its submodules.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "redaction", "tables", "tables.storage", "testing"),
    ("config",),
    ("runtime",),
    ("tables.store", "personas"),
    ("ingest", "graph", "sampling", "evaluate", "generate", "assignment", "intervals", "audit"),
    ("affinity", "labeling"),
    ("explore", "refresh", "segment", "gplr", "audience", "recommend", "report", "tracking"),
    ("stages",),
    ("api", "cli", "notebook", ""),
]


def modules() -> dict[str, Path]:
    """``dotted name below the package -> file`` ('' is the package itself)."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(found: dict[str, Path]) -> set[tuple[str, str]]:
    """Every ``(importer, imported)`` pair between the package's modules."""
    arrows = set()
    for name, path in found.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE:
                base = node.module.removeprefix(PACKAGE).lstrip(".")
                for alias in node.names:
                    sub = f"{base}.{alias.name}".lstrip(".")
                    targets.append(sub if sub in found else base)
            elif isinstance(node, ast.Import):
                targets = [a.name.removeprefix(PACKAGE).lstrip(".") for a in node.names if a.name.split(".")[0] == PACKAGE]
            arrows |= {(name, target) for target in targets if target != name}
    return arrows


def layer(name: str) -> int:
    """The layer of the longest entry naming ``name`` or a package above it."""
    best, where = -1, None
    for i, names in enumerate(LAYERS):
        for entry in names:
            if (entry == name or (entry and name.startswith(entry + ".")) or (entry == "" and name == "")) \
                    and len(entry) > best:
                best, where = len(entry), i
    if where is None:
        raise KeyError(f"{PACKAGE}.{name} is in no layer of tests/architecture.py")
    return where


def upward(arrows: set[tuple[str, str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, b in arrows if layer(b) > layer(a))


def cycles(arrows: set[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan). A package importing its own
    submodule, and a submodule importing its package, is one arrow each way, so it counts too."""
    graph: dict[str, list[str]] = {}
    for a, b in arrows:
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def report() -> dict:
    arrows = imports(modules())
    up, loops = upward(arrows), cycles(arrows)
    return {"modules": len(modules()), "arrows": len(arrows), "upward": len(up), "cycles": len(loops),
            "upward_arrows": [f"{a} -> {b}" for a, b in up], "cycle_members": loops}


if __name__ == "__main__":
    print(json.dumps(report()))
