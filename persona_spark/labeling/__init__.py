"""LLM labeling at scale: persona labels for a budget of users (and for items), cached in Delta.

Public API (GPLR calls ``label_entities`` each round):

* ``build_user_histories(edges, items[, order])`` / ``build_item_requests(items)`` -> label requests
  (``history_order(conf)``: the order the configured user prompt lists products in)
* ``label_entities(store, requests, persona_set, conf, kind="user"|"item")`` -> one label row per request
* ``estimate_labeling`` / ``DryRunEstimate`` -> tokens and cost before anything is spent
* ``make_backend(conf, persona_set, kind, store)`` -> the configured openai / embedding / recorded labeler
"""

from persona_spark.labeling.backends import CacheKey, label_schema
from persona_spark.labeling.runner import (
    KINDS,
    DryRunEstimate,
    build_item_requests,
    build_user_histories,
    estimate_labeling,
    history_order,
    label_entities,
    make_backend,
    select_entities,
    summarize,
)

__all__ = [
    "KINDS",
    "CacheKey",
    "DryRunEstimate",
    "build_item_requests",
    "build_user_histories",
    "estimate_labeling",
    "history_order",
    "label_entities",
    "label_schema",
    "make_backend",
    "select_entities",
    "summarize",
]
