"""Recommender stages: the tripartite export, training, cold-start recommendations from personas."""

from __future__ import annotations

import logging

from pyspark.sql import functions as F

from persona_spark import tables, tracking
from persona_spark.runtime.runs import new_run
from persona_spark.stages.common import persona_names
from persona_spark.stages.context import RunContext
from persona_spark.tables import storage

log = logging.getLogger("persona_spark")

RECOMMEND_RUNS_SCHEMA = (
    "run_id string, model string, seed int, ndcg_at_10 double, f1_at_10 double, metrics map<string, double>, "
    "val_ndcg_at_10 double, best_epoch int, epochs int, seconds double, device string, model_path string"
)


def export_stage(ctx: RunContext) -> dict:
    """Write the recommender's directory (train/test edges, user/item personas, index maps) from tables."""
    from persona_spark.recommend import export

    cfg, store = ctx.cfg, ctx.store
    conf = cfg.recommend.export
    spark = store.spark
    edges, users, items = (store.read_table(t) for t in (tables.EDGES, tables.USERS, tables.ITEMS))
    if not store.exists(conf.user_personas_table):
        raise ValueError(f"export: table {conf.user_personas_table!r} not found (run gplr, or set "
                         "recommend.export.user_personas_table=reference_personas for the paper split's GPT-4 labels)")
    item_source = next((t for t in (tables.ITEM_LABELS, tables.REFERENCE_ITEM_PERSONAS) if store.exists(t)), None)
    item_personas = (export.item_persona_edges(store.read_table(item_source)) if item_source else
                     spark.createDataFrame([], "item_idx int, persona_idx int, weight float"))
    names = persona_names(ctx)
    persona_names_in_order = tuple(r["name"] for r in names.orderBy("persona_idx").collect())
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
    counts = export.write_export(conf.dir, parts, bounds["users"] + 1, bounds["items"] + 1, persona_names_in_order)
    log.info("export: %s -> %s", counts, conf.dir)
    return {"rows": counts, "item_personas_from": item_source, "export_dir": conf.dir}


def train_stage(ctx: RunContext) -> dict:
    """Train recommend.train.model for each of recommend.train.seeds on the export; metrics -> ``recommend_runs``,
    each model with its metrics -> MLflow (the summary's ``mlflow.model_uri`` per seed)."""
    cfg, store = ctx.cfg, ctx.store
    try:
        from persona_spark.recommend.spectral import EigenCache
        from persona_spark.recommend.train import train
    except ImportError as error:
        raise RuntimeError(f"the train stage needs torch ({error}): pip install 'persona-spark[train]'") from error
    from persona_spark.recommend.data import read_directory

    conf = cfg.recommend.train
    data = read_directory(cfg.recommend.export.dir)
    cache = EigenCache(conf.eigen_cache_dir)
    (run_id, run_ts), rows, summaries = new_run(), [], []
    for seed in conf.seeds:
        result = train(data, conf, seed, cache=cache)
        path = result.save(storage.join(conf.model_dir, f"{result.model}-seed{seed}"), data)
        metrics = {k: float(v) for k, v in result.metrics.items()}
        rows.append((run_id, result.model, seed, metrics.get("ndcg@10"), metrics.get("f1@10"), metrics,
                     float(result.val_ndcg), result.best_epoch, result.epochs, round(result.seconds, 2),
                     result.device, str(path)))
        summary = result.summary()
        summaries.append({**{k: summary.get(k) for k in ("model", "seed", "ndcg@10", "f1@10", "epochs", "seconds", "device")},
                          "mlflow": tracking.log_trained_model(cfg, result, str(path), run_id)})
        log.info("train: %s", summary)
    runs = store.spark.createDataFrame(rows, RECOMMEND_RUNS_SCHEMA).withColumn("run_ts", F.lit(run_ts).cast("timestamp"))
    store.write_table(runs, tables.RECOMMEND_RUNS, "append")
    return {"runs": summaries, "run_id": run_id, "model_dir": conf.model_dir, "table": store.location(tables.RECOMMEND_RUNS)}


def cold_start_stage(ctx: RunContext) -> dict:
    """Items per persona and per new customer, customers per new item, from personas alone -> ``cold_start_recs``.

    The model: the train stage's folder (recommend.train.model_dir), or an MLflow model by
    recommend.cold_start.model_uri (a model URI or a train run's id)."""
    from persona_spark.recommend import coldstart_batch as batch
    from persona_spark.recommend.coldstart import ColdStartModel

    cfg, store = ctx.cfg, ctx.store
    conf, trained, exported = cfg.recommend.cold_start, cfg.recommend.train, cfg.recommend.export
    spark = store.spark
    if conf.model_uri:
        model_source = conf.model_uri
        with tracking.model_files(cfg, conf.model_uri) as run_dir:
            model = ColdStartModel.from_run(run_dir, with_users=False)
    else:
        model_source = storage.join(trained.model_dir, f"{trained.model}-seed{trained.seeds[0]}")
        model = ColdStartModel.from_run(model_source, with_users=False)
    train = spark.read.parquet(storage.join(exported.dir, "train"))
    each_persona = spark.createDataFrame([(p, [p]) for p in range(len(model.persona_names))],
                                         "subject_idx int, personas array<int>")
    recs = batch.recommend_items(each_persona, model, conf.list_size, "persona")
    if store.exists(conf.declared_personas_table):
        declared = batch.without_training_edges(store.read_table(conf.declared_personas_table), train, "user_idx")
        customers = batch.persona_lists(declared, "user_idx").withColumnRenamed("user_idx", "subject_idx")
        recs = recs.unionByName(batch.recommend_items(customers, model, conf.list_size, "new_customer"))
    item_personas = spark.read.parquet(storage.join(exported.dir, "item_personas"))
    tagged = batch.without_training_edges(item_personas, train, "item_idx")
    new_items = [(r["item_idx"], r["personas"]) for r in batch.persona_lists(tagged, "item_idx").collect()]
    profile = None
    if new_items:
        n_personas = len(model.persona_names)
        # kept: audiences_for_items reads it once for the personas anybody bought, then scores it
        profile = batch.persona_purchase_profile(train, item_personas, n_personas).persist()
        recs = recs.unionByName(batch.audiences_for_items(new_items, profile, n_personas, conf.list_size,
                                                          conf.audience_activity_exponent))
    store.write_table(recs, tables.COLD_START_RECS)
    if profile is not None:
        profile.unpersist()
    counts = {r["subject"]: r["count"] for r in store.read_table(tables.COLD_START_RECS).groupBy("subject").agg(
        F.countDistinct("subject_idx").alias("count")).collect()}
    return {"subjects": counts, "model": str(model_source), "table": store.location(tables.COLD_START_RECS)}
