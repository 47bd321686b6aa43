"""Small DataFrame helpers every library module may use."""

from __future__ import annotations

from collections.abc import Iterable
from functools import reduce

from pyspark.sql import DataFrame

from persona_spark.errors import UserError


def union_all(frames: Iterable[DataFrame]) -> DataFrame:
    """The rows of every frame (matched by column name), in one DataFrame."""
    return reduce(DataFrame.unionByName, frames)


def require_columns(df: DataFrame, columns: Iterable[str], what: str) -> None:
    """Fail at plan time, naming the table and the missing columns, rather than deep inside Spark."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UserError(f"{what}: missing column(s) {missing}; it has {df.columns}")
