"""GPLR and what it leaves behind: personas, the refresh record of a run, Ψ alone, audiences."""

from __future__ import annotations

import logging
import time

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from persona_spark import audit, refresh, tables, tracking
from persona_spark.errors import QualityAlert, UserError
from persona_spark.graph import PurchaseGraph
from persona_spark.refresh import RunHistory, RunPersonas
from persona_spark.runtime.runs import latest_runs
from persona_spark.stages import cache
from persona_spark.stages.common import locations, persona_names, stored_train_graph, train_edges, write_slice
from persona_spark.stages.context import RunContext
from persona_spark.stages.labeling import behaviour_source, label_stage

log = logging.getLogger("persona_spark")


def stored_graph(ctx: RunContext) -> PurchaseGraph:
    """The run's ``users``, ``items`` and ``edges`` tables."""
    return PurchaseGraph(*(ctx.store.read_table(t) for t in (tables.USERS, tables.ITEMS, tables.EDGES)))


def run_history(ctx: RunContext) -> RunHistory:
    """What earlier gplr runs left in the run's tables (None where a table does not exist yet)."""
    return RunHistory(*(ctx.table(t) for t in (tables.GPLR_PROTOTYPES, tables.PERSONAS, tables.PERSONA_HISTORY,
                                                tables.GPLR_RUNS, tables.PERSONA_REASONS)))


def gplr_stage(ctx: RunContext) -> dict:
    """Run GPLR: LLM labels for a budget of users, personas propagated to everyone -> ``personas``,
    then the run's refresh record (:func:`record_refresh`), its audit (``persona_audit``) and the run in MLflow
    (``mlflow.*``). A failed quality guard (``gplr.min_audit_micro_f1``) then ends it with ``QualityAlert`` (exit status 3).

    The summary's ``phases`` are seconds per phase, disjoint (the run's, then ``writes`` and ``refresh``);
    ``mlflow`` names the MLflow run, or says why there is none."""
    from persona_spark import gplr

    cfg, store, persona_set = ctx.cfg, ctx.store, ctx.persona_set
    graph, earlier, transactions = stored_graph(ctx), run_history(ctx), behaviour_source(ctx)
    labeler = cache.configured_labeler(cfg.labeling, store)
    if cfg.labeling.dry_run:
        return gplr.estimate_run(graph, transactions, ctx.gplr_settings,
                                 lambda wanted, kind: label_stage(ctx, wanted, kind, labeler))

    def label(requests: DataFrame, kind: str) -> DataFrame:
        """Labels through the run's caches: the library gets this callable, never the store."""
        return cache.label_entities(store, requests, persona_set, cfg.labeling, kind, labeler)

    started = time.perf_counter()
    tiles = stored_train_graph(ctx, len(persona_set))
    loading = {"graph": round(time.perf_counter() - started, 3)} if tiles is not None else {}  # else cut in the run
    try:
        run = gplr.run_gplr(graph, persona_set, label, ctx.gplr_settings, earlier, transactions, tiles)
    finally:
        if tiles is not None:
            tiles.release()
    started = time.perf_counter()
    store.merge_table(run.changed_personas, tables.PERSONAS, ["user_idx", "persona_idx"], delete_when="removed")
    store.write_table(run.prototypes, tables.GPLR_PROTOTYPES)
    store.write_table(run.record, tables.GPLR_RUNS, "append")
    if run.audit:
        store.write_table(ctx.spark.createDataFrame(run.audit, audit.AUDIT_SCHEMA), tables.PERSONA_AUDIT, "append")
    writes = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    refreshed = record_refresh(ctx, run.outcome, graph, earlier)
    phases = {**run.summary["phases"], **loading, "writes": writes, "refresh": round(time.perf_counter() - started, 3)}
    summary = {**run.summary, "phases": phases, "edge_tiles": "loaded" if tiles is not None else "cut in the run",
               "refresh": refreshed,
               "tables": locations(store, tables.PERSONAS, tables.PERSONA_HISTORY, tables.PERSONA_AUDIT)}
    summary["mlflow"] = tracking.log_gplr_run(cfg, summary)
    log.info("gplr: %s", summary)
    if run.alert:
        raise QualityAlert(run.alert, summary)
    return summary


def record_refresh(ctx: RunContext, outcome: RunPersonas, graph: PurchaseGraph | None = None,
                   earlier: RunHistory | None = None) -> dict:
    """What one gplr run leaves for the people who consume it: ``persona_history`` (one MERGE),
    ``persona_transitions`` and ``persona_flows`` against the previous run, ``persona_catalog``,
    ``persona_reasons`` and ``persona_calibration``. ``graph`` and ``earlier``: the run's tables as the
    gplr stage read them before the run (None: read now). Applying the same run again changes nothing."""
    cfg, store = ctx.cfg, ctx.store
    graph, earlier = graph or stored_graph(ctx), earlier or run_history(ctx)
    record = refresh.record_run(outcome, graph, persona_names(ctx), ctx.persona_set, earlier, cfg.refresh,
                                cfg.affinity, ctx.checkpoint_mode)
    run_id = outcome.run[0]
    by_run, to_run = {"run_id": run_id}, {"to_run_id": run_id}
    if record.history is not None:
        store.merge_table(record.history, tables.PERSONA_HISTORY, refresh.HISTORY_KEYS)
    if record.transitions is not None:
        write_slice(ctx, tables.PERSONA_TRANSITIONS, record.transitions, to_run, ["to_run_id", "persona_idx"])
        write_slice(ctx, tables.PERSONA_FLOWS, record.flows, to_run,
                    ["to_run_id", "from_persona_idx", "to_persona_idx"])
    write_slice(ctx, tables.PERSONA_CATALOG, record.catalog, by_run, ["run_id", "persona_idx"])
    if record.calibration is not None:
        write_slice(ctx, tables.PERSONA_CALIBRATION, record.calibration, by_run, ["run_id", "bin"])
    if record.reasons is not None:
        store.write_table(record.reasons, tables.PERSONA_REASONS)
    return record.summary


def reasons_stage(ctx: RunContext) -> dict:
    """``persona_reasons`` of the latest gplr run for the customers in ``refresh.explain`` (empty: every row):
    what ``gplr`` leaves to be asked for when ``refresh.reasons`` is off. Rows asked for again are replaced;
    an earlier run's rows are dropped, so the table holds the latest run's only."""
    cfg, store = ctx.cfg, ctx.store
    runs, personas = ctx.table(tables.GPLR_RUNS), ctx.table(tables.PERSONAS)
    if runs is None or personas is None:
        raise UserError("reasons: no gplr run in the tables yet; run `persona-spark gplr` first")
    run_id, graph, wanted = latest_runs(runs)[0]["run_id"], stored_graph(ctx), list(dict.fromkeys(cfg.refresh.explain))
    asked = None
    if wanted:  # the ids a user typed: few, so they and the ones found are compared on the driver
        asked = ctx.pin(graph.users.filter(F.col("customer_id").isin(wanted)).select("user_idx", "customer_id"))
        unknown = sorted(set(wanted) - {r.customer_id for r in asked.select("customer_id").collect()})
        if unknown:
            raise UserError(f"reasons: {len(unknown)} customer id(s) of refresh.explain not in users: "
                            f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    rows = ctx.pin(refresh.reasons(personas, graph, run_id, cfg.refresh, cfg.affinity.beta, cfg.affinity.weighted,
                                   asked))
    existing = ctx.table(tables.PERSONA_REASONS)
    if asked is None or existing is None or existing.filter(F.col("run_id") != run_id).limit(1).count():
        store.write_table(rows, tables.PERSONA_REASONS)
    else:  # the same run's personas: a row asked for again is the same key
        store.merge_table(rows, tables.PERSONA_REASONS, ["run_id", "user_idx", "persona_idx"])
    return {"run_id": run_id, "rows": rows.count(), "customers": len(wanted) or "all",
            "tables": locations(store, tables.PERSONA_REASONS)}


def affinity_stage(ctx: RunContext) -> dict:
    """Ψ from ``prototype_labels`` (user_idx, persona_idx (, weight)) over the train edges → ``affinity``.

    ``affinity`` is long: ``user_idx int, persona_idx int, score double``, non-zero scores only
    (users no prototype reaches have no rows). GPLR calls the library directly; this stage is for
    running the engine on its own (other label sources, parameter sweeps).
    """
    from persona_spark import affinity as affinity_lib

    cfg, store = ctx.cfg, ctx.store
    if not store.exists(tables.PROTOTYPE_LABELS):
        raise ValueError(f"affinity: table prototype_labels (user_idx, persona_idx[, weight]) not found under "
                         f"{store.location(tables.PROTOTYPE_LABELS)}")
    conf = cfg.affinity
    started = time.perf_counter()
    n_personas = persona_names(ctx).count()
    prototypes = affinity_lib.prototype_labels(store.read_table(tables.PROTOTYPE_LABELS), n_personas, conf.beta)
    trace: list[dict] = []
    graph = stored_train_graph(ctx, n_personas, trace)
    try:
        scores = affinity_lib.compute_affinity(graph or train_edges(store), prototypes, n_personas, conf, trace,
                                               cfg.spark.checkpoint)
        store.write_table(affinity_lib.affinity_long(scores), tables.AFFINITY)
    finally:
        if graph is not None:
            graph.release()
    version = store.version(tables.AFFINITY)
    written = store.read_table(tables.AFFINITY).agg(F.count(F.lit(1)).alias("rows"),
                                                    F.countDistinct("user_idx").alias("users")).first()
    summary = {"users_reached": written["users"], "rows": written["rows"], "personas": n_personas,
               "ell": conf.ell, "eps": conf.eps, "beta": conf.beta, "weighted": conf.weighted,
               "seconds": round(time.perf_counter() - started, 2), "phases": trace, "version": version,
               "tables": locations(store, tables.AFFINITY)}
    log.info("affinity: %s", {k: v for k, v in summary.items() if k != "phases"})
    return summary


def audience_stage(ctx: RunContext) -> dict:
    """Customers matching persona queries (audience.name + audience.query, or audience.defined) -> audience_members, audience_changes."""
    from persona_spark import audience as audience_lib

    cfg, store = ctx.cfg, ctx.store
    runs, personas, users, stored = (ctx.table(t) for t in (tables.GPLR_RUNS, tables.PERSONAS, tables.USERS,
                                                             tables.AUDIENCE_MEMBERS))
    built = audience_lib.build_audiences(cfg.audience, ctx.persona_set, runs, personas, users, stored,
                                         ctx.checkpoint_mode)
    done = {}
    for audience in built.audiences:
        spec = audience.spec
        keys, where = ["audience", "run_id", "user_idx"], {"audience": spec.name, "run_id": built.run_id}
        write_slice(ctx, tables.AUDIENCE_MEMBERS, audience.members, where, keys)
        write_slice(ctx, tables.AUDIENCE_CHANGES, audience.changes, where, keys)
        exported = None
        if spec.export_path:
            exported = spec.export_path.format(audience=spec.name, run_id=built.run_id, root=cfg.root)
            writer = audience.members.select("customer_id", "user_idx", "audience", "run_id").write.mode("overwrite")
            if spec.export_format == "csv":
                writer.option("header", True).csv(exported)
            else:
                writer.parquet(exported)
        done[spec.name] = {**audience.summary, "export": exported}
        log.info("audience %s: %s", spec.name, done[spec.name])
    return {"run_id": built.run_id, "audiences": done,
            "tables": locations(store, tables.AUDIENCE_MEMBERS, tables.AUDIENCE_CHANGES)}
