"""One local SparkSession for the whole test run (starting one costs ~6 s), tuned for 2 cores."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from persona_spark.runtime.session import DRIVER_JAVA_OPTIONS

os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PERSONA_SPARK_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test saying exactly what is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not present: {path} (set PERSONA_SPARK_SHARED_DATA to its folder)")
    return path


# Test data is tiny and the suite is CPU-bound on two cores: compiling generated code (whole-stage and
# per-expression, with Janino), C2-compiling the JVM's hot methods and re-planning each shuffle (AQE)
# cost more CPU than they save there. Interpreted expressions and C1 only cut the CPU (cgroup CPU time, the
# JVMs' and their Python workers' together) of tests/test_gplr.py by about a quarter, of test_segment.py
# with test_refresh's two-batch test by a few percent; the whole suite stays CPU-bound on two cores.
# C1 alone makes the JVM reserve only 48 MB for compiled code. A Spark JVM that lives through many
# tests (or the Connect server of tests/test_production_path.py) fills that and then flushes and
# recompiles methods, or stops compiling ("CodeCache is full. Compiler has been disabled."). 256 MB
# cut the CPU of that Connect child from 588 to 433 s. C2 with the same cache is no better here: the
# whole suite took 27 min 50 s against 24 min 32 s. The parallel collector instead of G1 (no write barriers
# to maintain, no concurrent marking threads; these heaps are small and pauses do not matter) cut the JVM's
# own CPU time by about an eighth: that Connect child's 230 -> 200 s, the demo on a local session 86-96 -> 76-81 s
# (per-process CPU from /proc, one run each alone).
TEST_JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=256m -XX:+UseParallelGC"
SMALL_DATA_SPARK = {"spark.sql.codegen.wholeStage": "false", "spark.sql.codegen.factoryMode": "NO_CODEGEN",
                    "spark.sql.adaptive.enabled": "false",
                    "spark.driver.extraJavaOptions": f"{DRIVER_JAVA_OPTIONS} {TEST_JVM_OPTIONS}",
                    "spark.executor.extraJavaOptions": TEST_JVM_OPTIONS}
TEST_SPARK = dict(master="local[2]", shuffle_partitions=2, default_parallelism=2, driver_memory="2g", ui_enabled=False,
                  extra=SMALL_DATA_SPARK)


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """With the Delta connector (resolved from Maven into the user's cache on first use)."""
    from persona_spark.config import SparkConf
    from persona_spark.runtime.session import get_spark

    warehouse = str(tmp_path_factory.mktemp("warehouse"))
    # pytest-xdist workers start their JVMs one at a time: Ivy resolves the jars into one shared cache.
    with open(tmp_path_factory.getbasetemp().parent / "spark-start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        session = get_spark(SparkConf(**TEST_SPARK, warehouse_dir=warehouse))
    yield session
    session.stop()


@pytest.fixture()
def store(spark, tmp_path):
    from persona_spark.config import TablesConf
    from persona_spark.tables.store import TableStore

    return TableStore(spark, TablesConf(root=str(tmp_path / "tables")))


def pytest_collection_modifyitems(items):
    """Longest files first (``slow(minutes=N)``): with two xdist workers they start at once, not last."""
    def minutes(item) -> float:
        marker = item.get_closest_marker("slow")
        return marker.kwargs.get("minutes", 1) if marker else 0

    items.sort(key=minutes, reverse=True)
