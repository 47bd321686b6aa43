"""Which users to spend the LLM budget on: random (round 1) and Diversity-Uncertainty (rounds 2..T).

DU (paper Eq. 1) scores an unlabelled user i by KL(Q̂ ‖ Q_i) + H(Q_i), where Q_i is the user's
normalized affinity over personas and Q̂ the persona distribution among labelled users: users
whose affinity looks unlike what has been labelled so far (diversity) or is spread thin
(uncertainty) are worth an LLM call. Users no prototype reaches have no affinity; they get the
uniform Q_i, i.e. maximal uncertainty.

Selections are ordered by a seeded hash, never by ``rand()``, so a run is reproducible from its
seed whatever the partitioning.
"""

from __future__ import annotations

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

SMOOTHING = 1e-6


def persona_distribution(labels: DataFrame, n_personas: int) -> np.ndarray:
    """Q̂: share of each persona among the (user_idx, persona_idx) labels. |R| numbers to the driver."""
    counts = np.zeros(n_personas)
    for row in labels.groupBy("persona_idx").count().collect():
        counts[row["persona_idx"]] = row["count"]
    total = counts.sum()
    return counts / total if total else np.full(n_personas, 1.0 / n_personas)


def seeded_order(seed: int, column: str = "user_idx"):
    return F.xxhash64(F.lit(seed), F.col(column))


def pick_random(candidates: DataFrame, n: int, seed: int) -> DataFrame:
    """``n`` users from ``candidates`` (``user_idx``), uniformly, reproducibly from ``seed``."""
    return candidates.select("user_idx").orderBy(seeded_order(seed)).limit(n)


def du_scores(candidates: DataFrame, affinity: DataFrame, q_hat: np.ndarray) -> DataFrame:
    """``user_idx, du_score`` for every candidate; ``affinity`` is ``user_idx, scores array<double>``."""
    n = len(q_hat)
    q_hat_col = F.array(*[F.lit(float(v)) for v in q_hat])
    uniform = F.array_repeat(F.lit(1.0), n)
    scores = F.coalesce(F.col("scores"), uniform)
    total = F.aggregate(scores, F.lit(0.0), lambda acc, x: acc + x) + F.lit(n * SMOOTHING)
    q = F.transform(scores, lambda x: (x + F.lit(SMOOTHING)) / total)
    kl = F.aggregate(
        F.zip_with(q_hat_col, F.col("_q"), lambda p, qi: F.when(p > 0, p * F.log(p / qi)).otherwise(0.0)),
        F.lit(0.0), lambda acc, x: acc + x,
    )
    entropy = -F.aggregate(F.col("_q"), F.lit(0.0), lambda acc, x: acc + x * F.log(x))
    return (
        candidates.select("user_idx")
        .join(affinity.select("user_idx", "scores"), "user_idx", "left")
        .withColumn("_q", q)
        .select("user_idx", (kl + entropy).alias("du_score"))
    )


def pick_top(scored: DataFrame, n: int, seed: int) -> DataFrame:
    """The ``n`` highest ``du_score`` users; ties broken by the seeded hash."""
    return scored.orderBy(F.col("du_score").desc(), seeded_order(seed)).limit(n).select("user_idx")


def round_sizes(budget: int, rounds: int) -> list[int]:
    """τ/T users per round, the remainder spread over the first rounds."""
    if rounds < 1:
        raise ValueError(f"gplr.rounds must be >= 1, got {rounds}")
    base, extra = divmod(budget, rounds)
    return [base + (1 if r < extra else 0) for r in range(rounds)]
