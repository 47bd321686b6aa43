"""Customer segmentation on personas, the RFM baseline, and the two-period robustness check (§7.4).

Two protocols (``PROTOCOLS``, ``segment.protocol``):

* ``project`` (the default). Both representations go through one pipeline so their silhouettes are
  comparable: a per-user vector (multi-hot personas, or one-hot RFM deciles) → centre → PCA →
  L2-normalize → KMeans for each k → Spark's silhouette (squared Euclidean distances). Robustness
  splits each customer's own orders in half by time and compares every customer with two orders.
  Everything is Spark ML; the driver only holds the fitted models and one number per k.
* ``paper``: Tables 9 and 8 as §7.4 words them, with these readings where the text is open:

  - *the year, its two six-month periods*: twelve calendar months from ``year_start`` (default:
    the first day of the month of the earliest timestamp; 2010-12-01 on Online Retail, whose lines
    run to 2011-12-09), cut at month 6. Lines after month 12 (the last 9 days of Online Retail) are
    outside the year and dropped. "The first six months" of Table 9 is the first of these periods.
  - *Table 9, RFM*: the raw recency (days before the period's last timestamp), frequency (orders)
    and monetary (Σ quantity × price) values of the first six months, L2-normalized, no PCA ("reduce
    [personas] to three dimensions via PCA to align with the RFM": RFM is the 3-D space).
  - *Table 9, personas*: multi-hot over the persona set → centre (as textbook/sklearn PCA does) →
    PCA to 3 components → L2, for customers who bought in the first six months. Which labels
    are used is the caller's choice (the stage: the stored ``personas``; the benchmark: the first six
    months labelled offline, and the paper's GPT-4 labels).
  - *silhouette*: exact Euclidean silhouette (sklearn's ``silhouette_score`` definition), computed
    on the driver for a seeded hash sample of at most ``silhouette_sample`` users (all of them when
    fewer), since exact silhouette needs every pairwise distance; Spark's evaluator only offers
    squared Euclidean and cosine.
  - *Table 8*: customers with more than ``min_transactions`` transactions in the year, a
    transaction being an invoice line (the UCI file calls each line a transaction; ``unit="orders"``
    counts invoices instead), then a seeded hash sample of ``customers`` (300) of them, or all when
    fewer qualify. Their lines are cut into the two periods; per period RFM deciles (10 quantile
    baskets within the period's sample) and the labeler's three most dominant personas. A customer is
    consistent when the representation is the same in both periods; customers without purchases in
    one period count as not consistent (the paper's fractions are over all 300: 4 = 1.3 %, 54 = 18 %).
  - *the three most dominant personas*: compared as an unordered set (the LLM "selects" three; their
    order is not part of the representation). Dominance comes from the labeler: its answer order
    (``rank``, 0 = first named, which ``period_labeler`` keeps), else how many of its rows name the
    persona; ties go to the lower persona index. Users labelled with fewer than three keep those.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pyspark.ml import Pipeline
from pyspark.ml.clustering import KMeans
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.feature import PCA, Normalizer, OneHotEncoder, QuantileDiscretizer, StandardScaler, VectorAssembler
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from scipy.spatial.distance import cdist

from persona_spark.graph import aggregate_edges, distinctive_items
from persona_spark.labeling import build_user_histories
from persona_spark.runtime.checkpoint import checkpoint
from persona_spark.runtime.frames import require_columns, union_all

log = logging.getLogger(__name__)

RFM_COLUMNS = ("recency_days", "frequency", "monetary")
RFM_BUCKETS = ("r_bucket", "f_bucket", "m_bucket")
PROTOCOLS = ("project", "paper")
Protocol = Literal["project", "paper"]


# ---- representations ---------------------------------------------------------------------------
def persona_vectors(personas: DataFrame, n_personas: int, key: str = "user_idx") -> DataFrame:
    """``key, features``: one multi-hot vector per user over the persona set (|R| is tens, so dense)."""
    require_columns(personas, [key, "persona_idx"], "personas")
    if n_personas < 1:
        raise ValueError(f"n_personas must be positive, got {n_personas}")
    checked = F.when(
        (F.col("persona_idx") < 0) | (F.col("persona_idx") >= n_personas) | F.col("persona_idx").isNull(),
        F.raise_error(
            F.concat(
                F.lit(f"personas.persona_idx out of range 0..{n_personas - 1}: "),
                F.coalesce(F.col("persona_idx").cast("string"), F.lit("null")),
                F.lit(f" for {key}="),
                F.col(key).cast("string"),
            )
        ),
    ).otherwise(F.col("persona_idx"))
    sets = personas.groupBy(key).agg(F.collect_set(checked).alias("persona_set"))
    multi_hot = F.transform(
        F.sequence(F.lit(0), F.lit(n_personas - 1)),
        lambda i: F.when(F.array_contains("persona_set", i), F.lit(1.0)).otherwise(F.lit(0.0)),
    )
    return sets.select(key, array_to_vector(multi_hot).alias("features"))


def _sequence_columns(transactions: DataFrame) -> bool:
    return all(c in transactions.columns for c in ("order_number", "days_since_prior_order"))


def rfm_values(transactions: DataFrame, key: str = "customer_id") -> DataFrame:
    """``key, recency_days, frequency, monetary`` from whatever the source records.

    Frequency counts distinct orders. Monetary sums quantity × unit price (an unknown price counts
    0; NaN when the user has no price at all). Recency is days from the user's last timestamp to the
    last timestamp in ``transactions``; a source without any timestamp but with an order sequence
    (Instacart) uses the ``days_since_prior_order`` of the user's latest order instead: its snapshot
    is taken at each user's latest order, so the wait before it is the only recency it records.
    Recency is NaN where it cannot be known, so the discretizer files it apart.
    """
    require_columns(transactions, [key, "order_id", "quantity", "unit_price", "ts"], "transactions")
    sequence = _sequence_columns(transactions)
    as_of = transactions.agg(F.max("ts").alias("as_of"))
    latest = [F.max_by("days_since_prior_order", "order_number").alias("days_before_latest")] if sequence else []
    per_user = transactions.groupBy(key).agg(
        F.max("ts").alias("last_ts"),
        F.countDistinct("order_id").cast("double").alias("frequency"),
        F.when(
            F.count("unit_price") > 0,
            F.sum(F.col("quantity") * F.coalesce(F.col("unit_price"), F.lit(0.0))),
        ).cast("double").alias("monetary"),
        *latest,
    )
    by_time = (F.unix_timestamp("as_of") - F.unix_timestamp("last_ts")) / 86400.0
    recency = F.when(F.col("as_of").isNotNull(), by_time)
    if sequence:
        recency = recency.otherwise(F.col("days_before_latest"))
    return per_user.crossJoin(F.broadcast(as_of)).select(
        key,
        F.coalesce(recency.cast("double"), F.lit(float("nan"))).alias("recency_days"),
        "frequency",
        F.coalesce("monetary", F.lit(float("nan"))).alias("monetary"),
    )


@dataclass(frozen=True)
class RfmPart:
    """One of R, F, M: whether this source lets it be computed, and from what (or why not)."""

    part: str  # recency | frequency | monetary
    column: str
    computed: bool
    source: str  # what it was computed from, or why it could not be

    def as_row(self) -> dict:
        return {"part": self.part, "computed": self.computed, "source": self.source}


def rfm_parts(transactions: DataFrame, rfm: DataFrame) -> list[RfmPart]:
    """Which RFM parts have a value for at least one customer (one aggregate row to the driver)."""
    valid = lambda c: F.count(F.when(~F.isnan(c), 1)).alias(c)  # noqa: E731  (count skips nulls too)
    counts = rfm.agg(*[valid(c) for c in RFM_COLUMNS]).first().asDict()
    has_ts = transactions.filter(F.col("ts").isNotNull()).limit(1).count() > 0
    recency_from = (
        "timestamps (ts)" if has_ts
        else "days_since_prior_order of each customer's latest order (order sequence)" if _sequence_columns(transactions)
        else None
    )
    missing = {
        "recency": "no timestamps (ts) and no order sequence (order_number, days_since_prior_order) in transactions",
        "frequency": "no orders",
        "monetary": "no unit prices (unit_price) in transactions",
    }
    sources = {"recency": recency_from, "frequency": "distinct orders (order_id)", "monetary": "quantity × unit_price"}
    return [
        RfmPart(part, column, counts[column] > 0, sources[part] if counts[column] > 0 else missing[part])
        for part, column in zip(("recency", "frequency", "monetary"), RFM_COLUMNS)
    ]


def rfm_buckets(rfm: DataFrame, buckets: int = 10, columns: list[str] | None = None) -> DataFrame:
    """Adds ``r_bucket, f_bucket, m_bucket`` (for ``columns``, default all three): quantile buckets
    0..buckets-1 (ties may merge buckets). Every column needs a value for at least one row."""
    columns = list(RFM_COLUMNS) if columns is None else columns
    require_columns(rfm, columns, "rfm")
    if buckets < 2:
        raise ValueError(f"buckets must be at least 2, got {buckets}")
    if not columns:
        raise ValueError("no RFM column to bucket")
    outputs = [RFM_BUCKETS[RFM_COLUMNS.index(c)] for c in columns]
    discretizer = QuantileDiscretizer(inputCols=columns, outputCols=outputs, numBuckets=buckets, handleInvalid="keep")
    return discretizer.fit(rfm).transform(rfm)


@dataclass
class RfmVectors:
    features: DataFrame  # key, <bucket columns of the computed parts>, features
    parts: list[RfmPart]


def rfm_vectors(transactions: DataFrame, key: str = "customer_id", buckets: int = 10) -> RfmVectors:
    """The deciles of the parts this source can give (frequency always), one-hot encoded side by side.

    A part no customer has a value for (no prices: no monetary) is left out and reported in ``parts``.
    """
    values = checkpoint(rfm_values(transactions, key))  # read twice: which parts, then the buckets
    parts = rfm_parts(transactions, values)
    columns = [p.column for p in parts if p.computed]
    bucket_cols = [RFM_BUCKETS[RFM_COLUMNS.index(c)] for c in columns]
    bucketed = rfm_buckets(values, buckets, columns)
    one_hot_cols = [f"{c}_onehot" for c in bucket_cols]
    pipeline = Pipeline(
        stages=[
            OneHotEncoder(inputCols=bucket_cols, outputCols=one_hot_cols, dropLast=False, handleInvalid="keep"),
            VectorAssembler(inputCols=one_hot_cols, outputCol="features"),
        ]
    )
    return RfmVectors(pipeline.fit(bucketed).transform(bucketed).select(key, *bucket_cols, "features"), parts)


def rfm_value_vectors(transactions: DataFrame, key: str = "customer_id") -> RfmVectors:
    """The paper's RFM (Table 9): ``key, <the computed value columns>, features`` with ``features`` the
    raw values themselves (recency days, orders, money), no buckets. A user without any price has
    monetary 0 (an unknown price counts 0, as in ``rfm_values``); parts no customer has are left out."""
    values = checkpoint(rfm_values(transactions, key))  # read twice: which parts, then the vectors
    parts = rfm_parts(transactions, values)
    columns = [p.column for p in parts if p.computed]
    filled = values.select(key, *[F.nanvl(F.col(c), F.lit(0.0)).alias(c) for c in columns])
    vector = array_to_vector(F.array(*[F.col(c) for c in columns]))
    return RfmVectors(filled.select(key, *columns, vector.alias("features")), parts)


# ---- the shared pipeline -------------------------------------------------------------------------
def embed(features: DataFrame, components: int = 3, key: str = "user_idx", reduce: bool = True) -> DataFrame:
    """``key, embedding``: centre (as textbook PCA does; Spark's PCA alone does not), project, L2-normalize.

    ``reduce=False`` only L2-normalizes (the paper's RFM values, already the 3-D space)."""
    require_columns(features, [key, "features"], "features")
    first = features.select("features").head(1)
    if not first:
        raise ValueError("no users to segment: the feature table is empty")
    if not reduce:
        return Normalizer(inputCol="features", outputCol="embedding", p=2.0).transform(features).select(key, "embedding")
    components = min(components, len(first[0][0]))
    pipeline = Pipeline(
        stages=[
            StandardScaler(inputCol="features", outputCol="centred", withMean=True, withStd=False),
            PCA(k=components, inputCol="centred", outputCol="projected"),
            Normalizer(inputCol="projected", outputCol="embedding", p=2.0),
        ]
    )
    return pipeline.fit(features).transform(features).select(key, "embedding")


def silhouette_score(points: np.ndarray, labels: np.ndarray, chunk: int = 1024) -> float:
    """Mean silhouette with Euclidean distances, as sklearn's ``silhouette_score`` defines it: a
    point alone in its cluster scores 0; NaN unless 2 <= clusters <= points - 1. Exact, in chunks of
    ``chunk`` rows of the distance matrix (memory ``chunk`` × points)."""
    points = np.asarray(points, dtype=np.float64)
    codes, inverse = np.unique(np.asarray(labels), return_inverse=True)
    n, clusters = len(points), len(codes)
    if clusters < 2 or clusters > n - 1:
        return math.nan
    sizes = np.bincount(inverse, minlength=clusters).astype(np.float64)
    member = np.zeros((n, clusters))
    member[np.arange(n), inverse] = 1.0
    scores = np.empty(n)
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        own = inverse[rows]
        sums = cdist(points[rows], points) @ member  # distance sums to each cluster
        at = np.arange(len(own))
        a = sums[at, own] / np.maximum(sizes[own] - 1, 1)
        means = sums / sizes
        means[at, own] = np.inf
        b = means.min(axis=1)
        denom = np.maximum(a, b)
        s = np.divide(b - a, denom, out=np.zeros_like(a), where=denom > 0)
        s[sizes[own] == 1] = 0.0
        scores[rows] = s
    return float(scores.mean())


def euclidean_silhouette(predicted: DataFrame, sample: int, seed: int = 42, key: str = "user_idx") -> tuple[float, int]:
    """(silhouette, users scored): ``silhouette_score`` of a seeded hash sample of at most ``sample``
    rows of ``key, embedding, segment`` (every row when fewer), the only users brought to the driver."""
    picked = predicted.orderBy(F.xxhash64(F.lit(seed), key), key).limit(sample)
    rows = picked.select(vector_to_array("embedding").alias("e"), "segment").toPandas()
    if rows.empty:
        return math.nan, 0
    return silhouette_score(np.stack(rows["e"].to_numpy()), rows["segment"].to_numpy()), len(rows)


@dataclass
class Segmentation:
    """KMeans for each k on one cached embedding: per-user assignments and a silhouette per k."""

    embedded: DataFrame  # key, embedding — cached; call ``release`` once the outputs are written
    assignments: DataFrame  # key, k, segment
    silhouettes: list[dict]  # {k, clusters, silhouette}

    def points(self, key: str = "user_idx") -> DataFrame:
        """``key, x, y, z``: the normalized PCA coordinates, for plotting (z is 0 with 2 components)."""
        coords = vector_to_array("embedding")
        return self.embedded.select(
            key,
            coords.getItem(0).alias("x"),
            *[F.when(F.size(coords) > i, coords.getItem(i)).otherwise(F.lit(0.0)).alias(axis) for i, axis in ((1, "y"), (2, "z"))],
        )

    def release(self) -> None:
        self.embedded.unpersist()


@dataclass(frozen=True)
class Clustering:
    """How ``segment_users`` embeds and clusters: PCA components, the KMeans seed and iterations, and
    which silhouette it reports.

    ``silhouette``: ``squared_euclidean`` is Spark's ``ClusteringEvaluator`` over every user (the
    project protocol); ``euclidean`` the exact Euclidean silhouette of at most ``silhouette_sample``
    users (the paper protocol, see ``euclidean_silhouette``)."""

    components: int = 3
    seed: int = 42
    max_iter: int = 20
    silhouette: Literal["squared_euclidean", "euclidean"] = "squared_euclidean"
    silhouette_sample: int = 5000


def segment_users(
    features: DataFrame,
    ks: list[int],
    clustering: Clustering = Clustering(),
    key: str = "user_idx",
    reduce: bool = True,
) -> Segmentation:
    """Cluster the embedded users for every k; silhouette is NaN when KMeans finds fewer than 2 clusters
    (e.g. more clusters asked for than distinct persona combinations exist). ``reduce=False`` skips the PCA."""
    if not ks or any(k < 2 for k in ks):
        raise ValueError(f"every k must be at least 2, got {ks}")
    if clustering.silhouette not in ("squared_euclidean", "euclidean"):
        raise ValueError(f"silhouette must be 'squared_euclidean' or 'euclidean', got {clustering.silhouette!r}")
    seed = clustering.seed
    embedded = embed(features, clustering.components, key, reduce).persist()
    evaluator = ClusteringEvaluator(featuresCol="embedding", predictionCol="segment", distanceMeasure="squaredEuclidean")
    assignments, silhouettes = [], []
    for k in ks:
        kmeans = KMeans(k=k, seed=seed, maxIter=clustering.max_iter, featuresCol="embedding", predictionCol="segment")
        model = kmeans.fit(embedded)
        predicted = model.transform(embedded)
        found = sum(1 for size in model.summary.clusterSizes if size > 0)
        if found < 2:
            score = math.nan
        elif clustering.silhouette == "euclidean":
            score, _ = euclidean_silhouette(predicted, clustering.silhouette_sample, seed, key)
        else:
            score = evaluator.evaluate(predicted)
        log.info("k=%d: %d non-empty clusters, silhouette %.4f", k, found, score)
        silhouettes.append({"k": k, "clusters": found, "silhouette": float(score)})
        assignments.append(predicted.select(key, F.lit(k).alias("k"), F.col("segment").cast("int")))
    return Segmentation(embedded, union_all(assignments), silhouettes)


@dataclass
class Representations:
    """What ``segment_users`` clusters under one protocol: ``features[name]`` (``user_idx, features``),
    whether it is reduced by PCA (``reduce[name]``), and which RFM parts the source gave."""

    features: dict[str, DataFrame]
    reduce: dict[str, bool]
    rfm_parts: list[RfmPart] = field(default_factory=list)


def segment_representations(
    personas: DataFrame,
    n_personas: int,
    transactions: DataFrame | None = None,
    users: DataFrame | None = None,
    protocol: Protocol = "project",
    buckets: int = 10,
    year_start: str | None = None,
) -> Representations:
    """Personas (and RFM when ``transactions`` and ``users`` — ``customer_id, user_idx`` — are given) as
    each protocol segments them.

    ``project``: multi-hot personas of every labelled user and one-hot RFM deciles of the whole history,
    both reduced by PCA. ``paper`` (Table 9): only the first six months (``first_six_months``): RFM raw
    values of those months, not reduced; personas of the users who bought in those months, reduced.
    The paper protocol needs dated transactions; the personas are the ones given (relabelling the six
    months is the caller's choice, e.g. the benchmark's).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    has_rfm = transactions is not None and users is not None
    if protocol == "paper" and not has_rfm:
        raise ValueError("the paper protocol segments the customers of the first six months: it needs the "
                         "transactions and users tables")
    if not has_rfm:
        return Representations({"personas": persona_vectors(personas, n_personas)}, {"personas": True})
    users = users.select("customer_id", "user_idx")
    if protocol == "paper":
        transactions = first_six_months(transactions, year_start)
        active = users.join(transactions.select("customer_id").distinct(), "customer_id", "left_semi")
        personas = personas.join(active.select("user_idx"), "user_idx", "left_semi")
        rfm = rfm_value_vectors(transactions, "customer_id")
    else:
        rfm = rfm_vectors(transactions, "customer_id", buckets)
    return Representations(
        {"personas": persona_vectors(personas, n_personas),
         "rfm": rfm.features.join(users, "customer_id").select("user_idx", "features")},
        {"personas": True, "rfm": protocol == "project"},
        rfm.parts,
    )


# ---- segments described in words ----------------------------------------------------------------
def describe_segments(
    assignments: DataFrame,
    personas: DataFrame,
    edges: DataFrame,
    items: DataFrame,
    persona_names: DataFrame,
    top_personas: int = 3,
    top_items: int = 5,
) -> DataFrame:
    """One row per (k, segment): size, share, dominant personas, distinctive items and a sentence.

    Dominant personas are the most common within the segment (with their lift over all users);
    items are those segment members buy more than everyone else does (see ``distinctive_items``).
    """
    require_columns(assignments, ["user_idx", "k", "segment"], "segments")
    require_columns(persona_names, ["persona_idx", "name"], "persona_set")
    sizes = assignments.groupBy("k", "segment").agg(F.count("*").alias("size"))
    by_k = Window.partitionBy("k")
    sizes = sizes.withColumn("share", F.col("size") / F.sum("size").over(by_k))
    dominant = _segment_personas(assignments, sizes, personas, persona_names, top_personas)
    top = _segment_items(assignments, edges, items, top_items)
    summary = sizes.join(dominant, ["k", "segment"], "left").join(top, ["k", "segment"], "left")
    return summary.select(
        "k",
        F.col("segment").cast("int"),
        F.col("size").cast("long"),
        "share",
        F.transform(F.coalesce("personas", F.array()), lambda p: p.dropFields("pos")).alias("personas"),
        F.transform(F.coalesce("top_items", F.array()), lambda i: i.dropFields("item_rank")).alias("top_items"),
        _segment_sentence().alias("description"),
    )


def _segment_personas(assignments: DataFrame, sizes: DataFrame, personas: DataFrame, persona_names: DataFrame,
                      top_personas: int) -> DataFrame:
    """``k, segment, personas``: the ``top_personas`` most common personas of each segment, as structs
    ``pos, persona_idx, name, share, lift`` (lift: share in the segment over share among all users)."""
    n_users = assignments.select("user_idx").distinct().count()  # one number, not rows
    persona_users = personas.select("user_idx", "persona_idx").distinct()
    overall = persona_users.groupBy("persona_idx").agg((F.count("*") / F.lit(n_users)).alias("overall_share"))
    in_segment = (
        assignments.join(persona_users, "user_idx")
        .groupBy("k", "segment", "persona_idx")
        .agg(F.count("*").alias("members"))
        .join(sizes, ["k", "segment"])
        .join(F.broadcast(overall), "persona_idx")
        .join(F.broadcast(persona_names.select("persona_idx", "name")), "persona_idx", "left")
        .withColumn("persona_share", F.col("members") / F.col("size"))
        .withColumn("lift", F.col("persona_share") / F.col("overall_share"))
        .withColumn(
            "pos",
            F.row_number().over(
                Window.partitionBy("k", "segment").orderBy(F.desc("persona_share"), F.desc("lift"), "persona_idx")
            ),
        )
        .filter(F.col("pos") <= top_personas)
    )
    persona_struct = F.struct(
        "pos",
        "persona_idx",
        F.coalesce("name", F.concat(F.lit("persona "), F.col("persona_idx").cast("string"))).alias("name"),
        F.col("persona_share").alias("share"),
        "lift",
    )
    return in_segment.groupBy("k", "segment").agg(F.sort_array(F.collect_list(persona_struct)).alias("personas"))


def _segment_items(assignments: DataFrame, edges: DataFrame, items: DataFrame, top_items: int) -> DataFrame:
    """``k, segment, top_items``: each segment's ``top_items`` distinctive items, as structs
    ``item_rank, item_idx, item_name, buyers, share, lift``."""
    groups = assignments.select("user_idx", F.struct("k", "segment").alias("group"))
    items_ranked = distinctive_items(groups, edges, items, top_n=top_items, group_cols=["group"])
    item_struct = F.struct("item_rank", "item_idx", "item_name", "buyers", F.col("buyer_share").alias("share"), "lift")
    return items_ranked.groupBy(F.col("group.k").alias("k"), F.col("group.segment").alias("segment")).agg(
        F.sort_array(F.collect_list(item_struct)).alias("top_items")
    )


def _segment_sentence() -> Column:
    """The segment in one sentence, from ``size, share, personas, top_items``."""
    persona_text = F.array_join(
        F.transform(
            F.coalesce("personas", F.array()),
            lambda p: F.format_string("%s (%d%%)", p["name"], F.round(p["share"] * 100).cast("int")),
        ),
        ", ",
    )
    item_text = F.array_join(F.transform(F.coalesce("top_items", F.array()), lambda i: F.initcap(F.trim(i["item_name"]))), ", ")
    return F.concat(
        F.format_number(F.col("size"), 0),
        F.lit(" customers ("),
        F.format_number(F.col("share") * 100, 1),
        F.lit("%). Mostly "),
        F.when(persona_text == "", F.lit("no persona")).otherwise(persona_text),
        F.lit(". Buys more than others: "),
        F.when(item_text == "", F.lit("nothing stands out")).otherwise(item_text),
        F.lit("."),
    )


# ---- robustness over two periods (paper Table 8) --------------------------------------------------
def split_periods(transactions: DataFrame, key: str = "customer_id") -> DataFrame:
    """Adds ``period`` (1 or 2): each user's orders in time order, first half vs second half.

    Time order is the timestamp; a source without any timestamp but with ``order_number`` (Instacart)
    uses the order sequence instead. Users with a single order cannot be split and are dropped, as are
    lines that cannot be placed (no timestamp, or no order number in a sequence-only source).
    """
    require_columns(transactions, [key, "order_id", "ts"], "transactions")
    if transactions.filter(F.col("ts").isNotNull()).limit(1).count() > 0:
        position = "ts"
    elif "order_number" in transactions.columns:
        position = "order_number"
    else:
        raise ValueError("robustness needs each customer's orders in order: transactions have no timestamps (ts) "
                         "and no order_number (map one in ingest.mapping)")
    placed = transactions.filter(F.col(position).isNotNull())
    orders = placed.groupBy(key, "order_id").agg(F.min(position).alias("order_pos_value"))
    by_user = Window.partitionBy(key)
    ordered = (
        orders.withColumn("order_pos", F.row_number().over(by_user.orderBy("order_pos_value", "order_id")))
        .withColumn("n_orders", F.count("*").over(by_user))
        .filter(F.col("n_orders") >= 2)
        .select(
            key,
            "order_id",
            F.when(F.col("order_pos") <= F.ceil(F.col("n_orders") / 2), F.lit(1)).otherwise(F.lit(2)).alias("period"),
        )
    )
    return placed.join(ordered, [key, "order_id"])


def _require_dates(transactions: DataFrame) -> None:
    require_columns(transactions, ["ts"], "transactions")
    if transactions.filter(F.col("ts").isNotNull()).limit(1).count() == 0:
        raise ValueError("the paper protocol cuts the year into calendar half-years: transactions have no timestamps (ts)")


def year_periods(transactions: DataFrame, year_start: str | None = None) -> DataFrame:
    """Adds ``period`` (1 or 2): the paper's year cut into two calendar six-month periods.

    The year is the twelve months from ``year_start`` (an ISO date), by default the first day of the
    month of the earliest timestamp; period 1 is its first six months. Lines outside the year and
    undated lines are dropped. The start is a one-row aggregate joined back, not brought to the driver.
    """
    _require_dates(transactions)
    if year_start is None:
        start = transactions.agg(F.date_trunc("month", F.min("ts")).alias("year_start"))
    else:
        start = transactions.sparkSession.range(1).select(F.to_timestamp(F.lit(year_start)).alias("year_start"))
    bounds = start.select(
        "year_start",
        F.add_months("year_start", 6).cast("timestamp").alias("half_year"),
        F.add_months("year_start", 12).cast("timestamp").alias("year_end"),
    )
    dated = transactions.crossJoin(F.broadcast(bounds))
    return dated.filter((F.col("ts") >= F.col("year_start")) & (F.col("ts") < F.col("year_end"))).select(
        *transactions.columns, F.when(F.col("ts") < F.col("half_year"), F.lit(1)).otherwise(F.lit(2)).alias("period")
    )


def first_six_months(transactions: DataFrame, year_start: str | None = None) -> DataFrame:
    """The lines of the year's first six-month period (Table 9's "first six months"), see ``year_periods``."""
    return year_periods(transactions, year_start).filter(F.col("period") == 1).drop("period")


def active_sample(
    transactions: DataFrame,
    customers: int = 300,
    min_transactions: int = 10,
    unit: Literal["lines", "orders"] = "lines",
    seed: int = 42,
    key: str = "customer_id",
) -> DataFrame:
    """The lines of a seeded hash sample of ``customers`` customers among those with more than
    ``min_transactions`` transactions in ``transactions`` (lines, or distinct orders); all of them when
    fewer qualify."""
    if unit not in ("lines", "orders"):
        raise ValueError(f"unit must be 'lines' or 'orders', got {unit!r}")
    count = F.count("*") if unit == "lines" else F.countDistinct("order_id")
    eligible = transactions.groupBy(key).agg(count.alias("n")).filter(F.col("n") > min_transactions).select(key)
    sample = eligible.orderBy(F.xxhash64(F.lit(seed), key), key).limit(customers)
    return transactions.join(sample, key, "left_semi")


def dominant_personas(labels: DataFrame, key: str = "customer_id", top: int = 3) -> DataFrame:
    """``key, value``: each user's ``top`` most dominant personas as a sorted array (a set).

    Dominance: the lowest ``rank`` (the labeler's answer order, 0 first) when ``labels`` has one, then
    the number of rows naming the persona (a labeler that emits one row per piece of evidence), then
    the lower persona index.
    """
    require_columns(labels, [key, "persona_idx"], "labels")
    if top < 1:
        raise ValueError(f"top must be positive, got {top}")
    ranked = "rank" in labels.columns
    per_persona = labels.filter(F.col("persona_idx").isNotNull()).groupBy(key, "persona_idx").agg(
        *([F.min("rank").alias("rank")] if ranked else []), F.count("*").alias("rows")
    )
    order = ([F.col("rank").asc_nulls_last()] if ranked else []) + [F.desc("rows"), F.col("persona_idx").asc()]
    position = F.row_number().over(Window.partitionBy(key).orderBy(*order))
    kept = per_persona.withColumn("pos", position).filter(F.col("pos") <= top)
    return kept.groupBy(key).agg(F.array_sort(F.collect_list("persona_idx")).alias("value"))


def _consistent(users: DataFrame, first: DataFrame, second: DataFrame, key: str, representation: str) -> DataFrame:
    """``representation, users, in_both_periods, unchanged, share_unchanged`` over every user in ``users``:
    one without a value in a period is not consistent."""
    both = (users.join(first.withColumnRenamed("value", "v1"), key, "left")
            .join(second.withColumnRenamed("value", "v2"), key, "left"))
    return both.agg(
        F.lit(representation).alias("representation"),
        F.count("*").alias("users"),
        F.count(F.when(F.col("v1").isNotNull() & F.col("v2").isNotNull(), 1)).alias("in_both_periods"),
        F.count(F.when(F.col("v1") == F.col("v2"), 1)).alias("unchanged"),
    ).withColumn("share_unchanged", F.col("unchanged") / F.col("users"))


def _period_values(periods: DataFrame, labeler, key: str, buckets: int, columns: list[str],
                   persona_value: Callable[[DataFrame], DataFrame]) -> tuple[list[DataFrame], list[DataFrame]]:
    """Per period 1 and 2 of ``periods``: ``key, value`` of the RFM bucket triple (of ``columns``) and, with
    a labeler, ``persona_value(labeler(period's lines))`` (empty list without one)."""
    bucket_cols = [RFM_BUCKETS[RFM_COLUMNS.index(c)] for c in columns]
    rfm_triples, persona_sets = [], []
    for period in (1, 2):
        part = periods.filter(F.col("period") == period).drop("period")
        rfm = rfm_buckets(rfm_values(part, key), buckets, columns)
        rfm_triples.append(rfm.select(key, F.array(*bucket_cols).alias("value")))
        if labeler is not None:
            labels = labeler(part)
            require_columns(labels, [key, "persona_idx"], f"labeler output for period {period}")
            persona_sets.append(persona_value(labels))
    return rfm_triples, persona_sets


@dataclass(frozen=True)
class PaperSample:
    """Which customers Table 8 compares: ``customers`` sampled (seeded) among those with more than
    ``min_transactions`` transactions (``unit``: lines or distinct orders) in the year from ``year_start``
    (see ``year_periods``)."""

    customers: int = 300
    min_transactions: int = 10
    unit: Literal["lines", "orders"] = "lines"
    seed: int = 42
    year_start: str | None = None


def paper_robustness(
    transactions: DataFrame,
    labeler,
    key: str = "customer_id",
    buckets: int = 10,
    sample: PaperSample = PaperSample(),
    top: int = 3,
) -> DataFrame:
    """Table 8 as the paper runs it (see the module docstring): the year's two six-month periods,
    the ``sample`` of active customers, RFM deciles and the ``top`` most dominant personas per period.

    ``labeler`` as for ``robustness`` (its output may carry a ``rank``, see ``dominant_personas``).
    Returns rows ``representation, users (the sample), in_both_periods, unchanged, share_unchanged``
    (share of the whole sample); ``labeler=None`` gives the RFM row only.
    """
    in_year = year_periods(transactions, sample.year_start)
    periods = active_sample(in_year, sample.customers, sample.min_transactions, sample.unit, sample.seed, key)
    columns = [p.column for p in rfm_parts(periods, rfm_values(periods, key)) if p.computed]
    sampled = periods.select(key).distinct()
    rfm_triples, persona_sets = _period_values(periods, labeler, key, buckets, columns,
                                               lambda labels: dominant_personas(labels, key, top))
    result = _consistent(sampled, *rfm_triples, key, "rfm")
    if labeler is not None:
        result = _consistent(sampled, *persona_sets, key, "personas").unionByName(result)
    return result


def _unchanged(first: DataFrame, second: DataFrame, key: str, representation: str) -> DataFrame:
    """``representation, users, unchanged, share_unchanged`` for users with a value in both periods."""
    both = first.withColumnRenamed("value", "v1").join(second.withColumnRenamed("value", "v2"), key)
    return both.agg(
        F.lit(representation).alias("representation"),
        F.count("*").alias("users"),
        F.sum(F.when(F.col("v1") == F.col("v2"), 1).otherwise(0)).cast("long").alias("unchanged"),
    ).withColumn("share_unchanged", F.col("unchanged") / F.col("users"))


def period_labeler(label: Callable[[DataFrame], DataFrame], users: DataFrame, items: DataFrame) -> Callable[[DataFrame], DataFrame]:
    """Adapts a labeling backend (``label(requests) -> label rows``, e.g. ``labeler.bind(...).label``)
    to ``robustness``: one period's transactions -> ``customer_id, persona_idx``.

    The period's purchases become a history per customer, in the same format GPLR labels, so a
    period is labelled exactly as a whole history would be. Customers and items unknown to
    ``users``/``items`` are left out; only answers with status 'ok' count (errors and
    unrepresentable histories have no personas to compare). ``rank`` is each persona's place in the
    answer (0 first), what ``dominant_personas`` ranks by.
    """

    def labeler(part: DataFrame) -> DataFrame:
        edges = (
            aggregate_edges(part)
            .join(users.select("customer_id", "user_idx"), "customer_id")
            .join(items.select("item_id", "item_idx"), "item_id")
            .select("user_idx", "item_idx", "n_purchases", "quantity", F.lit("train").alias("split"))
        )
        labels = label(build_user_histories(edges, items)).filter(F.col("status") == "ok")
        return (
            labels.select("user_idx", F.posexplode("persona_idx").alias("rank", "persona_idx"))
            .join(users.select("user_idx", "customer_id"), "user_idx")
            .select("customer_id", "persona_idx", "rank")
        )

    return labeler


def sample_customers(transactions: DataFrame, customers: int, seed: int, key: str = "customer_id") -> DataFrame:
    """The transactions of a seeded hash sample of ``customers`` customers (robustness on a budget)."""
    sample = (transactions.select(key).distinct()
              .orderBy(F.xxhash64(F.lit(seed), key), key).limit(customers))
    return transactions.join(sample, key, "left_semi")


def robustness(transactions: DataFrame, labeler, key: str = "customer_id", buckets: int = 10) -> DataFrame:
    """How many users keep the same representation from their first to their second period.

    ``labeler(transactions_of_period) -> DataFrame[key, persona_idx]`` gives persona labels from one
    period's purchases (any labeler: the offline embedding one, an LLM, a test stub); personas are
    compared as sets, RFM as the (r, f, m) decile triple computed within each period.
    Only the RFM parts the source can give count (see ``rfm_vectors``: no prices, no monetary part).
    Returns rows ``representation ('personas'|'rfm'), users, unchanged, share_unchanged``; pass
    ``labeler=None`` for the RFM row only.
    """
    periods = split_periods(transactions, key)
    columns = [p.column for p in rfm_parts(transactions, rfm_values(transactions, key)) if p.computed]
    rfm_triples, persona_sets = _period_values(
        periods, labeler, key, buckets, columns,
        lambda labels: labels.groupBy(key).agg(F.array_sort(F.collect_set("persona_idx")).alias("value")),
    )
    result = _unchanged(*rfm_triples, key, "rfm")
    if labeler is not None:
        result = _unchanged(*persona_sets, key, "personas").unionByName(result)
    return result


__all__ = [
    "PROTOCOLS",
    "Clustering",
    "PaperSample",
    "Representations",
    "RfmPart",
    "RfmVectors",
    "Segmentation",
    "active_sample",
    "describe_segments",
    "dominant_personas",
    "embed",
    "euclidean_silhouette",
    "first_six_months",
    "paper_robustness",
    "period_labeler",
    "persona_vectors",
    "rfm_buckets",
    "rfm_parts",
    "rfm_value_vectors",
    "rfm_values",
    "rfm_vectors",
    "robustness",
    "sample_customers",
    "segment_representations",
    "segment_users",
    "silhouette_score",
    "split_periods",
    "year_periods",
]
