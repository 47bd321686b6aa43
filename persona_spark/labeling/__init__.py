"""LLM labeling at scale: persona labels for a budget of users (and for items), cached in Delta.

The cache tables are reached only through a ``LabelCache`` the caller passes (the stages implement
it over the run's tables); any other table a labeling needs comes in as a DataFrame.

Public API (GPLR calls ``label_entities`` each round):

* ``build_user_histories(edges, items[, order])`` / ``build_item_requests(items)`` -> label requests
  (``history_order(conf)``: the order the configured user prompt lists products in; ``user_requests``
  adds the behaviour measures the embedding labeler weighs)
* ``label_entities(cache, requests, persona_set, conf, kind="user"|"item"[, backend])`` -> one label row per request
* ``estimate_labeling`` / ``DryRunEstimate`` -> tokens and cost before anything is spent
* ``make_backend(conf, persona_set, kind, cache[, recording])`` -> the configured openai / embedding / recorded
  labeler (``recording``: the rows of ``recorded.table``; ``read_recording`` reads a ``recorded.path`` file)
"""

from persona_spark.labeling.backends import CacheKey, label_schema, read_recording
from persona_spark.labeling.runner import (
    KINDS,
    DryRunEstimate,
    LabelCache,
    build_item_requests,
    build_user_histories,
    estimate_labeling,
    history_order,
    label_entities,
    make_backend,
    select_entities,
    summarize,
    user_requests,
)

__all__ = [
    "KINDS",
    "CacheKey",
    "DryRunEstimate",
    "LabelCache",
    "build_item_requests",
    "build_user_histories",
    "estimate_labeling",
    "history_order",
    "label_entities",
    "label_schema",
    "make_backend",
    "read_recording",
    "select_entities",
    "summarize",
    "user_requests",
]
