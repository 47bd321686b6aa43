"""Persona-set generation (paper App. B): sampled histories -> candidate personas -> merged set R.

A seeded sample of users (small, collected to the driver) is cut into groups; the LLM proposes
candidate personas for each group, and one merge call turns all distinct candidates into the final
|R| personas with descriptions. The result is a ``PersonaSet`` (versioned by content) written as a
YAML file that ``load_persona_set`` reads, so the labeling prompts can use it right away.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from string import Template

import yaml
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from persona_spark.config import LabelingConf
from persona_spark.labeling.client import CallResult, ChatClient, Secret
from persona_spark.labeling.pricing import rates
from persona_spark.labeling.prompts import Entity, HistoryFormat, estimate_tokens, load_template_file, strip_code_fence
from persona_spark.personas import PersonaSet, normalize_name

log = logging.getLogger(__name__)

CANDIDATES_TEMPLATE = "persona_candidates_v1"
MERGE_TEMPLATE = "persona_merge_v1"
TOKENS_PER_CANDIDATE = 40  # name + one-sentence description, for the merge-prompt estimate


def sample_entities(histories: DataFrame, size: int, seed: int) -> list[Entity]:
    """A seeded hash sample of ``size`` users (bounded by configuration, so fine to collect)."""
    rows = histories.orderBy(F.xxhash64(F.lit(seed), "user_idx"), "user_idx").limit(size).collect()
    return [Entity(r["user_idx"], tuple((p["name"], p["n"]) for p in r["history"]), r["history_hash"]) for r in rows]


def parse_personas(content: str | None) -> list[tuple[str, str]]:
    """``{"personas": [{"name", "description"}]}`` -> [(name, description)]; ValueError otherwise."""
    data = json.loads(strip_code_fence(content or ""))
    entries = data.get("personas") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"no 'personas' list in {str(content)[:120]!r}")
    personas = []
    for entry in entries:
        if not isinstance(entry, dict) or not str(entry.get("name", "")).strip():
            raise ValueError(f"persona entry without a name: {str(entry)[:120]!r}")
        personas.append((" ".join(str(entry["name"]).split()), " ".join(str(entry.get("description") or "").split())))
    return personas


class PersonaSetGenerator:
    def __init__(self, conf: LabelingConf):
        self.conf = conf
        self.gen = conf.generate
        user_fields, _ = load_template_file(conf.user_prompt)
        self.format = HistoryFormat(user_fields, conf.history_tokens, conf.max_name_chars)
        self.candidates_fields, self.candidates_version = load_template_file(CANDIDATES_TEMPLATE)
        self.merge_fields, self.merge_version = load_template_file(MERGE_TEMPLATE)

    def candidate_messages(self, entities: list[Entity]) -> list[list[dict]]:
        size = max(1, self.gen.histories_per_prompt)
        system = Template(self.candidates_fields["system"]).substitute(count=self.gen.candidates_per_prompt).strip()
        requests = []
        for start in range(0, len(entities), size):
            group = entities[start : start + size]
            blocks = "\n\n".join(self.format.block(e) for e in group)
            ask = Template(self.candidates_fields["request"]).substitute(count=self.gen.candidates_per_prompt, n_users=len(group))
            requests.append([{"role": "system", "content": system}, {"role": "user", "content": f"{blocks}\n\n{ask}"}])
        return requests

    def merge_messages(self, candidates: list[tuple[str, str]]) -> list[dict]:
        listing = "\n".join(f"- {name}: {description}" for name, description in candidates)
        system = Template(self.merge_fields["system"]).substitute(count=self.gen.target_size).strip()
        ask = Template(self.merge_fields["request"]).substitute(candidates=listing, count=self.gen.target_size).strip()
        return [{"role": "system", "content": system}, {"role": "user", "content": ask}]

    def estimate(self, entities: list[Entity]) -> dict:
        requests = self.candidate_messages(entities)
        prompt = sum(estimate_tokens(m["content"]) for r in requests for m in r)
        n_candidates = len(requests) * self.gen.candidates_per_prompt
        merge_prompt = estimate_tokens(self.merge_messages([("", "")])[0]["content"]) + n_candidates * TOKENS_PER_CANDIDATE
        prices = self.conf.openai
        channel = "batch" if self.conf.backend == "openai_batch" else "sync"
        completion_max = (len(requests) + 1) * prices.max_tokens
        return {
            "sample_users": len(entities),
            "requests": len(requests) + 1,
            "prompt_tokens": prompt + merge_prompt,
            "completion_tokens_max": completion_max,
            "cost_max_usd": round(rates(prices, channel).cost(prompt + merge_prompt, 0, completion_max), 4),
            "cost_sync_max_usd": round(rates(prices, "sync").cost(prompt + merge_prompt, 0, completion_max), 4),
            "cost_batch_max_usd": round(rates(prices, "batch").cost(prompt + merge_prompt, 0, completion_max), 4),
        }

    def _response_format(self) -> dict | None:
        return {"type": "json_object"} if self.conf.openai.json_mode != "off" else None

    async def _calls(self, client: ChatClient, message_lists: list[list[dict]]) -> list[CallResult]:
        limit = asyncio.Semaphore(max(1, self.conf.openai.concurrency))

        async def call(messages: list[dict]) -> CallResult:
            async with limit:
                return await client.complete(messages, self._response_format())

        return await asyncio.gather(*(call(m) for m in message_lists))

    def _sync_calls(self, api_key: Secret):
        """``call(purpose, message_lists) -> results`` over synchronous chat calls (one loop per call)."""

        async def run(message_lists: list[list[dict]]) -> list[CallResult]:
            client = ChatClient(self.conf.openai, api_key, connections=max(1, self.conf.openai.concurrency))
            try:
                return await self._calls(client, message_lists)
            finally:
                await client.aclose()

        return lambda _purpose, message_lists: asyncio.run(run(message_lists))

    def _batch_calls(self, api_key: Secret, store):
        """The same through the Batch API: one batch per step, each waited for (and resumed by a rerun)."""
        from persona_spark.labeling.batch import complete_in_batch

        return lambda purpose, message_lists: complete_in_batch(store, self.conf, api_key, message_lists, purpose, self._response_format())

    def _generate(self, entities: list[Entity], call) -> tuple[PersonaSet, dict]:
        results = call("persona_candidates", self.candidate_messages(entities))
        candidates: dict[str, tuple[str, str]] = {}
        failures = []
        for result in results:
            try:
                if result.content is None:
                    raise ValueError(result.error)
                for name, description in parse_personas(result.content):
                    candidates.setdefault(normalize_name(name), (name, description))
            except ValueError as exc:  # one bad answer costs one group, not the job
                failures.append(str(exc)[:200])
        if not candidates:
            raise RuntimeError(f"no candidate personas: all {len(results)} candidate requests failed: {failures[:3]}")
        (merged,) = call("persona_merge", [self.merge_messages(list(candidates.values()))])
        if merged.content is None:
            raise RuntimeError(f"the merge request failed: {merged.error}")
        personas = parse_personas(merged.content)
        if len(personas) < self.gen.target_size:
            raise RuntimeError(f"the merge answer has {len(personas)} personas, {self.gen.target_size} were asked for")
        if len(personas) > self.gen.target_size:
            log.warning("the merge answer has %d personas; keeping the first %d", len(personas), self.gen.target_size)
            personas = personas[: self.gen.target_size]
        persona_set = PersonaSet(tuple(n for n, _ in personas), tuple(d for _, d in personas), self.gen.title)
        calls = [*results, merged]
        stats = {
            "sample_users": len(entities),
            "candidate_requests": len(results),
            "failed_candidate_requests": len(failures),
            "distinct_candidates": len(candidates),
            "personas": len(persona_set),
            "version": persona_set.version,
            "prompt_tokens": sum(c.prompt_tokens for c in calls),
            "cached_prompt_tokens": sum(c.cached_prompt_tokens for c in calls),
            "completion_tokens": sum(c.completion_tokens for c in calls),
            "channel": "batch" if self.conf.backend == "openai_batch" else "sync",
        }
        return persona_set, stats

    def generate(self, entities: list[Entity], api_key: Secret, store=None) -> tuple[PersonaSet, dict]:
        """Candidates then the merge, as synchronous calls or (``labeling.backend=openai_batch``,
        needs ``store`` for the batch ledger) through the Batch API."""
        call = self._batch_calls(api_key, store) if self.conf.backend == "openai_batch" else self._sync_calls(api_key)
        return self._generate(entities, call)

    def metadata(self, stats: dict) -> dict:
        return {
            "model": self.conf.openai.model,
            "prompts": [self.candidates_version, self.merge_version],
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **{k: stats[k] for k in ("sample_users", "distinct_candidates")},
        }


def write_persona_set(persona_set: PersonaSet, path: str | Path, metadata: dict) -> Path:
    """YAML that ``load_persona_set`` reads back to the same set (same version)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "title": persona_set.title,
        "version": persona_set.version,
        "generated": metadata,
        "personas": [{"name": n, "description": d} for n, d in zip(persona_set.names, persona_set.descriptions)],
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=120))
    return path
