"""Quality of predicted persona sets against reference labels (GPT-4's, or the planted ones).

Only users whose personas the run predicted are scored: a prototype's label is the reference's
own answer and would flatter the result. All counting happens in Spark; only per-persona totals
(|R| rows) reach the driver.
"""

from __future__ import annotations

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def popular_personas(labels: DataFrame, eval_users: DataFrame, k: int) -> DataFrame:
    """Baseline: every evaluated user gets the k personas most frequent among ``labels``."""
    top = labels.groupBy("persona_idx").count().orderBy(F.col("count").desc(), "persona_idx").limit(k)
    return eval_users.select("user_idx").crossJoin(F.broadcast(top.select("persona_idx")))


def per_persona_counts(predicted: DataFrame, reference: DataFrame, eval_users: DataFrame) -> pd.DataFrame:
    """tp / predicted / actual per persona over ``eval_users`` (|R| rows)."""
    users = eval_users.select("user_idx").distinct()
    pred = predicted.select("user_idx", "persona_idx").distinct().join(users, "user_idx").withColumn("p", F.lit(1))
    true = reference.select("user_idx", "persona_idx").distinct().join(users, "user_idx").withColumn("t", F.lit(1))
    pairs = pred.join(true, ["user_idx", "persona_idx"], "full_outer").fillna(0, ["p", "t"])
    counts = pairs.groupBy("persona_idx").agg(
        F.sum(F.col("p") * F.col("t")).alias("tp"), F.sum("p").alias("predicted"), F.sum("t").alias("actual")
    )
    return counts.toPandas().sort_values("persona_idx").reset_index(drop=True)


def _ratio(a, b):
    return a / b if b else 0.0


def summarize_counts(counts: pd.DataFrame) -> tuple[dict, pd.DataFrame]:
    """Micro/macro P, R, F1 from per-persona counts; macro averages personas present in either side."""
    tp, pred, actual = (float(counts[c].sum()) for c in ("tp", "predicted", "actual"))
    precision, recall = _ratio(tp, pred), _ratio(tp, actual)
    per = counts.copy()
    per["precision"] = [_ratio(t, p) for t, p in zip(per.tp, per.predicted)]
    per["recall"] = [_ratio(t, a) for t, a in zip(per.tp, per.actual)]
    per["f1"] = [_ratio(2 * t, p + a) for t, p, a in zip(per.tp, per.predicted, per.actual)]
    present = per[(per.predicted > 0) | (per.actual > 0)]
    summary = {
        "micro_f1": _ratio(2 * tp, pred + actual),
        "macro_f1": float(present.f1.mean()) if len(present) else 0.0,
        "precision": precision,
        "recall": recall,
    }
    return summary, per


def evaluate_sets(predicted: DataFrame, reference: DataFrame, eval_users: DataFrame) -> tuple[dict, pd.DataFrame]:
    """(summary metrics, per-persona table) of ``predicted`` vs ``reference`` on ``eval_users``."""
    return summarize_counts(per_persona_counts(predicted, reference, eval_users))


def evaluation_users(reference: DataFrame, asked: DataFrame) -> DataFrame:
    """Users with reference labels whose personas the run predicted: never sent to the LLM, or sent only for
    the run's audit (``role = 'audit'`` in ``gplr_prototypes``: they keep the personas the run predicted)."""
    prototypes = asked.filter(F.col("role") != "audit") if "role" in asked.columns else asked
    return reference.select("user_idx").distinct().join(prototypes.select("user_idx"), "user_idx", "left_anti")
