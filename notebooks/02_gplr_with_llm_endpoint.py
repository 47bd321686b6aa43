# Databricks notebook source
# MAGIC %md
# MAGIC # GPLR with an OpenAI-compatible endpoint, and what it costs
# MAGIC
# MAGIC GPLR sends only a small budget of customers (`gplr.budget_fraction`, 5 % by default, or `gplr.budget_users`) to the LLM and propagates their
# MAGIC personas to everyone else. This notebook
# MAGIC
# MAGIC 1. points the labeler at an OpenAI-compatible chat endpoint (OpenAI, Azure OpenAI, Databricks model serving,
# MAGIC    vLLM, llama.cpp ...),
# MAGIC 2. **estimates tokens and cost before anything is paid** (a dry run on the real prompts),
# MAGIC 3. runs GPLR with that endpoint and compares the token ledger with the estimate.
# MAGIC
# MAGIC Endpoint: the `base_url` widget, else the `OPENAI_BASE_URL` env var, else `labeling.openai.base_url` of the config.
# MAGIC The API key is read from the env var `labeling.openai.api_key_env` or the Databricks secret scope
# MAGIC `labeling.openai.secret_scope` / `secret_key` — never typed into a notebook.
# MAGIC **When no endpoint is configured** the notebook starts a local stand-in server on 127.0.0.1 that answers with a
# MAGIC simple keyword rule, so everything below runs offline (its answers are not an LLM's, its token counts are real
# MAGIC request sizes). Results go to tables with an `_llm` suffix, next to the run's own tables.

# COMMAND ----------

import os

import persona_spark as ps
from persona_spark import labeling
from persona_spark.notebook import open_run, show, widget
from persona_spark.testing.openai_server import LoopbackChatServer, keyword_responder

dbutils = globals().get("dbutils")
ctx = open_run(dbutils)  # a ps.RunContext
cfg, spark, store, persona_set = ctx.cfg, ctx.spark, ctx.store, ctx.persona_set
base_url = widget(dbutils, "base_url", os.environ.get("OPENAI_BASE_URL", cfg.labeling.openai.base_url or ""), "LLM endpoint")

# COMMAND ----------

# MAGIC %md
# MAGIC ## The endpoint (or a local stand-in)

# COMMAND ----------

keyword_stand_in = keyword_responder(list(persona_set.names), list(persona_set.descriptions))


stand_in = None
llm = cfg.model_copy(deep=True)
llm.labeling.backend = "openai"
if base_url:
    llm.labeling.openai.base_url = base_url
else:
    stand_in = LoopbackChatServer(keyword_stand_in).start()
    llm.labeling.openai.base_url = stand_in.base_url
    llm.labeling.openai.model = "keyword-stand-in"
    llm.labeling.openai.api_key_env = "PERSONA_SPARK_STAND_IN_KEY"  # the stand-in accepts any key
    os.environ[llm.labeling.openai.api_key_env] = "stand-in"
print(f"endpoint: {llm.labeling.openai.base_url}  model: {llm.labeling.openai.model}")

# This run's LLM tables sit next to the run's own ones, suffixed _llm (the cache is per table).
LLM_TABLES = ("personas", "user_labels", "item_labels", "gplr_prototypes", "gplr_runs", "evaluation", "evaluation_per_persona")
llm.tables.names = {**cfg.tables.names, **{t: f"{cfg.tables.names.get(t, t)}_llm" for t in LLM_TABLES}}
llm_run = ps.RunContext(llm, ps.TableStore(spark, llm.tables))  # the same session, the _llm tables
llm_store = llm_run.store

# COMMAND ----------

# MAGIC %md
# MAGIC ## Cost estimate (nothing is called)
# MAGIC The dry run builds the real prompts for the customers GPLR would send and counts their tokens
# MAGIC (4 characters per token); the answer size is bounded by `labeling.openai.max_tokens`. Prices per 1k tokens
# MAGIC come from `labeling.openai.prices.prompt` / `prices.completion`.

# COMMAND ----------

dry_run = llm.model_copy(update={"labeling": llm.labeling.model_copy(update={"dry_run": True})})
plan = ps.RunContext(dry_run, llm_store).run("gplr")  # the gplr stage's own dry run: prices its budget, calls nothing
estimate, budget = plan["users"], plan["budget"]
n_customers = store.read_table("users").count()
per_customer = estimate["cost_expected_usd"] / max(estimate["entities"], 1)
print(
    f"GPLR budget: {budget:,} of {n_customers:,} customers, and {plan['audit_users']:,} more for the run's audit -> "
    f"{estimate['prompt_tokens']:,} prompt tokens, "
    f"expected ${estimate['cost_expected_usd']:.4f} (at most ${estimate['cost_max_usd']:.4f})\n"
    f"labelling every customer instead would cost about ${per_customer * n_customers:.4f}"
)
if "items" in plan:
    print(f"item signal: {plan['items']['entities']:,} products, expected ${plan['items']['cost_expected_usd']:.4f}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Run GPLR with the endpoint
# MAGIC Every answer is journaled the moment it arrives and cached in `user_labels_llm`, so a rerun (or a killed run)
# MAGIC never pays for the same customer twice.

# COMMAND ----------

gplr_summary = llm_run.run("gplr")
print({k: gplr_summary[k] for k in ("budget", "rounds", "persona_rows", "seconds")})
if llm_store.exists(llm.evaluate.reference_table):
    evaluation = llm_run.run("evaluate")

# COMMAND ----------

# MAGIC %md
# MAGIC ## The token ledger: what was actually spent

# COMMAND ----------

from pyspark.sql import functions as F

ledger = llm_store.read_table("user_labels").groupBy("model", "status").agg(
    F.count("*").alias("customers"), F.sum("prompt_tokens").alias("prompt_tokens"),
    F.sum("completion_tokens").alias("completion_tokens"), F.avg("latency_ms").alias("mean_latency_ms"),
)
spent = labeling.summarize(llm_store.read_table("user_labels"), llm.labeling)
ledger_rows = show(ledger)
print(f"spent ${spent['cost_usd']:.4f} on {spent['entities']:,} customers (estimated ${estimate['cost_expected_usd']:.4f})")
if stand_in is not None:
    print(f"the stand-in server answered {stand_in.request_count:,} requests")
    stand_in.stop()
