"""Pinning intermediate results: materialized once, with their lineage cut.

Iterative work (each affinity hop, each connected-components round, a refresh's MERGE sources) pins
what it has computed so the plan stays flat however many steps follow, and a MERGE never re-reads
the table it rewrites. ``local`` keeps the pinned blocks on the executors (fast; lost with an
executor), ``reliable`` writes them to the checkpoint directory (survives a lost executor).
"""

from __future__ import annotations

from typing import Literal

from pyspark.sql import DataFrame, SparkSession

from persona_spark.runtime.session import is_connect

CheckpointMode = Literal["local", "reliable"]  # the spark.checkpoint setting


def checkpoint(df: DataFrame, mode: CheckpointMode = "local") -> DataFrame:
    """Materialize and cut the lineage so the plan stays flat however many hops follow."""
    return df.checkpoint(eager=True) if mode == "reliable" else df.localCheckpoint(eager=True)


def ensure_checkpoint_dir(spark: SparkSession, directory: str) -> None:
    """Reliable checkpoints need a directory: ``directory`` unless the session already has one.

    A Connect client cannot set it: the server's ``spark.checkpoint.dir`` must be configured (a
    local Connect session built here sets it from ``spark.checkpoint_dir``).
    """
    if is_connect(spark):
        if not spark.conf.get("spark.checkpoint.dir", None):
            raise ValueError("spark.checkpoint=reliable on Spark Connect needs the server's spark.checkpoint.dir "
                             "(set it in the cluster's Spark config), or use spark.checkpoint=local")
        return
    if spark.sparkContext.getCheckpointDir() is None:
        spark.sparkContext.setCheckpointDir(directory)


def has_checkpoint_dir(spark: SparkSession) -> bool:
    if is_connect(spark):
        return bool(spark.conf.get("spark.checkpoint.dir", None))
    return spark.sparkContext.getCheckpointDir() is not None
