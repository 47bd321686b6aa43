"""Persona-set generation (paper §2.2, App. B): sampled histories -> candidate personas -> set R.

Two methods (``labeling.persona_generation.method``):

* ``merge`` (the cheap default): one seeded sample of users cut into groups, candidates per
  group (``persona_candidates_v1``), one call merging all distinct candidates into |R|
  (``persona_merge_v1``).
* ``paper``: App. B's three steps with Fig. 2's prompts, word for word. Step 1 (Fig. 2.a): each of
  ``candidate_prompts`` (40) prompts gets its own random ``histories_per_prompt`` (100) users
  and proposes ``candidates_per_prompt`` (20) personas under the "High Coverage" / "High
  Accuracy" targets. Step 2 (Fig. 2.b): each of ``refine_prompts`` (8) prompts gets
  ``sets_per_refine`` (5) of the step-1 sets drawn at random and selects the ``target_size`` (20)
  most representative. Step 3 (Fig. 2.c): all refined sets (160 personas) -> the final 20.
  Answers are App. B's numbered list ("1. Name" / " - definition"); JSON is accepted too.

A failed or unparseable answer costs its prompt only: step 2 draws from the step-1 sets that
parsed, step 3 reads the refined sets that parsed (Fig. 2.b itself tells the model to ignore
malformed groups), and every failure is counted in the stats. The result is a ``PersonaSet``
(versioned by content) written as a YAML file that ``load_persona_set`` reads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from string import Template

import yaml
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from persona_spark.config import LabelingConf
from persona_spark.labeling.client import CallResult, ChatClient
from persona_spark.labeling.pricing import rates
from persona_spark.labeling.prompts import Entity, HistoryFormat, estimate_tokens, load_template_file, strip_code_fence
from persona_spark.personas import PersonaSet, normalize_name
from persona_spark.redaction import Secret
from persona_spark.tables import storage

log = logging.getLogger(__name__)

CANDIDATES_TEMPLATE = "persona_candidates_v1"
MERGE_TEMPLATE = "persona_merge_v1"
PAPER_TEMPLATES = ("persona_paper_candidates_v1", "persona_paper_refine_v1", "persona_paper_final_v1")
TOKENS_PER_CANDIDATE = 40  # name + one-sentence description, for the merge-prompt estimate
NUMBER_WORDS = dict(enumerate("zero one two three four five six seven eight nine ten eleven twelve".split()))
NUMBERED = re.compile(r"^\s*(?:#+\s*)?(\d{1,3})\s*[.)]\s*(.+?)\s*$")
BULLET = re.compile(r"^\s*[-*•]\s*(.*?)\s*$")
NAME_SPLIT = re.compile(r"\s+[-–—]\s+|:\s*")  # "1. Name - definition" / "1. Name: definition" on one line

Personas = list[tuple[str, str]]


def sample_entities(histories: DataFrame, size: int, seed: int, history_format: HistoryFormat) -> list[Entity]:
    """A seeded hash sample of ``size`` users (bounded by configuration, so fine to collect)."""
    rows = histories.orderBy(F.xxhash64(F.lit(seed), "user_idx"), "user_idx").limit(size).collect()
    return [history_format.entity_of(r["user_idx"], r["history"], r["history_hash"]) for r in rows]


def sample_groups(histories: DataFrame, groups: int, size: int, seed: int, history_format: HistoryFormat) -> list[list[Entity]]:
    """``groups`` independent seeded samples of ``size`` users each (App. B: "100 randomly selected
    customers", repeated 40 times), in one job; groups × size rows reach the driver."""
    ranked = (histories.crossJoin(histories.sparkSession.range(groups).select(F.col("id").cast("int").alias("group")))
              .withColumn("rank", F.row_number().over(
                  Window.partitionBy("group").orderBy(F.xxhash64(F.lit(seed), "group", "user_idx"), "user_idx")))
              .filter(F.col("rank") <= size))
    out: list[list[Entity]] = [[] for _ in range(groups)]
    for r in ranked.orderBy("group", "rank").collect():
        out[r["group"]].append(history_format.entity_of(r["user_idx"], r["history"], r["history_hash"]))
    return [g for g in out if g]


def _clean_name(text: str) -> str:
    return " ".join(text.replace("**", "").replace("__", "").strip(" :*-").split())


def parse_personas(content: str | None) -> Personas:
    """``{"personas": [{"name", "description"}]}`` or App. B's numbered list ("1. Name" followed by
    " - definition" lines, or "1. Name - definition" / "1. Name: definition") -> [(name, description)];
    ValueError when neither is found."""
    text = strip_code_fence(content or "")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return _numbered_personas(text, content)
    entries = data.get("personas") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"no 'personas' list in {str(content)[:120]!r}")
    personas = []
    for entry in entries:
        if not isinstance(entry, dict) or not str(entry.get("name", "")).strip():
            raise ValueError(f"persona entry without a name: {str(entry)[:120]!r}")
        personas.append((" ".join(str(entry["name"]).split()), " ".join(str(entry.get("description") or "").split())))
    return personas


def _numbered_personas(text: str, content: str | None) -> Personas:
    personas: list[list[str]] = []
    for line in text.splitlines():
        numbered, bullet = NUMBERED.match(line), BULLET.match(line)
        if numbered:
            name, *rest = NAME_SPLIT.split(numbered.group(2).replace("**", ""), maxsplit=1)
            personas.append([_clean_name(name), rest[0] if rest else ""])
        elif bullet and personas and not bullet.group(1).startswith("..."):
            personas[-1][1] = " ".join(filter(None, [personas[-1][1], bullet.group(1)]))
    personas = [p for p in personas if p[0]]
    if not personas:
        raise ValueError(f"no personas (neither JSON nor a numbered list) in {str(content)[:120]!r}")
    return [(name, " ".join(description.split())) for name, description in personas]


def numbered_list(personas: Personas) -> str:
    """A persona set written as App. B's output example."""
    return "\n".join(f"{i}. {name}\n - {description}" for i, (name, description) in enumerate(personas, 1))


class PersonaSetGenerator:
    def __init__(self, conf: LabelingConf, n_users: int | None = None):
        """``n_users``: all users of the shop (the paper prompt states the sample's share of them)."""
        self.conf = conf
        self.gen = conf.persona_generation
        self.n_users = n_users
        user_fields, _ = load_template_file(conf.user_prompt)
        self.format = HistoryFormat(user_fields, conf.history_tokens, conf.max_name_chars)
        names = PAPER_TEMPLATES if self.gen.method == "paper" else (CANDIDATES_TEMPLATE, MERGE_TEMPLATE)
        loaded = [load_template_file(name) for name in names]
        self.templates = [fields for fields, _ in loaded]
        self.versions = [version for _, version in loaded]

    # ---- sampling and prompts ------------------------------------------------------------------
    def sample(self, histories: DataFrame) -> list[list[Entity]]:
        """The user groups of the candidate prompts."""
        gen = self.gen
        if gen.method == "paper":
            return sample_groups(histories, gen.candidate_prompts, gen.histories_per_prompt, gen.seed, self.format)
        entities = sample_entities(histories, gen.sample_users, gen.seed, self.format)
        size = max(1, gen.histories_per_prompt)
        return [entities[i : i + size] for i in range(0, len(entities), size)]

    def candidate_messages(self, groups: list[list[Entity]]) -> list[list[dict]]:
        fields, count = self.templates[0], self.gen.candidates_per_prompt
        if self.gen.method == "paper":
            return [self._paper_messages(fields, dataset=self.gen.dataset, n_users=len(group), count=count,
                                         percent=self._percent(len(group)),
                                         histories="\n\n".join(self.format.text(e) for e in group))
                    for group in groups]
        system = Template(fields["system"]).substitute(count=count).strip()
        requests = []
        for group in groups:
            blocks = "\n\n".join(self.format.block(e) for e in group)
            ask = Template(fields["request"]).substitute(count=count, n_users=len(group))
            requests.append([{"role": "system", "content": system}, {"role": "user", "content": f"{blocks}\n\n{ask}"}])
        return requests

    def _percent(self, n: int) -> str:
        return f"{100 * n / self.n_users:.1f}".rstrip("0").rstrip(".") if self.n_users else "?"

    @staticmethod
    def _paper_messages(fields: dict, **values) -> list[dict]:
        return [{"role": "system", "content": fields["system"].strip()},
                {"role": "user", "content": Template(fields["user"]).substitute(**values).strip()}]

    def refine_messages(self, sets: list[Personas], rng: random.Random) -> list[list[dict]]:
        """Step 2: each prompt gets ``sets_per_refine`` step-1 sets drawn at random (Fig. 2.b)."""
        gen, fields = self.gen, self.templates[1]
        messages = []
        for _ in range(gen.refine_prompts):
            picked = rng.sample(sets, min(gen.sets_per_refine, len(sets)))
            messages.append(self._paper_messages(
                fields, n_sets=len(sets), per_set=gen.candidates_per_prompt, picked=len(picked),
                picked_word=NUMBER_WORDS.get(len(picked), str(len(picked))), total=len(picked) * gen.candidates_per_prompt,
                count=gen.target_size, sets=self._listing(picked)))
        return messages

    def final_messages(self, sets: list[Personas]) -> list[dict]:
        """Step 3 (Fig. 2.c): every refined set -> the final ``target_size``."""
        gen = self.gen
        return self._paper_messages(
            self.templates[2], n_sets=len(sets), n_sets_word=NUMBER_WORDS.get(len(sets), str(len(sets))),
            per_set=gen.target_size, total=len(sets) * gen.target_size, count=gen.target_size, sets=self._listing(sets))

    @staticmethod
    def _listing(sets: list[Personas]) -> str:
        return "".join(f"\n\nSet {i}:\n{numbered_list(s)}" for i, s in enumerate(sets, 1))

    def merge_messages(self, candidates: Personas) -> list[dict]:
        fields = self.templates[1]
        listing = "\n".join(f"- {name}: {description}" for name, description in candidates)
        system = Template(fields["system"]).substitute(count=self.gen.target_size).strip()
        ask = Template(fields["request"]).substitute(candidates=listing, count=self.gen.target_size).strip()
        return [{"role": "system", "content": system}, {"role": "user", "content": ask}]

    # ---- cost ------------------------------------------------------------------------------------
    def estimate(self, groups: list[list[Entity]]) -> dict:
        """Prompt tokens of the candidate prompts exactly; the later steps from their persona counts."""
        gen = self.gen
        requests = self.candidate_messages(groups)
        prompt = sum(estimate_tokens(m["content"]) for r in requests for m in r)
        n_candidates = len(requests) * gen.candidates_per_prompt
        placeholder = [("", "")]
        if gen.method == "paper":
            refine = estimate_tokens(self.refine_messages([placeholder], random.Random(0))[0][1]["content"])
            later = [refine + gen.sets_per_refine * gen.candidates_per_prompt * TOKENS_PER_CANDIDATE] * gen.refine_prompts
            later.append(estimate_tokens(self.final_messages([placeholder])[1]["content"])
                         + gen.refine_prompts * gen.target_size * TOKENS_PER_CANDIDATE)
        else:
            later = [estimate_tokens(self.merge_messages(placeholder)[0]["content"]) + n_candidates * TOKENS_PER_CANDIDATE]
        prices = self.conf.openai
        completion_max = (len(requests) + len(later)) * prices.max_tokens
        prompt += sum(later)
        return {
            "sample_users": sum(len(g) for g in groups),
            "requests": len(requests) + len(later),
            "prompt_tokens": prompt,
            "completion_tokens_max": completion_max,
            "cost_max_usd": round(rates(prices, self._channel()).cost(prompt, 0, completion_max), 4),
            "cost_sync_max_usd": round(rates(prices, "sync").cost(prompt, 0, completion_max), 4),
            "cost_batch_max_usd": round(rates(prices, "batch").cost(prompt, 0, completion_max), 4),
        }

    # ---- calls -----------------------------------------------------------------------------------
    def _channel(self) -> str:
        return "batch" if self.conf.backend == "openai_batch" else "sync"

    def _response_format(self) -> dict | None:
        # JSON mode only where the prompt asks for JSON: the paper's prompts ask for a numbered list.
        json_mode = self.gen.method != "paper" and self.conf.openai.json_mode != "off"
        return {"type": "json_object"} if json_mode else None

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

    def _batch_calls(self, api_key: Secret, cache):
        """The same through the Batch API: one batch per step, each waited for (and resumed by a rerun)."""
        from persona_spark.labeling.batch import complete_in_batch

        return lambda purpose, message_lists: complete_in_batch(cache, self.conf, api_key, message_lists, purpose,
                                                                self._response_format())

    @staticmethod
    def _parsed(results: list[CallResult], step: str, failures: list[str]) -> list[Personas]:
        sets = []
        for result in results:
            try:
                if result.content is None:
                    raise ValueError(result.error)
                sets.append(parse_personas(result.content))
            except ValueError as exc:  # one bad answer costs one prompt, not the job
                failures.append(f"{step}: {str(exc)[:200]}")
        return sets

    def _generate(self, groups: list[list[Entity]], call) -> tuple[PersonaSet, dict]:
        failures: list[str] = []
        results = call("persona_candidates", self.candidate_messages(groups))
        calls = list(results)
        sets = self._parsed(results, "candidates", failures)
        candidates: dict[str, tuple[str, str]] = {}
        for name, description in (p for s in sets for p in s):
            candidates.setdefault(normalize_name(name), (name, description))
        if not candidates:
            raise RuntimeError(f"no candidate personas: all {len(results)} candidate requests failed: {failures[:3]}")
        stats = {"candidate_requests": len(results), "failed_candidate_requests": len(failures),
                 "distinct_candidates": len(candidates)}
        if self.gen.method == "paper":
            refined_results = call("persona_refine", self.refine_messages(sets, random.Random(self.gen.seed)))
            calls += refined_results
            refined = self._parsed(refined_results, "refine", failures)
            stats.update(refine_requests=len(refined_results), failed_refine_requests=len(refined_results) - len(refined))
            if not refined:
                raise RuntimeError(f"all {len(refined_results)} refine requests failed: {failures[-3:]}")
            (final,) = call("persona_final", [self.final_messages(refined)])
        else:
            (final,) = call("persona_merge", [self.merge_messages(list(candidates.values()))])
        calls.append(final)
        if final.content is None:
            raise RuntimeError(f"the final request failed: {final.error}")
        distinct: dict[str, tuple[str, str]] = {}
        for name, description in parse_personas(final.content):  # a name repeated: its first entry
            distinct.setdefault(normalize_name(name), (name, description))
        personas = list(distinct.values())
        if len(personas) < self.gen.target_size:
            raise RuntimeError(f"the final answer has {len(personas)} distinct personas, {self.gen.target_size} were asked for")
        if len(personas) > self.gen.target_size:
            log.warning("the final answer has %d personas; keeping the first %d", len(personas), self.gen.target_size)
            personas = personas[: self.gen.target_size]
        persona_set = PersonaSet(tuple(n for n, _ in personas), tuple(d for _, d in personas), self.gen.title)
        stats = {
            "method": self.gen.method,
            "sample_users": sum(len(g) for g in groups),
            **stats,
            "personas": len(persona_set),
            "version": persona_set.version,
            "prompt_tokens": sum(c.prompt_tokens for c in calls),
            "cached_prompt_tokens": sum(c.cached_prompt_tokens for c in calls),
            "completion_tokens": sum(c.completion_tokens for c in calls),
            "channel": self._channel(),
            "failures": failures[:10],
        }
        return persona_set, stats

    def generate(self, groups: list[list[Entity]], api_key: Secret, cache=None) -> tuple[PersonaSet, dict]:
        """Every step's prompts as synchronous calls or (``labeling.backend=openai_batch``, which needs
        ``cache``, a ``labeling.LabelCache``, for the batch ledger) as one Batch API batch per step."""
        call = self._batch_calls(api_key, cache) if self.conf.backend == "openai_batch" else self._sync_calls(api_key)
        return self._generate(groups, call)

    def metadata(self, stats: dict) -> dict:
        return {
            "model": self.conf.openai.model,
            "method": self.gen.method,
            "prompts": self.versions,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **{k: stats[k] for k in ("sample_users", "distinct_candidates")},
        }


def write_persona_set(persona_set: PersonaSet, path: str, metadata: dict) -> str:
    """YAML (at any location) that ``load_persona_set`` reads back to the same set (same version)."""
    document = {
        "title": persona_set.title,
        "version": persona_set.version,
        "generated": metadata,
        "personas": [{"name": n, "description": d} for n, d in zip(persona_set.names, persona_set.descriptions)],
    }
    storage.write_text(path, yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=120))
    return path
