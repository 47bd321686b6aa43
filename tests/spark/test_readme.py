"""The README's code runs as written: its CLI quick start and its Python snippet, extracted from README.md and
run from an empty working directory, so a command that stops working there fails here.

Both run in this test process on its Spark session, as they would in a notebook or one shell on a warm
cluster: every stage is ``persona_spark.cli.main`` with the command's own arguments, the function the
``persona-spark`` entry point calls (checked once through the installed script).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from persona_spark import cli
from tests.unit.test_docs import README, code_blocks


def quick_start_commands() -> list[str]:
    """The README's shell block under "Quick start" that calls persona-spark."""
    blocks = [b for b in code_blocks(README.read_text(), "bash") if b.lstrip().startswith("persona-spark ")]
    assert blocks, "README.md has no quick-start block of persona-spark commands"
    return [line.split("#")[0].strip() for line in blocks[0].splitlines() if line.split("#")[0].strip()]


def test_the_persona_spark_script_is_the_cli_main():
    scripts = Path(sys.executable).parent
    env = {**os.environ, "PATH": os.pathsep.join([str(scripts), os.environ.get("PATH", "")])}
    done = subprocess.run(["persona-spark", "--help"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: persona-spark") and "gplr" in done.stdout


@pytest.mark.slow(minutes=3)
def test_readme_cli_quick_start_runs_as_written(spark, tmp_path, monkeypatch, capsys):
    commands = quick_start_commands()
    assert commands[0].startswith("persona-spark generate") and commands[-1].startswith("persona-spark evaluate")
    monkeypatch.chdir(tmp_path)
    for command in commands:
        program, *argv = shlex.split(command)
        assert program == "persona-spark"
        assert cli.main(argv) == 0, f"{command}: {capsys.readouterr().err[-3000:]}"
        printed = capsys.readouterr().out
    summary = json.loads(printed[printed.index("{"):])
    assert summary["stage"] == "evaluate" and 0 < summary["micro_f1"] <= 1
    assert (tmp_path / "data" / "tables" / "personas" / "_delta_log").is_dir()


@pytest.mark.slow(minutes=2)
def test_readme_python_snippet_runs_as_written(spark, tmp_path, monkeypatch, capsys):
    snippets = [b for b in code_blocks(README.read_text(), "python") if "import persona_spark" in b]
    assert snippets, "README.md has no Python snippet"
    snippet = snippets[0]
    assert len(snippet.strip().splitlines()) <= 12
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}
    exec(compile(snippet, "README.md:python", "exec"), namespace)  # noqa: S102
    assert "persona" in capsys.readouterr().out
    orders, rows = namespace["orders"], namespace["result"].personas
    assert rows.columns == ["customer_id", "user_idx", "persona_idx", "persona", "score", "rank", "source",
                            "probability"]
    customers = orders.select("customer_id").distinct()
    assert rows.select("customer_id").distinct().count() == customers.count()
    assert rows.join(customers, "customer_id", "left_anti").count() == 0
    assert rows.filter(F.col("persona").isNull()).count() == 0
    assert {r.source for r in rows.select("source").distinct().collect()} == {"llm", "propagated"}
    assert namespace["result"].summary["budget"] == round(0.05 * customers.count())
    assert list(tmp_path.iterdir()) == [], "the snippet writes nothing"
