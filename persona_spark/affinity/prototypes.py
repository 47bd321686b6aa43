"""The prototype matrix L of GPLR (paper §5): what the labelled users contribute to propagation.

L[u,r] = c_r · Φ[u,r] / Σ_n Φ[u,n] for a labelled user u, 0 for everyone else. Φ are the label
weights (1 per persona the LLM gave the user unless a ``weight`` column says otherwise). Labels
are skewed — a few personas fit most shoppers — and propagation would let the frequent ones drown
the rare ones, so persona r is scaled by c_r = (min_n Q̂(n) / Q̂(r))^β, where Q̂ is the persona
distribution among the labelled users (Q̂(r) ∝ Σ_u Φ[u,r]: with unit weights, how many labelled
users carry r). β = 0 disables the de-bias; c_r ≤ 1, with 1 for the rarest persona seen.
"""

from __future__ import annotations

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from persona_spark.runtime.frames import require_columns


def debias_weights(persona_mass: dict[int, float], n_personas: int, beta: float) -> np.ndarray:
    """c_r for every persona from its label mass; personas nobody carries get 0 (they never occur)."""
    mass = np.zeros(n_personas)
    for persona, value in persona_mass.items():
        mass[persona] = value
    present = mass > 0
    weights = np.zeros(n_personas)
    if present.any():
        weights[present] = (mass[present].min() / mass[present]) ** beta
    return weights


def prototype_weights(labels: DataFrame, beta: float, n_personas: int | None = None) -> DataFrame:
    """``user_idx, persona_idx (, weight)`` label rows → ``user_idx, persona_idx, weight``: the
    non-zero entries of L (explanations walk them one user at a time).

    Repeated (user, persona) rows add their weights. ``n_personas``, when given, bounds persona_idx.
    """
    require_columns(labels, ["user_idx", "persona_idx"], "prototype labels")
    weight = F.col("weight").cast("double") if "weight" in labels.columns else F.lit(1.0)
    rows = labels.select(F.col("user_idx").cast("int").alias("user_idx"),
                         F.col("persona_idx").cast("int").alias("persona_idx"), weight.alias("w"))
    check = rows.agg(F.min("persona_idx").alias("lo"), F.max("persona_idx").alias("hi"), F.min("w").alias("min_w"),
                     F.sum((F.col("user_idx").isNull() | F.col("persona_idx").isNull() | F.col("w").isNull())
                           .cast("long")).alias("nulls")).first()
    if check["nulls"]:
        raise ValueError(f"prototype labels: {check['nulls']} row(s) with a null user_idx, persona_idx or weight")
    if check["lo"] is not None and (check["lo"] < 0 or (n_personas is not None and check["hi"] >= n_personas)):
        raise ValueError(f"prototype labels: persona_idx must lie in [0, {n_personas}), "
                         f"found {check['lo']}..{check['hi']}")
    width = n_personas if n_personas is not None else (check["hi"] + 1 if check["hi"] is not None else 0)
    if check["min_w"] is not None and check["min_w"] < 0:
        raise ValueError(f"prototype labels: weight must be >= 0, found {check['min_w']}")

    rows = rows.groupBy("user_idx", "persona_idx").agg(F.sum("w").alias("w")).where(F.col("w") > 0)
    mass = {r["persona_idx"]: r["mass"] for r in rows.groupBy("persona_idx").agg(F.sum("w").alias("mass")).collect()}
    c = debias_weights(mass, width, beta)
    c_array = F.array(*[F.lit(float(x)) for x in c])
    share = F.col("w") / F.sum("w").over(Window.partitionBy("user_idx"))
    return rows.select("user_idx", "persona_idx",
                       (share * F.element_at(c_array, F.col("persona_idx") + 1)).alias("weight"))


def prototype_labels(labels: DataFrame, n_personas: int, beta: float) -> DataFrame:
    """``user_idx, persona_idx (, weight)`` label rows → ``user_idx int, vec array<double>`` rows of L.

    Repeated (user, persona) rows add their weights. Users whose weights are all 0 get no row.
    """
    per_user = prototype_weights(labels, beta, n_personas).groupBy("user_idx").agg(
        F.map_from_entries(F.collect_list(F.struct("persona_idx", "weight"))).alias("m"))
    return per_user.select(
        "user_idx",
        F.transform(F.sequence(F.lit(0), F.lit(n_personas - 1)),
                    lambda r: F.coalesce(F.try_element_at("m", r), F.lit(0.0))).alias("vec"))
