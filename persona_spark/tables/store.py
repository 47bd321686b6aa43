"""The table layer: every job reads and writes named Delta tables through ``TableStore``.

Two engines, one table format:

* ``spark`` (the default, everywhere) — Spark's own Delta connector: Databricks, a cluster
  launched with ``--packages io.delta:delta-spark_2.13:<version>``, or a session built by
  ``session.get_spark`` (which resolves the jar). Names resolve to a quoted
  ``catalog.schema.name`` in catalog mode or to locations under ``root`` (a path or any Hadoop
  URI: ``s3a://``, ``abfss://``, ``hdfs://``, ``/Volumes/...``).
* ``delta-rs`` — an explicit fallback for one machine without the connector jars. Spark writes the
  Parquet data files into the table directory and the driver commits them to the Delta log with
  delta-rs, which only works while driver and executors share one local disk: it is refused for a
  non-local master or a root that is not a local path. MERGE passes its source (the changed rows)
  to delta-rs as Arrow on the driver.

Both give real Delta tables (``_delta_log``), readable by the other engine, and every write is a
single commit: a stage that fails before its commit leaves the previous version as it was.
"""

from __future__ import annotations

import json
import os
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema
from pyspark.sql.types import StructType

from persona_spark.config import TablesConf
from persona_spark.errors import UserError
from persona_spark.runtime.session import (
    delta_coordinates,
    describe_master,
    has_delta_connector,
    is_connect,
    is_local_master,
)
from persona_spark.tables import storage
from persona_spark.tables.lease import LEASE_NAME


def lease_location(conf: TablesConf) -> str | None:
    """Where the lease of these tables lives: ``tables.lease_location``, else ``<root>/_lease``; None when leases
    are off. Catalog tables have no folder of their own, so in catalog mode the lease lives under ``root`` too:
    the deployment's storage (the bundle's schema Volume), which every run of that deployment shares."""
    if not conf.lease:
        return None
    if conf.lease_location:
        return storage.absolute(conf.lease_location)
    return storage.join(storage.absolute(conf.root), LEASE_NAME)


class TableStore:
    def __init__(self, spark: SparkSession, conf: TablesConf | None = None):
        self.spark = spark
        self.conf = conf or TablesConf()
        self.backend = self.conf.backend
        if self.backend == "spark" and not has_delta_connector(spark):
            raise RuntimeError(
                f"tables.backend=spark needs Spark's Delta connector, which this session lacks: start it with "
                f"--packages {delta_coordinates()} (plus --conf spark.sql.extensions=io.delta.sql."
                "DeltaSparkSessionExtension --conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta."
                "catalog.DeltaCatalog), let persona-spark build the session (spark.delta=true), or on a single "
                "machine without the jars set tables.backend=delta-rs"
            )
        if not self.conf.catalog and (blocker := storage.file_in_the_way(self.conf.root)):
            raise UserError(f"tables.root {self.conf.root} must be a folder, but {blocker} is a file")
        if self.backend == "delta-rs":
            why = ("tables.catalog is set (catalog tables need the connector)" if self.conf.catalog else
                   f"the session runs on {describe_master(spark)}, not a local master" if not is_local_master(spark) else
                   f"tables.root {self.conf.root!r} is not a local path" if not storage.is_local(self.conf.root)
                   else None)
            if why:
                raise ValueError(f"tables.backend=delta-rs only works on one machine with one local disk, but {why}: "
                                 f"use tables.backend=spark with the Delta connector ({delta_coordinates()})")

    # ---- naming -------------------------------------------------------------------------
    def table_name(self, name: str) -> str:
        return self.conf.names.get(name, name)

    def location(self, name: str) -> str:
        """Quoted ``catalog.schema.table`` (catalog mode) or the table's location under ``root``."""
        table = self.table_name(name)
        if self.conf.catalog:
            parts = (self.conf.catalog, self.conf.schema_ or "default", table)
            return ".".join("`" + part.replace("`", "``") + "`" for part in parts)
        return storage.join(storage.absolute(self.conf.root), table)

    # ---- queries ------------------------------------------------------------------------
    def exists(self, name: str) -> bool:
        loc = self.location(name)
        if self.conf.catalog:
            return self.spark.catalog.tableExists(loc)
        if self.backend == "delta-rs":
            return os.path.isdir(os.path.join(loc, "_delta_log"))
        if is_connect(self.spark):
            return self._connect_version(loc) is not None
        from delta.tables import DeltaTable

        return DeltaTable.isDeltaTable(self.spark, loc)

    def version(self, name: str) -> int | None:
        """The table's latest version, None when it does not exist."""
        if self.backend == "spark" and is_connect(self.spark):
            return self._connect_version(self.location(name))
        if not self.exists(name):
            return None
        if self.backend == "delta-rs":
            from deltalake import DeltaTable

            return DeltaTable(self.location(name)).version()
        return int(self._spark_delta_table(name).history(1).collect()[0]["version"])

    def read_table(self, name: str, version: int | None = None) -> DataFrame:
        if not self.exists(name):
            raise FileNotFoundError(
                f"table {name!r} does not exist at {self.location(name)}; run the stage that writes it first"
            )
        loc = self.location(name)
        if self.conf.catalog:
            reader = self.spark.read.format("delta")
            if version is not None:
                reader = reader.option("versionAsOf", version)
            return reader.table(loc)
        return self.read_path(loc, version)

    def read_path(self, path: str, version: int | None = None) -> DataFrame:
        """Any Delta table by path (e.g. an ingestion source outside this store)."""
        if self.backend == "spark":
            reader = self.spark.read.format("delta")
            if version is not None:
                reader = reader.option("versionAsOf", version)
            return reader.load(path)
        from deltalake import DeltaTable

        table = DeltaTable(path, version=version)
        schema = from_arrow_schema(pa.schema(table.schema().to_arrow()))
        files = table.file_uris()
        if not files:
            return self.spark.createDataFrame([], schema)
        return self.spark.read.schema(schema).parquet(*files)

    # ---- writes -------------------------------------------------------------------------
    def write_table(self, df: DataFrame, name: str, mode: str = "overwrite") -> None:
        """Write ``df`` as the next version of ``name`` in one commit (``version`` tells which, at the
        price of a read of the log: most writers never ask)."""
        if mode not in ("overwrite", "append"):
            raise ValueError(f"mode must be 'overwrite' or 'append', not {mode!r}")
        loc = self.location(name)
        if self.backend == "spark":
            writer = df.write.format("delta").mode(mode)
            # Overwrite replaces the schema; append may add columns (a newer release's run records, quarantine).
            writer = writer.option("overwriteSchema" if mode == "overwrite" else "mergeSchema", "true")
            writer.saveAsTable(loc) if self.conf.catalog else writer.save(loc)
        else:
            self._write_delta_rs(df, loc, mode)

    def replace_rows(self, df: DataFrame, name: str, column: str, value: str) -> None:
        """Replace the rows of ``name`` whose ``column`` is ``value`` with ``df`` (whose rows all have it) in one
        commit; the other rows stay. A table without ``column`` yet has no such rows, and gains the column."""
        if not self.exists(name):
            self.write_table(df, name)
            return
        existing = self.read_table(name)
        if self.backend != "spark":  # delta-rs commits whole-table writes: the kept rows and the new ones
            kept = existing.filter(~F.col(column).eqNullSafe(value)) if column in existing.columns else existing
            self.write_table(kept.unionByName(df, allowMissingColumns=True), name, "overwrite")
        elif column not in existing.columns:
            self.write_table(df, name, "append")
        else:
            predicate = f"`{column}` = '" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
            writer = df.write.format("delta").mode("overwrite").option("replaceWhere", predicate)
            loc = self.location(name)
            writer.saveAsTable(loc) if self.conf.catalog else writer.save(loc)

    def merge_table(self, df: DataFrame, name: str, keys: list[str], delete_when: str | None = None) -> None:
        """Upsert ``df`` into ``name`` on ``keys``: matched rows are updated, new rows inserted.

        ``delete_when`` names a boolean column of ``df``: its true rows delete the matching target
        row instead (tombstones), so one commit can replace a changed set of rows.
        """
        missing = [k for k in keys + ([delete_when] if delete_when else []) if k not in df.columns]
        if missing:
            raise ValueError(f"merge into {name!r}: key columns {missing} are not in the source {df.columns}")
        columns = [c for c in df.columns if c != delete_when]
        if not self.exists(name):
            rows = df.filter(~F.col(delete_when)) if delete_when else df
            self.write_table(rows.select(*columns), name, "overwrite")
            return
        condition = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
        values = {f"`{c}`": f"s.`{c}`" for c in columns}
        keep = f"NOT s.`{delete_when}`" if delete_when else None
        drop = f"s.`{delete_when}`" if delete_when else None
        if self.backend == "spark" and is_connect(self.spark):
            self._connect_merge(df, name, condition, values, keep, drop)
        elif self.backend == "spark":
            builder = self._spark_delta_table(name).alias("t").merge(df.alias("s"), condition)
            if drop:
                builder = builder.whenMatchedDelete(drop)
            builder.whenMatchedUpdate(keep, values).whenNotMatchedInsert(keep, values).execute()
        else:
            from deltalake import DeltaTable

            table = DeltaTable(self.location(name))
            target_schema = pa.schema(table.schema().to_arrow())
            source = df.select(*[f.name for f in target_schema], *([delete_when] if delete_when else [])).toArrow()
            merger = table.merge(source, condition, source_alias="s", target_alias="t")
            if drop:
                merger = merger.when_matched_delete(drop)
            merger.when_matched_update(values, keep).when_not_matched_insert(values, keep).execute()

    # ---- engines ------------------------------------------------------------------------
    # A Spark Connect session has Delta's SQL but not necessarily its Python API (that needs the
    # Delta Connect server plugin), so there history and MERGE go through SQL; classic sessions
    # use ``DeltaTable`` (``forName`` / ``forPath``).
    def _sql_ref(self, loc: str) -> str:
        return loc if self.conf.catalog else "delta.`" + loc.replace("`", "``") + "`"

    def _connect_version(self, loc: str) -> int | None:
        from pyspark.errors import AnalysisException

        try:
            return int(self.spark.sql(f"DESCRIBE HISTORY {self._sql_ref(loc)} LIMIT 1").first()["version"])
        except AnalysisException:  # no such table, or not a Delta table
            return None

    def _connect_merge(self, df: DataFrame, name: str, condition: str, values: dict[str, str], keep: str | None,
                       drop: str | None) -> None:
        view = f"persona_spark_merge_{uuid.uuid4().hex}"
        df.createOrReplaceTempView(view)
        keep_clause = f" AND {keep}" if keep else ""
        statement = (f"MERGE INTO {self._sql_ref(self.location(name))} AS t USING {view} AS s ON {condition} "
                     + (f"WHEN MATCHED AND {drop} THEN DELETE " if drop else "")
                     + f"WHEN MATCHED{keep_clause} THEN UPDATE SET " + ", ".join(f"{c} = {v}" for c, v in values.items())
                     + f" WHEN NOT MATCHED{keep_clause} THEN INSERT ({', '.join(values)}) VALUES ({', '.join(values.values())})")
        try:
            self.spark.sql(statement)
        finally:
            self.spark.catalog.dropTempView(view)

    def _spark_delta_table(self, name: str):
        from delta.tables import DeltaTable

        loc = self.location(name)
        if self.conf.catalog:
            return DeltaTable.forName(self.spark, loc)
        return DeltaTable.forPath(self.spark, loc)

    @staticmethod
    def _write_delta_rs(df: DataFrame, loc: str, mode: str) -> None:
        from deltalake import DeltaTable, Schema
        from deltalake.transaction import AddAction, create_table_with_add_actions

        arrow_schema = to_arrow_schema(_as_nullable(df.schema), timestamp_utc=True)
        batch_dir = f"data-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"
        target = os.path.join(loc, batch_dir)
        df.write.mode("errorifexists").parquet(target)
        now_ms = int(time.time() * 1000)
        actions = []
        for file_name in sorted(os.listdir(target)):
            if not file_name.endswith(".parquet"):
                continue
            full = os.path.join(target, file_name)
            rows = pq.read_metadata(full).num_rows
            actions.append(
                AddAction(
                    path=f"{batch_dir}/{file_name}",
                    size=os.path.getsize(full),
                    partition_values={},
                    modification_time=now_ms,
                    data_change=True,
                    stats=json.dumps({"numRecords": rows}),
                )
            )
        if os.path.isdir(os.path.join(loc, "_delta_log")):
            DeltaTable(loc).create_write_transaction(actions, mode, arrow_schema)
        else:
            create_table_with_add_actions(loc, Schema.from_arrow(arrow_schema), actions, mode="error")


def _as_nullable(schema: StructType) -> StructType:
    """Delta tables written from DataFrames take every column as nullable (as the Spark connector
    does), so a later write or MERGE with nulls is not rejected by a constraint nobody declared."""

    def relax(node):
        if isinstance(node, dict):
            node = {k: relax(v) for k, v in node.items()}
            for flag in ("nullable", "containsNull", "valueContainsNull"):
                if flag in node:
                    node[flag] = True
            return node
        if isinstance(node, list):
            return [relax(v) for v in node]
        return node

    return StructType.fromJson(relax(schema.jsonValue()))
