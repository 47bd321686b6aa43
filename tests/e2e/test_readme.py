"""The README's code runs as written: its CLI quick start and its Python snippet, extracted from README.md
and run in a subprocess from an empty working directory, so a command that stops working there fails here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_docs import README, code_blocks


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
