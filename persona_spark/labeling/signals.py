"""Behaviour beyond product names, as evidence for the personas whose descriptions call for it.

Product names cannot tell a bargain hunter from a home cook when both buy rice and olive oil; the
prices they pay, the size of their baskets and how often they order can. Each ``Signal`` names one
behaviour, the standardized per-customer measure that shows it, and the words by which a persona's
name or description asks for it ("price-sensitive", "bulk", "busy"). A persona gets a signal's
evidence only when its text contains one of those words, so a persona set decides for itself which
personas are behaviour-defined; a measure the source has no column for (Instacart has no prices)
is null for every customer and gives no evidence.

``behaviour_measures`` computes the measures in Spark, one row per customer, standardized over all
customers (mean 0, standard deviation 1); the embedding scorer adds the log-likelihood ratio
``d x - d^2 / 2`` of the measure x (clipped to ``MAX_STANDARD_UNITS``) to the log-score of every
persona that calls for the signal, d = ``signal_weight`` (the assumed effect, in standard
deviations, of being such a persona on the measure).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass

import numpy as np
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from persona_spark.personas import PersonaSet

MEASURES = ("price_z", "basket_z", "cadence_z")
IDF_COLUMN = "item_idf"  # map<item_idx, idf> of the products in a customer's training history
MAX_STANDARD_UNITS = 3.0  # a few extreme customers must not turn one signal into the whole verdict


@dataclass(frozen=True)
class Signal:
    name: str
    measure: str  # one of MEASURES
    direction: int  # +1: high values are evidence for the persona, -1: low values are
    description: str
    words: tuple[str, ...]  # matched case-insensitively at the start of a word of "name: description"


SIGNALS = (
    Signal("low_prices", "price_z", -1, "buys cheap, discounted, value-for-money items",
           ("bargain", "cheap", "discount", "price-sensitive", "value brand", "budget", "frugal", "thrift", "coupon")),
    Signal("high_prices", "price_z", +1, "buys premium, luxury, high-end items", ("luxury", "premium", "high-end", "upscale")),
    Signal("large_baskets", "basket_z", +1, "buys many products per order, stocks up",
           ("stock up", "stocking up", "bulk", "multipack", "family", "parent")),
    Signal("frequent_orders", "cadence_z", +1, "orders often", ("busy", "frequent", "weekly", "regular shop")),
)
EVIDENCE_RULE = "gaussian-llr"  # part of the version: how a measure becomes evidence
SIGNALS_VERSION = hashlib.sha256(json.dumps([EVIDENCE_RULE, *[asdict(s) for s in SIGNALS]]).encode()).hexdigest()[:8]


def persona_text(name: str, description: str | None) -> str:
    """What a persona is embedded and matched by: its name, and its description where it has one."""
    return f"{name}: {description}" if description else name


def called_signals(text: str) -> list[Signal]:
    """The signals a persona's "name: description" asks for."""
    return [s for s in SIGNALS if any(re.search(r"\b" + re.escape(word), text, re.IGNORECASE) for word in s.words)]


def evidence_weights(persona_set: PersonaSet, signal_weight: float) -> np.ndarray:
    """(personas x MEASURES): the log-score added per standard unit of each measure."""
    weights = np.zeros((len(persona_set), len(MEASURES)))
    for r, (name, description) in enumerate(zip(persona_set.names, persona_set.descriptions)):
        for signal in called_signals(persona_text(name, description)):
            weights[r, MEASURES.index(signal.measure)] += signal_weight * signal.direction
    return weights


def measure_values(rows) -> np.ndarray:
    """(entities x MEASURES) from a pandas frame of requests; absent columns and nulls are NaN."""
    return np.column_stack([rows[m].to_numpy(dtype=np.float64, na_value=np.nan) if m in rows else np.full(len(rows), np.nan)
                            for m in MEASURES]) if len(rows) else np.zeros((0, len(MEASURES)))


def evidence(weights: np.ndarray, measures: np.ndarray) -> np.ndarray:
    """Log-score evidence per persona for one entity: missing measures count as no evidence.

    For a persona shifting a standardized measure by d (its weight) the log-likelihood ratio of
    N(d, 1) against N(0, 1) at x is ``d x - d^2 / 2``: without the ``- d^2 / 2`` the evidence would
    average ``exp(d^2 / 2) > 1`` over customers with no such behaviour, so every persona that calls
    for a signal would gain on every customer, the more signals it calls for the more.
    """
    present = ~np.isnan(measures)
    clipped = np.clip(np.where(present, measures, 0.0), -MAX_STANDARD_UNITS, MAX_STANDARD_UNITS)
    return weights @ clipped - 0.5 * (weights**2) @ present


def behaviour_measures(transactions: DataFrame, users: DataFrame, items: DataFrame, train_edges: DataFrame) -> DataFrame:
    """``user_idx, price_z, basket_z, cadence_z`` from the training lines, standardized over customers.

    * price: mean catalogue percentile (by median unit price) of the products a customer bought;
    * basket: log of the mean number of distinct products per order;
    * cadence: minus the log of the mean days between orders (timestamps, else the source's
      ``days_since_prior_order``), at least one day; customers with a single order have none.

    Only the training edges' lines count, so held-out purchases never shape a label. A measure with
    no values (no price column) or no spread is null for everyone.

    ``item_idf`` maps each product in the customer's training history to its smoothed inverse
    document frequency over the training customers, ``ln((1 + N) / (1 + buyers)) + 1`` (N customers;
    scikit-learn's ``smooth_idf``): a product nearly everyone buys says little about anyone's persona.
    """
    lines = (
        transactions.join(users.select("customer_id", "user_idx"), "customer_id")
        .join(items.select("item_id", "item_idx"), "item_id")
        .join(train_edges.select("user_idx", "item_idx"), ["user_idx", "item_idx"], "left_semi")
    )
    # Catalogue-sized: one median price per product, ranked in a single window.
    prices = lines.filter(F.col("unit_price").isNotNull()).groupBy("item_idx").agg(
        F.percentile_approx("unit_price", 0.5).alias("price"))
    percentile = prices.select("item_idx", F.percent_rank().over(Window.orderBy("price")).alias("price_percentile"))
    orders = lines.groupBy("user_idx", "order_id").agg(
        F.countDistinct("item_idx").alias("products"), F.min("ts").alias("ts"),
        F.max("days_since_prior_order").alias("days_since_prior"),
    )
    span_days = (F.max(F.unix_timestamp("ts")) - F.min(F.unix_timestamp("ts"))) / 86400
    n_orders = F.count("*")
    gap_days = F.coalesce(F.when(n_orders > 1, span_days / (n_orders - 1)), F.avg("days_since_prior"))
    per_order = orders.groupBy("user_idx").agg(
        F.log(F.avg("products")).alias("basket"),
        (-F.log(F.greatest(gap_days, F.lit(1.0)))).alias("cadence"),
    )
    per_price = lines.join(percentile, "item_idx").groupBy("user_idx").agg(F.avg("price_percentile").alias("price"))
    raw = per_order.join(per_price, "user_idx", "left")
    stats = raw.agg(*[f(c).alias(f"{c}_{f.__name__}") for c in ("price", "basket", "cadence") for f in (F.avg, F.stddev_samp)])
    standardized = [
        F.when(F.col(f"{c}_stddev_samp") > 0, (F.col(c) - F.col(f"{c}_avg")) / F.col(f"{c}_stddev_samp")).cast("double").alias(f"{c}_z")
        for c in ("price", "basket", "cadence")
    ]
    pairs = train_edges.select("user_idx", "item_idx").distinct()
    customers = pairs.agg(F.countDistinct("user_idx").alias("customers"))
    buyers = pairs.groupBy("item_idx").agg(F.count("*").alias("buyers")).crossJoin(F.broadcast(customers))
    idf = buyers.select("item_idx", (F.log((1 + F.col("customers")) / (1 + F.col("buyers"))) + 1).alias("idf"))
    item_idf = pairs.join(idf, "item_idx").groupBy("user_idx").agg(
        F.map_from_entries(F.collect_list(F.struct(F.col("item_idx").cast("int"), F.col("idf").cast("double")))).alias(IDF_COLUMN))
    return (raw.crossJoin(F.broadcast(stats)).select(F.col("user_idx").cast("int"), *standardized)
            .join(item_idf.withColumn("user_idx", F.col("user_idx").cast("int")), "user_idx", "left"))


def with_behaviour_measures(requests: DataFrame, measures: DataFrame) -> DataFrame:
    """User label requests with the measure and idf columns the embedding scorer reads (null where unknown)."""
    return requests.join(measures.select("user_idx", *MEASURES, IDF_COLUMN), "user_idx", "left")


def history_idf(rows, history_column: str = "history") -> list[np.ndarray | None]:
    """Per request: the idf of each history entry (1 where unknown), or None without an idf column."""
    if IDF_COLUMN not in rows:
        return [None] * len(rows)
    out = []
    for history, idf in zip(rows[history_column], rows[IDF_COLUMN]):
        lookup = dict(idf) if idf is not None else {}
        out.append(np.array([lookup.get(int(p["item_idx"]), 1.0) for p in history], dtype=np.float64) if lookup else None)
    return out
