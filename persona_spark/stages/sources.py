"""Stages that bring purchases in: the demo generator, ingest, the purchase graph, the paper's split."""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame

from persona_spark import graph, ingest, tables
from persona_spark.affinity import prepare_graph
from persona_spark.generate import generate as generate_lines
from persona_spark.stages.common import locations, persona_names, train_edges
from persona_spark.stages.context import RunContext

log = logging.getLogger("persona_spark")


def generate(ctx: RunContext) -> dict:
    """Generate the demo shop's raw purchase lines and the planted personas (ground truth)."""
    cfg, store = ctx.cfg, ctx.store
    personas = ctx.persona_set
    raw, planted, _ = generate_lines(store.spark, personas, cfg.demo)
    store.write_table(raw, tables.RAW_TRANSACTIONS)
    store.write_table(planted, tables.PLANTED_PERSONAS)
    store.write_table(personas.to_dataframe(store.spark), tables.PERSONA_SET)
    lines = store.read_table(tables.RAW_TRANSACTIONS).count()
    where = store.location(tables.RAW_TRANSACTIONS)
    log.info("generated %d raw lines for %d users into %s", lines, cfg.demo.users, where)
    return {"raw_lines": lines, "users": cfg.demo.users, "items": cfg.demo.items, "table": where}


def _read_source(ctx: RunContext) -> tuple[DataFrame, str]:
    conf, store = ctx.cfg.ingest, ctx.store
    if conf.source is None:
        return store.read_table(tables.RAW_TRANSACTIONS), store.location(tables.RAW_TRANSACTIONS)
    reader = store.spark.read
    if conf.format == "csv":
        raw = reader.option("header", True).option("multiLine", False).option("escape", '"').csv(conf.source)
    elif conf.format == "parquet":
        raw = reader.parquet(conf.source)
    elif conf.format == "delta":
        raw = store.read_path(conf.source)
    else:
        raw = store.read_table(conf.source)
    if conf.preset == "instacart":
        if not conf.products:
            raise ValueError("ingest.preset=instacart needs ingest.products (the products.csv path)")
        products = reader.option("header", True).option("escape", '"').csv(conf.products)
        raw = ingest.join_instacart_products(raw, products)
    return raw, conf.source


def ingest_stage(ctx: RunContext) -> dict:
    """Validate source lines into ``transactions``; bad lines go to ``quarantine`` with a reason."""
    cfg, store = ctx.cfg, ctx.store
    conf = cfg.ingest
    raw, source = _read_source(ctx)
    lines = ingest.to_canonical_strings(raw, conf.preset, conf.mapping)
    validated = ingest.validate(lines, conf.cancellation_prefix, conf.timestamp_format).persist()
    try:
        counts = {r["reason"]: r["count"] for r in validated.groupBy("reason").count().collect()}
        store.write_table(ingest.good_rows(validated), tables.TRANSACTIONS, conf.mode)
        store.write_table(ingest.bad_rows(validated, source), tables.QUARANTINE, "append")
    finally:
        validated.unpersist()
    kept = counts.pop(None, 0)
    summary = {"source": source, "rows_in": kept + sum(counts.values()), "rows_kept": kept,
               "rows_quarantined": sum(counts.values()),
               "quarantined_by_reason": {r: counts.get(r, 0) for r in ingest.REASONS if counts.get(r)}}
    log.info("ingest: %s", summary)
    return summary


def build_graph_stage(ctx: RunContext) -> dict:
    """Build ``users``, ``items`` and ``edges`` (with the train/test split) from ``transactions``."""
    cfg, store = ctx.cfg, ctx.store
    conf = cfg.graph
    users, items, edges = graph.build_graph(
        store.read_table(tables.TRANSACTIONS), conf.min_user_degree, conf.min_item_degree, conf.test_fraction,
        conf.split_seed, ctx.table(tables.USERS), ctx.table(tables.ITEMS),
    )
    # All three materialized before the first write overwrites a table the indices were read from.
    pinned = {tables.USERS: ctx.pin(users), tables.ITEMS: ctx.pin(items), tables.EDGES: ctx.pin(edges)}
    for name, frame in pinned.items():
        store.write_table(frame, name)
    return {**_graph_summary(ctx), **write_edge_tiles(ctx)}


def load_paper_split(ctx: RunContext) -> dict:
    """Load the paper's OnlineRetail split (graph.paper_split_dir) as users/items/edges + GPT-4 labels."""
    cfg, store = ctx.cfg, ctx.store
    if not cfg.graph.paper_split_dir:
        raise ValueError("set graph.paper_split_dir to the folder with train.json/test.json")
    written = graph.load_gplr_split(store.spark, cfg.graph.paper_split_dir)
    for name, df in written.items():
        store.write_table(df, name)
    return {**_graph_summary(ctx), **write_edge_tiles(ctx), "tables_written": sorted(written)}


def write_edge_tiles(ctx: RunContext) -> dict:
    """Cut the train edges into the affinity engine's tiles once, where the graph is built: every gplr
    and affinity run on this ``edges`` version loads them instead of cutting them again."""
    cfg, store = ctx.cfg, ctx.store
    if not cfg.graph.write_tiles:
        return {}
    trace: list[dict] = []
    cut = prepare_graph(train_edges(store), cfg.affinity, persona_names(ctx).count(), trace=trace,
                        edges_version=store.version(tables.EDGES))
    try:
        store.write_table(cut.to_table(), tables.EDGE_TILES)
    finally:
        cut.release()
    return {"edge_tiles": {"edges_version": cut.edges_version, "max_personas": cut.width, **trace[0],
                           "table": store.location(tables.EDGE_TILES)}}


def _graph_summary(ctx: RunContext) -> dict:
    cfg, store = ctx.cfg, ctx.store
    edges = store.read_table(tables.EDGES)
    split = {r["split"]: r["count"] for r in edges.groupBy("split").count().collect()}
    summary = {"users": store.read_table(tables.USERS).count(), "items": store.read_table(tables.ITEMS).count(),
               "train_edges": split.get("train", 0), "test_edges": split.get("test", 0)}
    if cfg.graph.components:
        summary["train_components"] = graph.component_summary(train_edges(store), ctx.checkpoint_mode)
    log.info("graph: %s", summary)
    return {**summary, "tables": locations(store, tables.USERS, tables.ITEMS, tables.EDGES)}
