"""The cache-aware labeling loop GPLR calls every round, and the histories it labels.

``label_entities`` (1) commits answers a killed run left in the journal, (2) anti-joins the
requests with the cache table on (id, history_hash, model, prompt_version, persona_set_version),
(3) labels only what is missing, ``chunk_size`` entities per Spark job, appending each chunk to the
cache table in one commit (through the ``LabelCache`` the caller passes), and (4) returns one label row per requested entity. The cache tables
(``user_labels`` / ``item_labels``) are append-only — every answer ever paid for stays auditable;
readers take the best row per key (a valid answer over an error, then the newest).
"""

from __future__ import annotations

import logging
import math
import posixpath
import threading
import time
from collections.abc import Iterator
from functools import partial

import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from persona_spark.config import LabelingConf, SelectionConf
from persona_spark.labeling import journal as journal_io
from persona_spark.labeling import signals
from persona_spark.labeling.base import (
    KINDS,
    BoundLabeler,
    EntityKind,
    LabelCache,
    Labeler,
    MemoryCache,
    entities_of,
    label_columns,
    label_schema,
)
from persona_spark.labeling.configured import labeler_from_config
from persona_spark.labeling.pricing import cost_column, price_table, rates
from persona_spark.labeling.prompts import HISTORY_ORDERS, load_template_file
from persona_spark.personas import PersonaSet
from persona_spark.runtime.checkpoint import checkpoint
from persona_spark.runtime.runs import new_run
from persona_spark.tables import storage

log = logging.getLogger(__name__)

EXPECTED_PERSONAS_PER_ANSWER = 3  # for the expected (not maximal) completion size in estimates


class DryRunEstimate(Exception):
    """Raised instead of labeling when ``labeling.dry_run`` is set; carries the estimate."""

    def __init__(self, estimate: dict):
        super().__init__(f"labeling.dry_run is set, nothing was called: {estimate}")
        self.estimate = estimate


# ---- requests ---------------------------------------------------------------------------------
def history_order(conf: LabelingConf) -> str:
    """The product order the configured user prompt writes (``order`` of its template)."""
    fields, _ = load_template_file(conf.user_prompt)
    return fields.get("order", "frequency")


def build_user_histories(edges: DataFrame, items: DataFrame, order: str = "frequency") -> DataFrame:
    """``user_idx, history, history_hash`` from the train edges: every purchased item with its
    name, purchase count and quantity, most frequent first (ties: larger quantity, lower index),
    or with ``order='first_purchase'`` in the order first bought (ties: lower index), as the
    paper's prompt lists them (Fig. 3.b). The hash covers the whole history, so a user whose
    purchases changed is labeled again."""
    if order not in HISTORY_ORDERS:
        raise ValueError(f"history order must be one of {HISTORY_ORDERS}, got {order!r}")
    named = edges.filter(F.col("split") == "train").join(items.select("item_idx", "item_name"), "item_idx", "left")
    first = [F.col("first_ts").alias("first_ts")] if order == "first_purchase" else []
    entry = F.struct(
        *first,
        (-F.col("n_purchases")).alias("neg_n") if order == "frequency" else F.lit(0).alias("neg_n"),
        (-F.col("quantity")).alias("neg_quantity") if order == "frequency" else F.lit(0).alias("neg_quantity"),
        F.col("item_idx").cast("int").alias("item_idx"),
        F.coalesce("item_name", F.concat(F.lit("item "), F.col("item_idx").cast("string"))).alias("name"),
        F.col("n_purchases").cast("int").alias("n"),
        F.col("quantity").cast("long").alias("quantity"),
    )
    grouped = named.groupBy("user_idx").agg(F.sort_array(F.collect_list(entry)).alias("sorted"))
    history = F.transform("sorted", lambda p: F.struct(p["item_idx"].alias("item_idx"), p["name"].alias("name"), p["n"].alias("n"), p["quantity"].alias("quantity")))
    return grouped.select(F.col("user_idx").cast("int"), history.alias("history")).withColumn("history_hash", history_hash("history"))


def user_requests(train: DataFrame, items: DataFrame, conf: LabelingConf, transactions: DataFrame | None = None,
                  users: DataFrame | None = None) -> DataFrame:
    """User label requests in the configured prompt's order; given ``transactions`` (and the ``users``
    table their customers map through), with the price / basket / cadence measures the embedding
    labeler weighs."""
    requests = build_user_histories(train, items, history_order(conf))
    if transactions is None:
        return requests
    return signals.with_behaviour_measures(requests, signals.behaviour_measures(transactions, users, items, train))


def build_item_requests(items: DataFrame) -> DataFrame:
    """``item_idx, history, history_hash``: an item is labeled from its own name."""
    name = F.coalesce("item_name", F.concat(F.lit("item "), F.col("item_idx").cast("string")))
    history = F.array(F.struct(F.col("item_idx").cast("int").alias("item_idx"), name.alias("name"), F.lit(1).alias("n"), F.lit(1).cast("long").alias("quantity")))
    return items.select(F.col("item_idx").cast("int"), history.alias("history")).withColumn("history_hash", history_hash("history"))


def history_hash(column: str):
    return F.substring(F.sha2(F.to_json(column), 256), 1, 16)


def select_entities(requests: DataFrame, selection: SelectionConf, id_col: str,
                    chosen: DataFrame | None = None) -> DataFrame:
    """All requests, a seeded hash sample of ``size``, or those whose id is in ``chosen`` (the
    ``selection.table`` the caller read)."""
    if selection.mode == "all":
        return requests
    if selection.mode == "sample":
        order = F.xxhash64(F.lit(selection.sample_seed), id_col)
        return requests.orderBy(order, id_col).limit(selection.size)
    if not selection.table:
        raise ValueError("selection mode 'table' needs a table name (labeling.users.table / labeling.items.table)")
    if chosen is None:
        raise ValueError(f"selection mode 'table': pass the rows of table {selection.table!r} as chosen")
    if id_col not in chosen.columns:
        raise ValueError(f"table {selection.table!r} has no column {id_col!r} (has {chosen.columns})")
    return requests.join(chosen.select(id_col).distinct(), id_col, "left_semi")


def check_requests(requests: DataFrame, kind: EntityKind) -> None:
    missing = [c for c in (kind.id_col, "history", "history_hash") if c not in requests.columns]
    if missing:
        raise ValueError(
            f"{kind.name} label requests lack columns {missing} (have {requests.columns}); "
            "build them with build_user_histories / build_item_requests"
        )


# ---- cache ------------------------------------------------------------------------------------
LEDGER_COLUMNS = {"cached_prompt_tokens": "int", "channel": "string"}  # upgrade_cache_table adds them


def upgrade_cache_table(cache: LabelCache, kind: EntityKind) -> None:
    """Give a cache table without the ledger's ``LEDGER_COLUMNS`` (cached-prompt tokens, channel) those
    columns (one rewrite; 0 cached tokens, channel 'sync' for paid rows, 'offline' otherwise)."""
    table = cache.read(kind.table)
    if table is None:
        return
    if all(c in table.columns for c in LEDGER_COLUMNS):
        return
    paid = F.coalesce(F.col("prompt_tokens"), F.lit(0)) + F.coalesce(F.col("completion_tokens"), F.lit(0)) > 0
    upgraded = table.withColumn("cached_prompt_tokens", F.lit(0)).withColumn("channel", F.when(paid, "sync").otherwise("offline"))
    cache.replace(kind.table, checkpoint(upgraded.select(*label_columns(kind.id_col))))
    log.info("%s: added the columns %s", kind.table, sorted(LEDGER_COLUMNS))

def cached_rows(cache: LabelCache, kind: EntityKind, bound: BoundLabeler) -> DataFrame | None:
    table = cache.read(kind.table)
    if table is None:
        return None
    key = bound.key
    return table.filter(
        (F.col("model") == key.model)
        & (F.col("prompt_version") == key.prompt_version)
        & (F.col("persona_set_version") == key.persona_set_version)
    )


def missing_requests(requests: DataFrame, cache: LabelCache, kind: EntityKind, bound: BoundLabeler,
                     retry_errors: bool) -> DataFrame:
    cached = cached_rows(cache, kind, bound)
    if cached is None:
        return requests
    if retry_errors:
        cached = cached.filter(F.col("status") != "error")
    return requests.join(cached.select(kind.id_col, "history_hash"), [kind.id_col, "history_hash"], "left_anti")


def best_rows(labels: DataFrame, id_col: str) -> DataFrame:
    """One row per (id, history_hash): a valid answer over an error, then the newest."""
    order = Window.partitionBy(id_col, "history_hash").orderBy((F.col("status") == "error").asc(), F.col("ts").desc())
    return labels.withColumn("_rank", F.row_number().over(order)).filter("_rank = 1").drop("_rank")


def recover_journal(cache: LabelCache, kind: EntityKind, journal_dir: str) -> int:
    """Commit answers a killed run left in the journal (skipping rows already committed), then
    delete those journal files. Returns how many rows were recovered."""
    root = storage.join(journal_dir, kind.name)
    files = journal_io.journal_files(root)
    if not files:
        return 0
    spark = cache.spark
    schema = label_schema(kind.id_col).replace("ts timestamp", "ts long")
    raw = spark.read.schema(schema).option("mode", "DROPMALFORMED").json(files)
    rows = raw.withColumn("ts", F.timestamp_micros("ts")).dropDuplicates([kind.id_col, "history_hash", "model", "prompt_version", "persona_set_version", "ts"])
    committed = cache.read(kind.table)
    if committed is not None:
        keys = [kind.id_col, "history_hash", "model", "prompt_version", "persona_set_version", "ts"]
        rows = rows.join(committed.select(*keys), keys, "left_anti")
    rows = rows.select(*label_columns(kind.id_col))
    recovered = rows.count()
    if recovered:
        cache.append(kind.table, rows)
        log.info("recovered %d %s labels from the journal of an interrupted run", recovered, kind.name)
    for folder in {posixpath.dirname(f) for f in files}:
        journal_io.remove(folder)
    return recovered


# ---- progress ---------------------------------------------------------------------------------
class Progress:
    """Logs done / failed / remaining and tokens spent, read from the journal while chunks run."""

    def __init__(self, kind: str, total: int, interval_s: float):
        self.kind, self.total, self.interval_s = kind, total, interval_s
        self.started = time.monotonic()
        self.done = self.failed = self.prompt_tokens = self.completion_tokens = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tail: journal_io.JournalTail | None = None

    def line(self) -> str:
        tail = self._tail
        done = self.done + (tail.rows if tail else 0)
        failed = self.failed + (tail.statuses.get("error", 0) if tail else 0)
        prompt = self.prompt_tokens + (tail.prompt_tokens if tail else 0)
        completion = self.completion_tokens + (tail.completion_tokens if tail else 0)
        rate = done / max(time.monotonic() - self.started, 1e-9)
        return (
            f"labeling {self.kind}s: done {done} (failed {failed}), remaining {self.total - done} of {self.total}, "
            f"tokens {prompt} prompt + {completion} completion, {rate:.1f}/s"
        )

    def watch(self, folder: str) -> None:
        self._tail = journal_io.JournalTail(folder)
        self._stop.clear()

        def run() -> None:
            while not self._stop.wait(self.interval_s):
                self._tail.poll()
                log.info(self.line())

        if self.interval_s > 0:
            self._thread = threading.Thread(target=run, daemon=True, name="labeling-progress")
            self._thread.start()

    def chunk_done(self) -> None:
        """Stop watching, fold the chunk's final journal counts into the totals, log them."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        tail, self._tail = self._tail, None
        if tail is not None:
            tail.poll()
            self.done += tail.rows
            self.failed += tail.statuses.get("error", 0)
            self.prompt_tokens += tail.prompt_tokens
            self.completion_tokens += tail.completion_tokens
        log.info(self.line())

    def as_dict(self) -> dict:
        return {"labeled": self.done, "failed": self.failed, "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


# ---- the loop ---------------------------------------------------------------------------------
def label_entities(
    cache: LabelCache | None,
    requests: DataFrame,
    persona_set: PersonaSet,
    conf: LabelingConf | None = None,
    kind: str = "user",
    labeler: Labeler | None = None,
) -> DataFrame:
    """Label every requested entity that the cache does not answer yet; return one row per request.

    ``requests``: ``<user_idx|item_idx>, history, history_hash`` (``build_user_histories`` /
    ``build_item_requests``, filtered to the entities wanted). Rows with status 'unrepresentable'
    or 'error' are returned too, so the caller decides what counts towards its budget.
    ``labeler``: who answers (default: the one ``conf`` names); ``conf``: prompts, chunks, journal and
    retries (default: the defaults); ``cache``: where answers are kept, ``None`` for a ``MemoryCache``
    that lives as long as this call.
    """
    entity = KINDS[kind]
    check_requests(requests, entity)
    conf = LabelingConf() if conf is None else conf
    cache = MemoryCache(requests.sparkSession) if cache is None else cache
    labeler = labeler_from_config(conf) if labeler is None else labeler
    bound = labeler.bind(conf, persona_set, entity, cache)
    if conf.dry_run:
        raise DryRunEstimate(estimate_labeling(cache, requests, conf, entity, labeler, bound))
    upgrade_cache_table(cache, entity)
    if getattr(bound, "batched", False):
        # Batches an earlier run submitted are collected before anything new is asked.
        bound.resume()
        missing = missing_requests(requests, cache, entity, bound, conf.retry_errors)
        if not missing.isEmpty():
            bound.label_missing(missing)
        return best_rows(cached_rows(cache, entity, bound).join(requests.select(entity.id_col, "history_hash"), [entity.id_col, "history_hash"], "left_semi"), entity.id_col)
    if bound.paid:
        recover_journal(cache, entity, conf.journal_dir)
    missing = missing_requests(requests, cache, entity, bound, conf.retry_errors)
    total = missing.count()
    n_chunks = max(1, math.ceil(total / conf.chunk_size))
    run_id = new_run()[0]  # UTC, sorts by time, unique: names this run's journal folders
    progress = Progress(entity.name, total, conf.progress_interval_s)
    log.info("labeling %d %ss with %s (%s) in %d chunk(s)", total, entity.name, bound.key.model, bound.key.prompt_version, n_chunks if total else 0)
    chunk_of = F.pmod(F.xxhash64(entity.id_col, "history_hash"), F.lit(n_chunks))
    for chunk in range(n_chunks if total else 0):
        # Re-checked against the cache per chunk: rows committed meanwhile are never sent again.
        todo = missing_requests(requests.filter(chunk_of == chunk), cache, entity, bound, conf.retry_errors)
        folder = journal_io.chunk_dir(conf.journal_dir, entity.name, run_id, chunk) if bound.paid else None
        if folder is not None:
            progress.watch(folder)
        labels = bound.label(todo, folder)
        for table, rows in bound.cache_rows().items():  # e.g. the item embeddings this chunk made
            cache.append(table, rows)
        cache.append(entity.table, labels)
        log.info("%s labels: chunk %d/%d committed to %s", entity.name, chunk + 1, n_chunks, entity.table)
        progress.chunk_done()
        if folder is not None:
            journal_io.remove(folder)
    result = cached_rows(cache, entity, bound)
    wanted = requests.select(entity.id_col, "history_hash")
    return best_rows(result.join(wanted, [entity.id_col, "history_hash"], "left_semi"), entity.id_col)


def estimate_partition(worker, id_col: str, batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    for pdf in batches:
        sizes = worker.request_sizes(entities_of(pdf, id_col, worker.prompt.format))
        yield pd.DataFrame(
            {
                "entities": [len(pdf)],
                "requests": [len(sizes)],
                "prompt_tokens": [sum(p for p, _, _ in sizes)],
                "completion_tokens_max": [sum(c for _, c, _ in sizes)],
                "cacheable_prompt_tokens": [sum(k for _, _, k in sizes)],
            }
        )


def estimate_labeling(cache: LabelCache, requests: DataFrame, conf: LabelingConf, kind: EntityKind, labeler: Labeler,
                      bound: BoundLabeler) -> dict:
    """Entities the cache lacks and, for a paid backend, the tokens and cost of labeling them,
    measured on the real prompts (chars/4) in a Spark job, priced both synchronously and through
    the Batch API, and scaled to 1 M entities."""
    missing = missing_requests(requests, cache, kind, bound, conf.retry_errors)
    estimate = {"backend": labeler.backend, "model": bound.key.model, "prompt_version": bound.key.prompt_version}
    if not bound.paid:
        return {**estimate, "entities": missing.count(), "requests": 0, "prompt_tokens": 0, "cost_max_usd": 0.0}
    columns = ("entities", "requests", "prompt_tokens", "completion_tokens_max", "cacheable_prompt_tokens")
    totals = missing.mapInPandas(
        partial(estimate_partition, bound.worker, kind.id_col), ", ".join(f"{c} long" for c in columns)
    ).agg(*[F.sum(c).alias(c) for c in columns]).first()
    totals = {k: int(totals[k] or 0) for k in columns}
    # An answer is about this many tokens per entity: JSON keys plus a few persona names.
    expected_completion = min(totals["entities"] * (8 + 6 * EXPECTED_PERSONAS_PER_ANSWER), totals["completion_tokens_max"])
    # The shared prefix is cached from the second request on (when it is long enough to be cached).
    per_request_prefix = totals["cacheable_prompt_tokens"] / max(totals["requests"], 1)
    cached = int(totals["cacheable_prompt_tokens"] - per_request_prefix) if totals["requests"] else 0
    totals.pop("cacheable_prompt_tokens")
    estimate.update(totals, completion_tokens_expected=expected_completion, cached_prompt_tokens_expected=cached,
                    cacheable_prefix_tokens=int(per_request_prefix))
    channel = "batch" if labeler.backend == "openai_batch" else "sync"
    per_entity = 1_000_000 / max(totals["entities"], 1)
    for name, r in (("sync", rates(labeler.conf, "sync")), ("batch", rates(labeler.conf, "batch"))):
        cost = r.cost(totals["prompt_tokens"], cached, expected_completion)
        estimate[f"cost_{name}_usd"] = round(cost, 4)
        estimate[f"cost_{name}_per_1m_{kind.name}s_usd"] = round(cost * per_entity, 2) if totals["entities"] else 0.0
    chosen = rates(labeler.conf, channel)
    estimate["cost_expected_usd"] = estimate[f"cost_{channel}_usd"]
    estimate["cost_max_usd"] = round(chosen.cost(totals["prompt_tokens"], 0, totals["completion_tokens_max"]), 4)
    log.info("labeling estimate: %s", estimate)
    return estimate


def summarize(labels: DataFrame, conf: LabelingConf) -> dict:
    """Counts per status and tokens/cost of the returned rows (one small aggregation); each row is
    priced at its channel's rates (synchronous or Batch API), cached prompt tokens at their own."""
    token_columns = ("prompt_tokens", "cached_prompt_tokens", "completion_tokens")
    row = labels.agg(
        F.count(F.lit(1)).alias("entities"),
        *[F.sum((F.col("status") == s).cast("int")).alias(s) for s in ("ok", "unrepresentable", "error")],
        *[F.sum(c).alias(c) for c in token_columns],
        F.sum(cost_column(price_table(conf.openai), labels.columns)).alias("cost_usd"),
    ).first()
    summary = {k: int(row[k] or 0) for k in ("entities", "ok", "unrepresentable", "error", *token_columns)}
    if conf.backend in ("openai", "openai_batch"):
        summary["cost_usd"] = round(float(row["cost_usd"] or 0.0), 4)
    return summary
