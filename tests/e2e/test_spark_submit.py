"""A jobs/ script runs through spark-submit, the way the README submits it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from persona_spark.config import SparkConf
from persona_spark.runtime.session import DELTA_EXTENSIONS, delta_coordinates
from tests.conftest import REPO_ROOT, TEST_JVM_OPTIONS


def test_spark_submit_runs_a_job_script(tmp_path):
    """jobs/generate.py through pyspark's own spark-submit with the connector from --packages (the README's command)."""
    spark_submit = Path(sys.executable).parent / "spark-submit"
    if not spark_submit.exists():
        pytest.skip(f"spark-submit not found next to {sys.executable}")
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    result = subprocess.run(
        [str(spark_submit), "--master", "local[1]", "--conf", "spark.ui.enabled=false",
         "--driver-java-options", TEST_JVM_OPTIONS,  # the suite's C1-only JVM (tests/conftest.py)
         "--packages", delta_coordinates(), "--conf", f"spark.jars.ivy={os.path.expanduser(SparkConf().ivy_cache)}",
         *[arg for key, value in DELTA_EXTENSIONS.items() for arg in ("--conf", f"{key}={value}")],
         str(REPO_ROOT / "jobs" / "generate.py"),
         "--set", f"tables.root={tmp_path}", "--set", "demo.users=20", "--set", "demo.items=40",
         "--set", "demo.partitions=1"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"stage": "generate"' in result.stdout
    assert (tmp_path / "raw_transactions" / "_delta_log" / "00000000000000000000.json").exists()
