"""The evaluate stage: a run's personas scored against reference labels."""

from __future__ import annotations

from pyspark.sql import functions as F

from persona_spark import evaluate, tables
from persona_spark.runtime.runs import latest_runs, utc
from persona_spark.stages.context import RunContext


def evaluate_stage(ctx: RunContext) -> dict:
    """Score ``personas`` against a reference table on users the run did not label; print table + JSON."""
    cfg, store = ctx.cfg, ctx.store
    reference = store.read_table(cfg.evaluate.reference_table)
    if "user_idx" not in reference.columns:
        reference = reference.join(store.read_table(tables.USERS), "customer_id").select("user_idx", "persona_idx")
    eval_users = ctx.pin(evaluate.evaluation_users(reference, store.read_table(tables.GPLR_PROTOTYPES)))
    personas = store.read_table(tables.PERSONAS)
    prototypes = personas.filter(F.col("source") == "llm")
    summary, per_persona = evaluate.evaluate_sets(personas, reference, eval_users)
    baseline, _ = evaluate.evaluate_sets(
        evaluate.popular_personas(prototypes, eval_users, cfg.evaluate.baseline_k), reference, eval_users
    )
    latest = latest_runs(store.read_table(tables.GPLR_RUNS))[0]
    run_id, run_ts = latest["run_id"], F.lit(utc(latest["run_ts"])).cast("timestamp")  # readers order by run_ts
    result = {"run_id": run_id, "reference": cfg.evaluate.reference_table, "users": eval_users.count(),
              **{k: round(v, 4) for k, v in summary.items()}, "baseline_micro_f1": round(baseline["micro_f1"], 4)}
    spark = store.spark
    evaluation = spark.createDataFrame([{**result, "method": cfg.gplr.assignment}]).withColumn("run_ts", run_ts)
    store.write_table(evaluation, tables.EVALUATION, "append")
    per_persona.insert(0, "run_id", run_id)
    store.write_table(spark.createDataFrame(per_persona).withColumn("run_ts", run_ts), tables.EVALUATION_PER_PERSONA,
                      "append")
    persona_set = ctx.persona_set
    per_persona["name"] = [persona_set.names[i] if i < len(persona_set) else str(i) for i in per_persona.persona_idx]
    print(per_persona[["persona_idx", "name", "actual", "predicted", "precision", "recall", "f1"]].to_string(
        index=False, float_format=lambda v: f"{v:.3f}"))
    return result
