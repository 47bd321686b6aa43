"""The one place a SparkSession is made.

Inside Databricks, spark-submit or a notebook a session already exists (or is configured by the
launcher) and is reused untouched. Only a bare local run gets a session built here, tuned for a
small machine: Spark's defaults (200 shuffle partitions, UI, INT96 timestamps) make a 2-core
laptop crawl and write Parquet that delta-rs reads less faithfully.
"""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

from persona_spark.config import SparkConf

DELTA_EXTENSIONS = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def get_spark(conf: SparkConf | None = None) -> SparkSession:
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    conf = conf or SparkConf()
    builder = SparkSession.builder.appName(conf.app_name)
    launched_by_spark_submit = "PYSPARK_GATEWAY_PORT" in os.environ
    if not launched_by_spark_submit:
        # Local Python workers must run the interpreter that has this package installed.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = builder.master(conf.master).config("spark.driver.memory", conf.driver_memory)
    settings = {
        "spark.sql.shuffle.partitions": str(conf.shuffle_partitions),
        "spark.default.parallelism": str(conf.default_parallelism),
        "spark.ui.enabled": str(conf.ui_enabled).lower(),
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.sql.adaptive.enabled": "true",
        "spark.databricks.delta.snapshotPartitions": "2",
        "spark.driver.extraJavaOptions": "-Dio.netty.tryReflectionSetAccessible=true",
    }
    if "delta" in conf.extra.get("spark.jars.packages", "") or conf.extra.get("spark.jars"):
        settings.update(DELTA_EXTENSIONS)
    settings.update(conf.extra)
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def has_delta_connector(spark: SparkSession) -> bool:
    """True when Spark itself can read and write Delta (Databricks, or a cluster with the jars)."""
    jvm = getattr(spark, "_jvm", None)
    if jvm is None:  # Spark Connect (Databricks serverless / shared clusters) always ships Delta
        return True
    from py4j.java_gateway import JavaClass

    # py4j resolves names through Spark's class loader; an unknown class comes back as a package.
    return isinstance(jvm.io.delta.tables.DeltaTable, JavaClass)
