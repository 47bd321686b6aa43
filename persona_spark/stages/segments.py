"""Segmentation stages: customers clustered on personas (and RFM), and how stable both are."""

from __future__ import annotations

import logging

from pyspark.sql import functions as F

from persona_spark import segment as segment_lib
from persona_spark import tables
from persona_spark.runtime.frames import union_all
from persona_spark.stages import cache
from persona_spark.stages.common import locations, persona_names
from persona_spark.stages.context import RunContext

log = logging.getLogger("persona_spark")


def segment_stage(ctx: RunContext) -> dict:
    """Segment customers on personas (and RFM when transactions exist): segments, silhouette, summary.

    ``segment.protocol`` picks the project's pipeline or the paper's Table 9 protocol (first six months,
    raw RFM values, Euclidean silhouette; see ``persona_spark.segment``)."""
    cfg, store = ctx.cfg, ctx.store
    conf = cfg.segment
    paper = conf.protocol == "paper"
    personas = store.read_table(tables.PERSONAS)
    names = persona_names(ctx)
    has_rfm = store.exists(tables.TRANSACTIONS) and store.exists(tables.USERS)
    if not has_rfm:
        log.info("segment: no transactions/users tables, so no RFM baseline")
    chosen = segment_lib.segment_representations(
        personas, names.count(),
        store.read_table(tables.TRANSACTIONS) if has_rfm else None,
        store.read_table(tables.USERS) if has_rfm else None,
        conf.protocol, conf.rfm_buckets, str(conf.paper.year_start) if conf.paper.year_start else None,
    )
    rfm_parts = [part.as_row() for part in chosen.rfm_parts]
    for part in chosen.rfm_parts:
        if not part.computed:
            log.warning("segment: RFM without its %s part: %s", part.part, part.source)
    if has_rfm:
        store.write_table(store.spark.createDataFrame(rfm_parts, "part string, computed boolean, source string"),
                          tables.RFM_PARTS)
    results = {
        name: segment_lib.segment_users(features, conf.ks,
                                        segment_lib.Clustering(conf.pca_components, conf.seed, conf.max_iter,
                                                               silhouette="euclidean" if paper else "squared_euclidean",
                                                               silhouette_sample=conf.paper.silhouette_sample),
                                        reduce=chosen.reduce[name])
        for name, features in chosen.features.items()
    }
    try:
        tagged = [(result, F.lit(name).alias("representation")) for name, result in results.items()]
        store.write_table(union_all(r.assignments.select(tag, "user_idx", "k", "segment") for r, tag in tagged),
                          tables.SEGMENTS)
        store.write_table(union_all(r.points().select(tag, "user_idx", "x", "y", "z") for r, tag in tagged),
                          tables.SEGMENT_POINTS)
        silhouettes = [{"representation": n, **row} for n, result in results.items() for row in result.silhouettes]
        store.write_table(
            store.spark.createDataFrame(silhouettes, "representation string, k int, clusters int, silhouette double"),
            tables.SILHOUETTE,
        )
    finally:
        for result in results.values():
            result.release()
    persona_segments = store.read_table(tables.SEGMENTS).filter(F.col("representation") == "personas")
    summary = segment_lib.describe_segments(
        persona_segments.select("user_idx", "k", "segment"), personas, store.read_table(tables.EDGES),
        store.read_table(tables.ITEMS), names, conf.personas_per_segment, conf.items_per_segment,
    )
    store.write_table(summary, tables.SEGMENT_SUMMARY)
    return {"silhouette": silhouettes, "rfm_parts": rfm_parts,
            "users": persona_segments.select("user_idx").distinct().count(),
            "tables": locations(store, tables.SEGMENTS, tables.SEGMENT_POINTS, tables.SILHOUETTE, tables.SEGMENT_SUMMARY)}


def robustness_stage(ctx: RunContext) -> dict:
    """Count customers whose personas / RFM deciles stay the same from one period to the next; each period
    is labelled by the configured labeling backend (not cached in user_labels). ``segment.protocol``:
    project = the two halves of each customer's orders; paper = Table 8 (calendar half-years, a sample
    of ``segment.paper.robustness_customers`` active customers, the three most dominant personas)."""
    cfg, store = ctx.cfg, ctx.store
    if cfg.labeling.dry_run:
        raise ValueError("robustness has no dry run: it labels each customer's two halves directly (not through "
                         "the cache); price it with label-users, or set segment.robustness_customers to a sample")
    conf = cfg.segment
    transactions = store.read_table(tables.TRANSACTIONS)
    if conf.protocol == "project" and conf.robustness_customers is not None:
        transactions = segment_lib.sample_customers(transactions, conf.robustness_customers, conf.seed)
    bound = cache.bind_labeler(cache.configured_labeler(cfg.labeling, store), cfg.labeling, ctx.persona_set, "user",
                               store)
    labeler = segment_lib.period_labeler(bound.label, store.read_table(tables.USERS), store.read_table(tables.ITEMS))
    if conf.protocol == "paper":
        paper = conf.paper
        sample = segment_lib.PaperSample(paper.robustness_customers, paper.min_transactions, paper.transaction_unit,
                                         conf.seed, str(paper.year_start) if paper.year_start else None)
        result = segment_lib.paper_robustness(transactions, labeler, "customer_id", conf.rfm_buckets, sample,
                                              paper.robustness_top_personas)
    else:
        result = segment_lib.robustness(transactions, labeler, "customer_id", conf.rfm_buckets)
    store.write_table(result, tables.ROBUSTNESS)
    cache.store_cache_rows(store, bound)  # e.g. item embeddings the halves needed
    return {"robustness": [row.asDict() for row in store.read_table(tables.ROBUSTNESS).collect()],
            "table": store.location(tables.ROBUSTNESS)}
