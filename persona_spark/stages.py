"""Stage functions: the edge where tables are read, library transforms applied, tables written.

Each stage is ``fn(cfg, store) -> summary dict``. The CLI, ``jobs/*.py`` and the Databricks
bundle call exactly these. Library modules stay pure ``DataFrame -> DataFrame``.
"""

from __future__ import annotations

import logging
from typing import Callable

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from persona_spark import graph, ingest
from persona_spark.config import Config
from persona_spark.generate import generate as generate_lines
from persona_spark.io import TableStore
from persona_spark.personas import load_persona_set

Stage = Callable[[Config, TableStore], dict]

log = logging.getLogger("persona_spark")

GENERATED_SOURCE = "raw_transactions"


def generate(cfg: Config, store: TableStore) -> dict:
    """Generate the demo shop's raw purchase lines and the planted personas (ground truth)."""
    personas = load_persona_set(cfg.personas)
    raw, planted, _ = generate_lines(store.spark, personas, cfg.generate)
    store.write_table(raw, GENERATED_SOURCE)
    store.write_table(planted, "planted_personas")
    store.write_table(personas.to_dataframe(store.spark), "persona_set")
    lines = store.read_table(GENERATED_SOURCE).count()
    log.info("generated %d raw lines for %d users into %s", lines, cfg.generate.users, store.location(GENERATED_SOURCE))
    return {"raw_lines": lines, "users": cfg.generate.users, "items": cfg.generate.items,
            "table": store.location(GENERATED_SOURCE)}


def _read_source(cfg: Config, store: TableStore) -> tuple[DataFrame, str]:
    conf = cfg.ingest
    if conf.source is None:
        return store.read_table(GENERATED_SOURCE), store.location(GENERATED_SOURCE)
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


def ingest_stage(cfg: Config, store: TableStore) -> dict:
    """Validate source lines into ``transactions``; bad lines go to ``quarantine`` with a reason."""
    conf = cfg.ingest
    raw, source = _read_source(cfg, store)
    lines = ingest.to_canonical_strings(raw, conf.preset, conf.mapping)
    validated = ingest.validate(lines, conf.cancellation_prefix, conf.timestamp_format).persist()
    try:
        counts = {r["reason"]: r["count"] for r in validated.groupBy("reason").count().collect()}
        store.write_table(ingest.good_rows(validated), "transactions", conf.mode)
        store.write_table(ingest.bad_rows(validated, source), "quarantine", "append")
    finally:
        validated.unpersist()
    kept = counts.pop(None, 0)
    summary = {"source": source, "rows_in": kept + sum(counts.values()), "rows_kept": kept,
               "rows_quarantined": sum(counts.values()),
               "quarantined_by_reason": {r: counts.get(r, 0) for r in ingest.REASONS if counts.get(r)}}
    log.info("ingest: %s", summary)
    return summary


def build_graph_stage(cfg: Config, store: TableStore) -> dict:
    """Build ``users``, ``items`` and ``edges`` (with the train/test split) from ``transactions``."""
    conf = cfg.graph
    existing_users = store.read_table("users") if store.exists("users") else None
    existing_items = store.read_table("items") if store.exists("items") else None
    users, items, edges = graph.build_graph(
        store.read_table("transactions"), conf.min_user_degree, conf.min_item_degree, conf.test_fraction,
        conf.seed, existing_users, existing_items,
    )
    # Materialize before overwriting the tables the indices were read from.
    users, items, edges = users.localCheckpoint(), items.localCheckpoint(), edges.localCheckpoint()
    store.write_table(users, "users")
    store.write_table(items, "items")
    store.write_table(edges, "edges")
    return _graph_summary(store)


def load_paper_split(cfg: Config, store: TableStore) -> dict:
    """Load the paper's OnlineRetail split (graph.paper_split_dir) as users/items/edges + GPT-4 labels."""
    if not cfg.graph.paper_split_dir:
        raise ValueError("set graph.paper_split_dir to the folder with train.json/test.json")
    tables = graph.load_gplr_split(store.spark, cfg.graph.paper_split_dir)
    for name, df in tables.items():
        store.write_table(df, name)
    return {**_graph_summary(store), "tables_written": sorted(tables)}


def _graph_summary(store: TableStore) -> dict:
    split = {r["split"]: r["count"] for r in store.read_table("edges").groupBy("split").count().collect()}
    return {"users": store.read_table("users").count(), "items": store.read_table("items").count(),
            "train_edges": split.get("train", 0), "test_edges": split.get("test", 0),
            "tables": {t: store.location(t) for t in ("users", "items", "edges")}}


STAGES: dict[str, Stage] = {
    "generate": generate,
    "ingest": ingest_stage,
    "build-graph": build_graph_stage,
    "load-paper-split": load_paper_split,
}
