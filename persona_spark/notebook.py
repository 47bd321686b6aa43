"""What every notebook in ``notebooks/`` needs first: the run's context (config, Spark session, tables).

The config path comes from the ``conf`` widget on Databricks, else the ``PERSONA_SPARK_CONF`` env
var, else ``conf/local.yaml`` (the embedded default). A notebook reuses the cluster's (or a test's) active
Spark session instead of starting another one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame

from persona_spark.stages import RunContext

CONF_ENV = "PERSONA_SPARK_CONF"
DEFAULT_CONF = "conf/local.yaml"


def widget(dbutils, name: str, default: str, label: str | None = None) -> str:
    """A Databricks text widget's value (created with ``default`` on first use); ``default`` off Databricks."""
    if dbutils is None:
        return default
    try:
        return dbutils.widgets.get(name) or default
    except Exception:  # the widget does not exist yet  # noqa: BLE001
        dbutils.widgets.text(name, default, label or name)
        return dbutils.widgets.get(name) or default


def config_path(dbutils=None) -> str:
    return widget(dbutils, "conf", os.environ.get(CONF_ENV, DEFAULT_CONF), "config file")


def open_run(dbutils=None, overrides: list[str] | None = None) -> RunContext:
    """The run's context (config from the path in the module doc, Spark session, tables, persona set)."""
    path = config_path(dbutils)
    if not Path(path).exists():
        raise FileNotFoundError(
            f"config {path!r} not found: set the 'conf' widget or {CONF_ENV}, or run from the repository root"
        )
    return RunContext.open(path, overrides)


def show(frame: DataFrame | pd.DataFrame, n: int = 20) -> pd.DataFrame:
    """Print the first ``n`` rows as text (works in any notebook front end and in headless runs)."""
    head = frame.limit(n).toPandas() if isinstance(frame, DataFrame) else frame.head(n)
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 80):
        print(head.to_string(index=False))
    return head
