"""The monthly refresh as its consumers see it: history, drift, a catalog and reasons per persona.

Pure ``DataFrame -> DataFrame`` transforms; :func:`record_run` puts one run's together, and the
gplr stage reads and writes the tables.

* Runs are named by :func:`persona_spark.runtime.runs.new_run`, so "latest" and "consecutive" are
  orderings of ``run_ts``.
* ``persona_history`` is a slowly changing dimension (type 2): one row per (customer, persona)
  validity interval ``[valid_from, valid_to)``, ``valid_to`` null while open. An interval opens when
  a customer gains a persona (or its source changes, LLM label vs propagated) and closes when the
  persona goes; ``score`` is the one it had when the interval opened. Each run adds only the
  intervals that open or close, so applying the same run twice changes nothing.
* Drift compares the personas in force at two instants: per persona who kept, gained and lost it,
  and flows "customers who dropped A and picked up B" for the picture.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial

import numpy as np
import pyarrow as pa
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from persona_spark.affinity import prototype_weights
from persona_spark.config import AffinityConf, RefreshConf
from persona_spark.graph import PurchaseGraph, distinctive_items
from persona_spark.personas import PersonaSet
from persona_spark.runtime.checkpoint import checkpoint
from persona_spark.runtime.runs import latest_runs, utc

NOTHING = -1  # persona_flows: "no persona" on either side of a flow
HISTORY_KEYS = ["user_idx", "persona_idx", "valid_from"]
HISTORY_COLUMNS = ["customer_id", "user_idx", "persona_idx", "persona", "score", "source", "valid_from", "valid_to",
                   "run_id"]


def with_percentile(personas: DataFrame) -> DataFrame:
    """``percentile``: where a propagated row's probability (else score) ranks among the persona's
    propagated rows, 0 (lowest) .. 1 (highest); LLM-labelled rows are 1.0 (the label itself)."""
    propagated = F.col("source") == "propagated"
    ranked = Window.partitionBy("persona_idx").orderBy(F.coalesce("probability", "score"), "user_idx")
    return (personas.filter(propagated).withColumn("percentile", F.percent_rank().over(ranked))
            .unionByName(personas.filter(~propagated).withColumn("percentile", F.lit(1.0))))


def named_personas(personas: DataFrame, users: DataFrame, names: DataFrame) -> DataFrame:
    """Persona rows with the customer id and the persona's name (what history and exports carry)."""
    return (personas.join(users.select("user_idx", "customer_id"), "user_idx", "left")
            .join(F.broadcast(names.select("persona_idx", F.col("name").alias("persona"))), "persona_idx", "left"))


def _ts(value: datetime) -> Column:
    return F.lit(value).cast("timestamp")


def history_changes(history: DataFrame | None, current: DataFrame, run_id: str, run_ts: datetime) -> DataFrame:
    """The rows one run MERGEs into ``persona_history`` on (user_idx, persona_idx, valid_from).

    ``current``: the run's persona rows with ``customer_id`` and ``persona`` (:func:`named_personas`).
    Returns intervals that open at ``run_ts`` and open intervals that close at it (``valid_to`` set);
    empty when the run changes no membership, in particular when this run was applied already.
    """
    keep = ["user_idx", "persona_idx", "source"]
    opened = current.select(
        "customer_id", "user_idx", "persona_idx", "persona", "score", "source", _ts(run_ts).alias("valid_from"),
        F.lit(None).cast("timestamp").alias("valid_to"), F.lit(run_id).alias("run_id"))
    if history is None:
        return opened
    still_open = history.filter(F.col("valid_to").isNull())
    opening = opened.join(still_open.select(*keep), keep, "left_anti")
    closing = (still_open.join(current.select(*keep), keep, "left_anti")
               .withColumn("valid_to", _ts(run_ts)).select(*HISTORY_COLUMNS))
    return opening.unionByName(closing)


def merged_history(history: DataFrame, changes: DataFrame) -> DataFrame:
    """``history`` once ``changes`` (:func:`history_changes`) are MERGEd into it on ``HISTORY_KEYS``.
    The same whether ``history`` is read before or after that MERGE: applying it again changes nothing."""
    return (history.join(changes.select(*HISTORY_KEYS), HISTORY_KEYS, "left_anti")
            .unionByName(changes.select(*history.columns)))


def personas_as_of(history: DataFrame, timestamp: datetime | str) -> DataFrame:
    """The persona rows in force at ``timestamp`` (``valid_from <= t < valid_to``), as history rows."""
    at = F.lit(timestamp).cast("timestamp")
    return history.filter((F.col("valid_from") <= at) & (F.col("valid_to").isNull() | (F.col("valid_to") > at)))


def _membership(history: DataFrame, timestamp: datetime) -> DataFrame:
    return personas_as_of(history, timestamp).select("user_idx", "persona_idx").distinct()


def _pairs(history: DataFrame, before_ts: datetime, after_ts: datetime) -> DataFrame:
    """``user_idx, persona_idx, before, after``: every pair held at either instant, flagged."""
    before = _membership(history, before_ts).withColumn("before", F.lit(True))
    after = _membership(history, after_ts).withColumn("after", F.lit(True))
    return (before.join(after, ["user_idx", "persona_idx"], "full")
            .select("user_idx", "persona_idx", F.coalesce("before", F.lit(False)).alias("before"),
                    F.coalesce("after", F.lit(False)).alias("after")))


def transitions(history: DataFrame, names: DataFrame, from_run: tuple[str, datetime],
                to_run: tuple[str, datetime]) -> DataFrame:
    """``persona_transitions`` rows of one pair of runs: per persona the customers who kept, gained
    and lost it, its customers before/after, and (the same on every row) how many customers the two
    runs hold between them and the share of them whose persona set changed."""
    pairs = _pairs(history, from_run[1], to_run[1])
    counts = pairs.groupBy("persona_idx").agg(
        F.sum((F.col("before") & F.col("after")).cast("long")).alias("kept"),
        F.sum((~F.col("before") & F.col("after")).cast("long")).alias("gained"),
        F.sum((F.col("before") & ~F.col("after")).cast("long")).alias("lost"))
    per_user = pairs.groupBy("user_idx").agg(F.max((F.col("before") != F.col("after")).cast("int")).alias("changed"))
    totals = per_user.agg(F.count(F.lit(1)).alias("customers"), F.sum("changed").cast("long").alias("customers_changed"))
    rows = (names.select("persona_idx", F.col("name").alias("persona")).join(counts, "persona_idx", "left")
            .na.fill(0, ["kept", "gained", "lost"]).crossJoin(totals))
    return rows.select(
        F.lit(from_run[0]).alias("from_run_id"), F.lit(to_run[0]).alias("to_run_id"),
        _ts(from_run[1]).alias("from_ts"), _ts(to_run[1]).alias("to_ts"), "persona_idx", "persona",
        (F.col("kept") + F.col("lost")).alias("customers_before"), (F.col("kept") + F.col("gained")).alias("customers_after"),
        "kept", "gained", "lost", F.coalesce("customers", F.lit(0)).alias("customers"),
        F.coalesce("customers_changed", F.lit(0)).cast("long").alias("customers_changed"),
        F.when(F.col("customers") > 0, F.col("customers_changed") / F.col("customers")).otherwise(F.lit(0.0))
        .alias("share_changed"))


def flows(history: DataFrame, from_run: tuple[str, datetime], to_run: tuple[str, datetime]) -> DataFrame:
    """``persona_flows`` rows: ``from_persona_idx -> to_persona_idx, customers``. A customer counts once
    on (A, A) for every persona A kept and once on (A, B) for every persona A dropped together with a
    persona B picked up; ``NOTHING`` (-1) stands for no persona (one lost with none gained, or the
    reverse), a value rather than null so the rows MERGE on their keys."""
    pairs = _pairs(history, from_run[1], to_run[1])

    def listed(condition: Column) -> Column:
        return F.collect_list(F.when(condition, F.col("persona_idx")))

    per_user = pairs.groupBy("user_idx").agg(
        listed(F.col("before") & F.col("after")).alias("kept"),
        listed(F.col("before") & ~F.col("after")).alias("lost"),
        listed(~F.col("before") & F.col("after")).alias("gained"))
    or_nothing = lambda c: F.when(F.size(c) > 0, F.col(c)).otherwise(F.array(F.lit(NOTHING)))  # noqa: E731
    moved = (per_user.select("user_idx", F.explode(or_nothing("lost")).alias("from_persona_idx"), "gained")
             .select("user_idx", "from_persona_idx", F.explode(or_nothing("gained")).alias("to_persona_idx"))
             .filter((F.col("from_persona_idx") != NOTHING) | (F.col("to_persona_idx") != NOTHING)))
    kept = per_user.select("user_idx", F.explode("kept").alias("from_persona_idx")).withColumn(
        "to_persona_idx", F.col("from_persona_idx"))
    return (moved.unionByName(kept).groupBy("from_persona_idx", "to_persona_idx").agg(F.count(F.lit(1)).alias("customers"))
            .select(F.lit(from_run[0]).alias("from_run_id"), F.lit(to_run[0]).alias("to_run_id"),
                    "from_persona_idx", "to_persona_idx", "customers"))


DENSE_CELLS = 1 << 24  # (product, persona) cells a partition counts in one array; more: sorted runs of cells
FLUSH_CODES = 1 << 22  # purchase × persona codes gathered before they are counted


def _merge_cells(counts: tuple[np.ndarray, np.ndarray] | None, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct cells and their counts, ``counts`` plus one per entry of ``codes``."""
    if counts is not None:
        codes = np.concatenate([counts[0], codes])
    keys, inverse = np.unique(codes, return_inverse=True)
    weights = None if counts is None else np.concatenate([counts[1], np.ones(len(codes) - len(counts[0]))])
    return keys, np.bincount(inverse, weights=weights, minlength=len(keys)).astype(np.int64)


def _count_cells(batches: Iterator[pa.RecordBatch], n_personas: int, n_items: int) -> Iterator[pa.RecordBatch]:
    """``mapInArrow`` body: (item_idx, held) purchases -> this partition's buyers per (persona, item) cell.
    A dense array when the catalogue's cells fit ``DENSE_CELLS``, else sorted runs, so a partition holds
    at most its distinct cells."""
    cells = n_items * n_personas
    dense = np.zeros(cells, dtype=np.int64) if cells <= DENSE_CELLS else None
    sparse, pending, gathered = None, [], 0

    def flush() -> None:
        nonlocal sparse
        codes = np.concatenate(pending)
        pending.clear()
        if dense is not None:
            dense[:] += np.bincount(codes, minlength=cells)
        else:
            sparse = _merge_cells(sparse, codes)

    for batch in batches:
        held = batch.column(1)
        lengths = np.diff(held.offsets.to_numpy())
        items = np.repeat(batch.column(0).to_numpy().astype(np.int64), lengths)
        pending.append(items * n_personas + held.flatten().to_numpy())
        gathered += len(items)
        if gathered >= FLUSH_CODES:
            flush()
            gathered = 0
    if pending:
        flush()
    if dense is not None:
        keys = np.flatnonzero(dense)
        counts = dense[keys]
    else:
        keys, counts = sparse or (np.zeros(0, np.int64), np.zeros(0, np.int64))
    for start in range(0, len(keys), 1 << 20):
        part = keys[start:start + (1 << 20)]
        yield pa.RecordBatch.from_arrays(
            [pa.array((part % n_personas).astype(np.int32)), pa.array((part // n_personas).astype(np.int32)),
             pa.array(counts[start:start + (1 << 20)])], names=["persona_idx", "item_idx", "buyers"])


def persona_buyers(members: DataFrame, purchases: DataFrame, n_personas: int, n_items: int) -> DataFrame:
    """``persona_idx, item_idx, buyers``: per persona and product, the members (``user_idx, persona_idx``,
    distinct) who bought it (``purchases``: distinct ``user_idx, item_idx``); ``n_personas`` and ``n_items``
    bound the indices. Each purchase meets its buyer's personas once, as a list, and each partition counts
    its (product, persona) cells in numpy: a row per purchase travels, never one per (purchase, persona)."""
    held = members.groupBy("user_idx").agg(F.collect_list("persona_idx").alias("held"))
    counted = purchases.join(held, "user_idx").select("item_idx", "held").mapInArrow(
        partial(_count_cells, n_personas=n_personas, n_items=n_items), "persona_idx int, item_idx int, buyers long")
    return counted.groupBy("persona_idx", "item_idx").agg(F.sum("buyers").alias("buyers"))


def catalog(personas: DataFrame, persona_set: DataFrame, edges: DataFrame, items: DataFrame, run_id: str,
            top_n: int) -> DataFrame:
    """``persona_catalog`` rows of one run: per persona its name, description, persona-set version,
    customers, the share labelled by the LLM vs propagated, and its top products (most buyers among
    its customers) and distinctive ones (bought more by them than by everyone, ranked as
    :func:`persona_spark.graph.distinctive_items` does)."""
    members = personas.select("user_idx", "persona_idx").distinct()
    sizes = personas.groupBy("persona_idx").agg(
        F.countDistinct("user_idx").alias("customers"),
        F.countDistinct(F.when(F.col("source") == "llm", F.col("user_idx"))).alias("llm"))
    purchases = edges.select("user_idx", "item_idx").distinct()
    last_item, last_persona = (frame.agg(F.max(c)).first()[0] for frame, c in ((items, "item_idx"), (members, "persona_idx")))
    # counted once (persona × product rows, not customers), for the top and the distinctive products
    bought = checkpoint(persona_buyers(members, purchases, (last_persona or 0) + 1, (last_item or 0) + 1))
    by_persona = Window.partitionBy("persona_idx")
    top = (bought.withColumn("pos", F.row_number().over(by_persona.orderBy(F.desc("buyers"), "item_idx")))
           .filter(F.col("pos") <= top_n).join(items.select("item_idx", "item_name"), "item_idx", "left"))

    def names_in_order(frame: DataFrame, position: str, alias: str) -> DataFrame:
        ordered = F.array_sort(F.collect_list(F.struct(F.col(position).alias("p"), F.col("item_name").alias("n"))))
        return frame.groupBy("persona_idx").agg(F.transform(ordered, lambda s: s["n"]).alias(alias))

    distinctive = distinctive_items(members, edges, items, top_n=top_n, group_cols=["persona_idx"], bought=bought)
    empty = F.array().cast("array<string>")
    return (persona_set.select("persona_idx", "name", "description", F.col("version").alias("persona_set_version"))
            .join(sizes, "persona_idx", "left").na.fill(0, ["customers", "llm"])
            .join(names_in_order(top, "pos", "top_products"), "persona_idx", "left")
            .join(names_in_order(distinctive, "item_rank", "distinctive_products"), "persona_idx", "left")
            .select(F.lit(run_id).alias("run_id"), "persona_idx", "name", "description", "persona_set_version",
                    F.col("customers").cast("long").alias("customers"),
                    F.when(F.col("customers") > 0, F.col("llm") / F.col("customers")).alias("llm_share"),
                    F.when(F.col("customers") > 0, 1 - F.col("llm") / F.col("customers")).alias("propagated_share"),
                    F.coalesce("top_products", empty).alias("top_products"),
                    F.coalesce("distinctive_products", empty).alias("distinctive_products")))


BROADCAST_ROWS = 4_000_000  # (product, persona) votes and traced paths are broadcast up to this many rows


def _small(frame: DataFrame, entries: int | None = None) -> DataFrame:
    """``frame`` with a broadcast hint when it holds at most ``BROADCAST_ROWS`` entries (its rows, counted
    here, unless the caller knows the entries it packs): it is joined to something big."""
    return F.broadcast(frame) if (frame.count() if entries is None else entries) <= BROADCAST_ROWS else frame


def _labelled_paths(walk: DataFrame, personas: DataFrame, beta: float) -> DataFrame:
    """Every labelled path item -> labelled buyer -> persona with its P'(i, v) L(v, m) as ``c``: small (the
    budget's edges), materialized once."""
    in_mass = walk.groupBy("item_idx").agg(F.sum("w").alias("w_in"))
    llm_labels = personas.filter(F.col("source") == "llm").select("user_idx", "persona_idx")
    labels = prototype_weights(llm_labels, beta).withColumnRenamed("user_idx", "neighbour_idx")
    return checkpoint(walk.withColumnRenamed("user_idx", "neighbour_idx").join(_small(labels), "neighbour_idx")
                      .join(in_mass, "item_idx")
                      .select("item_idx", "persona_idx", "neighbour_idx",
                              (F.col("w") / F.col("w_in") * F.col("weight")).alias("c")))


def _ranked_products(walk: DataFrame, via: DataFrame, rows: DataFrame, keep: int) -> DataFrame:
    """``user_idx, persona_idx, total, top``: each row's voted products as (contribution, -item_idx, item_idx,
    p_out), strongest first, the ``keep`` strongest kept; ``total``: the row's one-step affinity."""
    out_mass = walk.groupBy("user_idx").agg(F.sum("w").alias("w_out"))
    item_votes = via.groupBy("item_idx", "persona_idx").agg(F.sum("c").alias("vote"))
    votes = item_votes.groupBy("item_idx").agg(F.map_from_entries(F.collect_list(F.struct("persona_idx", "vote"))).alias("votes"))
    votes = _small(votes, item_votes.count())  # a row per product, packing its (product, persona) entries
    held = (rows.groupBy("user_idx").agg(F.array_sort(F.collect_set("persona_idx")).alias("held"))
            .join(out_mass, "user_idx"))
    # per purchase: P(u, i) and the product's vote for each of the customer's personas (null: none)
    bought = (walk.join(held, "user_idx").join(votes, "item_idx")
              .select("user_idx", "held", F.struct(
                  "item_idx", (F.col("w") / F.col("w_out")).alias("p"),
                  F.transform("held", lambda m: F.try_element_at("votes", m)).alias("v")).alias("x"))
              .groupBy("user_idx").agg(F.first("held").alias("held"), F.collect_list("x").alias("bought")))

    def ranked(j: Column) -> Column:
        scored = F.transform("bought", lambda x: F.struct(
            (x["p"] * F.element_at(x["v"], j + 1)).alias("contribution"), (-x["item_idx"]).alias("neg"),
            x["item_idx"].alias("item_idx"), x["p"].alias("p_out")))
        return F.sort_array(F.filter(scored, lambda s: s["contribution"].isNotNull()), asc=False)

    return checkpoint(bought.select("user_idx", F.posexplode("held").alias("j", "persona_idx"), "bought")
                      .select("user_idx", "persona_idx", ranked(F.col("j")).alias("r"))
                      .select("user_idx", "persona_idx",
                              F.aggregate("r", F.lit(0.0), lambda acc, s: acc + s["contribution"]).alias("total"),
                              F.slice("r", 1, keep).alias("top"))
                      .filter(F.size("top") > 0))


def _traced_neighbours(per_row: DataFrame, via: DataFrame, users: DataFrame, conf: RefreshConf) -> DataFrame:
    """``user_idx, persona_idx, total, pos, neighbour_idx, neighbour_id, contribution``: each row's strongest
    labelled neighbours, traced through its ``trace_items`` strongest products and their ``trace_buyers``
    strongest labelled buyers."""
    candidates = checkpoint(via.withColumn("pos", F.row_number().over(  # counted, then joined: one window
        Window.partitionBy("item_idx", "persona_idx").orderBy(F.desc("c"), "neighbour_idx")))
        .filter(F.col("pos") <= conf.trace_buyers).drop("pos"))
    traced = per_row.select("user_idx", "persona_idx", "total",
                            F.explode(F.slice("top", 1, conf.trace_items)).alias("t")).select(
        "user_idx", "persona_idx", "total", F.col("t.item_idx").alias("item_idx"), F.col("t.p_out").alias("p_out"))
    row = Window.partitionBy("user_idx", "persona_idx")
    return (traced.join(_small(candidates), ["item_idx", "persona_idx"])
            .groupBy("user_idx", "persona_idx", "neighbour_idx", "total")
            .agg(F.sum(F.col("p_out") * F.col("c")).alias("contribution"))
            .withColumn("pos", F.row_number().over(row.orderBy(F.desc("contribution"), "neighbour_idx")))
            .filter(F.col("pos") <= conf.reason_neighbours)
            .join(users.select(F.col("user_idx").alias("neighbour_idx"), F.col("customer_id").alias("neighbour_id")),
                  "neighbour_idx", "left"))


def _packed(frame: DataFrame, fields: list[Column], alias: str) -> DataFrame:
    """``user_idx, persona_idx, <alias>``: the row's ``fields`` as an array in ``pos`` order."""
    ordered = F.array_sort(F.collect_list(F.struct(F.col("pos"), *fields)))
    return frame.groupBy("user_idx", "persona_idx").agg(F.transform(ordered, lambda s: s.dropFields("pos")).alias(alias))


def reasons(personas: DataFrame, graph: PurchaseGraph, run_id: str, conf: RefreshConf, beta: float = 0.5,
            weighted: bool = False, users: DataFrame | None = None) -> DataFrame:
    """``persona_reasons``: for every (customer, persona) row, or the rows of ``users`` (``user_idx``) only,
    the purchased products and the labelled neighbours that contributed most —
    :func:`persona_spark.explore.explain` for many rows at once. A row's reasons are the same whichever
    other rows are asked for with it: the labelled paths always come from every LLM row of ``personas``.

    The t=1 term of Ψ, user → item (P) → labelled user (P') → labels (L): a product's contribution
    is P(u, i) · Σ_v P'(i, v) L(v, m), exact for every product, and so is ``share``, its part of the
    row's one-step affinity Σ_i P(u, i) Σ_v P'(i, v) L(v, m). A neighbour's contribution is
    Σ_i P(u, i) P'(i, v) L(v, m), *traced*: only through the row's ``conf.trace_items`` strongest
    products and, per product and persona, its ``conf.trace_buyers`` strongest labelled buyers (ties:
    lowest index). A traced contribution is a lower bound of the neighbour's full one, and the
    neighbours listed are the strongest among those traced; both are exact whenever nothing is cut
    (a row with at most ``trace_items`` voted products, each with at most ``trace_buyers`` labelled
    buyers of the persona). Each row costs at most ``trace_items`` × ``trace_buyers`` traced paths.
    ``conf.reason_items`` products and ``conf.reason_neighbours`` neighbours are kept per row; ``beta``
    and ``weighted`` are the affinity's (de-bias exponent, edges weighted by ``n_purchases``).

    Cost (most of a refresh record's when every row is asked for): the products are ranked per customer
    in one grouped pass (the customer's purchases, each with the votes of the customer's personas,
    ranked per persona inside the group), never by
    sorting all (row × purchase) pairs; the labelled paths (labelled users' edges × their personas,
    bounded by the LLM budget) are materialized once and reused.

    Columns: ``run_id, user_idx, customer_id, persona_idx, items array<struct<item_idx, item_name,
    contribution, share>>, neighbours array<struct<user_idx, customer_id, contribution, share>>``.
    """
    edges = graph.train_edges if "split" in graph.edges.columns else graph.edges
    weight = F.col("n_purchases").cast("double") if weighted else F.lit(1.0)
    walk = edges.select("user_idx", "item_idx", weight.alias("w"))
    via = _labelled_paths(walk, personas, beta)
    rows, own = personas.select("user_idx", "persona_idx"), walk
    if users is not None:
        asked = users.select("user_idx").distinct()
        rows, own = rows.join(asked, "user_idx", "left_semi"), walk.join(asked, "user_idx", "left_semi")
    per_row = _ranked_products(own, via, rows, max(conf.reason_items, conf.trace_items))
    per_neighbour = _traced_neighbours(per_row, via, graph.users, conf)
    share = (F.col("contribution") / F.col("total")).alias("share")
    top_items = (per_row.select("user_idx", "persona_idx", "total",
                                F.posexplode(F.slice("top", 1, conf.reason_items)).alias("pos", "t"))
                 .select("user_idx", "persona_idx", "total", "pos", F.col("t.item_idx").alias("item_idx"),
                         F.col("t.contribution").alias("contribution"))
                 .join(graph.items.select("item_idx", "item_name"), "item_idx", "left"))
    item_lists = _packed(top_items, [F.col("item_idx"), F.col("item_name"), F.col("contribution"), share], "items")
    neighbour_lists = _packed(per_neighbour, [F.col("neighbour_idx").alias("user_idx"),
                                              F.col("neighbour_id").alias("customer_id"), F.col("contribution"), share],
                              "neighbours")
    return (rows.join(item_lists, ["user_idx", "persona_idx"], "left").join(neighbour_lists, ["user_idx", "persona_idx"], "left")
            .join(graph.users.select("user_idx", "customer_id"), "user_idx", "left")
            .select(F.lit(run_id).alias("run_id"), "user_idx", "customer_id", "persona_idx", "items", "neighbours"))


# ---- one run's record -------------------------------------------------------------------------

@dataclass(frozen=True)
class RunHistory:
    """What earlier runs left in the tables, as they are before a run writes; None where a table does not
    exist yet (the first run)."""

    prototypes: DataFrame | None = None  # gplr_prototypes: who was asked, for which history
    personas: DataFrame | None = None  # personas
    history: DataFrame | None = None  # persona_history
    runs: DataFrame | None = None  # gplr_runs
    reasons: DataFrame | None = None  # persona_reasons


@dataclass(frozen=True)
class RunPersonas:
    """One run's persona rows, as its refresh record reads them."""

    run: tuple[str, datetime]  # run_id, run_ts (persona_spark.runtime.runs.new_run)
    personas: DataFrame  # the run's persona rows (user_idx, persona_idx, score, rank, source, probability), pinned
    reliability: list[dict] = field(default_factory=list)  # the assignment model's reliability bins


@dataclass
class RefreshRecord:
    """What one run adds to the refresh tables; None where it writes nothing to a table."""

    history: DataFrame | None  # MERGE into persona_history on HISTORY_KEYS (None: no membership changed)
    transitions: DataFrame | None  # persona_transitions / persona_flows against the previous run, if history has it
    flows: DataFrame | None
    catalog: DataFrame  # persona_catalog slice of the run
    calibration: DataFrame | None  # persona_calibration slice (None: the assignment has no probabilities)
    reasons: DataFrame | None  # replaces persona_reasons (None: off, or this run's are there already)
    summary: dict


def record_run(new: RunPersonas, graph: PurchaseGraph, names: DataFrame, persona_set: PersonaSet, earlier: RunHistory,
               conf: RefreshConf, affinity_conf: AffinityConf, checkpoint_mode: str = "local") -> RefreshRecord:
    """The refresh record of one run from what ``earlier`` runs left (``names``: ``persona_idx, name``).
    Refuses a run older than one ``earlier.history`` holds: intervals are only appended in time order.
    Intermediates are pinned with ``checkpoint_mode`` (local, or reliable: the caller set the directory)."""
    (run_id, run_ts), personas, history, mode = new.run, new.personas, earlier.history, checkpoint_mode
    if history is not None:
        later = history.filter((F.col("valid_from") > F.lit(run_ts)) | (F.col("valid_to") > F.lit(run_ts)))
        if later.limit(1).count():
            raise ValueError(f"persona_history already holds a run after {run_ts.isoformat()} ({run_id}): "
                             "runs are applied in time order")
    changes = checkpoint(history_changes(history, named_personas(personas, graph.users, names), run_id, run_ts), mode)
    changed = changes.count()
    summary = {"run_id": run_id, "history_rows_merged": changed}

    drift = moves = None
    previous = latest_runs(earlier.runs.filter(F.col("run_ts") < F.lit(run_ts))) if earlier.runs is not None else []
    if previous and history is not None:
        before = (previous[0]["run_id"], utc(previous[0]["run_ts"]))
        if personas_as_of(history, before[1]).limit(1).count():  # the MERGE only opens and closes at run_ts
            after = merged_history(history, changes)
            drift = checkpoint(transitions(after, names, before, new.run), mode)
            moves = flows(after, before, new.run)
            first = drift.first()
            summary.update(previous_run_id=before[0], customers_changed=first["customers_changed"],
                           share_changed=round(first["share_changed"], 4))

    spark = personas.sparkSession
    bins = None
    if new.reliability:
        bins = spark.createDataFrame([{"run_id": run_id, **row} for row in new.reliability],
                                     "run_id string, bin int, lower double, upper double, pairs long, "
                                     "mean_predicted double, observed double")
    why = None
    done_before = earlier.reasons is not None and earlier.reasons.filter(F.col("run_id") == run_id).limit(1).count()
    if conf.reasons and not done_before:  # the latest run's reasons replace the previous run's
        why = reasons(personas, graph, run_id, conf, affinity_conf.beta, affinity_conf.weighted)
    summary["reasons"] = "every row" if conf.reasons else "on request (the reasons stage)"
    products = catalog(personas, persona_set.to_dataframe(spark), graph.edges, graph.items, run_id, conf.catalog_products)
    return RefreshRecord(changes if changed else None, drift, moves, products, bins, why, summary)
