"""Fixtures and settings shared by the three test tiers (tests/unit, tests/spark, tests/e2e).

One local SparkSession per test process, because starting a JVM dominates a small test; tuned for two cores.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from persona_spark.runtime.session import DRIVER_JAVA_OPTIONS

os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # the network is loopback only
# The tests track to MLflow file stores (quicker to create than a SQLite store), which MLflow refuses unless told
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PERSONA_SPARK_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
# GraphFrames' two jars (core and graphx module) for a machine whose Maven mirror cannot serve them: beside the
# shared data, or where PERSONA_SPARK_GRAPHFRAMES_JARS says
GRAPHFRAMES_JARS = Path(os.environ.get("PERSONA_SPARK_GRAPHFRAMES_JARS", SHARED_DATA.parent / "jars"))


def shared_path(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test saying exactly what is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not present: {path} (set PERSONA_SPARK_SHARED_DATA to its folder)")
    return path


def user_error_line(capsys) -> str:
    """The CLI's last line on stderr, checked to be its one-line user error (no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("persona-spark ") and ": error: " in last
    return last


# Test data is tiny and the suite is CPU-bound on two cores, so the test JVMs spend as little CPU as they can:
# - interpreted expressions instead of generated code (whole-stage and per-expression, compiled with Janino), and
#   no adaptive re-planning of each shuffle: on tiny data compiling and re-planning cost more than they save;
# - C1 only: C2 spends more compile time than its faster code gives back in tests this short;
# - a 256 MB code cache: with C1 alone the JVM reserves a small one, which a JVM living through many tests (or the
#   Connect server of tests/e2e/test_production_path.py) fills, then flushes and recompiles or stops compiling;
# - the parallel collector instead of G1: no write barriers or concurrent marking threads, and pauses on these
#   small heaps do not matter.
TEST_JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=256m -XX:+UseParallelGC"
SMALL_DATA_SPARK = {"spark.sql.codegen.wholeStage": "false", "spark.sql.codegen.factoryMode": "NO_CODEGEN",
                    "spark.sql.adaptive.enabled": "false",
                    "spark.driver.extraJavaOptions": f"{DRIVER_JAVA_OPTIONS} {TEST_JVM_OPTIONS}",
                    "spark.executor.extraJavaOptions": TEST_JVM_OPTIONS}
TEST_SPARK = dict(master="local[2]", shuffle_partitions=2, default_parallelism=2, driver_memory="2g", ui_enabled=False,
                  extra=SMALL_DATA_SPARK)


def graphframes_jar_files() -> list[str]:
    """The GraphFrames jars under GRAPHFRAMES_JARS, both (core and graphx module) or none."""
    found = sorted(str(p) for p in GRAPHFRAMES_JARS.glob("graphframes-*spark4_2.13-*.jar"))
    return found if len(found) == 2 else []


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory):
    """Every MLflow run of a test, and of the processes it starts, goes to one store in the test's temp folder
    (stages log gplr and train runs; without this a config whose tables.root is the default would write under
    the repository's data/)."""
    os.environ.setdefault("MLFLOW_TRACKING_URI", tmp_path_factory.mktemp("mlruns").as_uri())


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """With the Delta connector (resolved from Maven into the user's cache on first use), and GraphFrames'
    jars when GRAPHFRAMES_JARS has them."""
    from persona_spark.config import SparkConf
    from persona_spark.runtime.session import get_spark

    warehouse = str(tmp_path_factory.mktemp("warehouse"))
    jars = graphframes_jar_files()
    settings = {**TEST_SPARK, "extra": {**SMALL_DATA_SPARK, **({"spark.jars": ",".join(jars)} if jars else {})}}
    # pytest-xdist workers start their JVMs one at a time: Ivy resolves the jars into one shared cache.
    with open(tmp_path_factory.getbasetemp().parent / "spark-start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        session = get_spark(SparkConf(**settings, warehouse_dir=warehouse))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def graphframes(spark):
    """The ``spark`` session, when it can run GraphFrames; else the test is skipped saying what is missing."""
    import importlib.util

    from persona_spark.runtime.session import has_graphframes

    if importlib.util.find_spec("graphframes") is None:
        pytest.skip("GraphFrames: the graphframes-py package is not installed (pip install -e '.[graph]')")
    if not has_graphframes(spark):
        pytest.skip(f"GraphFrames: its two jars are not in {GRAPHFRAMES_JARS} (set PERSONA_SPARK_GRAPHFRAMES_JARS "
                    "to a folder with graphframes-spark4_2.13-*.jar and graphframes-graphx-spark4_2.13-*.jar)")
    return spark


@pytest.fixture(scope="session")
def personas():
    """The packaged default persona set."""
    from persona_spark.config import DEFAULT_PERSONAS
    from persona_spark.personas import load_persona_set

    return load_persona_set(DEFAULT_PERSONAS)


@pytest.fixture()
def store(spark, tmp_path):
    from persona_spark.config import TablesConf
    from persona_spark.tables.store import TableStore

    return TableStore(spark, TablesConf(root=str(tmp_path / "tables")))


TIERS = ("e2e", "spark", "unit")  # the order their files start in: the slowest first


def tier(item) -> str:
    """The tier folder a test lives in (tests/unit, tests/spark or tests/e2e)."""
    folder = item.path.relative_to(Path(__file__).parent).parts[0]
    if folder not in TIERS:
        raise pytest.UsageError(f"{item.nodeid}: every test lives in one of tests/{{{','.join(TIERS)}}}")
    return folder


def pytest_collection_modifyitems(items):
    """Marks each test with its tier (so ``-m unit``, ``-m spark``, ``-m e2e`` select them) and orders the files
    the two xdist workers take: end to end first, longest (``slow(minutes=N)``) first within a tier, so that the
    long files start at once rather than last."""
    def minutes(item) -> float:
        marker = item.get_closest_marker("slow")
        return marker.kwargs.get("minutes", 1) if marker else 0

    for item in items:
        item.add_marker(tier(item))
    items.sort(key=lambda item: (TIERS.index(tier(item)), -minutes(item)))
