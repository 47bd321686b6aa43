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


@pytest.mark.parametrize("content, message", [
    (b"customer_id,order_id,item_id,item_name,quantity,unit_price,ts\n", "has no lines"),
    (b"", "is empty (not even a header line)"),
])
def test_a_source_without_lines_is_refused(spark, tmp_path, capsys, content, message):
    source = tmp_path / "lines.csv"
    source.write_bytes(content)
    assert main(["ingest", "--set", f"root={tmp_path}", "--set", f"ingest.source={source}"]) == 2
    assert message in user_error_line(capsys)


def test_a_source_without_a_valid_line_writes_its_quarantine_and_no_transactions(spark, tmp_path, capsys):
    source = tmp_path / "lines.csv"
    source.write_bytes(b"customer_id,order_id,item_id,item_name,quantity,unit_price,ts\nNULL,o1,A,Mug,1,,\nc1,o2,A,Mug,NaN,,\n")
    assert main(["ingest", "--set", f"root={tmp_path}", "--set", f"ingest.source={source}"]) == 2
    line = user_error_line(capsys)
    assert "none of the 2 lines" in line and "'missing_customer_id': 1" in line and "'non_finite_quantity': 1" in line
    assert (tmp_path / "tables" / "quarantine" / "_delta_log").is_dir()
    assert not (tmp_path / "tables" / "transactions").exists()


def test_build_graph_refuses_a_graph_without_customers(spark, tmp_path, capsys):
    from persona_spark.cli import DOCUMENTED_COLUMNS
    from persona_spark.config import TablesConf
    from persona_spark.tables.store import TableStore

    empty = spark.createDataFrame([], DOCUMENTED_COLUMNS["transactions"])
    TableStore(spark, TablesConf(root=str(tmp_path / "tables"))).write_table(empty, "transactions")
    assert main(["build-graph", "--set", f"root={tmp_path}"]) == 2
    assert "build-graph: no customers" in user_error_line(capsys)
    assert not (tmp_path / "tables" / "users").exists()


def test_a_file_where_the_tables_root_should_be_is_named(spark, tmp_path, capsys):
    blocker = tmp_path / "tables"
    blocker.write_text("")
    assert main(["build-graph", "--set", f"tables.root={blocker}"]) == 2
    assert f"tables.root {blocker} must be a folder, but {blocker} is a file" in user_error_line(capsys)


def _audience(tmp_path, *settings):
    return main(["audience", "--set", f"root={tmp_path}", "--set", "audience.name=a", *settings])


def test_a_persona_file_that_is_not_yaml_is_one_line(spark, tmp_path, capsys):
    personas = tmp_path / "personas.yaml"
    personas.write_text("personas:\n  - name: [unclosed\n")
    assert _audience(tmp_path, "--set", f"personas={personas}", "--set", "audience.query=A") == 2
    assert f"persona set {personas}: not valid YAML" in user_error_line(capsys)


def test_an_audience_query_nested_3000_deep_is_one_line(spark, tmp_path, capsys):
    assert _audience(tmp_path, "--set", "audience.query=" + "!" * 3000 + "Pet Lover") == 2
    line = user_error_line(capsys)
    assert "nests deeper than 100 levels" in line and len(line) < 400
