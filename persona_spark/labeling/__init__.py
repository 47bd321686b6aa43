"""LLM labeling at scale: persona labels for a budget of users (and for items), cached.

The labeler is an object, one module per backend: ``EmbeddingLabeler`` (offline, ``embedding``),
``OpenAILabeler`` (any OpenAI-protocol endpoint, ``openai_chat``), ``OpenAIBatchLabeler`` (the Batch
API, ``batch``) and ``RecordedLabeler`` (replays recorded labels, ``recorded``); each takes the
fields of its configuration section as keyword arguments, and ``labeler_from_config(labeling_conf)``
builds the one a configuration names.

The cache tables are reached only through the ``LabelCache`` the caller passes (the stages implement
it over the run's tables; ``MemoryCache`` keeps them in the Spark application); any other table a
labeling needs comes in as a DataFrame.

* ``build_user_histories(edges, items[, order])`` / ``build_item_requests(items)`` / ``user_requests``
  -> label requests; ``select_entities`` picks the configured sample
* ``label_entities(cache, requests, persona_set, conf, kind="user"|"item", labeler)`` -> one label row per request
* ``estimate_labeling`` / ``DryRunEstimate`` -> tokens and cost before anything is spent; ``summarize``
"""

from persona_spark.labeling.base import KINDS, CacheKey, LabelCache, Labeler, MemoryCache, label_schema
from persona_spark.labeling.batch import OpenAIBatchLabeler
from persona_spark.labeling.configured import labeler_from_config
from persona_spark.labeling.embedding import EmbeddingLabeler
from persona_spark.labeling.openai_chat import OpenAILabeler
from persona_spark.labeling.recorded import RecordedLabeler, read_recording
from persona_spark.labeling.runner import (
    DryRunEstimate,
    build_item_requests,
    build_user_histories,
    estimate_labeling,
    history_order,
    label_entities,
    select_entities,
    summarize,
    user_requests,
)

__all__ = [
    "KINDS",
    "CacheKey",
    "DryRunEstimate",
    "EmbeddingLabeler",
    "LabelCache",
    "Labeler",
    "MemoryCache",
    "OpenAIBatchLabeler",
    "OpenAILabeler",
    "RecordedLabeler",
    "build_item_requests",
    "build_user_histories",
    "estimate_labeling",
    "history_order",
    "label_entities",
    "label_schema",
    "labeler_from_config",
    "read_recording",
    "select_entities",
    "summarize",
    "user_requests",
]
