"""A bad setting or a missing config file ends the CLI with one line on stderr and status 2 before any Spark
session starts; ``--debug`` keeps the traceback."""

from __future__ import annotations

import subprocess
import sys

from persona_spark.cli import main
from tests.conftest import user_error_line


def test_a_bad_setting_is_one_line_and_status_2(capsys):
    assert main(["generate", "--set", "labeling.chunk_size=0"]) == 2
    assert "labeling.chunk_size" in user_error_line(capsys)
    assert main(["generate", "--set", "gplr.budgett=3"]) == 2
    assert "gplr.budgett: unknown key" in user_error_line(capsys)


def test_a_missing_config_file_through_the_entry_point():
    done = subprocess.run([sys.executable, "-m", "persona_spark.cli", "generate", "--conf", "no/such.yaml"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["persona-spark generate: error: config file not found: no/such.yaml"]


def test_debug_shows_the_traceback(capsys):
    assert main(["generate", "--debug", "--set", "labeling.chunk_size=0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "labeling.chunk_size" in err.strip().splitlines()[-1]
