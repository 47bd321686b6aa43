"""Run ids, and the change set that turns one run's rows into the next's.

A run is named by :func:`new_run`: a UTC timestamp (``run_ts``, microseconds) and an id that starts
with the same instant and ends with a random suffix, so "latest" and "consecutive" are orderings of
``run_ts`` and two runs in the same second never collide. Tables that keep one slice per run are
rewritten through :func:`changed_rows`, so a rerun commits only what differs.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def new_run(now: datetime | None = None) -> tuple[str, datetime]:
    """``(run_id, run_ts)``: a UTC instant and an id that sorts like it and is unique."""
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return f"{now:%Y%m%dT%H%M%S.%fZ}-{uuid.uuid4().hex[:8]}", now


def utc(ts: datetime) -> datetime:
    """A timestamp read back from Spark (naive, local time) as an aware UTC datetime."""
    return ts.astimezone(timezone.utc)


def latest_runs(runs: DataFrame, n: int = 1) -> list:
    """The ``n`` newest rows of a runs table (``run_id``, ``run_ts``), newest first (by ``run_ts``)."""
    order = [F.desc("run_ts"), F.desc("run_id")] if "run_ts" in runs.columns else [F.desc("run_id")]
    return runs.orderBy(*order).limit(n).collect()


def changed_rows(old: DataFrame | None, new: DataFrame, keys: list[str]) -> DataFrame:
    """What a MERGE on ``keys`` needs to turn ``old`` into ``new`` and rewrite nothing else: ``new``'s
    rows that ``old`` lacks (``removed`` false) plus tombstones (``removed`` true) for the keys of
    ``old`` that ``new`` no longer has. With no ``old`` every row is new."""
    fresh = new.withColumn("removed", F.lit(False))
    if old is None:
        return fresh
    changed = new.exceptAll(old.select(*new.columns)).withColumn("removed", F.lit(False))
    gone = old.join(new.select(*keys), keys, "left_anti").select(*new.columns).withColumn("removed", F.lit(True))
    return changed.unionByName(gone)
