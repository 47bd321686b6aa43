"""Stage functions: the edge where tables are read, library transforms applied, tables written.

Each stage is ``fn(cfg, store) -> summary dict``. The CLI, ``jobs/*.py`` and the Databricks
bundle call exactly these. Library modules stay pure ``DataFrame -> DataFrame``.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Callable

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from persona_spark import graph, ingest, labeling, refresh, storage
from persona_spark import report as report_lib
from persona_spark import segment as segment_lib
from persona_spark.config import Config
from persona_spark.generate import generate as generate_lines
from persona_spark.io import TableStore
from persona_spark.labeling import signals
from persona_spark.personas import load_persona_set
from persona_spark.session import ensure_checkpoint_dir

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
    _ensure_checkpoint_dir(cfg, store)
    users, items, edges = _pin(cfg, users), _pin(cfg, items), _pin(cfg, edges)
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


def _persona_names(cfg: Config, store: TableStore) -> DataFrame:
    """``persona_idx, name`` of the run: its ``persona_set`` table, else the configured persona set."""
    if store.exists("persona_set"):
        return store.read_table("persona_set").select("persona_idx", "name")
    return load_persona_set(cfg.personas).to_dataframe(store.spark).select("persona_idx", "name")


def segment_stage(cfg: Config, store: TableStore) -> dict:
    """Segment customers on personas (and RFM when transactions exist): segments, silhouette, summary."""
    conf = cfg.segment
    personas = store.read_table("personas")
    names = _persona_names(cfg, store)
    representations = {"personas": segment_lib.persona_vectors(personas, names.count())}
    rfm_parts = []
    if store.exists("transactions") and store.exists("users"):
        users = store.read_table("users").select("customer_id", "user_idx")
        rfm = segment_lib.rfm_vectors(store.read_table("transactions"), "customer_id", conf.rfm_buckets)
        rfm_parts = [part.as_row() for part in rfm.parts]
        for part in rfm.parts:
            if not part.computed:
                log.warning("segment: RFM without its %s part: %s", part.part, part.source)
        representations["rfm"] = rfm.features.join(users, "customer_id").select("user_idx", "features")
        store.write_table(store.spark.createDataFrame(rfm_parts, "part string, computed boolean, source string"),
                          "rfm_parts")
    else:
        log.info("segment: no transactions/users tables, so no RFM baseline")
    results = {
        name: segment_lib.segment_users(features, conf.ks, conf.pca_components, conf.seed, conf.max_iter)
        for name, features in representations.items()
    }
    try:
        tagged = [(name, F.lit(name).alias("representation")) for name in results]
        store.write_table(
            _union([results[n].assignments.select(tag, "user_idx", "k", "segment") for n, tag in tagged]), "segments"
        )
        store.write_table(_union([results[n].points().select(tag, "user_idx", "x", "y", "z") for n, tag in tagged]),
                          "segment_points")
        silhouettes = [{"representation": n, **row} for n, result in results.items() for row in result.silhouettes]
        store.write_table(
            store.spark.createDataFrame(silhouettes, "representation string, k int, clusters int, silhouette double"),
            "silhouette",
        )
    finally:
        for result in results.values():
            result.release()
    persona_segments = store.read_table("segments").filter(F.col("representation") == "personas")
    summary = segment_lib.describe_segments(
        persona_segments.select("user_idx", "k", "segment"), personas, store.read_table("edges"),
        store.read_table("items"), names, conf.top_personas, conf.top_items,
    )
    store.write_table(summary, "segment_summary")
    return {"silhouette": silhouettes, "rfm_parts": rfm_parts,
            "users": persona_segments.select("user_idx").distinct().count(),
            "tables": {t: store.location(t) for t in ("segments", "segment_points", "silhouette", "segment_summary")}}


def _union(frames: list[DataFrame]) -> DataFrame:
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out


def robustness_stage(cfg: Config, store: TableStore) -> dict:
    """Count customers whose personas / RFM deciles stay the same from the first to the second half of
    their orders; each half is labelled by the configured labeling backend (not cached in user_labels)."""
    if cfg.labeling.dry_run:
        raise ValueError("robustness has no dry run: it labels each customer's two halves directly (not through "
                         "the cache); price it with label-users, or set segment.robustness_customers to a sample")
    conf = cfg.segment
    transactions = store.read_table("transactions")
    if conf.robustness_customers is not None:
        customers = transactions.select("customer_id").distinct()
        sample = customers.orderBy(F.xxhash64(F.lit(conf.seed), "customer_id"), "customer_id").limit(conf.robustness_customers)
        transactions = transactions.join(sample, "customer_id", "left_semi")
    backend = labeling.make_backend(cfg.labeling, load_persona_set(cfg.personas), "user", store)
    labeler = segment_lib.period_labeler(backend.label, store.read_table("users"), store.read_table("items"))
    result = segment_lib.robustness(transactions, labeler, "customer_id", conf.rfm_buckets)
    store.write_table(result, "robustness")
    return {"robustness": [row.asDict() for row in store.read_table("robustness").collect()],
            "table": store.location("robustness")}


def report_stage(cfg: Config, store: TableStore) -> dict:
    """Render the HTML report (and its PNG figures) from whichever tables of the run exist."""
    tables = {name: store.read_table(name) if store.exists(name) else None for name in report_lib.REPORT_TABLES}
    names = {row["persona_idx"]: row["name"] for row in _persona_names(cfg, store).collect()}
    from persona_spark.labeling.pricing import price_table

    result = report_lib.build_report(tables, cfg.report.path, names, cfg.report, price_table(cfg.labeling.openai))
    return {"report": result.path, "figures": result.figures, "sections": result.sections}


def label_users_stage(cfg: Config, store: TableStore) -> dict:
    """Label users (a sample, all, or those listed in a table) with the configured backend into ``user_labels``."""
    edges = store.read_table("edges")
    requests = _user_requests(cfg, store, edges.filter(F.col("split") == "train"), store.read_table("items"))
    return _label_stage(cfg, store, labeling.select_entities(requests, cfg.labeling.users, "user_idx", store), "user")


def _user_requests(cfg: Config, store: TableStore, train: DataFrame, items: DataFrame) -> DataFrame:
    """User label requests; for the embedding labeler with the price / basket / cadence measures it
    weighs, when the source's ``transactions`` are here (a paper split has none)."""
    requests = labeling.build_user_histories(train, items, labeling.history_order(cfg.labeling))
    if cfg.labeling.backend != "embedding" or not store.exists("transactions"):
        return requests
    measures = signals.behaviour_measures(store.read_table("transactions"), store.read_table("users"), items, train)
    return signals.with_behaviour_measures(requests, measures)


def label_items_stage(cfg: Config, store: TableStore) -> dict:
    """Label items (all by default) with the personas likely to buy them into ``item_labels``."""
    requests = labeling.build_item_requests(store.read_table("items"))
    return _label_stage(cfg, store, labeling.select_entities(requests, cfg.labeling.items, "item_idx", store), "item")


def _ensure_checkpoint_dir(cfg: Config, store: TableStore) -> None:
    """Reliable checkpoints need a checkpoint directory: ``spark.checkpoint_dir`` unless one is set."""
    if cfg.affinity.checkpoint == "reliable":
        ensure_checkpoint_dir(store.spark, cfg.spark.checkpoint_dir)


def _pin(cfg: Config, df: DataFrame) -> DataFrame:
    """Materialize an intermediate result the way ``affinity.checkpoint`` says (reliable: survives a lost executor)."""
    from persona_spark.affinity import checkpoint

    return checkpoint(df, cfg.affinity.checkpoint)


def _label_stage(cfg: Config, store: TableStore, requests: DataFrame, kind: str) -> dict:
    try:
        labels = labeling.label_entities(store, requests, load_persona_set(cfg.personas), _label_conf_for(cfg, kind), kind)
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
    histories = labeling.build_user_histories(store.read_table("edges"), store.read_table("items"), labeling.history_order(conf))
    generator = PersonaSetGenerator(conf, histories.count())
    groups = generator.sample(histories)
    if conf.dry_run:
        estimate = generator.estimate(groups)
        log.info("generate-personas estimate: %s", estimate)
        return {"dry_run": True, **estimate}
    persona_set, stats = generator.generate(groups, resolve_api_key(conf.openai, store.spark), store)
    path = write_persona_set(persona_set, conf.generate.output, generator.metadata(stats))
    table = persona_set.to_dataframe(store.spark).select(
        "*", F.lit(persona_set.title).alias("title"), F.lit(conf.openai.model).alias("model"),
        F.current_timestamp().alias("created"),
    )
    store.write_table(table, "generated_persona_sets", mode="append")
    return {**stats, "file": str(path), "table": store.location("generated_persona_sets")}



def _label_conf_for(cfg: Config, kind: str):
    """Labeling settings for users or items (a recorded backend replays a different file for items)."""
    conf = cfg.labeling
    if kind == "item" and conf.backend == "recorded":
        recorded = conf.recorded.model_copy(update={"path": conf.recorded.item_path, "table": conf.recorded.item_table})
        conf = conf.model_copy(update={"recorded": recorded})
    return conf


def gplr_stage(cfg: Config, store: TableStore) -> dict:
    """Run GPLR: LLM labels for a budget of users, personas propagated to everyone -> ``personas``."""
    import time

    from persona_spark.gplr import GPLR, item_vectors_from_labels

    started = time.perf_counter()
    persona_set = load_persona_set(cfg.personas)
    users, items, edges = (store.read_table(t) for t in ("users", "items", "edges"))
    _ensure_checkpoint_dir(cfg, store)
    train = _pin(cfg, edges.filter(F.col("split") == "train"))
    requests = _pin(cfg, _user_requests(cfg, store, train, items))

    def label_users(selected: DataFrame) -> DataFrame:
        wanted = requests.join(selected.select("user_idx"), "user_idx", "left_semi")
        return labeling.label_entities(store, wanted, persona_set, cfg.labeling, "user")

    if cfg.labeling.dry_run:
        return _gplr_estimate(cfg, store, users, items, requests)
    item_vectors = None
    if cfg.gplr.item_signal:
        item_rows = labeling.label_entities(
            store, labeling.build_item_requests(items), persona_set, _label_conf_for(cfg, "item"), "item"
        )
        item_vectors = _pin(cfg, item_vectors_from_labels(item_rows, len(persona_set)))
    reusable = None
    if store.exists("gplr_prototypes"):
        previous = store.read_table("gplr_prototypes").filter(F.col("status") == "ok")
        reusable = previous.join(requests, ["user_idx", "history_hash"], "left_semi").select("user_idx")
    run = GPLR(users, train, label_users, len(persona_set), cfg.gplr, cfg.affinity, item_vectors, reusable)
    result = run.run()

    run_id, run_ts = refresh.new_run()
    personas = _pin(cfg, refresh.with_percentile(result.personas))
    changed = _pin(cfg, _changed_persona_rows(store, personas))  # pinned before the merge rewrites its source
    store.merge_table(changed, "personas", ["user_idx", "persona_idx"], delete_when="removed")
    asked = result.asked.join(requests.select("user_idx", "history_hash"), "user_idx", "left")
    store.write_table(asked, "gplr_prototypes")
    record = {
        "run_id": run_id, "run_ts": run_ts, "budget": result.budget, "rounds": cfg.gplr.rounds,
        "sampling": cfg.gplr.sampling, "assignment": cfg.gplr.assignment, "seed": cfg.gplr.seed,
        "eps": cfg.affinity.eps, "ell": cfg.affinity.ell, "beta": cfg.affinity.beta,
        "persona_set_version": persona_set.version, "labeling_backend": cfg.labeling.backend,
        **{f"{kind}_tokens": sum(r[f"{kind}_tokens"] for r in result.rounds if r["sampling"] != "reused")
           for kind in ("prompt", "completion")},
        "details": json.dumps(result.record()), "seconds": round(time.perf_counter() - started, 2),
    }
    store.write_table(store.spark.createDataFrame([record]), "gplr_runs", "append")
    recorded = record_refresh(cfg, store, personas, (run_id, run_ts), result.model.reliability)
    counts = {r["source"]: r["count"] for r in personas.groupBy("source").count().collect()}
    summary = {**{k: v for k, v in record.items() if k not in ("details", "run_ts")}, "run_ts": run_ts.isoformat(),
               "per_round": result.rounds, "persona_rows": counts, "rows_rewritten": changed.count(),
               "assignment_cv_micro_f1": result.model.cv_micro_f1, "refresh": recorded,
               "tables": {"personas": store.location("personas"), "persona_history": store.location("persona_history")}}
    log.info("gplr: %s", summary)
    return summary


def _utc(ts: datetime) -> datetime:
    """A timestamp read back from Spark (naive, local time) as an aware UTC datetime."""
    return ts.astimezone(timezone.utc)


def _write_slice(store: TableStore, name: str, rows: DataFrame, where: dict[str, str], keys: list[str]) -> bool:
    """Make ``rows`` the content of the slice ``where`` (column -> value) of table ``name``.

    A new slice is appended (Spark writes the files in parallel); an existing one is MERGEd as
    changed rows plus tombstones, so a rerun commits only what differs — nothing when nothing does.
    Returns whether anything was committed.
    """
    if not store.exists(name):
        store.write_table(rows, name)
        return True
    existing = store.read_table(name)
    for column, value in where.items():
        existing = existing.filter(F.col(column) == F.lit(value))
    if existing.limit(1).count() == 0:
        store.write_table(rows, name, "append")
        return True
    changed = rows.exceptAll(existing.select(*rows.columns)).withColumn("removed", F.lit(False))
    gone = existing.join(rows.select(*keys), keys, "left_anti").select(*rows.columns).withColumn("removed", F.lit(True))
    delta = changed.unionByName(gone).localCheckpoint()
    if delta.limit(1).count() == 0:
        return False
    store.merge_table(delta, name, keys, delete_when="removed")
    return True


def record_refresh(cfg: Config, store: TableStore, personas: DataFrame, run: tuple[str, datetime],
                   reliability: list[dict]) -> dict:
    """What one gplr run leaves for the people who consume it: ``persona_history`` (one MERGE),
    ``persona_transitions`` and ``persona_flows`` against the previous run, ``persona_catalog``,
    ``persona_reasons`` and ``persona_calibration``. Applying the same run again changes nothing."""
    run_id, run_ts = run
    conf, spark = cfg.refresh, store.spark
    users, items, edges = (store.read_table(t) for t in ("users", "items", "edges"))
    names = _persona_names(cfg, store)
    history = store.read_table("persona_history") if store.exists("persona_history") else None
    if history is not None:
        later = history.filter((F.col("valid_from") > F.lit(run_ts)) | (F.col("valid_to") > F.lit(run_ts)))
        if later.limit(1).count():
            raise ValueError(f"persona_history already holds a run after {run_ts.isoformat()} ({run_id}): "
                             "runs are applied in time order")
    current = refresh.named_personas(personas, users, names)
    changes = _pin(cfg, refresh.history_changes(history, current, run_id, run_ts))
    changed = changes.count()
    if changed:
        store.merge_table(changes, "persona_history", refresh.HISTORY_KEYS)
    summary = {"run_id": run_id, "history_rows_merged": changed}

    earlier = store.read_table("gplr_runs").filter(F.col("run_ts") < F.lit(run_ts))
    previous = refresh.latest_runs(earlier)
    if previous and history is not None:
        history = store.read_table("persona_history")
        before = (previous[0]["run_id"], _utc(previous[0]["run_ts"]))
        if refresh.personas_as_of(history, before[1]).limit(1).count():
            drift = _pin(cfg, refresh.transitions(history, names, before, run))
            _write_slice(store, "persona_transitions", drift, {"to_run_id": run_id}, ["to_run_id", "persona_idx"])
            _write_slice(store, "persona_flows", refresh.flows(history, before, run), {"to_run_id": run_id},
                         ["to_run_id", "from_persona_idx", "to_persona_idx"])
            first = drift.first()
            summary.update(previous_run_id=before[0], customers_changed=first["customers_changed"],
                           share_changed=round(first["share_changed"], 4))

    persona_set = load_persona_set(cfg.personas).to_dataframe(spark)
    _write_slice(store, "persona_catalog", refresh.catalog(personas, persona_set, edges, items, run_id, conf.catalog_products),
                 {"run_id": run_id}, ["run_id", "persona_idx"])
    if reliability:
        bins = spark.createDataFrame([{"run_id": run_id, **row} for row in reliability],
                                     "run_id string, bin int, lower double, upper double, pairs long, "
                                     "mean_predicted double, observed double")
        _write_slice(store, "persona_calibration", bins, {"run_id": run_id}, ["run_id", "bin"])
    done_before = store.exists("persona_reasons") and store.read_table("persona_reasons").filter(
        F.col("run_id") == run_id).limit(1).count()
    if conf.reasons and not done_before:  # the latest run's reasons replace the previous run's
        why = refresh.reasons(personas, edges, items, users, run_id, n_items=conf.reason_items,
                              n_neighbours=conf.reason_neighbours, trace_items=conf.trace_items,
                              trace_buyers=conf.trace_buyers, beta=cfg.affinity.beta, weighted=cfg.affinity.weighted)
        store.write_table(why, "persona_reasons")
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
    if not (store.exists("gplr_runs") and store.exists("personas")):
        raise audience_lib.AudienceError("audience: no personas yet: run persona-spark gplr first")
    latest = refresh.latest_runs(store.read_table("gplr_runs"))[0]
    run_id, run_ts = latest["run_id"], _utc(latest["run_ts"])
    sets = _pin(cfg, persona_sets(store.read_table("personas")))
    users = store.read_table("users").select("user_idx", "customer_id")
    done = {}
    for spec, query in queries:
        members = _pin(cfg, audience_lib.members(sets, query).join(users, "user_idx", "left")
                       .select(F.lit(spec.name).alias("audience"), F.lit(run_id).alias("run_id"),
                               F.lit(run_ts).cast("timestamp").alias("run_ts"), F.lit(spec.query).alias("query"),
                               "user_idx", "customer_id"))
        previous_members, previous_run_id = None, None
        if store.exists("audience_members"):
            earlier = store.read_table("audience_members").filter(
                (F.col("audience") == spec.name) & (F.col("run_ts") < F.lit(run_ts)))
            last = refresh.latest_runs(earlier.select("run_id", "run_ts").distinct())
            if last:
                previous_run_id = last[0]["run_id"]
                previous_members = earlier.filter(F.col("run_id") == previous_run_id)
        diff = _pin(cfg, audience_lib.changes(previous_members, members, spec.name, run_id, previous_run_id))
        keys, where = ["audience", "run_id", "user_idx"], {"audience": spec.name, "run_id": run_id}
        _write_slice(store, "audience_members", members, where, keys)
        _write_slice(store, "audience_changes", diff, where, keys)
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
    return {"run_id": run_id, "audiences": done,
            "tables": {t: store.location(t) for t in ("audience_members", "audience_changes")}}


def affinity_stage(cfg: Config, store: TableStore) -> dict:
    """Ψ from ``prototype_labels`` (user_idx, persona_idx (, weight)) over the train edges → ``affinity``.

    ``affinity`` is long: ``user_idx int, persona_idx int, score double``, non-zero scores only
    (users no prototype reaches have no rows). GPLR calls the library directly; this stage is for
    running the engine on its own (other label sources, parameter sweeps).
    """
    import time

    from persona_spark import affinity as affinity_lib

    if not store.exists("prototype_labels"):
        raise ValueError(f"affinity: table prototype_labels (user_idx, persona_idx[, weight]) not found under "
                         f"{store.location('prototype_labels')}")
    conf = cfg.affinity
    _ensure_checkpoint_dir(cfg, store)
    started = time.perf_counter()
    n_personas = _persona_names(cfg, store).count()
    train = store.read_table("edges").filter(F.col("split") == "train")
    prototypes = affinity_lib.prototype_labels(store.read_table("prototype_labels"), n_personas, conf.beta)
    trace: list[dict] = []
    scores = affinity_lib.compute_affinity(train, prototypes, n_personas, conf, trace)
    version = store.write_table(affinity_lib.affinity_long(scores), "affinity")
    written = store.read_table("affinity").agg(F.count(F.lit(1)).alias("rows"),
                                               F.countDistinct("user_idx").alias("users")).first()
    summary = {"users_reached": written["users"], "rows": written["rows"], "personas": n_personas,
               "ell": conf.ell, "eps": conf.eps, "beta": conf.beta, "weighted": conf.weighted,
               "seconds": round(time.perf_counter() - started, 2), "phases": trace, "version": version,
               "tables": {"affinity": store.location("affinity")}}
    log.info("affinity: %s", {k: v for k, v in summary.items() if k != "phases"})
    return summary


def _gplr_estimate(cfg: Config, store: TableStore, users, items, requests) -> dict:
    """What a GPLR run would pay, nothing called: the items (once) and ``budget`` users. Which users
    DU sampling picks is unknown before round 1, so a random sample of that size stands in for them."""
    from persona_spark.gplr import budget_size
    from persona_spark.sampling import pick_random

    budget = budget_size(cfg.gplr.budget, users.count())
    sample = pick_random(users.select("user_idx"), budget, cfg.gplr.seed)
    result = {"dry_run": True, "budget": budget,
              "users": _label_stage(cfg, store, requests.join(sample, "user_idx", "left_semi"), "user")}
    if cfg.gplr.item_signal:
        result["items"] = _label_stage(cfg, store, labeling.build_item_requests(items), "item")
    for key in ("cost_expected_usd", "cost_max_usd", "prompt_tokens"):
        result[key] = round(sum(part.get(key, 0) for part in (result["users"], result.get("items", {}))), 4)
    return result


def _changed_persona_rows(store: TableStore, personas: DataFrame) -> DataFrame:
    """New/changed rows plus tombstones for rows that disappeared: only these are rewritten."""
    fresh = personas.withColumn("removed", F.lit(False))
    if not store.exists("personas"):
        return fresh
    old = store.read_table("personas")
    changed = personas.exceptAll(old.select(*personas.columns)).withColumn("removed", F.lit(False))
    gone = old.join(personas, ["user_idx", "persona_idx"], "left_anti").withColumn("removed", F.lit(True))
    return changed.unionByName(gone.select(*fresh.columns))


def evaluate_stage(cfg: Config, store: TableStore) -> dict:
    """Score ``personas`` against a reference table on users the run did not label; print table + JSON."""
    from persona_spark import evaluate

    reference = store.read_table(cfg.evaluate.reference_table)
    if "user_idx" not in reference.columns:
        reference = reference.join(store.read_table("users"), "customer_id").select("user_idx", "persona_idx")
    asked = store.read_table("gplr_prototypes")
    eval_users = _pin(cfg, evaluate.evaluation_users(reference, asked))
    personas = store.read_table("personas")
    prototypes = personas.filter(F.col("source") == "llm")
    summary, per_persona = evaluate.evaluate_sets(personas, reference, eval_users)
    baseline, _ = evaluate.evaluate_sets(
        evaluate.popular_personas(prototypes, eval_users, cfg.evaluate.baseline_k), reference, eval_users
    )
    run_id = refresh.latest_runs(store.read_table("gplr_runs"))[0]["run_id"]
    result = {"run_id": run_id, "reference": cfg.evaluate.reference_table, "users": eval_users.count(),
              **{k: round(v, 4) for k, v in summary.items()}, "baseline_micro_f1": round(baseline["micro_f1"], 4)}
    spark = store.spark
    store.write_table(spark.createDataFrame([{**result, "method": cfg.gplr.assignment}]), "evaluation", "append")
    per_persona.insert(0, "run_id", run_id)
    store.write_table(spark.createDataFrame(per_persona), "evaluation_per_persona", "append")
    persona_set = load_persona_set(cfg.personas)
    per_persona["name"] = [persona_set.names[i] if i < len(persona_set) else str(i) for i in per_persona.persona_idx]
    print(per_persona[["persona_idx", "name", "actual", "predicted", "precision", "recall", "f1"]].to_string(
        index=False, float_format=lambda v: f"{v:.3f}"))
    return result


def export_stage(cfg: Config, store: TableStore) -> dict:
    """Write the recommender's directory (train/test edges, user/item personas, index maps) from tables."""
    from persona_spark.recommend import export

    conf = cfg.recommend
    spark = store.spark
    edges, users, items = (store.read_table(t) for t in ("edges", "users", "items"))
    if not store.exists(conf.user_personas_table):
        raise ValueError(f"export: table {conf.user_personas_table!r} not found (run gplr, or set "
                         "recommend.user_personas_table=reference_personas for the paper split's GPT-4 labels)")
    item_source = next((t for t in ("item_labels", "reference_item_personas") if store.exists(t)), None)
    item_personas = (export.item_persona_edges(store.read_table(item_source)) if item_source else
                     spark.createDataFrame([], "item_idx int, persona_idx int, weight float"))
    names = _persona_names(cfg, store)
    persona_names = tuple(r["name"] for r in names.orderBy("persona_idx").collect())
    bounds = {"users": users.agg(F.max("user_idx")).first()[0], "items": items.agg(F.max("item_idx")).first()[0]}
    parts = {
        "train": export.interaction_pairs(edges, "train"),
        "test": export.interaction_pairs(edges, "test"),
        "user_personas": export.user_persona_edges(store.read_table(conf.user_personas_table), conf.persona_weights,
                                                   conf.max_persona_rank),
        "item_personas": item_personas,
        "users": users.select("user_idx", "customer_id"),
        "items": items.select("item_idx", "item_id", "item_name"),
        "personas": names,
    }
    counts = export.write_export(conf.export_dir, parts, bounds["users"] + 1, bounds["items"] + 1, persona_names)
    log.info("export: %s -> %s", counts, conf.export_dir)
    return {"rows": counts, "item_personas_from": item_source, "export_dir": conf.export_dir}


RECOMMEND_RUNS_SCHEMA = (
    "run_id string, model string, seed int, ndcg_at_10 double, f1_at_10 double, metrics map<string, double>, "
    "val_ndcg_at_10 double, best_epoch int, epochs int, seconds double, device string, model_path string"
)


def train_stage(cfg: Config, store: TableStore) -> dict:
    """Train recommend.model for each of recommend.seeds on the export; metrics -> ``recommend_runs``."""

    try:
        from persona_spark.recommend.spectral import EigenCache
        from persona_spark.recommend.train import train
    except ImportError as error:
        raise RuntimeError(f"the train stage needs torch ({error}): pip install 'persona-spark[train]'") from error
    from persona_spark.recommend.data import read_directory

    conf = cfg.recommend
    data = read_directory(conf.export_dir)
    cache = EigenCache(conf.eigen_cache_dir)
    run_id, rows, summaries = refresh.new_run()[0], [], []
    for seed in conf.seeds:
        result = train(data, conf, seed, cache=cache)
        path = result.save(storage.join(conf.model_dir, f"{result.model}-seed{seed}"), data)
        metrics = {k: float(v) for k, v in result.metrics.items()}
        rows.append((run_id, result.model, seed, metrics.get("ndcg@10"), metrics.get("f1@10"), metrics,
                     float(result.val_ndcg), result.best_epoch, result.epochs, round(result.seconds, 2),
                     result.device, str(path)))
        summary = result.summary()
        summaries.append({k: summary.get(k) for k in ("model", "seed", "ndcg@10", "f1@10", "epochs", "seconds", "device")})
        log.info("train: %s", summary)
    store.write_table(store.spark.createDataFrame(rows, RECOMMEND_RUNS_SCHEMA), "recommend_runs", "append")
    return {"runs": summaries, "run_id": run_id, "model_dir": conf.model_dir, "table": store.location("recommend_runs")}


def cold_start_stage(cfg: Config, store: TableStore) -> dict:
    """Items per persona and per new customer, customers per new item, from personas alone -> ``cold_start_recs``."""
    from persona_spark.recommend import coldstart_batch as batch
    from persona_spark.recommend.coldstart import ColdStartModel

    conf = cfg.recommend
    spark = store.spark
    run_dir = storage.join(conf.model_dir, f"{conf.model}-seed{conf.seeds[0]}")
    model = ColdStartModel.from_run(run_dir, with_users=False)
    train = spark.read.parquet(storage.join(conf.export_dir, "train"))
    each_persona = spark.createDataFrame([(p, [p]) for p in range(len(model.persona_names))],
                                         "subject_idx int, personas array<int>")
    recs = batch.recommend_items(each_persona, model, conf.cold_start_k, "persona")
    if store.exists(conf.declared_personas_table):
        declared = batch.without_training_edges(store.read_table(conf.declared_personas_table), train, "user_idx")
        customers = batch.persona_lists(declared, "user_idx").withColumnRenamed("user_idx", "subject_idx")
        recs = recs.unionByName(batch.recommend_items(customers, model, conf.cold_start_k, "new_customer"))
    item_personas = spark.read.parquet(storage.join(conf.export_dir, "item_personas"))
    tagged = batch.without_training_edges(item_personas, train, "item_idx")
    new_items = [(r["item_idx"], r["personas"]) for r in batch.persona_lists(tagged, "item_idx").collect()]
    profile = None
    if new_items:
        n_personas = len(model.persona_names)
        # kept: audiences_for_items reads it once for the personas anybody bought, then scores it
        profile = batch.persona_purchase_profile(train, item_personas, n_personas).persist()
        recs = recs.unionByName(batch.audiences_for_items(new_items, profile, n_personas, conf.cold_start_k,
                                                          conf.audience_activity_exponent))
    store.write_table(recs, "cold_start_recs")
    if profile is not None:
        profile.unpersist()
    counts = {r["subject"]: r["count"] for r in
              store.read_table("cold_start_recs").groupBy("subject").agg(F.countDistinct("subject_idx").alias("count")).collect()}
    return {"subjects": counts, "model": str(run_dir), "table": store.location("cold_start_recs")}


DEMO_STAGES = ["generate", "ingest", "build-graph", "gplr", "evaluate", "export-tripartite", "train", "cold-start", "segment", "report"]


def demo(cfg: Config, store: TableStore) -> dict:
    """The whole pipeline on the embedded demo shop: generate -> ... -> HTML report."""
    import time

    done = {}
    for name in DEMO_STAGES:
        started = time.perf_counter()
        summary = STAGES[name](cfg, store) or {}
        seconds = round(time.perf_counter() - started, 1)
        done[name] = {"seconds": seconds, **summary}
        headline = {k: v for k, v in summary.items() if isinstance(v, (int, float, str)) and k != "details"}
        print(f"[{name:>11}] {seconds:6.1f}s  " + ", ".join(f"{k}={v}" for k, v in list(headline.items())[:8]), flush=True)
    return {"stages": done, "tables_root": store.location(""), "report": cfg.report.path}

STAGES: dict[str, Stage] = {
    "generate": generate,
    "ingest": ingest_stage,
    "build-graph": build_graph_stage,
    "load-paper-split": load_paper_split,
    "gplr": gplr_stage,
    "affinity": affinity_stage,
    "evaluate": evaluate_stage,
    "segment": segment_stage,
    "robustness": robustness_stage,
    "report": report_stage,
    "label-users": label_users_stage,
    "label-items": label_items_stage,
    "generate-personas": generate_personas_stage,
    "export-tripartite": export_stage,
    "train": train_stage,
    "cold-start": cold_start_stage,
    "audience": audience_stage,
    "demo": demo,
}
