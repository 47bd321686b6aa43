"""The one place a SparkSession is made, and the one place that knows which kind it is.

Inside Databricks, spark-submit or a notebook a session already exists (or is configured by the
launcher) and is reused untouched. Only a bare run gets a session built here: it resolves the
Delta connector (and ``hadoop-aws`` for ``s3a://`` locations) from Maven once per machine into
``spark.ivy_cache`` (outside the repository), and is tuned for a small machine: Spark's defaults
(200 shuffle partitions, UI, INT96 timestamps) make a 2-core laptop crawl.
"""

from __future__ import annotations

import atexit
import glob
import importlib.util
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable
from functools import partial
from importlib import metadata
from typing import Any
from urllib.parse import urlparse

from pyspark.sql import SparkSession

from persona_spark.config import SparkConf

DELTA_EXTENSIONS = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}
SCALA_VERSION = "2.13"


class JarsUnavailable(RuntimeError):
    """The JVM could not start because a Maven package could not be resolved or a jar is missing."""


def delta_coordinates() -> str:
    """The connector jar matching the installed ``delta-spark`` Python package (their APIs move together)."""
    return f"io.delta:delta-spark_{SCALA_VERSION}:{metadata.version('delta-spark')}"


def hadoop_aws_coordinates() -> str:
    """``hadoop-aws`` must match the Hadoop client Spark ships; its POM brings the AWS SDK bundle."""
    import pyspark

    found = glob.glob(os.path.join(os.path.dirname(pyspark.__file__), "jars", "hadoop-client-api-*.jar"))
    match = re.search(r"hadoop-client-api-([\d.]+)\.jar", found[0]) if found else None
    if match is None:
        raise JarsUnavailable("cannot tell Spark's Hadoop version (no hadoop-client-api jar in pyspark/jars); "
                              "set spark.packages to org.apache.hadoop:hadoop-aws:<that version>")
    return f"org.apache.hadoop:hadoop-aws:{match.group(1)}"


def graphframes_coordinates() -> list[str]:
    """GraphFrames' core jar and its graphx module at the installed ``graphframes-py`` version (the ``graph``
    extra): the Python package holds no jar, and the two must match it."""
    try:
        version = metadata.version("graphframes-py")
    except metadata.PackageNotFoundError:
        raise JarsUnavailable("spark.graphframes needs the graphframes-py package: pip install "
                              "'persona-spark[graph]'") from None
    return [f"io.graphframes:{artifact}-spark4_{SCALA_VERSION}:{version}"
            for artifact in ("graphframes", "graphframes-graphx")]


def jar_settings(conf: SparkConf) -> dict[str, str]:
    """``spark.jars`` / ``spark.jars.packages`` for a session this module builds.

    ``conf.jars`` (files or folders of jars, e.g. copied from an offline mirror) replaces Maven
    resolution entirely; otherwise the packages resolve from Maven Central, or from
    ``conf.repositories`` first, into ``conf.ivy_cache``.
    """
    if conf.jars:
        files = []
        for entry in conf.jars:
            path = os.path.expanduser(entry)
            listed = sorted(glob.glob(os.path.join(path, "*.jar"))) if os.path.isdir(path) else [path]
            missing = [f for f in listed if not os.path.isfile(f)]
            if not listed or missing:
                raise JarsUnavailable(f"spark.jars: {missing or path} not found (a jar file or a folder of jars)")
            files += listed
        return {"spark.jars": ",".join(files)}
    packages = ([delta_coordinates()] if conf.delta else []) + (
        [hadoop_aws_coordinates()] if conf.hadoop_aws else []) + (
        graphframes_coordinates() if conf.graphframes else []) + list(conf.packages)
    if not packages:
        return {}
    settings = {"spark.jars.packages": ",".join(packages), "spark.jars.ivy": os.path.expanduser(conf.ivy_cache)}
    if conf.repositories:
        settings["spark.jars.repositories"] = ",".join(conf.repositories)
    return settings


def s3a_settings(endpoint: str | None) -> dict[str, str]:
    """Point ``s3a://`` at an S3-compatible endpoint (``AWS_ENDPOINT_URL``: MinIO, moto, Ceph...).

    Credentials never appear in the configuration: S3A's default chain reads the standard AWS
    environment variables (or an instance profile) on the driver and every executor.
    """
    if not endpoint:
        return {}
    parsed = urlparse(endpoint)
    return {
        "spark.hadoop.fs.s3a.endpoint": endpoint,
        "spark.hadoop.fs.s3a.path.style.access": "true",
        "spark.hadoop.fs.s3a.connection.ssl.enabled": str(parsed.scheme == "https").lower(),
        "spark.hadoop.fs.s3a.endpoint.region": os.environ.get("AWS_REGION", "us-east-1"),
        "spark.executorEnv.AWS_ENDPOINT_URL": endpoint,
    }


# Arrow on Java 17 needs Netty's reflective access; a conf that sets its own driver options must keep it.
DRIVER_JAVA_OPTIONS = "-Dio.netty.tryReflectionSetAccessible=true"

# Settings a Spark Connect client may change on a running server (the rest are the server's).
CONNECT_RUNTIME_SETTINGS = ("spark.sql.shuffle.partitions", "spark.sql.session.timeZone",
                            "spark.sql.execution.arrow.pyspark.enabled", "spark.sql.adaptive.enabled",
                            "spark.sql.parquet.outputTimestampType")


def get_spark(conf: SparkConf | None = None) -> SparkSession:
    """The active session (spark-submit, Databricks, a notebook), else one built from ``conf``:
    classic on ``conf.master``, or a Spark Connect session with ``conf.remote``."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    conf = conf or SparkConf()
    launched_by_spark_submit = "PYSPARK_GATEWAY_PORT" in os.environ
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
        "spark.driver.extraJavaOptions": DRIVER_JAVA_OPTIONS,
    }
    remote_server = conf.remote is not None and conf.remote.startswith("sc://")
    if remote_server:
        builder = SparkSession.builder.remote(conf.remote)
        settings = {k: v for k, v in settings.items() if k in CONNECT_RUNTIME_SETTINGS}
    else:
        if conf.remote is not None:  # a Spark Connect server started here, e.g. remote="local[2]"
            builder = SparkSession.builder.remote(conf.remote)
            settings["spark.checkpoint.dir"] = conf.checkpoint_dir
        else:
            builder = SparkSession.builder.appName(conf.app_name)
        if not launched_by_spark_submit:
            if conf.remote is None:
                builder = builder.master(conf.master)
            settings["spark.driver.memory"] = conf.driver_memory
            settings.update(jar_settings(conf))
            settings.update(s3a_settings(os.environ.get("AWS_ENDPOINT_URL")))
            if conf.warehouse_dir:
                settings["spark.sql.warehouse.dir"] = conf.warehouse_dir
            elif conf.remote is not None:  # a Connect server creates its warehouse at once: not in the job's cwd
                settings["spark.sql.warehouse.dir"] = os.path.join(tempfile.gettempdir(), "persona-spark-warehouse")
            if conf.delta or conf.jars:  # under spark-submit the launcher sets these beside --packages
                settings.update(DELTA_EXTENSIONS)
    settings.update(conf.extra)
    for key, value in settings.items():
        builder = builder.config(key, value)
    try:
        with warnings.catch_warnings():
            if conf.remote is not None and not remote_server:
                # A Connect server started here got every setting at launch; pyspark then sets them again on the
                # session and warns once per static one ("Failed to set ... CANNOT_MODIFY_CONFIG"), which is noise.
                warnings.filterwarnings("ignore", message=r"Failed to set \S+ to .* due to \[CANNOT_MODIFY_CONFIG\]")
            spark = builder.getOrCreate()
    except Exception as error:
        if "JAVA_GATEWAY_EXITED" not in str(error):
            raise
        wanted = settings.get("spark.jars.packages") or settings.get("spark.jars") or "no jars"
        raise JarsUnavailable(
            f"Spark's JVM did not start with {wanted} (the reason is printed above, e.g. 'unresolved dependency'). "
            f"Jars resolve from Maven Central into spark.ivy_cache={conf.ivy_cache}; on a machine without "
            "Maven access set spark.repositories to a reachable mirror, or spark.jars to a folder of the jars "
            "(fetch them elsewhere, e.g. `mvn dependency:get -Dartifact=<coordinates>`)."
        ) from error
    if not is_connect(spark):
        spark.sparkContext.setLogLevel("WARN")
        _workers_run_this_interpreter(spark)
    else:
        if not remote_server:
            _warn_if_workers_run_another_python()
        atexit.register(_close_before_shutdown, spark)
    return spark


def _close_before_shutdown(spark: SparkSession) -> None:
    """Close a Spark Connect session this module built while the interpreter can still start threads.

    Each pinned Connect frame releases its server-side copy from its finalizer with a gRPC call, and
    a gRPC call starts a thread. Finalizers that run during interpreter shutdown would wait for that
    thread for ever; on a closed session they do nothing (the server drops the session's frames).
    """
    spark.stop()


def _workers_run_this_interpreter(spark: SparkSession) -> None:
    """Python workers of a session built here run this interpreter, which has persona_spark installed.

    pyspark starts them with ``PYSPARK_PYTHON``, else ``python3`` from the PATH, which in a virtual
    environment that is not activated is another Python without this package. The setting lives on
    the SparkContext, so the process environment stays as the caller left it.
    """
    if "PYSPARK_PYTHON" not in os.environ:
        spark.sparkContext.pythonExec = sys.executable


def _warn_if_workers_run_another_python() -> None:
    """A Spark Connect server started here picks its workers' Python from its own environment only."""
    if "PYSPARK_PYTHON" in os.environ:
        return
    on_path = shutil.which("python3")
    if on_path is None or os.path.dirname(os.path.abspath(on_path)) != os.path.dirname(sys.executable):
        warnings.warn(f"the local Spark Connect server runs Python workers with {on_path or 'python3'}, not "
                      f"{sys.executable}; set PYSPARK_PYTHON={sys.executable} if that Python lacks persona_spark",
                      stacklevel=3)


def is_connect(spark: SparkSession) -> bool:
    """True for a Spark Connect session (Databricks serverless, standard-access clusters): no JVM, no RDDs."""
    return not hasattr(spark, "_jsc")


def is_local_master(spark: SparkSession) -> bool:
    """Driver and executors share one machine (and so one disk): ``local``, ``local[n]``, ``local-cluster``."""
    if is_connect(spark):
        return False
    return spark.sparkContext.master.startswith("local")


# Spark Connect ships a UDF's closure inside the plan (gRPC messages are 128 MiB by default), so state that a
# classic session broadcasts must stay well below that there.
CONNECT_CLOSURE_MAX_BYTES = 64 * 2**20


def describe_master(spark: SparkSession) -> str:
    return "a Spark Connect server" if is_connect(spark) else repr(spark.sparkContext.master)


def default_parallelism(spark: SparkSession) -> int:
    """Task slots to plan for: the scheduler's own count on a classic session, the configured default on Connect."""
    if is_connect(spark):
        return int(spark.conf.get("spark.default.parallelism", None) or spark.conf.get("spark.sql.shuffle.partitions"))
    return spark.sparkContext.defaultParallelism


def share_with_tasks(spark: SparkSession, value) -> tuple[Callable[[], Any], Callable[[], None]]:
    """(getter, release) for a read-only value every task needs: a broadcast on a classic session (sent
    once per executor), the UDF closure on Spark Connect (which has no broadcast)."""
    if is_connect(spark):
        return partial(_identity, value), _nothing
    broadcast = spark.sparkContext.broadcast(value)
    return partial(_broadcast_value, broadcast), broadcast.destroy


def _identity(value):
    return value


def _broadcast_value(broadcast):
    return broadcast.value


def _nothing() -> None:
    return None


_CONNECT_HAS_DELTA: dict[str, bool] = {}


def has_delta_connector(spark: SparkSession) -> bool:
    """True when Spark itself can read and write Delta (Databricks, or a session with the jars).

    A classic session is asked whether the connector's class loads; a Connect session has no JVM
    to ask, so it is probed with a Delta read of a path that cannot exist: without the connector
    the server answers "failed to find data source: delta", with it the path is merely missing.
    """
    if is_connect(spark):
        if spark.session_id not in _CONNECT_HAS_DELTA:  # once per session: the server logs each probe as an error
            _CONNECT_HAS_DELTA[spark.session_id] = _probe_delta_on_connect(spark)
        return _CONNECT_HAS_DELTA[spark.session_id]
    from py4j.java_gateway import JavaClass

    # py4j resolves names through Spark's class loader; an unknown class comes back as a package.
    return isinstance(spark._jvm.io.delta.tables.DeltaTable, JavaClass)


def has_graphframes(spark: SparkSession) -> bool:
    """True when GraphFrames runs here: a classic session whose JVM has its jar, and its Python package.

    Spark Connect is False: the Connect plugin of GraphFrames is a separate server-side jar this package
    does not load, so on Connect the graph algorithms are the project's own DataFrame ones.
    """
    if is_connect(spark) or importlib.util.find_spec("graphframes") is None:
        return False
    from py4j.java_gateway import JavaClass

    return isinstance(spark._jvm.org.graphframes.GraphFrame, JavaClass)


def _probe_delta_on_connect(spark: SparkSession) -> bool:
    try:
        spark.read.format("delta").load("/persona-spark-delta-probe/does-not-exist").schema  # noqa: B018 (resolving the schema is the probe)
    except Exception as error:  # noqa: BLE001 - the message tells which failure it is
        text = str(error)
        return not ("DATA_SOURCE_NOT_FOUND" in text or "Failed to find data source" in text)
    return True


if __name__ == "__main__":
    # `python -m persona_spark.runtime.session`: resolve the jars a local session uses (Delta connector and hadoop-aws) into
    # spark.ivy_cache once, e.g. on a new machine or in CI before the tests.
    session = get_spark(SparkConf(master="local[1]", hadoop_aws=True))
    print(f"Delta connector present: {has_delta_connector(session)}; jars cached under "
          f"{os.path.expanduser(SparkConf().ivy_cache)}")
    session.stop()
