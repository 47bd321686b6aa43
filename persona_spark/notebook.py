"""What every notebook in ``notebooks/`` needs first: the run's config, Spark session and tables.

The config path comes from the ``conf`` widget on Databricks, else the ``PERSONA_SPARK_CONF`` env
var, else ``conf/local.yaml`` (the embedded default). The session is ``get_spark``'s, so a notebook
reuses the cluster's (or a test's) active session instead of starting another one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, SparkSession

from persona_spark.config import Config, load_config
from persona_spark.tables.store import TableStore
from persona_spark.runtime.session import get_spark

CONF_ENV = "PERSONA_SPARK_CONF"
DEFAULT_CONF = "conf/local.yaml"


@dataclass
class Run:
    cfg: Config
    spark: SparkSession
    store: TableStore
    conf_path: str

    def table(self, name: str) -> DataFrame | None:
        """The table if a stage has written it, else None (so a notebook can say what to run)."""
        return self.store.read_table(name) if self.store.exists(name) else None


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


def open_run(dbutils=None, overrides: list[str] | None = None) -> Run:
    """Load the config (see module doc), get the Spark session and the table store of the run."""
    path = config_path(dbutils)
    if not Path(path).exists():
        raise FileNotFoundError(
            f"config {path!r} not found: set the 'conf' widget or {CONF_ENV}, or run from the repository root"
        )
    cfg = load_config(path, overrides)
    spark = get_spark(cfg.spark)
    return Run(cfg, spark, TableStore(spark, cfg.tables), path)


def show(frame: DataFrame | pd.DataFrame, n: int = 20) -> pd.DataFrame:
    """Print the first ``n`` rows as text (works in any notebook front end and in headless runs)."""
    head = frame.limit(n).toPandas() if isinstance(frame, DataFrame) else frame.head(n)
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 80):
        print(head.to_string(index=False))
    return head
