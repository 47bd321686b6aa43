"""Stages that bring purchases in: the demo generator, ingest, the purchase graph, the paper's split."""

from __future__ import annotations

import hashlib
import json
import logging

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from persona_spark import graph, ingest, tables
from persona_spark.affinity import prepare_graph
from persona_spark.errors import UserError
from persona_spark.generate import generate as generate_lines
from persona_spark.stages.common import locations, persona_names, train_edges
from persona_spark.stages.context import RunContext
from persona_spark.tables.store import TableStore

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


def _read_csv(spark, path: str, charset: str) -> DataFrame:
    """A CSV source, every column a string, as Spark reads it with ``multiLine`` on (a quoted field may hold line
    breaks; each file is then read by one task), in ``charset``, keeping the reader's corrupt record column for
    lines that do not split into the header's fields. An empty file is refused."""
    reader = (spark.read.option("header", True).option("multiLine", True).option("escape", '"')
              .option("encoding", charset))
    header = reader.csv(path).columns
    if not header:
        raise UserError(f"ingest: {path} is empty (not even a header line)")
    schema = StructType([StructField(c, StringType()) for c in [*header, ingest.CORRUPT_RECORD]])
    return (reader.schema(schema).option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", ingest.CORRUPT_RECORD).csv(path))


def _read_source(ctx: RunContext) -> tuple[DataFrame, str]:
    conf, store = ctx.cfg.ingest, ctx.store
    if conf.source is None:
        return store.read_table(tables.RAW_TRANSACTIONS), store.location(tables.RAW_TRANSACTIONS)
    if conf.format == "csv":
        raw = _read_csv(store.spark, conf.source, conf.charset)
    elif conf.format == "parquet":
        raw = store.spark.read.parquet(conf.source)
    elif conf.format == "delta":
        raw = store.read_path(conf.source)
    else:
        raw = store.read_table(conf.source)
    if conf.preset == "instacart":
        if not conf.products:
            raise UserError("ingest.preset=instacart needs ingest.products (the products.csv path)")
        products = _read_csv(store.spark, conf.products, conf.charset).drop(ingest.CORRUPT_RECORD)
        raw = ingest.join_instacart_products(raw, products)
    return raw, conf.source


def _tally(validated: DataFrame, source: str) -> tuple[dict, str]:
    """Lines per reason (None: kept) and the batch id: a hash of the source and of every line's text, so the same
    lines ingested again are the same batch, in one pass over the lines."""
    rows = validated.groupBy("reason").agg(F.count(F.lit(1)).alias("lines"),
                                           F.sum(ingest.line_hash().cast("decimal(38,0)")).alias("hash")).collect()
    content = sorted((r["reason"] or "", r["lines"], str(r["hash"])) for r in rows)
    batch_id = hashlib.sha256(json.dumps([source, content]).encode()).hexdigest()[:16]
    return {r["reason"]: r["lines"] for r in rows}, batch_id


def _rows_of_batch(store: TableStore, batch_id: str) -> int:
    """How many ``transactions`` rows an earlier ingest of this batch left (0 for a table written before rows
    carried their batch)."""
    if not store.exists(tables.TRANSACTIONS):
        return 0
    rows = store.read_table(tables.TRANSACTIONS)
    return rows.filter(F.col("batch_id") == batch_id).count() if "batch_id" in rows.columns else 0


def _warnings(counts: dict, unmapped: list[str], encoding: str) -> list[str]:
    """One line each about what ingest kept out without a reason of its own on the line, or what it suspects."""
    out = []
    if unmapped:
        out.append(f"source columns not mapped to any canonical column, not ingested: {', '.join(unmapped)} "
                   "(map one with ingest.mapping.<canonical>=<column>)")
    if counts.get("invalid_encoding"):
        out.append(f"lines with bytes that are not valid {encoding}: {counts['invalid_encoding']}, quarantined as "
                   "invalid_encoding; if the file is in another encoding, set ingest.encoding (e.g. latin-1)")
    return out


def ingest_stage(ctx: RunContext) -> dict:
    """Validate source lines into ``transactions``; bad lines go to ``quarantine`` with a reason.

    Refuses a source without lines, and writes no ``transactions`` when none of its lines is valid. Every row
    carries its batch id (a hash of the source and its content): ingesting the same lines again replaces their
    quarantine rows and, in append mode, their ``transactions`` rows, rather than adding them twice.
    """
    cfg, store = ctx.cfg, ctx.store
    conf = cfg.ingest
    raw, source = _read_source(ctx)
    unmapped = ingest.unmapped_columns(raw.columns, conf.preset, conf.mapping)
    lines = ingest.to_canonical_strings(raw, conf.preset, conf.mapping)
    validated = ingest.validate(lines, conf.cancellation_prefix, conf.timestamp_format).persist()
    try:
        counts, batch_id = _tally(validated, source)
        kept = counts.pop(None, 0)
        quarantined = sum(counts.values())
        if kept + quarantined == 0:
            raise UserError(f"ingest: {source} has no lines (a header at most): nothing to ingest")
        by_reason = {r: counts[r] for r in ingest.REASONS if counts.get(r)}
        store.replace_rows(ingest.bad_rows(validated, source, batch_id), tables.QUARANTINE, "batch_id", batch_id)
        if kept == 0:
            raise UserError(f"ingest: none of the {quarantined} lines of {source} is valid ({by_reason}); they are in "
                            f"{store.location(tables.QUARANTINE)}, batch_id {batch_id}; transactions is unchanged")
        replaced = _rows_of_batch(store, batch_id) if conf.mode == "append" else 0
        if conf.mode == "append":
            store.replace_rows(ingest.good_rows(validated, batch_id), tables.TRANSACTIONS, "batch_id", batch_id)
        else:
            store.write_table(ingest.good_rows(validated, batch_id), tables.TRANSACTIONS)
    finally:
        validated.unpersist()
    warnings = _warnings(counts, unmapped, conf.encoding)
    if replaced:
        warnings.append(f"batch {batch_id} (the same lines of {source}) was ingested before: its {replaced} rows in "
                        "transactions were replaced, not added again")
    for line in warnings:
        log.warning("ingest: %s", line)
    summary = {"source": source, "batch_id": batch_id, "rows_in": kept + quarantined, "rows_kept": kept,
               "rows_quarantined": quarantined, "quarantined_by_reason": by_reason, "warnings": warnings}
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
    if pinned[tables.USERS].isEmpty():  # every later stage needs customers: refused before anything is written
        raise UserError(f"build-graph: no customers: {store.location(tables.TRANSACTIONS)} has no lines, or no customer "
                        f"buys graph.min_user_degree={conf.min_user_degree} products of graph.min_item_degree="
                        f"{conf.min_item_degree} buyers; run ingest on a source with valid lines")
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
        summary["train_components"] = graph.component_summary(train_edges(store), ctx.checkpoint_mode,
                                                              cfg.graph.components_algorithm)
    log.info("graph: %s", summary)
    return {**summary, "tables": locations(store, tables.USERS, tables.ITEMS, tables.EDGES)}
