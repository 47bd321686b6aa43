"""The docs: the README stays a front door, the site builds strictly, the generated pages are current."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"


def code_blocks(markdown: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", markdown, flags=re.S | re.M)


def test_readme_is_short_and_starts_with_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    first = code_blocks(text, "bash")[0]
    assert [line.split("#")[0].strip() for line in first.strip().splitlines()] == ["make demo", "make test"]


def test_generated_reference_pages_are_current():
    done = subprocess.run([sys.executable, "docs/gen_reference.py", "--check"], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


def test_benchmarks_page_is_current():
    done = subprocess.run([sys.executable, "benchmarks/render_docs.py", "--check"], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


def test_every_results_line_says_how_where_and_when():
    for path in sorted((REPO / "benchmarks" / "results").glob("*.jsonl")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            record = json.loads(line)
            missing = {"command", "machine", "date"} - record.keys()
            assert not missing, f"{path.name}:{number} lacks {sorted(missing)}"


def test_site_builds_strictly(tmp_path):
    """``mkdocs build --strict``: every page in the nav exists, every link and anchor resolves, the API
    page's objects import."""
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (site / "benchmarks" / "index.html").exists()
    assert "persona_spark.api.GPLR" in (site / "reference" / "api" / "index.html").read_text()


def test_readme_links_resolve():
    """Relative links of the README point at files of the repository (the docs site checks its own)."""
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text()):
        if "://" not in target:
            assert (REPO / target).exists(), target


def test_docs_do_not_name_paths_outside_the_repository():
    for path in [README, *sorted((REPO / "docs").rglob("*.md"))]:
        assert "../shared" not in path.read_text(), path
