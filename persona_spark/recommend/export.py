"""Spark side of the recommender: shape Delta tables into the trainer's directory.

The transforms here are plain ``DataFrame -> DataFrame``; ``write_export`` lets Spark write each
part as Parquet (no edge ever reaches the driver) and adds ``meta.json`` with the node counts.
The layout is the one ``persona_spark.recommend.data.read_directory`` reads.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from persona_spark.recommend.data import write_meta
from persona_spark.tables import storage


def interaction_pairs(edges: DataFrame, split: str) -> DataFrame:
    """``user_idx, item_idx`` of one split of the ``edges`` table."""
    return edges.filter(F.col("split") == split).select(F.col("user_idx").cast("int"), F.col("item_idx").cast("int"))


def user_persona_edges(personas: DataFrame, weights: str = "binary", max_rank: int | None = None) -> DataFrame:
    """``user_idx, persona_idx, weight`` from the ``personas`` table (LLM labels and assignments).

    ``weights``: "binary" (every assigned persona weighs 1) or "score" (the persona's score, which
    must be positive); ``max_rank`` keeps each user's best-ranked personas only.
    """
    if weights not in ("binary", "score"):
        raise ValueError(f"persona weights must be 'binary' or 'score', not {weights!r}")
    if max_rank is not None:
        personas = personas.filter(F.col("rank") <= max_rank)
    weight = F.lit(1.0) if weights == "binary" else F.col("score")
    return personas.select(
        F.col("user_idx").cast("int"), F.col("persona_idx").cast("int"), weight.cast("float").alias("weight")
    ).filter(F.col("weight") > 0).dropDuplicates(["user_idx", "persona_idx"])


def item_persona_edges(item_labels: DataFrame) -> DataFrame:
    """``item_idx, persona_idx, weight`` from item labels.

    Accepts the labeling cache table ``item_labels`` (``persona_idx`` an array, one row per answer:
    only valid answers are used, the newest per item) or a plain (item_idx, persona_idx) frame.
    """
    if "item_idx" not in item_labels.columns or "persona_idx" not in item_labels.columns:
        raise ValueError(f"item labels need columns item_idx and persona_idx, got {item_labels.columns}")
    labels = item_labels
    if "status" in labels.columns:
        labels = labels.filter(F.col("status") == "ok")
    if "ts" in labels.columns:
        newest = Window.partitionBy("item_idx").orderBy(F.col("ts").desc())
        labels = labels.withColumn("_newest", F.row_number().over(newest)).filter("_newest = 1")
    if labels.schema["persona_idx"].dataType.simpleString().startswith("array"):
        labels = labels.select("item_idx", F.explode("persona_idx").alias("persona_idx"))
    return (
        labels.select(F.col("item_idx").cast("int"), F.col("persona_idx").cast("int"))
        .dropna()
        .dropDuplicates()
        .withColumn("weight", F.lit(1.0).cast("float"))
    )


def write_export(
    path: str,
    parts: dict[str, DataFrame],
    n_users: int,
    n_items: int,
    persona_names: tuple[str, ...],
) -> dict[str, int]:
    """Write each part as a Parquet directory ``path/<name>`` and the counts as ``meta.json``.

    ``parts`` needs train, test, user_personas, item_personas; index maps (users, items,
    personas) may ride along. Returns the row count of each part (one count job per part).
    """
    missing = {"train", "test", "user_personas", "item_personas"} - set(parts)
    if missing:
        raise ValueError(f"export needs parts {sorted(missing)}")
    counts = {}
    for name, frame in parts.items():
        target = storage.join(path, name)
        frame.write.mode("overwrite").parquet(target)
        counts[name] = frame.sparkSession.read.parquet(target).count()
    write_meta(path, n_users, n_items, len(persona_names), persona_names)
    return counts
