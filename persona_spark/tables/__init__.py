"""Every table of a run, in one place: its name, the stage that writes it, what a row is.

Stages read and write through these constants, and the report names ``WRITTEN_BY[table]`` when a
table it needs is missing, so a renamed table or a moved writer is one edit here. Tables whose name
is a setting (``evaluate.reference_table``, ``recommend.export.user_personas_table``, ...) default to one
of these.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TableInfo:
    name: str
    written_by: str  # the CLI stage that writes it ("input" when the user provides it)
    description: str


TABLES: dict[str, TableInfo] = {}


def _table(name: str, written_by: str, description: str) -> str:
    TABLES[name] = TableInfo(name, written_by, description)
    return name


# sources
RAW_TRANSACTIONS = _table("raw_transactions", "generate", "the demo shop's purchase lines, before ingest")
PLANTED_PERSONAS = _table("planted_personas", "generate", "the demo shop's true personas per customer")
PERSONA_SET = _table("persona_set", "generate", "persona_idx, name, description of the run's persona set")
TRANSACTIONS = _table("transactions", "ingest", "validated purchase lines in the canonical columns")
QUARANTINE = _table("quarantine", "ingest", "rejected source lines, one reason each; a source batch ingested again "
                    "replaces its own rows")
USERS = _table("users", "build-graph", "customer_id -> user_idx, degree")
ITEMS = _table("items", "build-graph", "item_id -> item_idx, item_name, degree")
EDGES = _table("edges", "build-graph", "user-item purchase edges with their train/test split")
EDGE_TILES = _table("edge_tiles", "build-graph", "the train edges cut into the affinity engine's tiles, with their "
                    "layout and the edges version they were cut from")
REFERENCE_PERSONAS = _table("reference_personas", "load-paper-split", "the paper's GPT-4 user labels")
REFERENCE_ITEM_PERSONAS = _table("reference_item_personas", "load-paper-split", "the paper's GPT-4 item labels")

# labeling
USER_LABELS = _table("user_labels", "label-users", "append-only cache of every user answer paid for")
ITEM_LABELS = _table("item_labels", "label-items", "append-only cache of every item answer")
ITEM_EMBEDDINGS = _table("item_embeddings", "label-users", "product-name embeddings of the offline labeler")
BATCH_LEDGER = _table("label_batches", "label-users", "Batch API submissions, so a rerun collects them")
GENERATED_PERSONA_SETS = _table("generated_persona_sets", "generate-personas", "persona sets an LLM wrote")

# gplr and its refresh record
PERSONAS = _table("personas", "gplr", "user_idx, persona_idx, score, rank, source, probability, percentile")
GPLR_PROTOTYPES = _table("gplr_prototypes", "gplr", "the users GPLR asked the labeler about, per round")
GPLR_RUNS = _table("gplr_runs", "gplr", "one row per gplr run: settings, tokens, details (appended)")
PERSONA_HISTORY = _table("persona_history", "gplr", "every persona a customer held, valid_from/valid_to")
PERSONA_TRANSITIONS = _table("persona_transitions", "gplr", "customers gained/lost per persona between runs")
PERSONA_FLOWS = _table("persona_flows", "gplr", "customers moving from one persona to another between runs")
PERSONA_CATALOG = _table("persona_catalog", "gplr", "per run and persona: size and the products it buys")
PERSONA_CALIBRATION = _table("persona_calibration", "gplr", "reliability bins of the assignment's probabilities")
PERSONA_AUDIT = _table("persona_audit", "gplr", "per run: its agreement with the LLM on a random audit sample "
                      "(micro/macro F1, precision, recall, recall per persona) with 95 % intervals (appended)")
PERSONA_REASONS = _table("persona_reasons", "reasons", "why a customer has a persona: items and prototype neighbours "
                          "(gplr writes every row with refresh.reasons=true)")
PROTOTYPE_LABELS = _table("prototype_labels", "input", "user_idx, persona_idx[, weight]: the affinity stage's L")
AFFINITY = _table("affinity", "affinity", "Ψ in long form: user_idx, persona_idx, score")
AUDIENCE_MEMBERS = _table("audience_members", "audience", "customers matching each audience query, per run")
AUDIENCE_CHANGES = _table("audience_changes", "audience", "customers added to / removed from an audience")

# evaluation and segments
EVALUATION = _table("evaluation", "evaluate", "micro/macro F1 of a run against reference labels (appended)")
EVALUATION_PER_PERSONA = _table("evaluation_per_persona", "evaluate", "precision/recall per persona (appended)")
SEGMENTS = _table("segments", "segment", "k-means segment of every customer, per representation and k")
SEGMENT_POINTS = _table("segment_points", "segment", "3-d PCA coordinates for the report's scatter")
SILHOUETTE = _table("silhouette", "segment", "silhouette per representation and k")
SEGMENT_SUMMARY = _table("segment_summary", "segment", "top personas and products per segment")
RFM_PARTS = _table("rfm_parts", "segment", "which RFM parts the source allowed, and from what")
ROBUSTNESS = _table("robustness", "robustness", "customers whose personas / RFM stay put between halves")

# recommender
RECOMMEND_RUNS = _table("recommend_runs", "train", "one row per trained model and seed (appended)")
COLD_START_RECS = _table("cold_start_recs", "cold-start", "items per persona / new customer, customers per new item")

WRITTEN_BY: dict[str, str] = {name: info.written_by for name, info in TABLES.items()}
