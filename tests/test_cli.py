"""A user's mistake ends the CLI with one line on stderr and status 2; anything else keeps its traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from persona_spark.cli import main
from persona_spark.stages import STAGES


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("persona-spark ") and ": error: " in last
    return last


def test_a_bad_setting_is_one_line_and_status_2(capsys):
    assert main(["generate", "--set", "labeling.chunk_size=0"]) == 2
    assert "labeling.chunk_size" in _error_line(capsys)
    assert main(["generate", "--set", "gplr.budgett=3"]) == 2
    assert "gplr.budgett: unknown key" in _error_line(capsys)


def test_a_missing_config_file_through_the_entry_point():
    done = subprocess.run([sys.executable, "-m", "persona_spark.cli", "generate", "--conf", "no/such.yaml"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["persona-spark generate: error: config file not found: no/such.yaml"]


def test_debug_shows_the_traceback(capsys):
    assert main(["generate", "--debug", "--set", "labeling.chunk_size=0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "labeling.chunk_size" in err.strip().splitlines()[-1]


def test_a_missing_table_names_it(spark, tmp_path, capsys):
    assert main(["build-graph", "--set", f"root={tmp_path}"]) == 2
    assert "'transactions' does not exist" in _error_line(capsys)


def test_a_missing_source_path_names_it(spark, tmp_path, capsys):
    missing = tmp_path / "lines.csv"
    assert main(["ingest", "--set", f"root={tmp_path}", "--set", f"ingest.source={missing}"]) == 2
    assert str(missing) in _error_line(capsys)


def test_a_missing_source_column_names_it(spark, tmp_path, capsys):
    source = tmp_path / "lines.csv"
    source.write_text("customer_id,order_id,item_id,quantity,unit_price,ts\nc1,o1,i1,1,1.0,2024-01-01 10:00:00\n")
    assert main(["ingest", "--set", f"root={tmp_path}", "--set", f"ingest.source={source}"]) == 2
    assert "'item_name'" in _error_line(capsys)


def test_anything_else_keeps_its_traceback(spark, monkeypatch):
    def broken(ctx):
        """A stage with a bug."""
        raise RuntimeError("a bug")

    monkeypatch.setitem(STAGES, "generate", broken)
    with pytest.raises(RuntimeError, match="a bug"):  # sys.exit(main()) prints it and exits with 1
        main(["generate"])
