"""GPLR and what it leaves behind: personas, the refresh record of a run, Ψ alone, audiences."""

from __future__ import annotations

import logging
import time
from datetime import datetime

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from persona_spark import labeling, refresh, tables
from persona_spark.config import Config
from persona_spark.io import TableStore
from persona_spark.personas import load_persona_set
from persona_spark.stages import cache
from persona_spark.stages.common import (locations, persona_names, pin, prepare_checkpoints, read_if_exists, utc,
                                         write_slice)
from persona_spark.stages.labeling import label_conf_for, label_stage, user_requests

log = logging.getLogger("persona_spark")


def gplr_stage(cfg: Config, store: TableStore) -> dict:
    """Run GPLR: LLM labels for a budget of users, personas propagated to everyone -> ``personas``."""
    from persona_spark import gplr

    started = time.perf_counter()
    persona_set = load_persona_set(cfg.personas)
    users, items, edges = (store.read_table(t) for t in (tables.USERS, tables.ITEMS, tables.EDGES))
    prepare_checkpoints(cfg, store.spark)
    train = pin(cfg, edges.filter(F.col("split") == "train"))
    requests = pin(cfg, user_requests(cfg, store, train, items))
    if cfg.labeling.dry_run:
        item_requests = labeling.build_item_requests(items) if cfg.gplr.item_signal else None
        return gplr.estimate_run(users, requests, item_requests, cfg.gplr,
                                 lambda wanted, kind: label_stage(cfg, store, wanted, kind))

    def label_users(selected: DataFrame) -> DataFrame:
        wanted = requests.join(selected.select("user_idx"), "user_idx", "left_semi")
        return cache.label_entities(store, wanted, persona_set, cfg.labeling, "user")

    item_vectors = None
    if cfg.gplr.item_signal:
        item_rows = cache.label_entities(store, labeling.build_item_requests(items), persona_set,
                                         label_conf_for(cfg, "item"), "item")
        item_vectors = pin(cfg, gplr.item_vectors_from_labels(item_rows, len(persona_set)))
    reusable = None
    if store.exists(tables.GPLR_PROTOTYPES):
        previous = store.read_table(tables.GPLR_PROTOTYPES).filter(F.col("status") == "ok")
        reusable = previous.join(requests, ["user_idx", "history_hash"], "left_semi").select("user_idx")
    result = gplr.GPLR(users, train, label_users, len(persona_set), cfg.gplr, cfg.affinity, item_vectors, reusable).run()

    run = refresh.new_run()
    personas = pin(cfg, refresh.with_percentile(result.personas))
    # pinned before the merge rewrites its source
    changed = pin(cfg, refresh.changed_rows(read_if_exists(store, tables.PERSONAS), personas, ["user_idx", "persona_idx"]))
    store.merge_table(changed, tables.PERSONAS, ["user_idx", "persona_idx"], delete_when="removed")
    asked = result.asked.join(requests.select("user_idx", "history_hash"), "user_idx", "left")
    store.write_table(asked, tables.GPLR_PROTOTYPES)
    record = gplr.run_record(result, run, cfg.gplr, cfg.affinity, persona_set.version, cfg.labeling.backend,
                             time.perf_counter() - started)
    store.write_table(store.spark.createDataFrame([record]), tables.GPLR_RUNS, "append")
    recorded = record_refresh(cfg, store, personas, run, result.model.reliability)
    counts = {r["source"]: r["count"] for r in personas.groupBy("source").count().collect()}
    summary = {**{k: v for k, v in record.items() if k not in ("details", "run_ts")}, "run_ts": run[1].isoformat(),
               "per_round": result.rounds, "persona_rows": counts, "rows_rewritten": changed.count(),
               "assignment_cv_micro_f1": result.model.cv_micro_f1, "refresh": recorded,
               "tables": locations(store, tables.PERSONAS, tables.PERSONA_HISTORY)}
    log.info("gplr: %s", summary)
    return summary


def record_refresh(cfg: Config, store: TableStore, personas: DataFrame, run: tuple[str, datetime],
                   reliability: list[dict]) -> dict:
    """What one gplr run leaves for the people who consume it: ``persona_history`` (one MERGE),
    ``persona_transitions`` and ``persona_flows`` against the previous run, ``persona_catalog``,
    ``persona_reasons`` and ``persona_calibration``. Applying the same run again changes nothing."""
    run_id, run_ts = run
    conf, spark = cfg.refresh, store.spark
    users, items, edges = (store.read_table(t) for t in (tables.USERS, tables.ITEMS, tables.EDGES))
    names = persona_names(cfg, store)
    history = read_if_exists(store, tables.PERSONA_HISTORY)
    if history is not None:
        later = history.filter((F.col("valid_from") > F.lit(run_ts)) | (F.col("valid_to") > F.lit(run_ts)))
        if later.limit(1).count():
            raise ValueError(f"persona_history already holds a run after {run_ts.isoformat()} ({run_id}): "
                             "runs are applied in time order")
    current = refresh.named_personas(personas, users, names)
    changes = pin(cfg, refresh.history_changes(history, current, run_id, run_ts))
    changed = changes.count()
    if changed:
        store.merge_table(changes, tables.PERSONA_HISTORY, refresh.HISTORY_KEYS)
    summary = {"run_id": run_id, "history_rows_merged": changed}

    earlier = store.read_table(tables.GPLR_RUNS).filter(F.col("run_ts") < F.lit(run_ts))
    previous = refresh.latest_runs(earlier)
    if previous and history is not None:
        history = store.read_table(tables.PERSONA_HISTORY)
        before = (previous[0]["run_id"], utc(previous[0]["run_ts"]))
        if refresh.personas_as_of(history, before[1]).limit(1).count():
            drift = pin(cfg, refresh.transitions(history, names, before, run))
            write_slice(cfg, store, tables.PERSONA_TRANSITIONS, drift, {"to_run_id": run_id}, ["to_run_id", "persona_idx"])
            write_slice(cfg, store, tables.PERSONA_FLOWS, refresh.flows(history, before, run), {"to_run_id": run_id},
                        ["to_run_id", "from_persona_idx", "to_persona_idx"])
            first = drift.first()
            summary.update(previous_run_id=before[0], customers_changed=first["customers_changed"],
                           share_changed=round(first["share_changed"], 4))

    persona_set = load_persona_set(cfg.personas).to_dataframe(spark)
    write_slice(cfg, store, tables.PERSONA_CATALOG,
                refresh.catalog(personas, persona_set, edges, items, run_id, conf.catalog_products),
                {"run_id": run_id}, ["run_id", "persona_idx"])
    if reliability:
        bins = spark.createDataFrame([{"run_id": run_id, **row} for row in reliability],
                                     "run_id string, bin int, lower double, upper double, pairs long, "
                                     "mean_predicted double, observed double")
        write_slice(cfg, store, tables.PERSONA_CALIBRATION, bins, {"run_id": run_id}, ["run_id", "bin"])
    done_before = store.exists(tables.PERSONA_REASONS) and store.read_table(tables.PERSONA_REASONS).filter(
        F.col("run_id") == run_id).limit(1).count()
    if conf.reasons and not done_before:  # the latest run's reasons replace the previous run's
        why = refresh.reasons(personas, edges, items, users, run_id, n_items=conf.reason_items,
                              n_neighbours=conf.reason_neighbours, trace_items=conf.trace_items,
                              trace_buyers=conf.trace_buyers, beta=cfg.affinity.beta, weighted=cfg.affinity.weighted)
        store.write_table(why, tables.PERSONA_REASONS)
    return summary


def affinity_stage(cfg: Config, store: TableStore) -> dict:
    """Ψ from ``prototype_labels`` (user_idx, persona_idx (, weight)) over the train edges → ``affinity``.

    ``affinity`` is long: ``user_idx int, persona_idx int, score double``, non-zero scores only
    (users no prototype reaches have no rows). GPLR calls the library directly; this stage is for
    running the engine on its own (other label sources, parameter sweeps).
    """
    from persona_spark import affinity as affinity_lib

    if not store.exists(tables.PROTOTYPE_LABELS):
        raise ValueError(f"affinity: table prototype_labels (user_idx, persona_idx[, weight]) not found under "
                         f"{store.location(tables.PROTOTYPE_LABELS)}")
    conf = cfg.affinity
    prepare_checkpoints(cfg, store.spark)
    started = time.perf_counter()
    n_personas = persona_names(cfg, store).count()
    train = store.read_table(tables.EDGES).filter(F.col("split") == "train")
    prototypes = affinity_lib.prototype_labels(store.read_table(tables.PROTOTYPE_LABELS), n_personas, conf.beta)
    trace: list[dict] = []
    scores = affinity_lib.compute_affinity(train, prototypes, n_personas, conf, trace)
    store.write_table(affinity_lib.affinity_long(scores), tables.AFFINITY)
    version = store.version(tables.AFFINITY)
    written = store.read_table(tables.AFFINITY).agg(F.count(F.lit(1)).alias("rows"),
                                                    F.countDistinct("user_idx").alias("users")).first()
    summary = {"users_reached": written["users"], "rows": written["rows"], "personas": n_personas,
               "ell": conf.ell, "eps": conf.eps, "beta": conf.beta, "weighted": conf.weighted,
               "seconds": round(time.perf_counter() - started, 2), "phases": trace, "version": version,
               "tables": locations(store, tables.AFFINITY)}
    log.info("affinity: %s", {k: v for k, v in summary.items() if k != "phases"})
    return summary


def audience_stage(cfg: Config, store: TableStore) -> dict:
    """Customers matching persona queries (audience.name + audience.query, or audience.defined) -> audience_members, audience_changes."""
    from persona_spark import audience as audience_lib
    from persona_spark.explore import persona_sets

    try:
        specs = cfg.audience.selected()
    except ValueError as error:
        raise audience_lib.AudienceError(str(error)) from None
    persona_set = load_persona_set(cfg.personas)
    queries = [(spec, audience_lib.parse(spec.query, persona_set)) for spec in specs]  # every query checked first
    if not (store.exists(tables.GPLR_RUNS) and store.exists(tables.PERSONAS)):
        raise audience_lib.AudienceError("audience: no personas yet: run persona-spark gplr first")
    latest = refresh.latest_runs(store.read_table(tables.GPLR_RUNS))[0]
    run_id, run_ts = latest["run_id"], utc(latest["run_ts"])
    sets = pin(cfg, persona_sets(store.read_table(tables.PERSONAS)))
    users = store.read_table(tables.USERS).select("user_idx", "customer_id")
    done = {}
    for spec, query in queries:
        members = pin(cfg, audience_lib.members(sets, query).join(users, "user_idx", "left")
                      .select(F.lit(spec.name).alias("audience"), F.lit(run_id).alias("run_id"),
                              F.lit(run_ts).cast("timestamp").alias("run_ts"), F.lit(spec.query).alias("query"),
                              "user_idx", "customer_id"))
        previous_members, previous_run_id = None, None
        if store.exists(tables.AUDIENCE_MEMBERS):
            earlier = store.read_table(tables.AUDIENCE_MEMBERS).filter(
                (F.col("audience") == spec.name) & (F.col("run_ts") < F.lit(run_ts)))
            last = refresh.latest_runs(earlier.select("run_id", "run_ts").distinct())
            if last:
                previous_run_id = last[0]["run_id"]
                previous_members = earlier.filter(F.col("run_id") == previous_run_id)
        diff = pin(cfg, audience_lib.changes(previous_members, members, spec.name, run_id, previous_run_id))
        keys, where = ["audience", "run_id", "user_idx"], {"audience": spec.name, "run_id": run_id}
        write_slice(cfg, store, tables.AUDIENCE_MEMBERS, members, where, keys)
        write_slice(cfg, store, tables.AUDIENCE_CHANGES, diff, where, keys)
        exported = None
        if spec.export_path:
            exported = spec.export_path.format(audience=spec.name, run_id=run_id, root=cfg.root)
            writer = members.select("customer_id", "user_idx", "audience", "run_id").write.mode("overwrite")
            if spec.export_format == "csv":
                writer.option("header", True).csv(exported)
            else:
                writer.parquet(exported)
        moved = {r["change"]: r["count"] for r in diff.groupBy("change").count().collect()}
        done[spec.name] = {"query": spec.query, "members": members.count(), "added": moved.get("added", 0),
                           "removed": moved.get("removed", 0), "previous_run_id": previous_run_id, "export": exported}
        log.info("audience %s: %s", spec.name, done[spec.name])
    return {"run_id": run_id, "audiences": done, "tables": locations(store, tables.AUDIENCE_MEMBERS, tables.AUDIENCE_CHANGES)}
