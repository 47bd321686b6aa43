"""A user's mistake in the data (a missing table, source file or column) ends the CLI with one line on stderr and
status 2; anything else keeps its traceback."""

from __future__ import annotations

import pytest

from persona_spark.cli import main
from persona_spark.stages import STAGES
from tests.conftest import user_error_line


def test_a_missing_table_names_it(spark, tmp_path, capsys):
    assert main(["build-graph", "--set", f"root={tmp_path}"]) == 2
    assert "'transactions' does not exist" in user_error_line(capsys)


def test_a_missing_source_path_names_it(spark, tmp_path, capsys):
    missing = tmp_path / "lines.csv"
    assert main(["ingest", "--set", f"root={tmp_path}", "--set", f"ingest.source={missing}"]) == 2
    assert str(missing) in user_error_line(capsys)


def test_a_missing_source_column_names_it(spark, tmp_path, capsys):
    source = tmp_path / "lines.csv"
    source.write_text("customer_id,order_id,item_id,quantity,unit_price,ts\nc1,o1,i1,1,1.0,2024-01-01 10:00:00\n")
    assert main(["ingest", "--set", f"root={tmp_path}", "--set", f"ingest.source={source}"]) == 2
    assert "'item_name'" in user_error_line(capsys)


def test_anything_else_keeps_its_traceback(spark, monkeypatch):
    def broken(ctx):
        """A stage with a bug."""
        raise RuntimeError("a bug")

    monkeypatch.setitem(STAGES, "generate", broken)
    with pytest.raises(RuntimeError, match="a bug"):  # sys.exit(main()) prints it and exits with 1
        main(["generate"])
