"""Labeling stages: users and items into the label caches, and an LLM-written persona set."""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from persona_spark import labeling, tables
from persona_spark.stages import cache
from persona_spark.stages.common import train_edges
from persona_spark.stages.context import RunContext

log = logging.getLogger("persona_spark")


def label_users_stage(ctx: RunContext) -> dict:
    """Label users (a sample, all, or those listed in a table) with the configured backend into ``user_labels``."""
    cfg, store = ctx.cfg, ctx.store
    train = train_edges(store)
    transactions = behaviour_source(ctx)
    users = store.read_table(tables.USERS) if transactions is not None else None
    requests = labeling.user_requests(train, store.read_table(tables.ITEMS), cfg.labeling, transactions, users)
    chosen = cache.selection_table(store, cfg.labeling.users)
    return label_stage(ctx, labeling.select_entities(requests, cfg.labeling.users, "user_idx", chosen), "user")


def behaviour_source(ctx: RunContext) -> DataFrame | None:
    """``transactions`` when the embedding labeler is configured (it weighs price / basket / cadence
    from them) and the source has them (a paper split has none); else None."""
    return ctx.table(tables.TRANSACTIONS) if ctx.cfg.labeling.backend == "embedding" else None


def label_items_stage(ctx: RunContext) -> dict:
    """Label items (all by default) with the personas likely to buy them into ``item_labels``."""
    cfg, store = ctx.cfg, ctx.store
    requests = labeling.build_item_requests(store.read_table(tables.ITEMS))
    chosen = cache.selection_table(store, cfg.labeling.items)
    return label_stage(ctx, labeling.select_entities(requests, cfg.labeling.items, "item_idx", chosen), "item")


def label_stage(ctx: RunContext, requests: DataFrame, kind: str, labeler: labeling.Labeler | None = None) -> dict:
    """Label ``requests`` through the cache by ``labeler`` (default: the configured one); the summary
    of what came back, or the dry run's estimate."""
    cfg, store = ctx.cfg, ctx.store
    try:
        labels = cache.label_entities(store, requests, ctx.persona_set, cfg.labeling, kind, labeler)
    except labeling.DryRunEstimate as dry:
        return {"dry_run": True, **dry.estimate}
    return {**labeling.summarize(labels, cfg.labeling), "table": store.location(labeling.KINDS[kind].table)}


def generate_personas_stage(ctx: RunContext) -> dict:
    """Generate a persona set from sampled purchase histories with the LLM (paper App. B)."""
    from persona_spark.labeling.client import resolve_api_key
    from persona_spark.labeling.persona_sets import PersonaSetGenerator, write_persona_set

    cfg, store = ctx.cfg, ctx.store
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
    path = write_persona_set(persona_set, conf.persona_generation.output, generator.metadata(stats))
    table = persona_set.to_dataframe(store.spark).select(
        "*", F.lit(persona_set.title).alias("title"), F.lit(conf.openai.model).alias("model"),
        F.current_timestamp().alias("created"),
    )
    store.write_table(table, tables.GENERATED_PERSONA_SETS, mode="append")
    return {**stats, "file": str(path), "table": store.location(tables.GENERATED_PERSONA_SETS)}
