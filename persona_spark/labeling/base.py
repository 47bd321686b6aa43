"""What every labeler shares: the label rows, the cache they go to, and the ``Labeler`` interface.

A ``Labeler`` is a labeling backend as the caller chooses it: an object built from the fields of its
configuration section (``EmbeddingLabeler(temperature=0.5)``, ``OpenAILabeler(model=...)``), validated
there. ``labeler.bind(labeling, persona_set, kind, cache)`` ties it to one labeling (users or items,
a persona set, the prompts and limits of ``labeling``) and gives the ``BoundLabeler`` that labels:
``bound.label(requests) -> label rows``.

Requests are rows ``<id>, history array<struct<item_idx, name, n, quantity>>, history_hash`` (see
``persona_spark.labeling.runner``); every requested entity gets exactly one row back, a failed call
included (``status='error'`` with its reason).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import pandas as pd
from pydantic import ValidationError
from pyspark.sql import DataFrame

from persona_spark import tables
from persona_spark.config import LabelingConf, Section
from persona_spark.errors import UserError
from persona_spark.labeling.prompts import Entity, HistoryFormat, Verdict
from persona_spark.personas import PersonaSet
from persona_spark.redaction import redact
from persona_spark.runtime.checkpoint import checkpoint
from persona_spark.runtime.frames import union_all


def label_schema(id_col: str) -> str:
    return (
        f"{id_col} int, personas array<string>, persona_idx array<int>, status string, error string, "
        "model string, prompt_version string, persona_set_version string, history_hash string, "
        "prompt_tokens int, completion_tokens int, latency_ms int, attempts int, answer string, ts timestamp, "
        "cached_prompt_tokens int, channel string"
    )


def label_columns(id_col: str) -> list[str]:
    return [part.split()[0] for part in label_schema(id_col).split(", ")]


@dataclass(frozen=True)
class CacheKey:
    """What makes a cached answer reusable besides the entity and its history hash."""

    model: str
    prompt_version: str
    persona_set_version: str


def now_micros() -> int:
    return time.time_ns() // 1000


def make_row(id_col: str, entity_id: int, history_hash: str, key: CacheKey, verdict: Verdict, **extra) -> dict:
    """One label row, as the journal and the cache tables store it. Its free text (the error, the raw answer)
    quotes the provider, which may echo the key: redacted here, where every label row is made."""
    answer = extra.get("answer")
    return {
        id_col: int(entity_id),
        "personas": list(verdict.personas),
        "persona_idx": list(verdict.persona_idx),
        "status": verdict.status,
        "error": verdict.error and redact(verdict.error),
        "model": key.model,
        "prompt_version": key.prompt_version,
        "persona_set_version": key.persona_set_version,
        "history_hash": history_hash,
        "prompt_tokens": extra.get("prompt_tokens", 0),
        "completion_tokens": extra.get("completion_tokens", 0),
        "latency_ms": extra.get("latency_ms", 0),
        "attempts": extra.get("attempts", 0),
        "answer": answer and redact(answer),
        "ts": extra.get("ts") or now_micros(),
        "cached_prompt_tokens": extra.get("cached_prompt_tokens", 0),
        "channel": extra.get("channel", "offline"),  # sync | batch: priced at its own rates; offline: no tokens
    }


def rows_frame(rows: list[dict], id_col: str) -> pd.DataFrame:
    """Journal-style rows (ts in epoch microseconds) -> the pandas frame of ``label_schema``."""
    frame = pd.DataFrame(rows, columns=label_columns(id_col))
    frame["ts"] = pd.to_datetime(frame["ts"].astype("int64"), unit="us", utc=True)
    return frame


def entities_of(pdf: pd.DataFrame, id_col: str, history_format: HistoryFormat) -> list[Entity]:
    return [history_format.entity_of(int(i), history, h) for i, history, h in zip(pdf[id_col], pdf["history"], pdf["history_hash"])]


def split_evenly(total: int, parts: int) -> list[int]:
    """Token usage of a multi-entity request, shared so that the parts add up to the total."""
    base, rest = divmod(total, parts)
    return [base + (i < rest) for i in range(parts)]


@dataclass(frozen=True)
class EntityKind:
    name: str  # user | item
    id_col: str
    table: str  # the cache table


KINDS = {"user": EntityKind("user", "user_idx", tables.USER_LABELS),
         "item": EntityKind("item", "item_idx", tables.ITEM_LABELS)}


class LabelCache(Protocol):
    """The cache tables as labeling sees them (the stages implement it over the run's tables): answers
    paid for, item embeddings, the Batch API ledger. Nothing else is read or written from here."""

    spark: object

    def read(self, name: str) -> DataFrame | None:
        """The table, or None before anything was cached in it."""

    def append(self, name: str, rows: DataFrame) -> None:
        """Commit ``rows`` in one append."""

    def replace(self, name: str, rows: DataFrame) -> None:
        """Overwrite the table with ``rows`` (materialized by the caller)."""


class MemoryCache:
    """A ``LabelCache`` without a table store: the cache tables live in this Spark application, so a
    notebook labels without a warehouse. Each append is materialized once (a local checkpoint): an
    answer paid for is never asked again while the cache lives, and is gone with the application."""

    def __init__(self, spark):
        self.spark = spark
        self._parts: dict[str, list[DataFrame]] = {}

    def read(self, name: str) -> DataFrame | None:
        parts = self._parts.get(name)
        return union_all(parts) if parts else None

    def append(self, name: str, rows: DataFrame) -> None:
        self._parts.setdefault(name, []).append(checkpoint(rows))

    def replace(self, name: str, rows: DataFrame) -> None:
        self._parts[name] = [checkpoint(rows)]


class BoundLabeler:
    """A labeler tied to one labeling. ``paid`` ones get journaled chunks, a progress log and a cost estimate."""

    paid = False
    key: CacheKey

    def label(self, requests: DataFrame, journal_folder: str | None = None) -> DataFrame:
        raise NotImplementedError

    def cache_rows(self) -> dict[str, DataFrame]:
        """``{cache table: rows}`` the labeler made for its own caches since the last call; the
        caller stores them (the labeler writes nothing)."""
        return {}


def validated(section: type[Section], fields: dict, owner: str) -> Section:
    """``section(**fields)``; a wrong name or value is a ``UserError`` naming the argument."""
    try:
        return section(**fields)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(arguments)'}: {e['msg']}" for e in error.errors())
        raise UserError(f"{owner}: {problems}") from None


class Labeler:
    """A labeling backend with its settings: the constructor takes the fields of ``section``."""

    section: type[Section]
    backend: str  # the ``labeling.backend`` value that picks this labeler from a configuration

    def __init__(self, **fields):
        self.conf = validated(self.section, fields, type(self).__name__)

    def changed(self) -> dict:
        """The settings that differ from their defaults."""
        return self.conf.model_dump(exclude_defaults=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.changed().items())})"

    def bind(self, labeling: LabelingConf, persona_set: PersonaSet, kind: EntityKind, cache: LabelCache) -> BoundLabeler:
        """The labeler for ``kind`` entities and ``persona_set``, with the prompts and limits of
        ``labeling`` (its backend sections are this object's business, not read here)."""
        raise NotImplementedError
