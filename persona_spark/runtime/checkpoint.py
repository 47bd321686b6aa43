"""Pinning intermediate results: materialized once, with their lineage cut.

Iterative work (each affinity hop, each connected-components round, a refresh's MERGE sources) pins
what it has computed so the plan stays flat however many steps follow, and a MERGE never re-reads
the table it rewrites. ``local`` keeps the pinned blocks on the executors (fast; lost with an
executor), ``reliable`` writes them to the checkpoint directory (survives a lost executor).

On Spark Connect a pinned frame is a server-side relation that pyspark releases from the frame's
finalizer with a gRPC call. When the garbage collector runs that finalizer in the middle of another
gRPC call of the same client, the two wait on each other and the job hangs. So the frames pinned on
Connect stay referenced here until :func:`release_pins`, which a run calls when a stage ends, at a
point where no other call is in flight.
"""

from __future__ import annotations

import gc
from typing import Literal

from pyspark.sql import DataFrame, SparkSession

from persona_spark.runtime.session import is_connect

CheckpointMode = Literal["local", "reliable"]  # the spark.checkpoint setting


_connect_pins: list[DataFrame] = []


def checkpoint(df: DataFrame, mode: CheckpointMode = "local") -> DataFrame:
    """Materialize and cut the lineage so the plan stays flat however many hops follow."""
    pinned = df.checkpoint(eager=True) if mode == "reliable" else df.localCheckpoint(eager=True)
    if is_connect(pinned.sparkSession):
        _connect_pins.append(pinned)
    return pinned


def release_pins() -> int:
    """Let go of the frames pinned on Spark Connect that nothing else holds, now rather than whenever the
    garbage collector runs; the number this module held. Frames a caller still holds stay valid."""
    held = len(_connect_pins)
    if held:
        _connect_pins.clear()
        gc.collect()
    return held


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
