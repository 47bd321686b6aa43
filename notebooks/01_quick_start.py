# Databricks notebook source
# MAGIC %md
# MAGIC # Quick start: personas for every customer
# MAGIC
# MAGIC This notebook runs the whole persona pipeline on the configured data and shows what came out:
# MAGIC
# MAGIC 1. **generate / ingest / build-graph** – purchase lines become a customer–product graph (Delta tables),
# MAGIC 2. **gplr** – a small budget of customers is labelled by the labeler (offline embedding model by default,
# MAGIC    an LLM in production) and everyone else gets personas by propagation over the graph,
# MAGIC 3. **evaluate** – personas are scored against reference labels (the demo shop's planted personas),
# MAGIC 4. **export-tripartite / train / cold-start** – the LGCN3 recommender learns from purchases *and* personas, and
# MAGIC    recommends from personas alone to customers and items without history (needs the `torch` extra),
# MAGIC 5. **segment / report** – customer segments and a self-contained HTML report.
# MAGIC
# MAGIC The config file comes from the `conf` widget (Databricks), else the `PERSONA_SPARK_CONF` environment
# MAGIC variable, else `conf/local.yaml`: generated demo-shop data and local Delta tables under `data/tables`.
# MAGIC Point it at `conf/online_retail.yaml` to run on the Online Retail sample instead.

# COMMAND ----------

import importlib.util
import time

import persona_spark as ps
from persona_spark.notebook import open_run, show
from persona_spark.stages import DEMO_STAGES

ctx = open_run(globals().get("dbutils"))  # a ps.RunContext: config, Spark session, tables, persona set
cfg, spark, store = ctx.cfg, ctx.spark, ctx.store
print(f"config: {ctx.conf_path}; tables under: {store.location('')}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Run the pipeline
# MAGIC Each stage is the same function the CLI (`persona-spark <stage>`), `spark-submit jobs/<stage>.py` and the
# MAGIC Databricks job call, run here through the notebook's `RunContext` (`ctx.run(stage)`). Generated data is only used when no `ingest.source` is configured; training is skipped
# MAGIC when torch is not installed, evaluation when there are no reference labels.

# COMMAND ----------

has_torch = importlib.util.find_spec("torch") is not None
summaries = {}
for stage in DEMO_STAGES:
    if stage == "generate" and cfg.ingest.source is not None:
        continue
    if stage in ("export-tripartite", "train", "cold-start") and not has_torch:
        print(f"[{stage:>11}] skipped: install the torch extra (pip install 'persona-spark[train]') to train")
        continue
    if stage == "evaluate" and not store.exists(cfg.evaluate.reference_table):
        print(f"[{stage:>11}] skipped: no reference table {cfg.evaluate.reference_table!r}")
        continue
    started = time.perf_counter()
    summaries[stage] = ctx.run(stage)
    headline = {k: v for k, v in summaries[stage].items() if isinstance(v, (int, float, str))}
    print(f"[{stage:>11}] {time.perf_counter() - started:6.1f}s  " + ", ".join(f"{k}={v}" for k, v in list(headline.items())[:6]))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Who got which personas
# MAGIC `personas` has one row per (customer, persona): its score, its rank among the customer's personas, and whether
# MAGIC the labeler gave it directly (`llm`) or it was propagated (`propagated`).

# COMMAND ----------

from pyspark.sql import functions as F

personas = store.read_table("personas")
names = store.read_table("persona_set").select("persona_idx", F.col("name").alias("persona"))
per_persona = (
    personas.join(names, "persona_idx")
    .groupBy("persona")
    .pivot("source", ["llm", "propagated"])
    .agg(F.countDistinct("user_idx"))
    .fillna(0)
    .orderBy(F.desc("propagated"))
)
persona_counts = show(per_persona)

# COMMAND ----------

users = store.read_table("users")
examples = (
    personas.join(names, "persona_idx")
    .join(users.select("user_idx", "customer_id"), "user_idx")
    .groupBy("customer_id", "source")
    .agg(F.array_join(F.sort_array(F.collect_list(F.struct("rank", "persona"))).persona, ", ").alias("personas"))
    .orderBy("customer_id")
)
customer_examples = show(examples, 10)

# COMMAND ----------

# MAGIC %md
# MAGIC ## How good are they, and where is the report?

# COMMAND ----------

if store.exists("evaluation"):
    quality = show(store.read_table("evaluation").orderBy(F.desc("run_ts")), 1)
if store.exists("segment_summary"):
    segments = show(store.read_table("segment_summary").filter(F.col("k") == min(cfg.segment.ks)).select("segment", "size", "description"))
print(f"HTML report: {cfg.report.path}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## The same in a few lines, without configuration or tables
# MAGIC `ps.GPLR` takes order lines (here the ingested `transactions`) and a persona set, and returns personas for every
# MAGIC customer as a DataFrame; nothing is written. The labeler is an object: `ps.EmbeddingLabeler()` (offline),
# MAGIC `ps.OpenAILabeler(...)`, `ps.OpenAIBatchLabeler(...)` or `ps.RecordedLabeler(...)`.

# COMMAND ----------

quick = ps.GPLR(labeler=ps.EmbeddingLabeler(), budget=0.1).fit(store.read_table("transactions"), ctx.persona_set)
quick_personas = show(quick.personas.orderBy("customer_id", "rank"), 10)
