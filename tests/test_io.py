"""The table layer writes real Delta tables, versioned, mergeable, atomic per write."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from persona_spark.session import has_delta_connector


def _people(spark, n=5):
    return spark.range(n).select(
        F.col("id").cast("int").alias("key"),
        F.concat(F.lit("name-"), F.col("id").cast("string")).alias("name"),
        F.array(F.col("id").cast("double"), F.lit(0.5)).alias("vec"),
        F.timestamp_seconds(F.col("id") * 86400).alias("ts"),
    )


def test_write_produces_delta_log_readable_by_delta_rs(store, spark):
    df = _people(spark)
    version = store.write_table(df, "people")
    assert version == 0
    location = Path(store.location("people"))
    commits = sorted((location / "_delta_log").glob("*.json"))
    assert [c.name for c in commits] == ["00000000000000000000.json"]
    actions = [json.loads(line) for line in commits[0].read_text().splitlines()]
    assert any("metaData" in a for a in actions) and any("add" in a for a in actions)
    via_delta_rs = DeltaTable(str(location)).to_pyarrow_table().sort_by("key")
    assert via_delta_rs.column("name").to_pylist() == [f"name-{i}" for i in range(5)]
    assert via_delta_rs.column("vec").to_pylist()[3] == [3.0, 0.5]
    assertDataFrameEqual(store.read_table("people"), df)


def test_table_written_by_delta_rs_is_read_by_spark(store, spark, tmp_path):
    path = Path(store.location("external"))
    write_deltalake(str(path), pa.table({"key": pa.array([1, 2], pa.int32()), "name": ["a", "b"]}))
    rows = sorted((r["key"], r["name"]) for r in store.read_table("external").collect())
    assert rows == [(1, "a"), (2, "b")]


def test_versions_and_time_travel(store, spark):
    store.write_table(_people(spark, 3), "people")
    store.write_table(_people(spark, 5).drop("vec"), "people")  # schema changes on overwrite
    store.write_table(_people(spark, 2).drop("vec"), "people", mode="append")
    assert store.version("people") == 2
    assert store.read_table("people", version=0).count() == 3
    assert "vec" in store.read_table("people", version=0).columns
    assert store.read_table("people").count() == 7


def test_merge_updates_matches_and_inserts_new_keys(store, spark):
    store.write_table(_people(spark, 4), "people")
    changes = spark.createDataFrame(
        [(2, "changed", [9.0], None), (7, "new", [7.0], None)], "key int, name string, vec array<double>, ts timestamp"
    )
    store.merge_table(changes, "people", keys=["key"])
    rows = {r["key"]: r["name"] for r in store.read_table("people").collect()}
    assert rows == {0: "name-0", 1: "name-1", 2: "changed", 3: "name-3", 7: "new"}
    assert store.version("people") == 1


def test_merge_into_missing_table_creates_it(store, spark):
    store.merge_table(_people(spark, 2), "fresh", keys=["key"])
    assert store.read_table("fresh").count() == 2


def test_merge_rejects_missing_key_column(store, spark):
    store.write_table(_people(spark, 2), "people")
    with pytest.raises(ValueError, match="key columns \\['nope'\\]"):
        store.merge_table(_people(spark, 2), "people", keys=["nope"])


def test_failed_write_leaves_previous_version_readable(store, spark):
    store.write_table(_people(spark, 3), "people")

    @F.udf("int")
    def explode_on_two(key):
        if key == 2:
            raise RuntimeError("stage failed mid-write")
        return key

    failing = _people(spark, 3).withColumn("key", explode_on_two("key"))
    with pytest.raises(Exception, match="stage failed mid-write"):
        store.write_table(failing, "people")
    assert store.version("people") == 0
    assert sorted(r["key"] for r in store.read_table("people").collect()) == [0, 1, 2]


def test_missing_table_error_names_table_and_location(store):
    with pytest.raises(FileNotFoundError, match="'nowhere' does not exist"):
        store.read_table("nowhere")


def test_table_names_can_be_remapped(spark, tmp_path):
    from persona_spark.config import TablesConf
    from persona_spark.io import TableStore

    store = TableStore(spark, TablesConf(root=str(tmp_path), names={"people": "crm_people"}))
    store.write_table(_people(spark, 1), "people")
    assert (tmp_path / "crm_people" / "_delta_log").is_dir()


def test_connector_and_delta_rs_read_each_others_tables(spark, tmp_path):
    from persona_spark.config import TablesConf
    from persona_spark.io import TableStore

    if not has_delta_connector(spark):
        pytest.skip("the Spark Delta connector jars are not on the classpath (no Maven here); runs on clusters/Databricks")
    via_spark = TableStore(spark, TablesConf(root=str(tmp_path), backend="spark"))
    via_rs = TableStore(spark, TablesConf(root=str(tmp_path), backend="delta-rs"))
    via_spark.write_table(_people(spark, 3), "a")
    via_rs.write_table(_people(spark, 4), "b")
    assert via_rs.read_table("a").count() == 3
    assert via_spark.read_table("b").count() == 4


def test_merge_with_tombstones_replaces_a_changed_set_in_one_commit(store, spark):
    rows = [(1, 0, 0.5), (1, 1, 0.4), (2, 3, 0.9)]
    store.write_table(spark.createDataFrame(rows, "user_idx int, persona_idx int, score double"), "sets")
    change = spark.createDataFrame(
        [(1, 1, 0.0, True), (1, 2, 0.7, False), (1, 0, 0.6, False)],
        "user_idx int, persona_idx int, score double, gone boolean",
    )
    store.merge_table(change, "sets", keys=["user_idx", "persona_idx"], delete_when="gone")
    got = sorted(tuple(r) for r in store.read_table("sets").collect())
    assert got == [(1, 0, 0.6), (1, 2, 0.7), (2, 3, 0.9)]
    assert store.version("sets") == 1 and "gone" not in store.read_table("sets").columns
