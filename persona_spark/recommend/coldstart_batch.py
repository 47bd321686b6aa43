"""Batch cold start on Spark: the rows of ``cold_start_recs`` for the monthly refresh.

Three kinds of row (``subject``): ``persona`` — the top items of each single persona (what a
sign-up page shows before the customer picks); ``new_customer`` — top items for customers who
have personas but no training purchase; ``new_item`` — the likeliest customers for items that
have persona tags but no training purchase. Persona and item embeddings are small and travel to
the executors; user embeddings stay a distributed table (``users.parquet`` of the trained run).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from persona_spark.recommend.coldstart import PERSONAS, POPULARITY, ColdStartModel

RECS_SCHEMA = "subject string, subject_idx int, rank int, target_idx int, score double, method string"
RECS_COLUMNS = [part.split()[0] for part in RECS_SCHEMA.split(", ")]


def persona_lists(pairs: DataFrame, key: str) -> DataFrame:
    """``key, personas array<int>`` from (key, persona_idx) rows."""
    return pairs.groupBy(key).agg(F.sort_array(F.collect_set(F.col("persona_idx").cast("int"))).alias("personas"))


def without_training_edges(pairs: DataFrame, train: DataFrame, key: str) -> DataFrame:
    """Rows of ``pairs`` whose ``key`` (user_idx or item_idx) has no training purchase: the cold ones."""
    return pairs.join(train.select(key).distinct(), key, "left_anti")


def recommend_items(queries: DataFrame, model: ColdStartModel, k: int, subject: str) -> DataFrame:
    """Top-``k`` items for each row of ``queries`` (``subject_idx, personas``), one row per item.

    ``subject`` names what the rows are: "new_customer" (subject_idx = user_idx) or "persona"."""
    slim = replace(model, user_embeddings=model.user_embeddings[:0], user_activity=model.user_activity[:0])

    def rank(batches):
        for batch in batches:
            rows = []
            for subject_idx, personas in zip(batch["subject_idx"], batch["personas"]):
                ranking = slim.recommend_for_personas([int(p) for p in personas], k)
                rows.append(_rows(subject, subject_idx, ranking))
            yield pd.concat(rows) if rows else pd.DataFrame(columns=RECS_COLUMNS)

    return queries.select("subject_idx", "personas").mapInPandas(rank, RECS_SCHEMA)


def audiences_for_items(items: list[tuple[int, list[int]]], model: ColdStartModel, users: DataFrame,
                        k: int) -> DataFrame:
    """The ``k`` likeliest customers of each new item, from its persona tags.

    ``items`` is the (small) list of new items with their tags; ``users`` the run's distributed
    ``user_idx, activity, embedding`` table. Each user partition keeps its own top ``k`` per item,
    then one window picks the overall top ``k``: no user embedding reaches the driver.
    """
    queries = [model.persona_query(tags) for _, tags in items]
    item_ids = np.array([item for item, _ in items], np.int64)
    by_popularity = np.array([q is None for q in queries])
    dim = model.item_embeddings.shape[1]
    query_matrix = np.stack([q if q is not None else np.zeros(dim, np.float32) for q in queries]) if items else None

    def local_top(batches):
        for batch in batches:
            if not len(batch) or query_matrix is None:
                continue
            embeddings = np.stack(batch["embedding"].to_numpy()).astype(np.float32)
            scores = embeddings @ query_matrix.T
            scores[:, by_popularity] = batch["activity"].to_numpy(np.float64)[:, None]
            keep = min(k, len(batch))
            top = np.argpartition(-scores, keep - 1, axis=0)[:keep]
            columns = np.broadcast_to(np.arange(len(item_ids)), top.shape)
            yield pd.DataFrame({
                "subject_idx": np.repeat(item_ids[None, :], keep, 0).ravel(),
                "target_idx": batch["user_idx"].to_numpy()[top].ravel(),
                "score": scores[top, columns].ravel(),
                "method": np.where(np.repeat(by_popularity[None, :], keep, 0), POPULARITY, PERSONAS).ravel(),
            })

    candidates = users.mapInPandas(local_top, "subject_idx int, target_idx int, score double, method string")
    order = Window.partitionBy("subject_idx").orderBy(F.col("score").desc(), F.col("target_idx"))
    return (candidates.withColumn("rank", F.row_number().over(order)).filter(F.col("rank") <= k)
            .select(F.lit("new_item").alias("subject"), "subject_idx", "rank", "target_idx", "score", "method"))


def _rows(subject: str, subject_idx: int, ranking) -> pd.DataFrame:
    return pd.DataFrame({
        "subject": subject, "subject_idx": int(subject_idx), "rank": np.arange(1, len(ranking.indices) + 1),
        "target_idx": ranking.indices.astype(np.int64), "score": ranking.scores, "method": ranking.method,
    })
