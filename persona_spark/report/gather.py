"""Spark -> the small pandas frames the report draws: the report's only contact with Spark.

Every function here aggregates in Spark first and collects what is bounded by personas, segments,
runs or ``report.max_points``, never by customers or edges. Nothing here draws or formats.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from persona_spark.config import ReportConf
from persona_spark.labeling.pricing import Rates, cost_column

K_TOLERANCE = 0.05  # silhouette slack when the report picks the segmentation to show
# ndcg@10, ndcg_at_10, ndcg_10 ... (but not val_ndcg_at_10: validation is not a test result)
METRIC_COLUMN = re.compile(r"^(ndcg|f1|recall|precision|hr|hit|mrr|map)(?:@|_at_|_)(\d+)$", re.IGNORECASE)
EMBEDDING_LABELER_MODEL = "all-MiniLM-L6-v2"  # the offline labeler's model (labeling.embedding.EMBEDDING_MODEL)


@dataclass(frozen=True)
class Sources:
    """What every gatherer reads: the run's tables (``None`` = not written yet), the report's knobs, prices."""

    tables: Mapping[str, DataFrame | None]
    conf: ReportConf
    prices: Mapping[str, Rates]  # per channel (sync / batch), labeling.pricing.price_table


# ---- facts shared by the overview and several sections ---------------------------------------------
def table_sizes(tables: Mapping[str, DataFrame | None]) -> dict[str, int]:
    """Rows of the graph's tables that exist (customers, products, pairs) for the overview cards."""
    return {name: tables[name].count() for name in ("users", "items", "edges") if tables.get(name) is not None}


def describe_labelers(user_labels: DataFrame | None, personas: DataFrame | None) -> str:
    """"the offline embedding labeler (all-MiniLM-L6-v2)", "the LLM (gpt-4o-mini)", "recorded labels (...)"."""
    if user_labels is None or "model" not in user_labels.columns:
        return "the labeler"
    labels = user_labels.filter(F.col("status") == "ok") if "status" in user_labels.columns else user_labels
    if personas is not None:
        direct = personas.filter(F.col("source") == "llm").select("user_idx").distinct()
        asked = labels.join(direct, "user_idx", "left_semi")
        labels = asked if asked.limit(1).count() else labels
    models = sorted(r["model"] for r in labels.select("model").distinct().limit(5).collect() if r["model"])
    if not models:
        return "the labeler"

    def wording(model: str) -> str:
        if model == EMBEDDING_LABELER_MODEL:
            return f"the offline embedding labeler ({model})"
        if model.startswith("recorded"):
            return f"recorded labels ({model})"
        return f"the LLM ({model})"

    return " and ".join(wording(m) for m in models)


# ---- one gatherer per section -------------------------------------------------------------------------
@dataclass(frozen=True)
class PersonaCounts:
    per_persona: pd.DataFrame  # index persona_idx; llm, propagated, total customers; most customers first
    per_customer: pd.DataFrame  # n (personas a customer has), count (customers with n personas)
    labelled: int  # customers labelled directly (the prototypes)
    reach: dict | None = None  # the latest gplr run's reach_counts; None: no gplr_runs row carries them

    @property
    def customers(self) -> int:
        """Customers with at least one persona."""
        return int(self.per_customer["count"].sum())


def persona_counts(sources: Sources) -> PersonaCounts:
    personas = sources.tables["personas"]
    counts = personas.groupBy("persona_idx", "source").agg(F.countDistinct("user_idx").alias("users")).toPandas()
    wide = counts.pivot_table(index="persona_idx", columns="source", values="users", fill_value=0, aggfunc="sum")
    for source in ("llm", "propagated"):
        if source not in wide.columns:
            wide[source] = 0
    wide["total"] = wide["llm"] + wide["propagated"]
    per_customer = (
        personas.groupBy("user_idx").agg(F.countDistinct("persona_idx").alias("n")).groupBy("n").count().toPandas()
    ).sort_values("n")
    labelled = personas.filter(F.col("source") == "llm").select("user_idx").distinct().count()
    return PersonaCounts(wide.sort_values("total", ascending=False), per_customer, labelled,
                         latest_reach(sources.tables.get("gplr_runs")))


def latest_reach(runs: DataFrame | None) -> dict | None:
    """``reach`` from the latest gplr run's ``details`` (``gplr.reach_counts``); None when no run's details carry it."""
    if runs is None or "details" not in runs.columns:
        return None
    latest = runs.select("run_ts", "run_id", "details").orderBy(F.desc("run_ts"), F.desc("run_id")).first()
    return None if latest is None or not latest["details"] else json.loads(latest["details"]).get("reach")


def persona_pairs(sources: Sources) -> pd.DataFrame:
    """``row, col, count``: customers holding both personas (the diagonal: customers with the persona)."""
    assigned = sources.tables["personas"].select("user_idx", "persona_idx").distinct()
    return (
        assigned.alias("a")
        .join(assigned.alias("b"), "user_idx")
        .groupBy(F.col("a.persona_idx").alias("row"), F.col("b.persona_idx").alias("col"))
        .count()
        .toPandas()
    )


def chosen_k(conf: ReportConf, silhouettes: pd.DataFrame) -> int | None:
    """``report.k``, else the smallest k whose persona silhouette is within ``K_TOLERANCE`` of the best:
    silhouette tends to creep up with k, and a marketer reads 15 segments, not 35."""
    if conf.k is not None:
        return conf.k
    persona_rows = silhouettes[(silhouettes["representation"] == "personas") & silhouettes["silhouette"].notna()]
    if persona_rows.empty:
        return None
    good = persona_rows[persona_rows["silhouette"] >= persona_rows["silhouette"].max() - K_TOLERANCE]
    return int(good["k"].min())


@dataclass(frozen=True)
class Segmentation:
    k: int | None  # the segmentation shown
    available: list[int]  # the ks segment_summary holds
    segments: pd.DataFrame | None  # segment_summary rows of k, largest first; None when k is not available
    points: pd.DataFrame | None  # x, y, z, segment of at most report.max_points customers; None: no segment_points


def segmentation(sources: Sources) -> Segmentation:
    k = chosen_k(sources.conf, sources.tables["silhouette"].toPandas())
    summary = sources.tables["segment_summary"]
    available = sorted(int(r["k"]) for r in summary.select("k").distinct().collect())
    if k is None or k not in available:
        return Segmentation(k, available, None, None)
    rows = summary.filter(F.col("k") == k).toPandas().sort_values("size", ascending=False)
    return Segmentation(k, available, rows, projection_sample(sources, k))


def projection_sample(sources: Sources, k: int) -> pd.DataFrame | None:
    points, segments = sources.tables.get("segment_points"), sources.tables["segments"]
    if points is None:
        return None
    limit = sources.conf.max_points
    chosen = segments.filter((F.col("representation") == "personas") & (F.col("k") == k)).select("user_idx", "segment")
    joined = points.filter(F.col("representation") == "personas").join(chosen, "user_idx")
    total = joined.count()
    if total > limit:
        joined = joined.sample(fraction=min(1.0, 1.3 * limit / total), seed=7)
    return joined.limit(limit).select("x", "y", "z", "segment").toPandas()


@dataclass(frozen=True)
class Silhouettes:
    scores: pd.DataFrame  # representation, k, silhouette
    rfm_parts: pd.DataFrame  # part, computed, source (empty when segment wrote none)


def silhouettes(sources: Sources) -> Silhouettes:
    parts = sources.tables.get("rfm_parts")
    return Silhouettes(
        sources.tables["silhouette"].toPandas().sort_values(["representation", "k"]),
        parts.toPandas() if parts is not None else pd.DataFrame(columns=["part", "computed", "source"]),
    )


def robustness(sources: Sources) -> pd.DataFrame:
    return sources.tables["robustness"].toPandas()  # one row per representation


@dataclass(frozen=True)
class AuditRun:
    run_id: str
    run_ts: object
    guard: str | None  # gplr_runs.audit_guard: off, passed, failed (None: not recorded)
    rows: pd.DataFrame  # the run's persona_audit rows: metric, persona_idx, estimate, lower, upper, users, support


@dataclass(frozen=True)
class Quality:
    runs: pd.DataFrame | None  # the evaluation table, latest run first; None: no reference labels scored
    latest_run: str | None  # the run per_persona describes
    per_persona: pd.DataFrame | None  # the latest run's rows of evaluation_per_persona (empty: no run); None: not written
    audits: list[AuditRun] = field(default_factory=list)  # the latest run's audit, then the one before (if any)

    @property
    def guard_failed(self) -> bool:
        return bool(self.audits) and self.audits[0].guard == "failed"


def latest_run_id(rows: DataFrame) -> str | None:
    """The run id of ``rows``' latest ``run_ts``: run ids are not in time order (a random suffix after
    the second), so the latest run is found by its time."""
    latest = rows.select("run_id", "run_ts").orderBy(F.desc("run_ts"), F.desc("run_id")).first()
    return None if latest is None else latest["run_id"]


def audit_runs(audit: DataFrame | None, runs: DataFrame | None, count: int = 2) -> list[AuditRun]:
    """The latest ``count`` runs' audits (rows per run: 4 + personas), latest first, with their guard."""
    if audit is None:
        return []
    latest = audit.select("run_id", "run_ts").distinct().orderBy(F.desc("run_ts"), F.desc("run_id")).limit(count).collect()
    guards = {}
    if runs is not None and "audit_guard" in runs.columns:
        ids = [r["run_id"] for r in latest]
        guards = {r["run_id"]: r["audit_guard"] for r in runs.filter(F.col("run_id").isin(ids)).collect()}
    wanted = audit.filter(F.col("run_id").isin([r["run_id"] for r in latest])).toPandas()
    return [AuditRun(r["run_id"], r["run_ts"], guards.get(r["run_id"]),
                     wanted[wanted["run_id"] == r["run_id"]].drop(columns=["run_id", "run_ts"]).reset_index(drop=True))
            for r in latest]


def quality(sources: Sources) -> Quality:
    audits = audit_runs(sources.tables.get("persona_audit"), sources.tables.get("gplr_runs"))
    evaluation = sources.tables.get("evaluation")
    if evaluation is None:
        return Quality(None, None, None, audits)
    runs = evaluation.toPandas()
    order = [c for c in ("run_ts", "run_id") if c in runs.columns]
    if order:
        runs = runs.sort_values(order, ascending=False)
    per_persona = sources.tables.get("evaluation_per_persona")
    if per_persona is None:
        return Quality(runs, None, None, audits)
    latest = latest_run_id(per_persona)
    if latest is None:
        return Quality(runs, None, pd.DataFrame(), audits)
    return Quality(runs, latest, per_persona.filter(F.col("run_id") == latest).toPandas(), audits)


@dataclass(frozen=True)
class Drift:
    runs: dict  # from_run_id, to_run_id, from_ts, to_ts of the latest comparison
    per_persona: pd.DataFrame  # persona_transitions rows of that comparison
    flows: pd.DataFrame  # persona_flows rows of that comparison


def drift(sources: Sources) -> Drift | None:
    """The latest two runs compared; ``None`` before the second gplr run."""
    transitions = sources.tables["persona_transitions"]
    latest = transitions.select("from_run_id", "to_run_id", "from_ts", "to_ts").distinct().orderBy(F.desc("to_ts")).first()
    if latest is None:
        return None
    same = F.col("to_run_id") == latest["to_run_id"]
    return Drift(latest.asDict(), transitions.filter(same).toPandas(),
                 sources.tables["persona_flows"].filter(same).toPandas())


@dataclass(frozen=True)
class Calibration:
    run_id: str
    bins: pd.DataFrame  # bin, lower, upper, pairs, mean_predicted, observed


def calibration(sources: Sources) -> Calibration:
    """The bins of the latest gplr run that wrote any (its time from ``gplr_runs``)."""
    bins = sources.tables["persona_calibration"]
    runs = sources.tables["gplr_runs"].select("run_id", "run_ts")
    latest = latest_run_id(bins.select("run_id").distinct().join(runs, "run_id", "left"))
    return Calibration(latest, bins.filter(F.col("run_id") == latest).toPandas().sort_values("bin"))


def metric_rows(runs: DataFrame) -> pd.DataFrame:
    """``model, run, metric, k, value``: one row per model run and ranking metric (small: runs × metrics).

    Reads the ``metrics`` map (``ndcg@10`` ...) the train stage writes, else flat columns like
    ``ndcg_at_10`` / ``ndcg@10`` / ``ndcg_10``; validation metrics (``val_*``) are not test results."""
    run_key = [c for c in ("run_id", "seed") if c in runs.columns]
    run = F.concat_ws("/", *[F.col(c).cast("string") for c in run_key]) if run_key else F.monotonically_increasing_id().cast("string")
    if "metrics" in runs.columns:
        long = runs.select("model", run.alias("run"), F.explode("metrics").alias("name", "value"))
    else:
        columns = [c for c in runs.columns if METRIC_COLUMN.match(c)]
        if not columns:
            return pd.DataFrame(columns=["model", "run", "metric", "k", "value"])
        pairs = F.array(*[F.struct(F.lit(c).alias("name"), F.col(c).cast("double").alias("value")) for c in columns])
        long = runs.select("model", run.alias("run"), F.explode(pairs).alias("m")).select("model", "run", "m.name", "m.value")
    frame = long.toPandas()
    parsed = frame["name"].str.extract(METRIC_COLUMN)
    frame["metric"], frame["k"] = parsed[0].str.lower(), pd.to_numeric(parsed[1])
    return frame.dropna(subset=["metric", "k", "value"]).astype({"k": int})


@dataclass(frozen=True)
class Recommendations:
    metrics: pd.DataFrame | None  # metric_rows; None: recommend_runs has no model column
    training: pd.DataFrame | None  # index model; training runs and, where written, mean seconds, epochs, device


def recommendations(sources: Sources) -> Recommendations:
    runs = sources.tables["recommend_runs"]
    if "model" not in runs.columns:
        return Recommendations(None, None)
    optional = {"seconds": F.avg("seconds").alias("mean seconds"), "epochs": F.max("epochs").alias("epochs"),
                "device": F.first("device").alias("device")}
    training = runs.groupBy("model").agg(
        F.count("*").alias("training runs"), *[agg for column, agg in optional.items() if column in runs.columns]
    )
    return Recommendations(metric_rows(runs), training.toPandas().set_index("model"))


@dataclass(frozen=True)
class Labeling:
    ledger: pd.DataFrame  # per model, prompt version, channel, status: customers, tokens, cost USD, latency
    refreshes: pd.DataFrame  # per day and channel: customers, tokens, cost USD
    errors: pd.DataFrame | None  # status, error, count: the five most frequent; None: no error column
    audit: dict | None = None  # the latest gplr run's audit spend: run_id, users, tokens, run_tokens

    @property
    def customers(self) -> int:
        return int(self.ledger["customers"].sum())

    @property
    def tokens(self) -> int:
        return int(sum(self.ledger[c].sum() for c in ("prompt_tokens", "completion_tokens") if c in self.ledger))

    @property
    def cost(self) -> float:
        return float(self.ledger["cost USD"].sum())


def labeling(sources: Sources) -> Labeling:
    labels = sources.tables["user_labels"]
    if "channel" not in labels.columns:  # a cache table without the ledger's channel column
        labels = labels.withColumn("channel", F.lit("sync"))
    labels = labels.withColumn("_cost", cost_column(sources.prices, labels.columns))
    keys = [c for c in ("model", "prompt_version", "channel", "status") if c in labels.columns]
    token_cols = [c for c in ("prompt_tokens", "cached_prompt_tokens", "completion_tokens") if c in labels.columns]

    def spend() -> list:
        tokens = [F.coalesce(F.sum(c), F.lit(0)).cast("long").alias(c) for c in token_cols]
        return [F.count("*").alias("customers"), *tokens, F.sum("_cost").alias("cost USD")]

    latency = []
    if "latency_ms" in labels.columns:
        latency = [F.avg("latency_ms").alias("mean latency ms"), F.percentile_approx("latency_ms", 0.95).alias("p95 latency ms")]
    ledger = labels.groupBy(*keys).agg(*spend(), *latency).toPandas().sort_values(keys)
    # A refresh is a day's labeling (GPLR rounds of one run, or one label-users call).
    refreshes = labels.groupBy(F.to_date("ts").alias("refresh"), "channel").agg(*spend()).orderBy("refresh", "channel").toPandas()
    errors = None
    if "status" in labels.columns and "error" in labels.columns:
        errors = (labels.filter(F.col("error").isNotNull()).groupBy("status", "error").count()
                  .orderBy(F.desc("count")).limit(5).toPandas())
    return Labeling(ledger, refreshes, errors, audit_spend(sources.tables.get("gplr_runs")))


def audit_spend(runs: DataFrame | None) -> dict | None:
    """What the latest gplr run's audit cost beside the whole run (None: no run, or no audit recorded)."""
    if runs is None or "audit_prompt_tokens" not in runs.columns:
        return None
    latest = runs.orderBy(F.desc("run_ts"), F.desc("run_id")).first()
    if latest is None or latest["audit_users"] is None:
        return None
    tokens = int(latest["audit_prompt_tokens"] or 0) + int(latest["audit_completion_tokens"] or 0)
    run_tokens = int(latest["prompt_tokens"] or 0) + int(latest["completion_tokens"] or 0)
    return {"run_id": latest["run_id"], "users": int(latest["audit_users"]), "tokens": tokens, "run_tokens": run_tokens}
