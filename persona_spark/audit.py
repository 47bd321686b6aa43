"""A run's own quality estimate without reference labels: an audit sample of users the LLM labels too.

The run draws ``gplr.audit_users`` users uniformly (seeded) from those it did not pick as prototypes, after
its sampling rounds, and asks the same labeler about them through the same cache. Their answers never reach
sampling, training, calibration or propagation: the users keep the personas the run predicted for them, and
the audit scores those predictions against the answers (:mod:`persona_spark.intervals`). Being a uniform
sample of the users the run predicts for, it estimates the run's agreement with the LLM over all of them,
which the cross-fitted figure on the prototypes (chosen by DU sampling, light buyers) does not.

Only the audit sample reaches the driver (one row per audited user, at most ``audit_users``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from persona_spark import intervals
from persona_spark.sampling import pick_random

# The draw's seed is the run's plus this (and the draw's number), apart from the sampling rounds' (seed + round).
SEED_OFFSET = 15_485_863
AUDIT_SCHEMA = ("run_id string, run_ts timestamp, metric string, persona_idx int, estimate double, lower double, "
                "upper double, users bigint, support bigint, method string, confidence double")
# gplr_runs columns of a run's audit (null when it has none), so runs compare without parsing ``details``
RUN_COLUMNS = {"audit_users": "bigint", "audit_micro_f1": "double", "audit_micro_f1_lower": "double",
               "audit_micro_f1_upper": "double", "audit_macro_f1": "double", "audit_prompt_tokens": "bigint",
               "audit_completion_tokens": "bigint", "audit_guard": "string"}


def draw(candidates: DataFrame, n: int, seed: int, number: int = 0) -> DataFrame:
    """``n`` of ``candidates`` (``user_idx``: the users the run predicts for), uniformly from ``seed`` and the
    draw's ``number`` (every run on the same tables draws with fresh keys)."""
    return pick_random(candidates, n, seed + SEED_OFFSET + 7919 * number)


def audited_sets(predicted: DataFrame, answers: DataFrame) -> DataFrame:
    """The run's persona rows (``user_idx, persona_idx``) and the audit's label rows (``user_idx, status,
    persona_idx`` array) -> one row per audited user: ``user_idx, status, predicted, actual`` (sorted arrays;
    ``actual`` empty for an unrepresentable answer, null for an error)."""
    sets = predicted.join(answers.select("user_idx"), "user_idx", "left_semi").groupBy("user_idx").agg(
        F.sort_array(F.collect_set("persona_idx")).alias("predicted"))
    actual = F.when(F.col("status") == "ok", F.sort_array(F.array_distinct("persona_idx"))).when(
        F.col("status") == "unrepresentable", F.array().cast("array<int>"))
    return (answers.select("user_idx", "status", actual.alias("actual"))
            .join(sets, "user_idx", "left").select("user_idx", "status", "predicted", "actual"))


def matrix(sets: pd.Series, n_personas: int) -> np.ndarray:
    out = np.zeros((len(sets), n_personas), dtype=np.int8)
    for i, personas in enumerate(sets):
        if personas is not None and len(personas):
            out[i, list(personas)] = 1
    return out


@dataclass
class Audit:
    """One run's audit: who was asked and answered, what it cost, and the estimates with their intervals."""

    asked: int
    scored: int  # users with a usable answer (ok or unrepresentable); errors are not scored
    errors: int
    cost: dict  # the audit's labelling record (counts and tokens, as a sampling round's)
    overall: dict[str, intervals.Estimate] = field(default_factory=dict)  # empty when nobody was scored
    per_persona: dict[int, tuple[intervals.Estimate, int]] = field(default_factory=dict)  # recall, carriers
    confidence: float = intervals.CONFIDENCE

    def summary(self) -> dict:
        """For the stage summary, ``gplr_runs.details`` and MLflow (``quality.audit.*``)."""
        out: dict = {"asked": self.asked, "users": self.scored, "errors": self.errors,
                     "confidence": self.confidence, "prompt_tokens": self.cost.get("prompt_tokens", 0),
                     "completion_tokens": self.cost.get("completion_tokens", 0)}
        for name, estimate in self.overall.items():
            out[name] = round(estimate.value, 4)
            out[f"{name}_lower"], out[f"{name}_upper"] = round(estimate.lower, 4), round(estimate.upper, 4)
        out["recall_per_persona"] = {str(r): {"recall": round(e.value, 4), "lower": round(e.lower, 4),
                                              "upper": round(e.upper, 4), "carriers": n}
                                     for r, (e, n) in sorted(self.per_persona.items())}
        return out

    def rows(self, run: tuple[str, datetime]) -> list[tuple]:
        """``persona_audit`` rows (``AUDIT_SCHEMA``): one per overall figure, one per persona's recall."""
        run_id, run_ts = run
        out = [(run_id, run_ts, name, None, e.value, e.lower, e.upper, self.scored, None, "bootstrap", self.confidence)
               for name, e in self.overall.items()]
        out += [(run_id, run_ts, "recall", r, e.value, e.lower, e.upper, self.scored, n, "wilson", self.confidence)
                for r, (e, n) in sorted(self.per_persona.items())]
        return out


def score(sets: pd.DataFrame, n_personas: int, cost: dict, seed: int) -> Audit:
    """:func:`audited_sets`, collected (one row per audited user) -> the estimates."""
    usable = sets[sets["status"].isin(["ok", "unrepresentable"])]
    audit = Audit(len(sets), len(usable), int((sets["status"] == "error").sum()), cost)
    if usable.empty:
        return audit
    predicted, actual = matrix(usable["predicted"], n_personas), matrix(usable["actual"], n_personas)
    audit.overall = intervals.bootstrap(predicted, actual, seed=seed)
    audit.per_persona = intervals.recall_per_persona(predicted, actual)
    return audit


def run_columns(audit: Audit | None, guard: str) -> list[Column]:
    """The ``gplr_runs`` columns of ``RUN_COLUMNS`` for a run's audit (typed nulls without one)."""
    micro = audit.overall.get("micro_f1") if audit else None
    macro = audit.overall.get("macro_f1") if audit else None
    values = {"audit_users": audit.scored if audit else None,
              "audit_micro_f1": micro and micro.value, "audit_micro_f1_lower": micro and micro.lower,
              "audit_micro_f1_upper": micro and micro.upper, "audit_macro_f1": macro and macro.value,
              "audit_prompt_tokens": audit.cost.get("prompt_tokens") if audit else None,
              "audit_completion_tokens": audit.cost.get("completion_tokens") if audit else None,
              "audit_guard": guard}
    return [F.lit(values[name]).cast(kind).alias(name) for name, kind in RUN_COLUMNS.items()]


def guard_state(audit: Audit | None, minimum: float | None) -> str:
    """``off`` (no ``gplr.min_audit_micro_f1``), ``passed``, or ``failed``: the upper bound of the audit's
    micro-F1 is below the minimum, or there is no estimate to vouch for the run (nobody audited)."""
    if minimum is None:
        return "off"
    micro = audit.overall.get("micro_f1") if audit else None
    return "passed" if micro is not None and micro.upper >= minimum else "failed"


def guard_message(audit: Audit | None, minimum: float, run_id: str) -> str:
    """The one line a failed guard ends the run with."""
    micro = audit.overall.get("micro_f1") if audit else None
    written = f"run {run_id}'s tables are written"
    if micro is None:
        return (f"quality alert: no audit estimate to hold against gplr.min_audit_micro_f1 = {minimum:g} "
                f"({audit.scored if audit else 0} users scored); {written}")
    return (f"quality alert: audit micro-F1 {micro.value:.3f} ({100 * audit.confidence:g} % interval "
            f"{micro.lower:.3f}-{micro.upper:.3f}, {audit.scored} users) is below gplr.min_audit_micro_f1 = "
            f"{minimum:g}; {written}")
