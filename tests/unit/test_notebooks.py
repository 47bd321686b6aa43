"""The notebooks are Databricks source files: a title cell first, then code."""

from __future__ import annotations

from tests.notebook_world import NOTEBOOKS, cells


def test_notebooks_are_databricks_source_files():
    names = sorted(p.name for p in NOTEBOOKS.glob("*.py"))
    assert names == ["01_quick_start.py", "02_gplr_with_llm_endpoint.py", "03_explore_personas.py",
                     "04_recommender_results.py"]
    for name in names:
        kinds = [kind for kind, _ in cells(NOTEBOOKS / name)]
        assert kinds[0] == "md" and "code" in kinds, f"{name}: starts with a title cell and has code"
