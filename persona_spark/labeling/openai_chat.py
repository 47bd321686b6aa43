"""``OpenAILabeler``: any OpenAI-compatible chat endpoint (OpenAI, Azure, vLLM, Databricks serving).

Called from ``mapInPandas``: each partition runs one asyncio loop with ``concurrency`` requests in
flight, so the total in flight is ``concurrency x`` the partitions running at once (capped by
``partitions``). The API key is resolved on the driver when the labeler is bound (env var or
secret scope) and travels to the tasks as a ``Secret``, never printed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import pandas as pd
from pyspark.sql import DataFrame

from persona_spark.config import LabelingConf, OpenAIConf
from persona_spark.labeling import journal as journal_io
from persona_spark.labeling.base import (
    BoundLabeler,
    CacheKey,
    EntityKind,
    LabelCache,
    Labeler,
    entities_of,
    label_schema,
    make_row,
    now_micros,
    rows_frame,
    split_evenly,
)
from persona_spark.labeling.client import ChatClient, resolve_api_key
from persona_spark.labeling.prompts import Entity, LabelPrompt, error_verdict, estimate_tokens
from persona_spark.labeling.ratelimit import RemoteBudget, job_budget_url
from persona_spark.personas import PersonaSet
from persona_spark.redaction import Secret
from persona_spark.runtime.session import is_local_master

MAX_ANSWER_CHARS = 4000


@dataclass
class OpenAIWorker:
    """Everything a labeling task needs, pickled into the ``mapInPandas`` closure."""

    conf: OpenAIConf
    api_key: Secret
    prompt: LabelPrompt
    id_col: str
    key: CacheKey
    budget_url: str | None = None  # the driver's shared TPM/RPM budget (ratelimit.BudgetServer)

    def requests_of(self, entities: list[Entity]) -> list[list[Entity]]:
        size = max(1, self.conf.users_per_request)
        return [entities[i : i + size] for i in range(0, len(entities), size)]

    def request_sizes(self, entities: list[Entity]) -> list[tuple[int, int, int]]:
        """(estimated prompt tokens, completion token bound, cacheable prefix tokens) of each request,
        for dry runs. The prefix is every message but the last (persona list, rules, few-shot):
        providers cache a repeated prefix of >= 1024 tokens, in 128-token blocks."""
        sizes = []
        for group in self.requests_of(entities):
            tokens = [estimate_tokens(m["content"]) + 4 for m in self.prompt.messages(group)]
            prefix = sum(tokens[:-1])
            sizes.append((sum(tokens), self.conf.max_tokens, prefix // 128 * 128 if prefix >= 1024 else 0))
        return sizes

    async def label_group(self, client: ChatClient, group: list[Entity]) -> list[dict]:
        """One chat request for ``group``; always returns one row per entity, never raises."""
        ids = [e.id for e in group]
        try:
            messages = self.prompt.messages(group)
            result = await client.complete(messages, self.prompt.response_format(self.conf.json_mode, len(group) > 1))
            if result.content is None:
                verdicts = {i: error_verdict(result.error) for i in ids}
            else:
                verdicts = self.prompt.parse(result.content, ids)
                if result.error:  # e.g. cut at max_tokens: keep what validates, say why the rest failed
                    verdicts = {i: error_verdict(f"{result.error}: {v.error}") if v.status == "error" else v for i, v in verdicts.items()}
        except Exception as exc:  # noqa: BLE001 — a failed call must become a row, never a failed task
            error = f"labeling failed: {type(exc).__name__}: {exc}"
            return [make_row(self.id_col, e.id, e.history_hash, self.key, error_verdict(error)) for e in group]
        prompt_shares = split_evenly(result.prompt_tokens, len(group))
        completion_shares = split_evenly(result.completion_tokens, len(group))
        cached_shares = split_evenly(result.cached_prompt_tokens, len(group))
        answer = (result.content or "")[:MAX_ANSWER_CHARS] or None
        ts = now_micros()
        return [
            make_row(
                self.id_col, e.id, e.history_hash, self.key, verdicts[e.id],
                prompt_tokens=p, completion_tokens=c, cached_prompt_tokens=k, latency_ms=result.latency_ms,
                attempts=result.attempts, answer=answer, ts=ts, channel="sync",
            )
            for e, p, c, k in zip(group, prompt_shares, completion_shares, cached_shares)
        ]

    async def label_all(self, client: ChatClient, entities: list[Entity], journal: journal_io.JournalWriter | None) -> list[dict]:
        groups = iter(self.requests_of(entities))
        rows: list[dict] = []

        async def worker() -> None:
            for group in groups:  # one shared iterator: each group is taken by exactly one worker
                group_rows = await self.label_group(client, group)
                if journal is not None:
                    journal.write(group_rows)  # before anything else can fail
                rows.extend(group_rows)

        await asyncio.gather(*(worker() for _ in range(max(1, self.conf.concurrency))))
        return rows


def label_partition(worker: OpenAIWorker, journal_folder: str | None, batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """``mapInPandas`` body: one event loop and client per task; answers journaled as they arrive."""
    from pyspark import TaskContext

    context = TaskContext.get()
    partition, attempt = (context.partitionId(), context.attemptNumber()) if context else (0, 0)
    earlier: dict[tuple[int, str], dict] = {}
    journal = None
    if journal_folder:
        # A retried or speculative attempt reuses every answer already paid for in this chunk.
        earlier = {(r[worker.id_col], r["history_hash"]): r for r in journal_io.read_rows(journal_io.journal_files(journal_folder))}
        journal = journal_io.JournalWriter(journal_folder, partition, attempt)
    loop = asyncio.new_event_loop()
    client = None
    try:
        for pdf in batches:
            entities = entities_of(pdf, worker.id_col, worker.prompt.format)
            rows = [earlier[(e.id, e.history_hash)] for e in entities if (e.id, e.history_hash) in earlier]
            fresh = [e for e in entities if (e.id, e.history_hash) not in earlier]
            if fresh:
                if client is None:
                    budget = RemoteBudget(worker.budget_url) if worker.budget_url else None
                    client = ChatClient(worker.conf, worker.api_key, connections=worker.conf.concurrency, budget=budget)
                rows += loop.run_until_complete(worker.label_all(client, fresh, journal))
            yield rows_frame(rows, worker.id_col)
    finally:
        if client is not None:
            loop.run_until_complete(client.aclose())
        loop.close()
        if journal is not None:
            journal.close()


class BoundOpenAILabeler(BoundLabeler):
    paid = True

    def __init__(self, conf: OpenAIConf, api_key: Secret, prompt: LabelPrompt, id_col: str, persona_set: PersonaSet,
                 budget_url: str | None = None):
        self.conf = conf
        self.key = CacheKey(conf.model, prompt.version, persona_set.version)
        self.worker = OpenAIWorker(conf, api_key, prompt, id_col, self.key, budget_url)

    def label(self, requests: DataFrame, journal_folder: str | None = None) -> DataFrame:
        fn = partial(label_partition, self.worker, journal_folder)
        return requests.repartition(self.conf.partitions).mapInPandas(fn, label_schema(self.worker.id_col))


class OpenAILabeler(Labeler):
    """Labels from a chat model; the keyword arguments are the fields of ``labeling.openai``
    (``OpenAILabeler(model="gpt-4o-mini", base_url=..., api_key_env="OPENAI_API_KEY")``)."""

    section = OpenAIConf
    backend = "openai"

    def prompt_and_key(self, labeling: LabelingConf, persona_set: PersonaSet, kind: EntityKind,
                       cache: LabelCache) -> tuple[LabelPrompt, Secret]:
        """The kind's prompt (checked against the request shape) and the API key, read on the driver."""
        template = labeling.user_prompt if kind.name == "user" else labeling.item_prompt
        prompt = LabelPrompt(template, persona_set, labeling.max_personas_per_answer, labeling.history_tokens, labeling.max_name_chars)
        if self.conf.users_per_request > 1 and not prompt.multi:
            raise ValueError(f"prompt template {template!r} labels one {kind.name} per request: set labeling.openai.users_per_request=1")
        if prompt.keyed and self.conf.json_mode == "json_schema":
            raise ValueError(f"prompt template {template!r} answers keyed by id, which a fixed JSON schema cannot "
                             "describe: set labeling.openai.json_mode to json_object or off")
        # A dry run only renders prompts to count tokens: pricing a run must not require its key.
        return prompt, Secret("") if labeling.dry_run else resolve_api_key(self.conf, cache.spark)

    def bind(self, labeling: LabelingConf, persona_set: PersonaSet, kind: EntityKind, cache: LabelCache) -> BoundOpenAILabeler:
        prompt, key = self.prompt_and_key(labeling, persona_set, kind, cache)
        budget_url = None
        if (self.conf.tokens_per_minute or self.conf.requests_per_minute) and not labeling.dry_run:
            budget_url = job_budget_url(self.conf.tokens_per_minute, self.conf.requests_per_minute,
                                        self.conf.base_url or "api.openai.com", driver_host(cache.spark))
        return BoundOpenAILabeler(self.conf, key, prompt, kind.id_col, persona_set, budget_url)


def driver_host(spark) -> str:
    """Where the tasks reach the driver's budget server: loopback in local mode, else spark.driver.host."""
    if is_local_master(spark):
        return "127.0.0.1"
    return spark.conf.get("spark.driver.host", "127.0.0.1")
