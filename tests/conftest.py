"""One local SparkSession for the whole test run (starting one costs ~6 s), tuned for 2 cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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


@pytest.fixture(scope="session")
def spark():
    from persona_spark.config import SparkConf
    from persona_spark.session import get_spark

    session = get_spark(
        SparkConf(master="local[2]", shuffle_partitions=2, default_parallelism=2, driver_memory="2g", ui_enabled=False)
    )
    yield session
    session.stop()


@pytest.fixture()
def store(spark, tmp_path):
    from persona_spark.config import TablesConf
    from persona_spark.io import TableStore

    return TableStore(spark, TablesConf(root=str(tmp_path / "tables")))
