"""The table layer's contract, run against both engines and catalog mode: real Delta tables,
versioned, mergeable, atomic per write, readable by the other engine."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from persona_spark.config import TablesConf
from persona_spark.tables.store import TableStore

ENGINES = ["spark", "delta-rs"]


def _people(spark, n=5):
    return spark.range(n).select(
        F.col("id").cast("int").alias("key"),
        F.concat(F.lit("name-"), F.col("id").cast("string")).alias("name"),
        F.array(F.col("id").cast("double"), F.lit(0.5)).alias("vec"),
        F.timestamp_seconds(F.col("id") * 86400).alias("ts"),
    )


@pytest.fixture(params=ENGINES + ["catalog"])
def any_store(request, spark, tmp_path):
    """A store of each kind: the connector on paths, delta-rs on paths, the connector on catalog tables."""
    if request.param == "catalog":
        schema = "select"  # a reserved word: every part of the name must be quoted
        spark.sql(f"CREATE SCHEMA IF NOT EXISTS `spark_catalog`.`{schema}`")
        yield TableStore(spark, TablesConf(catalog="spark_catalog", schema=schema, names={"people": "table"}))
        spark.sql(f"DROP SCHEMA `spark_catalog`.`{schema}` CASCADE")
    else:
        yield TableStore(spark, TablesConf(root=str(tmp_path / "tables"), backend=request.param))


# ---- the contract: every engine and mode ---------------------------------------------------------
def test_overwrite_append_and_time_travel_with_schema_change(any_store, spark):
    assert any_store.version("people") is None and not any_store.exists("people")
    any_store.write_table(_people(spark, 3), "people")
    assert any_store.exists("people") and any_store.version("people") == 0
    any_store.write_table(_people(spark, 5).drop("vec"), "people")  # the schema changes on overwrite
    any_store.write_table(_people(spark, 2).drop("vec"), "people", mode="append")
    assert any_store.version("people") == 2
    assert any_store.read_table("people", version=0).count() == 3
    assert "vec" in any_store.read_table("people", version=0).columns
    assert "vec" not in any_store.read_table("people").columns
    assertDataFrameEqual(any_store.read_table("people", version=1), _people(spark, 5).drop("vec"))
    assert any_store.read_table("people").count() == 7


def test_merge_updates_matches_and_inserts_new_keys(any_store, spark):
    any_store.write_table(_people(spark, 4), "people")
    changes = spark.createDataFrame(
        [(2, "changed", [9.0], None), (7, "new", [7.0], None)], "key int, name string, vec array<double>, ts timestamp"
    )
    any_store.merge_table(changes, "people", keys=["key"])
    assert any_store.version("people") == 1
    rows = {r["key"]: r["name"] for r in any_store.read_table("people").collect()}
    assert rows == {0: "name-0", 1: "name-1", 2: "changed", 3: "name-3", 7: "new"}


def test_merge_with_tombstones_replaces_a_changed_set_in_one_commit(any_store, spark):
    rows = [(1, 0, 0.5), (1, 1, 0.4), (2, 3, 0.9)]
    any_store.write_table(spark.createDataFrame(rows, "user_idx int, persona_idx int, score double"), "sets")
    change = spark.createDataFrame(
        [(1, 1, 0.0, True), (1, 2, 0.7, False), (1, 0, 0.6, False)],
        "user_idx int, persona_idx int, score double, gone boolean",
    )
    any_store.merge_table(change, "sets", keys=["user_idx", "persona_idx"], delete_when="gone")
    got = sorted(tuple(r) for r in any_store.read_table("sets").collect())
    assert got == [(1, 0, 0.6), (1, 2, 0.7), (2, 3, 0.9)]
    assert any_store.version("sets") == 1 and "gone" not in any_store.read_table("sets").columns


def test_replace_rows_swaps_one_batch_in_one_commit_and_adds_the_column_to_an_older_table(any_store, spark):
    def batch(name, n):
        return _people(spark, n).drop("vec").withColumn("batch", F.lit(name))

    any_store.write_table(_people(spark, 2).drop("vec"), "people")  # written before the table had batches
    any_store.replace_rows(batch("a", 3), "people", "batch", "a")
    any_store.replace_rows(batch("b'c", 2), "people", "batch", "b'c")
    any_store.replace_rows(batch("a", 4), "people", "batch", "a")  # the same batch again: its rows are replaced
    assert any_store.version("people") == 3
    counts = {r["batch"]: r["count"] for r in any_store.read_table("people").groupBy("batch").count().collect()}
    assert counts == {None: 2, "a": 4, "b'c": 2}


def test_merge_into_missing_table_creates_it(any_store, spark):
    any_store.merge_table(_people(spark, 2), "fresh", keys=["key"])
    assert any_store.read_table("fresh").count() == 2


def test_failed_write_leaves_previous_version_readable(any_store, spark):
    any_store.write_table(_people(spark, 3), "people")

    @F.udf("int")
    def explode_on_two(key):
        if key == 2:
            raise RuntimeError("stage failed mid-write")
        return key

    failing = _people(spark, 3).withColumn("key", explode_on_two("key"))
    with pytest.raises(Exception, match="stage failed mid-write"):
        any_store.write_table(failing, "people")
    assert any_store.version("people") == 0
    assert sorted(r["key"] for r in any_store.read_table("people").collect()) == [0, 1, 2]


def test_merge_rejects_missing_key_column(any_store, spark):
    any_store.write_table(_people(spark, 2), "people")
    with pytest.raises(ValueError, match="key columns \\['nope'\\]"):
        any_store.merge_table(_people(spark, 2), "people", keys=["nope"])


def test_missing_table_error_names_table_and_location(any_store):
    with pytest.raises(FileNotFoundError, match="'nowhere' does not exist"):
        any_store.read_table("nowhere")


# ---- the engines read each other's tables ----------------------------------------------------------
@pytest.mark.parametrize("writer,reader", [("spark", "delta-rs"), ("delta-rs", "spark")])
def test_each_engine_reads_the_others_tables_and_merges(spark, tmp_path, writer, reader):
    root = str(tmp_path / "tables")
    first, second = (TableStore(spark, TablesConf(root=root, backend=b)) for b in (writer, reader))
    first.write_table(_people(spark, 3), "people")
    assertDataFrameEqual(second.read_table("people"), _people(spark, 3))
    second.merge_table(_people(spark, 5).where("key >= 2"), "people", keys=["key"])
    assert first.version("people") == 1
    assertDataFrameEqual(first.read_table("people"), _people(spark, 5))
    assert second.read_table("people", version=0).count() == 3


def test_connector_writes_a_log_that_delta_rs_reads(spark, tmp_path):
    store = TableStore(spark, TablesConf(root=str(tmp_path)))
    store.write_table(_people(spark), "people")
    location = Path(store.location("people"))
    commits = sorted((location / "_delta_log").glob("*.json"))
    assert [c.name for c in commits] == ["00000000000000000000.json"]
    actions = [json.loads(line) for line in commits[0].read_text().splitlines()]
    assert any("metaData" in a for a in actions) and any("add" in a for a in actions)
    via_delta_rs = DeltaTable(str(location)).to_pyarrow_table().sort_by("key")
    assert via_delta_rs.column("vec").to_pylist()[3] == [3.0, 0.5]


def test_table_written_outside_the_store_by_delta_rs_is_read(spark, tmp_path):
    store = TableStore(spark, TablesConf(root=str(tmp_path)))
    write_deltalake(store.location("external"), pa.table({"key": pa.array([1, 2], pa.int32()), "name": ["a", "b"]}))
    assert sorted((r["key"], r["name"]) for r in store.read_table("external").collect()) == [(1, "a"), (2, "b")]


# ---- naming and the delta-rs fallback's limits ------------------------------------------------------
def test_table_names_can_be_remapped(spark, tmp_path):
    store = TableStore(spark, TablesConf(root=str(tmp_path), names={"people": "crm_people"}))
    store.write_table(_people(spark, 1), "people")
    assert (tmp_path / "crm_people" / "_delta_log").is_dir()


def test_catalog_names_are_quoted_three_part_names(spark):
    store = TableStore(spark, TablesConf(catalog="spark_catalog", schema="a`b", names={"people": "crm people"}))
    assert store.location("people") == "`spark_catalog`.`a``b`.`crm people`"


def test_uri_roots_are_joined_without_folding_the_scheme(spark):
    store = TableStore(spark, TablesConf(root="s3a://bucket/persona/tables/"))
    assert store.location("personas") == "s3a://bucket/persona/tables/personas"


@pytest.mark.parametrize("conf,reason", [
    (dict(root="s3a://bucket/tables"), "not a local path"),
    (dict(catalog="spark_catalog", schema="s"), "catalog tables need the connector"),
])
def test_delta_rs_is_refused_off_a_single_local_disk(spark, conf, reason):
    with pytest.raises(ValueError, match=reason):
        TableStore(spark, TablesConf(backend="delta-rs", **conf))


def test_append_may_add_a_column_on_the_connector(spark, tmp_path):
    """A newer release appends rows with a column an older one did not write (run records, quarantine)."""
    store = TableStore(spark, TablesConf(root=str(tmp_path)))
    store.write_table(_people(spark, 2).drop("vec"), "runs", mode="append")
    store.write_table(_people(spark, 3), "runs", mode="append")
    rows = store.read_table("runs")
    assert "vec" in rows.columns and rows.count() == 5 and rows.filter("vec IS NULL").count() == 2
