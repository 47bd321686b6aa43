# Databricks notebook source
# MAGIC %md
# MAGIC # Exploring personas
# MAGIC
# MAGIC Personas are meant to be browsed: *who* are our Gardeners who also bake, *why* does a customer carry a
# MAGIC persona, and *what* does a persona buy? The explorer functions in `persona_spark.explore` answer these with
# MAGIC small Spark DataFrames (everything stays in Spark; only the answers are shown). Run the quick start (or the
# MAGIC `gplr` stage) first.

# COMMAND ----------

import matplotlib.pyplot as plt
from pyspark.sql import functions as F

import persona_spark as ps
from persona_spark import explore
from persona_spark.notebook import open_run, show
from persona_spark.runtime.runs import latest_runs

ctx = open_run(globals().get("dbutils"))  # a ps.RunContext
cfg, spark, store, persona_set = ctx.cfg, ctx.spark, ctx.store, ctx.persona_set
personas, edges, items = (store.read_table(t) for t in ("personas", "edges", "items"))
print(f"{len(persona_set)} personas: {', '.join(persona_set.names)}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## How personas combine
# MAGIC Pick a few personas: every customer falls in one of the 2^n groups of which of them they have.

# COMMAND ----------

counts = personas.groupBy("persona_idx").agg(F.countDistinct("user_idx").alias("customers")).orderBy(F.desc("customers"))
top_two = [persona_set.names[r["persona_idx"]] for r in counts.limit(2).collect()]
groups = show(explore.persona_groups(personas, top_two, persona_set))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Customers with a persona combination
# MAGIC `users_with(include=..., exclude=..., mode="all"|"any")`: intersections, unions and exclusions of personas,
# MAGIC e.g. for a campaign audience.

# COMMAND ----------

both = explore.users_with(personas, include=top_two, persona_set=persona_set)
only_first = explore.users_with(personas, include=top_two[0], exclude=top_two[1], persona_set=persona_set)
print(f"{both.count():,} customers are {' and '.join(top_two)}; {only_first.count():,} are {top_two[0]} but not {top_two[1]}")
audience = show(both, 10)

# COMMAND ----------

# MAGIC %md
# MAGIC ## An audience for activation
# MAGIC The `audience` stage takes a query over persona names (`&` and, `|` or, `!` not, parentheses, "quotes" around
# MAGIC names with odd characters), keeps the members of every run in `audience_members` and who joined or left since
# MAGIC the previous export in `audience_changes`; `audience.export_path` writes CSV/Parquet for activation tools.
# MAGIC From a shell: `persona-spark audience --set audience.name=... --set audience.query="Pet Lover & !Bargain Hunter"`.

# COMMAND ----------

query = f'"{top_two[0]}" & !"{top_two[1]}"'
campaign = cfg.model_copy(update={"audience": cfg.audience.model_copy(update={"name": "notebook_campaign", "query": query})})
exported = ps.RunContext(campaign, store).run("audience")["audiences"]["notebook_campaign"]
print(f"{query}: {exported['members']:,} customers ({exported['added']:,} added, {exported['removed']:,} removed "
      f"since the previous export {exported['previous_run_id'] or '(none)'})")
audience_changes = show(store.read_table("audience_changes").filter(F.col("audience") == "notebook_campaign")
                        .orderBy(F.desc("run_id"), "change", "user_idx"), 10)

# COMMAND ----------

# MAGIC %md
# MAGIC ## What a persona buys (persona-first navigation)
# MAGIC Products a persona's customers buy more than everyone else (`lift` > 1), ranked by buyers × ln(lift), so
# MAGIC the shop's bestsellers do not top every list.

# COMMAND ----------

persona_items = explore.items_for(top_two[0], personas, edges, items, persona_set, top_n=10).toPandas()
show(persona_items[["item_rank", "item_name", "buyers", "buyer_share", "lift"]])
fig, ax = plt.subplots(figsize=(8, 0.35 * len(persona_items) + 1))
ax.barh(persona_items["item_name"].str.slice(0, 40)[::-1], persona_items["lift"][::-1], color="#1f5f99")
ax.set_xlabel("lift: how much more often these customers buy it than everyone")
ax.set_title(f"What {top_two[0]} customers buy")
plt.show()

# COMMAND ----------

# MAGIC %md
# MAGIC ## Why does this customer have these personas?
# MAGIC `explain(user)` follows the first step of the random walk behind propagation: from the customer's products to
# MAGIC the LLM-labelled customers who bought them too. `share` is each neighbour's / product's part of the persona.

# COMMAND ----------

propagated_user = personas.filter(F.col("source") == "propagated").agg(F.min("user_idx")).first()[0]
why = explore.explain(propagated_user, personas, edges, items, persona_set, top_n=5, weighted=cfg.affinity.weighted)
print(f"customer {propagated_user}:")
own = show(why.personas)
neighbours = show(why.neighbours, 15)
contributing_items = show(why.items, 15)

# COMMAND ----------

# MAGIC %md
# MAGIC The `reasons` stage stores the same answer for the (customer, persona) rows of the customers asked
# MAGIC (`refresh.explain`; none: every row) in `persona_reasons`, computed in Spark; `personas` holds each row's
# MAGIC calibrated `probability` and its `percentile` within the persona.
# MAGIC From a shell: `persona-spark reasons --set 'refresh.explain=[C1001,C1002]'`.

# COMMAND ----------

confidence = show(personas.filter(F.col("user_idx") == propagated_user).select("persona_idx", "score", "probability", "percentile"))
customer = store.read_table("users").filter(F.col("user_idx") == propagated_user).first()["customer_id"]
asked = cfg.model_copy(update={"refresh": cfg.refresh.model_copy(update={"explain": [customer]})})
ps.RunContext(asked, store).run("reasons")
stored_reasons = show(store.read_table("persona_reasons").filter(F.col("user_idx") == propagated_user)
                      .select("persona_idx", "items", "neighbours"))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Drift since the previous monthly run
# MAGIC `persona_transitions` counts per persona who kept, gained and lost it between consecutive runs;
# MAGIC `persona_flows` counts customers who dropped one persona and picked up another (-1: no persona).
# MAGIC `refresh.personas_as_of(history, timestamp)` gives the personas in force at any instant.

# COMMAND ----------

from persona_spark import refresh
from persona_spark.report import movement_sentences

history = store.read_table("persona_history")
runs = latest_runs(store.read_table("gplr_runs"), 2)
print("personas in force at each of the last runs:",
      {r["run_id"]: refresh.personas_as_of(history, r["run_ts"]).count() for r in runs})
drift, moves = None, []
if store.exists("persona_transitions"):
    transitions = store.read_table("persona_transitions")
    latest = transitions.orderBy(F.desc("to_ts")).first()
    drift = show(transitions.filter(F.col("to_run_id") == latest["to_run_id"])
                 .select("persona", "customers_before", "customers_after", "kept", "gained", "lost").orderBy(F.desc("lost")))
    print(f"{latest['customers_changed']:,} of {latest['customers']:,} customers ({100 * latest['share_changed']:.1f} %) "
          "changed their persona set")
    flows = store.read_table("persona_flows").filter(F.col("to_run_id") == latest["to_run_id"]).toPandas()
    moves = movement_sentences(flows, lambda i: persona_set.names[i], markup=False)
    for sentence in moves:
        print(" -", sentence)
else:
    print("no drift yet: it appears after the second gplr run")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Segments in words
# MAGIC Written by the `segment` stage: each segment's size, dominant personas and the products it buys more than others.

# COMMAND ----------

if store.exists("segment_summary"):
    summary = store.read_table("segment_summary")
    k = min(r["k"] for r in summary.select("k").distinct().collect())
    for row in summary.filter(F.col("k") == k).orderBy(F.desc("size")).collect():
        print(f"S{row['segment']}: {row['description']}")
else:
    print("no segments yet: run persona-spark segment")
