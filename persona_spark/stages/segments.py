"""Segmentation stages: customers clustered on personas (and RFM), and how stable both are."""

from __future__ import annotations

import logging

from pyspark.sql import functions as F

from persona_spark import tables
from persona_spark import segment as segment_lib
from persona_spark.config import Config
from persona_spark.frames import union_all
from persona_spark.io import TableStore
from persona_spark.personas import load_persona_set
from persona_spark.stages import cache
from persona_spark.stages.common import locations, persona_names

log = logging.getLogger("persona_spark")


def segment_stage(cfg: Config, store: TableStore) -> dict:
    """Segment customers on personas (and RFM when transactions exist): segments, silhouette, summary."""
    conf = cfg.segment
    personas = store.read_table(tables.PERSONAS)
    names = persona_names(cfg, store)
    representations = {"personas": segment_lib.persona_vectors(personas, names.count())}
    rfm_parts = []
    if store.exists(tables.TRANSACTIONS) and store.exists(tables.USERS):
        users = store.read_table(tables.USERS).select("customer_id", "user_idx")
        rfm = segment_lib.rfm_vectors(store.read_table(tables.TRANSACTIONS), "customer_id", conf.rfm_buckets)
        rfm_parts = [part.as_row() for part in rfm.parts]
        for part in rfm.parts:
            if not part.computed:
                log.warning("segment: RFM without its %s part: %s", part.part, part.source)
        representations["rfm"] = rfm.features.join(users, "customer_id").select("user_idx", "features")
        store.write_table(store.spark.createDataFrame(rfm_parts, "part string, computed boolean, source string"),
                          tables.RFM_PARTS)
    else:
        log.info("segment: no transactions/users tables, so no RFM baseline")
    results = {
        name: segment_lib.segment_users(features, conf.ks, conf.pca_components, conf.seed, conf.max_iter)
        for name, features in representations.items()
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
        store.read_table(tables.ITEMS), names, conf.top_personas, conf.top_items,
    )
    store.write_table(summary, tables.SEGMENT_SUMMARY)
    return {"silhouette": silhouettes, "rfm_parts": rfm_parts,
            "users": persona_segments.select("user_idx").distinct().count(),
            "tables": locations(store, tables.SEGMENTS, tables.SEGMENT_POINTS, tables.SILHOUETTE, tables.SEGMENT_SUMMARY)}


def robustness_stage(cfg: Config, store: TableStore) -> dict:
    """Count customers whose personas / RFM deciles stay the same from the first to the second half of
    their orders; each half is labelled by the configured labeling backend (not cached in user_labels)."""
    if cfg.labeling.dry_run:
        raise ValueError("robustness has no dry run: it labels each customer's two halves directly (not through "
                         "the cache); price it with label-users, or set segment.robustness_customers to a sample")
    conf = cfg.segment
    transactions = store.read_table(tables.TRANSACTIONS)
    if conf.robustness_customers is not None:
        transactions = segment_lib.sample_customers(transactions, conf.robustness_customers, conf.seed)
    backend = cache.make_backend(cfg.labeling, load_persona_set(cfg.personas), "user", store)
    labeler = segment_lib.period_labeler(backend.label, store.read_table(tables.USERS), store.read_table(tables.ITEMS))
    result = segment_lib.robustness(transactions, labeler, "customer_id", conf.rfm_buckets)
    store.write_table(result, tables.ROBUSTNESS)
    cache.store_cache_rows(store, backend)  # e.g. item embeddings the halves needed
    return {"robustness": [row.asDict() for row in store.read_table(tables.ROBUSTNESS).collect()],
            "table": store.location(tables.ROBUSTNESS)}
