"""Cold start through personas: items for a customer with no history, customers for a new item.

A new customer picks personas at sign-up: the query is the mean of those personas' trained LGCN3
embeddings, scored by inner product against item embeddings.

A seller tags a new product with its target personas: customers are ranked by how much of their
buying goes to products carrying those personas, times activity^γ. Inner products of user
embeddings do not work for this direction: BPR only orders items *within* one user, so user scores
are not comparable across users and lose to plain activity (``benchmarks/cold_start.py`` compares
both). The purchase share keeps the persona signal and the activity keeps the base rate; γ is chosen
on validation items, never on the held-out test items.

Where no chosen persona carries any signal (none given, or a persona without a single edge in the
training graph) the answer is the popularity ranking, which is also the baseline the benchmark beats.

numpy only (no torch, no Spark): notebooks and serving load a trained run with ``from_run``.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
import scipy.sparse as sp

from persona_spark.personas import PersonaSet
from persona_spark.recommend.data import RecData
from persona_spark.tables import storage

EMBEDDINGS_FILE = "embeddings.npz"
PERSONAS = "personas"
POPULARITY = "popularity"
NO_MATCH_SHARE = 1e-3  # customers with no matching purchase still rank among themselves by activity


@dataclass(frozen=True)
class Ranking:
    """Top-k indices (items or users), their scores, and which method produced them."""

    indices: np.ndarray
    scores: np.ndarray
    method: str  # PERSONAS or POPULARITY (the fallback)


@dataclass(frozen=True)
class ColdStartModel:
    """What cold start needs from a trained LGCN3 run and the graph it was trained on."""

    item_embeddings: np.ndarray  # (n_items, dim)
    persona_embeddings: np.ndarray  # (n_personas, dim)
    persona_names: tuple[str, ...]
    item_popularity: np.ndarray  # training purchases per item
    user_activity: np.ndarray  # training purchases per user
    # (n_users, n_personas): share of each customer's training purchases going to items tagged with
    # each persona (an item's purchase split evenly over its tags)
    user_persona_share: np.ndarray
    persona_known: np.ndarray  # bool per persona: it had at least one edge in the training graph
    # query="centroid": per persona, the mean final embedding of the training users labelled with it
    user_centroids: np.ndarray | None = None
    query: Literal["embedding", "centroid"] = "embedding"
    activity_exponent: float = 0.5  # γ in share · activity^γ (audiences of new items)

    def __post_init__(self) -> None:
        _check_personas(self.persona_embeddings)
        n_personas, n_users = len(self.persona_embeddings), len(self.user_activity)
        for name, size, expected in (("persona_names", len(self.persona_names), n_personas),
                                     ("persona_known", len(self.persona_known), n_personas),
                                     ("item_popularity", len(self.item_popularity), len(self.item_embeddings)),
                                     ("user_persona_share", self.user_persona_share.shape, (n_users, n_personas))):
            if size != expected:
                raise ValueError(f"{name} has shape {size}, expected {expected}")
        if self.query not in ("embedding", "centroid"):
            raise ValueError(f"query must be 'embedding' or 'centroid', not {self.query!r}")
        if self.query == "centroid" and self.user_centroids is None:
            raise ValueError("query='centroid' needs user_centroids")

    @classmethod
    def from_training(cls, data: RecData, user_embeddings, item_embeddings, persona_embeddings,
                      **options) -> ColdStartModel:
        """Embeddings of a run trained on ``data`` (the graph it saw decides what is popular and known)."""
        _check_personas(persona_embeddings)
        return cls(item_embeddings=np.asarray(item_embeddings, np.float32),
                   persona_embeddings=np.asarray(persona_embeddings, np.float32),
                   persona_names=data.persona_names or tuple(str(p) for p in range(data.n_personas)),
                   **graph_counts(data), user_centroids=persona_centroids(data, user_embeddings, persona_embeddings),
                   **options)

    @classmethod
    def from_run(cls, model_dir: str, with_users: bool = True, **options) -> ColdStartModel:
        """A run saved by ``TrainResult.save`` (any location); ``with_users=False`` leaves the customer side
        empty (new-customer recommendations need only personas and items)."""
        path = storage.join(str(model_dir), EMBEDDINGS_FILE)
        if not storage.exists(path):
            raise FileNotFoundError(f"{path} not found: run the 'train' stage with recommend.train.model=lgcn3 first")
        with np.load(io.BytesIO(storage.read_bytes(path))) as stored:  # npz members load lazily: the customer side only when asked for
            personas = stored["personas"]
            _check_personas(personas)  # a run without personas saved no cold-start fields either
            activity = stored["user_activity"] if with_users else np.empty(0, np.int64)
            share = stored["user_persona_share"] if with_users else np.empty((0, len(personas)), np.float32)
            return cls(item_embeddings=stored["items"], persona_embeddings=personas,
                       persona_names=tuple(stored["persona_names"].tolist()),
                       item_popularity=stored["item_popularity"], user_activity=activity, user_persona_share=share,
                       persona_known=stored["persona_known"], user_centroids=stored.get("user_centroids"), **options)

    # ---- persona names -------------------------------------------------------------------
    @cached_property
    def _persona_set(self) -> PersonaSet:
        """Built once per model: batch jobs resolve names for every query."""
        return PersonaSet(self.persona_names, ("",) * len(self.persona_names), title="trained personas")

    def persona_indices(self, personas: Iterable[str | int]) -> list[int]:
        """Indices of persona names (exact, then case/space-normalized) or indices; unknown ones raise."""
        indices = []
        for persona in personas:
            if isinstance(persona, (int, np.integer)):
                if not 0 <= persona < len(self.persona_names):
                    raise KeyError(f"persona index {persona} is outside 0..{len(self.persona_names) - 1}")
                indices.append(int(persona))
            else:
                indices.append(self._persona_set.index_of(persona))
        return indices

    def persona_query(self, personas: Iterable[str | int]) -> np.ndarray | None:
        """Mean vector of the chosen personas that carry signal, to score items (None when none does)."""
        useful = [p for p in self.persona_indices(personas) if self.persona_known[p]]
        if not useful:
            return None
        vectors = self.user_centroids if self.query == "centroid" else self.persona_embeddings
        return vectors[useful].mean(axis=0)

    # ---- the two cold-start questions ----------------------------------------------------
    def recommend_for_personas(self, personas: Sequence[str | int], k: int,
                               exclude: Sequence[int] = ()) -> Ranking:
        """Top-``k`` items for a customer with no history who chose ``personas``."""
        query = self.persona_query(personas)
        scores = None if query is None else self.item_embeddings @ query
        return top_k_ranking(scores, self.item_popularity, k, exclude)

    def audience_for_item(self, item_personas: Sequence[str | int], k: int,
                          exclude: Sequence[int] = ()) -> Ranking:
        """The ``k`` customers most likely to want a new item tagged with ``item_personas``."""
        tags = sorted(set(self.persona_indices(item_personas)))
        share = self.user_persona_share[:, tags].sum(axis=1, dtype=np.float64)
        scores = audience_scores(share, self.user_activity, self.activity_exponent) if share.any() else None
        return top_k_ranking(scores, self.user_activity, k, exclude)


def audience_scores(share: np.ndarray, activity: np.ndarray, exponent: float) -> np.ndarray:
    """share · activity^γ, with a floor so customers without a matching purchase keep their activity order."""
    return (np.asarray(share, np.float64) + NO_MATCH_SHARE) * np.power(np.asarray(activity, np.float64), exponent)


def top_k_ranking(scores: np.ndarray | None, popularity: np.ndarray, k: int, exclude: Sequence[int]) -> Ranking:
    """Top ``k`` by ``scores``, or by ``popularity`` when there are none (the fallback)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    method = POPULARITY if scores is None else PERSONAS
    scores = np.array(popularity if scores is None else scores, np.float64)
    scores[np.asarray(exclude, np.int64)] = -np.inf
    k = min(k, len(scores) - len(set(exclude)))
    # every candidate tied with the k-th best stays in, so ties go to the lower index (a stable order)
    candidates = np.flatnonzero(scores >= -np.partition(-scores, k - 1)[k - 1]) if k < len(scores) \
        else np.arange(len(scores))
    top = candidates[np.lexsort((candidates, -scores[candidates]))][:k]
    return Ranking(indices=top, scores=scores[top], method=method)


def _check_personas(persona_embeddings) -> None:
    if persona_embeddings is None or np.ndim(persona_embeddings) != 2 or not len(persona_embeddings):
        raise ValueError("cold start needs persona embeddings: train lgcn3 or algcn3, not a model without personas")


def graph_counts(data: RecData) -> dict[str, np.ndarray]:
    """Popularity of items, activity and persona purchase share of users, and which personas had an
    edge, in ``data``'s training graph."""
    known = np.zeros(data.n_personas, bool)
    known[data.user_personas[:, 1]] = True
    known[data.item_personas[:, 1]] = True
    activity = np.bincount(data.train[:, 0], minlength=data.n_users)
    return {"item_popularity": np.bincount(data.train[:, 1], minlength=data.n_items),
            "user_activity": activity, "user_persona_share": persona_purchase_share(data, activity),
            "persona_known": known}


def persona_purchase_share(data: RecData, activity: np.ndarray) -> np.ndarray:
    """(n_users, n_personas) share of each user's training purchases on items tagged with each persona."""
    tags = np.unique(data.item_personas, axis=0) if len(data.item_personas) else np.empty((0, 2), np.int64)
    per_item = np.bincount(tags[:, 0], minlength=data.n_items)
    item_tags = sp.csr_matrix((1.0 / per_item[tags[:, 0]], (tags[:, 0], tags[:, 1])),
                              shape=(data.n_items, data.n_personas))
    purchases = sp.csr_matrix((np.ones(len(data.train)), (data.train[:, 0], data.train[:, 1])),
                              shape=(data.n_users, data.n_items))
    mass = (purchases @ item_tags).toarray()
    return (mass / np.maximum(activity, 1)[:, None]).astype(np.float32)


def persona_centroids(data: RecData, user_embeddings, persona_embeddings) -> np.ndarray:
    """Per persona the mean final embedding of its labelled users; a persona without any keeps its own."""
    sums = np.array(persona_embeddings, np.float64, copy=True)
    pairs = data.user_personas
    counts = np.bincount(pairs[:, 1], minlength=data.n_personas)
    if len(pairs):
        sums[counts > 0] = 0.0
        np.add.at(sums, pairs[:, 1], np.asarray(user_embeddings, np.float64)[pairs[:, 0]])
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
