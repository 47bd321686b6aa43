"""Batch cold start on Spark: the rows of ``cold_start_recs`` for the monthly refresh.

Three kinds of row (``subject``): ``persona`` — the top items of each single persona (what a
sign-up page shows before the customer picks); ``new_customer`` — top items for customers who
have personas but no training purchase; ``new_item`` — the likeliest customers for items that
have persona tags but no training purchase. Persona and item embeddings are small and travel to
the executors; the customers' persona purchase profile is computed and scored where it lies.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from persona_spark.recommend.coldstart import PERSONAS, POPULARITY, ColdStartModel, audience_scores

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
    slim = replace(model, user_activity=model.user_activity[:0], user_persona_share=model.user_persona_share[:0])

    def rank(batches):
        for batch in batches:
            rows = []
            for subject_idx, personas in zip(batch["subject_idx"], batch["personas"]):
                ranking = slim.recommend_for_personas([int(p) for p in personas], k)
                rows.append(_rows(subject, subject_idx, ranking))
            yield pd.concat(rows) if rows else pd.DataFrame(columns=RECS_COLUMNS)

    return queries.select("subject_idx", "personas").mapInPandas(rank, RECS_SCHEMA)


def persona_purchase_profile(train: DataFrame, item_personas: DataFrame, n_personas: int) -> DataFrame:
    """``user_idx, activity, persona_share array<double>``: each customer's training purchases and the
    share of them on items tagged with each persona (an item split evenly over its tags) — the
    Spark form of ``coldstart.persona_purchase_share``."""
    tags = item_personas.select("item_idx", F.col("persona_idx").cast("int")).distinct()
    weights = tags.join(tags.groupBy("item_idx").count(), "item_idx").select(
        "item_idx", "persona_idx", (1.0 / F.col("count")).alias("weight"))
    mass = (train.select("user_idx", "item_idx").join(weights, "item_idx")
            .groupBy("user_idx", "persona_idx").agg(F.sum("weight").alias("mass"))
            .groupBy("user_idx").agg(F.map_from_entries(F.collect_list(F.struct("persona_idx", "mass"))).alias("mass")))
    activity = train.groupBy("user_idx").agg(F.count("*").alias("activity"))
    share = F.transform(F.sequence(F.lit(0), F.lit(n_personas - 1)),
                        lambda p: F.coalesce(F.col("mass")[p], F.lit(0.0)) / F.col("activity"))
    return activity.join(mass, "user_idx", "left").select("user_idx", "activity", share.alias("persona_share"))


def audiences_for_items(items: list[tuple[int, list[int]]], profile: DataFrame, n_personas: int, k: int,
                        activity_exponent: float) -> DataFrame:
    """The ``k`` likeliest customers of each new item, from its persona tags.

    ``items`` is the (small) list of new items with their tags; ``profile`` the distributed
    ``persona_purchase_profile``. Each partition keeps its own top ``k`` per item, then one window
    picks the overall top ``k``: no customer row reaches the driver. An item none of whose tags any
    customer bought ranks by activity (popularity), as ``ColdStartModel.audience_for_item`` does.
    """
    if not items:
        raise ValueError("audiences_for_items needs at least one new item")
    bought = {row["pos"] for row in
              profile.select(F.posexplode("persona_share")).where("col > 0").select("pos").distinct().collect()}
    item_ids = np.array([item for item, _ in items], np.int64)
    tag_matrix = np.zeros((n_personas, len(items)))
    for column, (_, tags) in enumerate(items):
        tag_matrix[list(tags), column] = 1.0
    by_popularity = np.array([not (set(tags) & bought) for _, tags in items])

    def local_top(batches):
        for batch in batches:
            if not len(batch):
                continue
            activity = batch["activity"].to_numpy(np.float64)
            scores = audience_scores(np.stack(batch["persona_share"].to_numpy()) @ tag_matrix, activity[:, None],
                                     activity_exponent)
            scores[:, by_popularity] = activity[:, None]
            keep = min(k, len(batch))
            user_idx = batch["user_idx"].to_numpy()
            # ties go to the lower user_idx here as in the final window, or a tied customer the
            # window would rank first could already be gone
            top = np.stack([np.lexsort((user_idx, -scores[:, column]))[:keep] for column in range(len(item_ids))], 1)
            columns = np.broadcast_to(np.arange(len(item_ids)), top.shape)
            yield pd.DataFrame({
                "subject_idx": np.repeat(item_ids[None, :], keep, 0).ravel(),
                "target_idx": user_idx[top].ravel(),
                "score": scores[top, columns].ravel(),
                "method": np.where(np.repeat(by_popularity[None, :], keep, 0), POPULARITY, PERSONAS).ravel(),
            })

    candidates = profile.mapInPandas(local_top, "subject_idx int, target_idx int, score double, method string")
    order = Window.partitionBy("subject_idx").orderBy(F.col("score").desc(), F.col("target_idx"))
    return (candidates.withColumn("rank", F.row_number().over(order)).filter(F.col("rank") <= k)
            .select(F.lit("new_item").alias("subject"), "subject_idx", "rank", "target_idx", "score", "method"))


def _rows(subject: str, subject_idx: int, ranking) -> pd.DataFrame:
    return pd.DataFrame({
        "subject": subject, "subject_idx": int(subject_idx), "rank": np.arange(1, len(ranking.indices) + 1),
        "target_idx": ranking.indices.astype(np.int64), "score": ranking.scores, "method": ranking.method,
    })
