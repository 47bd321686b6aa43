"""Labeling stages: users and items into the label caches, and an LLM-written persona set."""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from persona_spark import labeling, tables
from persona_spark.config import Config
from persona_spark.tables.store import TableStore
from persona_spark.personas import load_persona_set
from persona_spark.stages import cache
from persona_spark.stages.common import read_if_exists, train_edges

log = logging.getLogger("persona_spark")


def label_users_stage(cfg: Config, store: TableStore) -> dict:
    """Label users (a sample, all, or those listed in a table) with the configured backend into ``user_labels``."""
    train = train_edges(store)
    transactions = behaviour_source(cfg, store)
    users = store.read_table(tables.USERS) if transactions is not None else None
    requests = labeling.user_requests(train, store.read_table(tables.ITEMS), cfg.labeling, transactions, users)
    chosen = cache.selection_table(store, cfg.labeling.users)
    return label_stage(cfg, store, labeling.select_entities(requests, cfg.labeling.users, "user_idx", chosen), "user")


def behaviour_source(cfg: Config, store: TableStore) -> DataFrame | None:
    """``transactions`` when the embedding labeler is configured (it weighs price / basket / cadence
    from them) and the source has them (a paper split has none); else None."""
    return read_if_exists(store, tables.TRANSACTIONS) if cfg.labeling.backend == "embedding" else None


def label_items_stage(cfg: Config, store: TableStore) -> dict:
    """Label items (all by default) with the personas likely to buy them into ``item_labels``."""
    requests = labeling.build_item_requests(store.read_table(tables.ITEMS))
    chosen = cache.selection_table(store, cfg.labeling.items)
    return label_stage(cfg, store, labeling.select_entities(requests, cfg.labeling.items, "item_idx", chosen), "item")


def label_stage(cfg: Config, store: TableStore, requests: DataFrame, kind: str,
                labeler: labeling.Labeler | None = None) -> dict:
    """Label ``requests`` through the cache by ``labeler`` (default: the configured one); the summary
    of what came back, or the dry run's estimate."""
    try:
        labels = cache.label_entities(store, requests, load_persona_set(cfg.personas), cfg.labeling, kind, labeler)
    except labeling.DryRunEstimate as dry:
        return {"dry_run": True, **dry.estimate}
    return {**labeling.summarize(labels, cfg.labeling), "table": store.location(labeling.KINDS[kind].table)}


def generate_personas_stage(cfg: Config, store: TableStore) -> dict:
    """Generate a persona set from sampled purchase histories with the LLM (paper App. B)."""
    from persona_spark.labeling.client import resolve_api_key
    from persona_spark.labeling.persona_sets import PersonaSetGenerator, write_persona_set

    conf = cfg.labeling
    if conf.backend not in ("openai", "openai_batch"):
        raise ValueError("generate-personas needs an LLM: set labeling.backend=openai or openai_batch (and labeling.openai.*)")
    histories = labeling.build_user_histories(store.read_table(tables.EDGES), store.read_table(tables.ITEMS),
                                              labeling.history_order(conf))
    generator = PersonaSetGenerator(conf, histories.count())
    groups = generator.sample(histories)
    if conf.dry_run:
        estimate = generator.estimate(groups)
        log.info("generate-personas estimate: %s", estimate)
        return {"dry_run": True, **estimate}
    persona_set, stats = generator.generate(groups, resolve_api_key(conf.openai, store.spark), cache.TableCache(store))
    path = write_persona_set(persona_set, conf.generate.output, generator.metadata(stats))
    table = persona_set.to_dataframe(store.spark).select(
        "*", F.lit(persona_set.title).alias("title"), F.lit(conf.openai.model).alias("model"),
        F.current_timestamp().alias("created"),
    )
    store.write_table(table, tables.GENERATED_PERSONA_SETS, mode="append")
    return {**stats, "file": str(path), "table": store.location(tables.GENERATED_PERSONA_SETS)}
