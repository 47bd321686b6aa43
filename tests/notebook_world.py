"""The notebooks as Databricks source files: their cells, and running their code cells the way a kernel does."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import REPO_ROOT

NOTEBOOKS = REPO_ROOT / "notebooks"
HEADER = "# Databricks notebook source"
SEPARATOR = "# COMMAND ----------"


def cells(path: Path) -> list[tuple[str, str]]:
    """``(kind, source)`` per cell, kind 'md' for ``# MAGIC %md`` cells and 'code' otherwise."""
    text = path.read_text()
    assert text.startswith(HEADER + "\n"), f"{path.name} must start with {HEADER!r}"
    parts = [p.strip("\n") for p in text[len(HEADER):].split("\n" + SEPARATOR + "\n")]
    out = []
    for part in parts:
        lines = [line for line in part.splitlines() if line.strip()]
        if lines and all(line.startswith("# MAGIC") for line in lines):
            assert lines[0] == "# MAGIC %md", f"{path.name}: a MAGIC cell that is not markdown: {lines[0]!r}"
            out.append(("md", part))
        else:
            out.append(("code", part))
    return out


def execute(name: str) -> dict:
    """Run a notebook's code cells in order in one namespace (as a notebook kernel would) and return it."""
    path = NOTEBOOKS / name
    namespace: dict = {"__name__": "__main__"}
    for number, (kind, source) in enumerate(cells(path), start=1):
        if kind == "code":
            exec(compile(source, f"{path}:cell{number}", "exec"), namespace)  # noqa: S102
    return namespace
