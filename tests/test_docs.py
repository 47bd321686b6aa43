"""The docs: the site builds strictly, the generated pages are current, and the README's code runs as written.

The README's CLI quick start and Python snippet are extracted from README.md itself and run in a subprocess
from an empty working directory, so a command that stops working there fails here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import persona_spark

REPO = Path(__file__).resolve().parents[1]
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
    assert "persona_spark.gplr.GPLR" in (site / "reference" / "api" / "index.html").read_text()


def quick_start_commands() -> list[str]:
    """The README's shell block under "Quick start" that calls persona-spark."""
    blocks = [b for b in code_blocks(README.read_text(), "bash") if b.lstrip().startswith("persona-spark ")]
    assert blocks, "README.md has no quick-start block of persona-spark commands"
    return [line.split("#")[0].strip() for line in blocks[0].splitlines() if line.split("#")[0].strip()]


def cli_environment() -> dict[str, str]:
    """The test's interpreter's scripts first on PATH, so ``persona-spark`` is this checkout's."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


@pytest.mark.slow(minutes=8)
def test_readme_cli_quick_start_runs_as_written(tmp_path):
    commands = quick_start_commands()
    assert commands[0].startswith("persona-spark generate") and commands[-1].startswith("persona-spark evaluate")
    for command in commands:
        done = subprocess.run(command, shell=True, cwd=tmp_path, env=cli_environment(), capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, f"{command}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    summary = done.stdout[done.stdout.index("{"):]
    assert '"micro_f1"' in summary
    assert (tmp_path / "data" / "tables" / "personas" / "_delta_log").is_dir()


@pytest.mark.slow(minutes=6)
@pytest.mark.skipif(not hasattr(persona_spark, "GPLR"),
                    reason="the README's Python snippet uses the public API (persona_spark.GPLR, demo_shop, "
                           "spark_session), which this checkout does not export yet")
def test_readme_python_snippet_runs_as_written(tmp_path):
    snippets = [b for b in code_blocks(README.read_text(), "python") if "import persona_spark" in b]
    assert snippets, "README.md has no Python snippet"
    snippet = snippets[0]
    assert len(snippet.strip().splitlines()) <= 12
    (tmp_path / "snippet.py").write_text(snippet)
    done = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, env=cli_environment(), capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "persona" in done.stdout


def test_readme_links_resolve():
    """Relative links of the README point at files of the repository (the docs site checks its own)."""
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text()):
        if "://" not in target:
            assert (REPO / target).exists(), target


def test_docs_do_not_name_paths_outside_the_repository():
    for path in [README, *sorted((REPO / "docs").rglob("*.md"))]:
        assert "../shared" not in path.read_text(), path

