# Databricks notebook source
# MAGIC %md
# MAGIC # Recommender results
# MAGIC
# MAGIC The `train` stage trains the graph recommender (LGCN3 by default: customers, products *and personas* in one
# MAGIC graph) for each configured seed and appends one row per run to `recommend_runs`: NDCG, recall and F1 at several
# MAGIC cut-offs K on the held-out purchases. Training needs the `torch` extra (`pip install 'persona-spark[train]'`;
# MAGIC a GPU job cluster on Databricks); this notebook only reads the results, and says so when there are none yet.

# COMMAND ----------

import matplotlib.pyplot as plt
from pyspark.sql import functions as F

from persona_spark.notebook import open_run, show
from persona_spark.report import metric_rows

ctx = open_run(globals().get("dbutils"))  # a ps.RunContext
cfg, spark, store = ctx.cfg, ctx.spark, ctx.store
runs = ctx.table("recommend_runs")
if runs is None:
    print("No training run yet: run `persona-spark export-tripartite` and `persona-spark train` (needs the torch extra); "
          "the cells below skip until then.")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Every training run

# COMMAND ----------

if runs is not None:
    columns = [c for c in ("run_id", "run_ts", "model", "seed", "ndcg_at_10", "f1_at_10", "epochs", "best_epoch", "seconds", "device") if c in runs.columns]
    all_runs = show(runs.select(*columns).orderBy(F.desc("run_ts"), "model", "seed"))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Quality by model and K (mean ± std over seeds)

# COMMAND ----------

if runs is not None:
    rows = metric_rows(runs)
    stats = rows.groupby(["model", "metric", "k"])["value"].agg(["mean", "std", "count"]).reset_index().fillna({"std": 0.0})
    table = stats.pivot_table(index=["model", "k"], columns="metric", values="mean").reset_index()
    show(table, 50)
    metrics = [m for m in ("ndcg", "recall", "f1") if m in set(stats["metric"])]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for model, line in stats[stats["metric"] == metric].groupby("model"):
            ax.errorbar(line["k"], line["mean"], yerr=line["std"], marker="o", capsize=3, label=model)
        ax.set_xscale("log")
        ax.set_xlabel("K")
        ax.set_title(f"{metric}@K")
    axes[0][0].legend()
    plt.show()

# COMMAND ----------

# MAGIC %md
# MAGIC ## New customers: recommendations from personas alone
# MAGIC The `cold-start` stage recommends products to customers with no purchase history from their personas
# MAGIC (and customers to new products); shown here when it has run.

# COMMAND ----------

cold_start = ctx.table("cold_start_recs")
if cold_start is not None:
    show(cold_start, 10)
else:
    print("No cold-start recommendations yet: run `persona-spark cold-start` after `train`.")
