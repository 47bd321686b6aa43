"""Cold start through personas: items for a customer with no history, customers for a new item.

A new customer picks personas at sign-up; a seller tags a new product with its target personas.
Either way the query is the mean of those personas' trained LGCN3 embeddings, scored by inner
product against item (or user) embeddings. Where no chosen persona carries any signal (none
given, or a persona without a single edge in the training graph, whose embedding never learned
anything) the answer is the popularity ranking, which is also the baseline the benchmark beats.

numpy only (no torch, no Spark): notebooks and serving load a trained run with ``from_run``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np

from persona_spark.personas import PersonaSet
from persona_spark.recommend.data import RecData

EMBEDDINGS_FILE = "embeddings.npz"
PERSONAS = "personas"
POPULARITY = "popularity"


@dataclass(frozen=True)
class Ranking:
    """Top-k indices (items or users), their scores, and which method produced them."""

    indices: np.ndarray
    scores: np.ndarray
    method: str  # PERSONAS or POPULARITY (the fallback)


@dataclass(frozen=True)
class ColdStartModel:
    """Final embeddings of a trained LGCN3 run plus the counts the popularity fallback needs."""

    user_embeddings: np.ndarray  # (n_users, dim)
    item_embeddings: np.ndarray  # (n_items, dim)
    persona_embeddings: np.ndarray  # (n_personas, dim)
    persona_names: tuple[str, ...]
    item_popularity: np.ndarray  # training purchases per item
    user_activity: np.ndarray  # training purchases per user
    persona_known: np.ndarray  # bool per persona: it had at least one edge in the training graph
    # Alternative queries (query="centroid"): per persona, the mean final embedding of the training
    # users labelled with it (to score items) and of the items tagged with it (to score users).
    user_centroids: np.ndarray | None = None
    item_centroids: np.ndarray | None = None
    query: Literal["embedding", "centroid"] = "embedding"

    def __post_init__(self) -> None:
        _check_personas(self.persona_embeddings)
        n_personas = len(self.persona_embeddings)
        for name, values, size in (("persona_names", self.persona_names, n_personas),
                                   ("persona_known", self.persona_known, n_personas),
                                   ("item_popularity", self.item_popularity, len(self.item_embeddings)),
                                   ("user_activity", self.user_activity, len(self.user_embeddings))):
            if len(values) != size:
                raise ValueError(f"{name} has {len(values)} entries for {size} embeddings")
        if self.query not in ("embedding", "centroid"):
            raise ValueError(f"query must be 'embedding' or 'centroid', not {self.query!r}")
        if self.query == "centroid" and (self.user_centroids is None or self.item_centroids is None):
            raise ValueError("query='centroid' needs user_centroids and item_centroids")

    @classmethod
    def from_training(cls, data: RecData, user_embeddings, item_embeddings, persona_embeddings,
                      query: str = "embedding") -> "ColdStartModel":
        """Embeddings of a run trained on ``data`` (the graph it saw decides what is popular and known)."""
        _check_personas(persona_embeddings)
        users, items = np.asarray(user_embeddings, np.float32), np.asarray(item_embeddings, np.float32)
        return cls(
            user_embeddings=users, item_embeddings=items,
            persona_embeddings=np.asarray(persona_embeddings, np.float32),
            persona_names=data.persona_names or tuple(str(p) for p in range(data.n_personas)),
            **graph_counts(data), **persona_centroids(data, users, items, persona_embeddings), query=query,
        )

    @classmethod
    def from_run(cls, model_dir: str | Path, with_users: bool = True, query: str = "embedding") -> "ColdStartModel":
        """A run saved by ``TrainResult.save``; ``with_users=False`` leaves the user side empty
        (new-customer recommendations need only personas and items)."""
        path = Path(model_dir) / EMBEDDINGS_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run the 'train' stage with recommend.model=lgcn3 first")
        with np.load(path) as stored:  # npz members load lazily: users only when asked for
            users = stored["users"] if with_users else np.empty((0, stored["items"].shape[1]), np.float32)
            activity = stored["user_activity"] if with_users else np.empty(0, np.int64)
            return cls(user_embeddings=users, item_embeddings=stored["items"],
                       persona_embeddings=stored["personas"], persona_names=tuple(stored["persona_names"].tolist()),
                       item_popularity=stored["item_popularity"], user_activity=activity,
                       persona_known=stored["persona_known"], user_centroids=stored["user_centroids"],
                       item_centroids=stored["item_centroids"], query=query)

    # ---- persona names -------------------------------------------------------------------
    def persona_indices(self, personas: Iterable[str | int]) -> list[int]:
        """Indices of persona names (exact, then case/space-normalized) or indices; unknown ones raise."""
        persona_set = PersonaSet(self.persona_names, ("",) * len(self.persona_names), title="trained personas")
        indices = []
        for persona in personas:
            if isinstance(persona, (int, np.integer)):
                if not 0 <= persona < len(self.persona_names):
                    raise KeyError(f"persona index {persona} is outside 0..{len(self.persona_names) - 1}")
                indices.append(int(persona))
            else:
                indices.append(persona_set.index_of(persona))
        return indices

    def persona_query(self, personas: Iterable[str | int], side: str = "items") -> np.ndarray | None:
        """Mean vector of the chosen personas that carry signal (None when none does), to score
        ``side`` ("items" or "users")."""
        useful = [p for p in self.persona_indices(personas) if self.persona_known[p]]
        if not useful:
            return None
        if self.query == "centroid":
            vectors = self.user_centroids if side == "items" else self.item_centroids
        else:
            vectors = self.persona_embeddings
        return vectors[useful].mean(axis=0)

    # ---- the two cold-start questions ----------------------------------------------------
    def recommend_for_personas(self, personas: Sequence[str | int], k: int,
                               exclude: Sequence[int] = ()) -> Ranking:
        """Top-``k`` items for a customer with no history who chose ``personas``."""
        return _rank(self.persona_query(personas), self.item_embeddings, self.item_popularity, k, exclude)

    def audience_for_item(self, item_personas: Sequence[str | int], k: int,
                          exclude: Sequence[int] = ()) -> Ranking:
        """The ``k`` customers most likely to want a new item tagged with ``item_personas``."""
        return _rank(self.persona_query(item_personas, "users"), self.user_embeddings, self.user_activity, k, exclude)


def _rank(query: np.ndarray | None, candidates: np.ndarray, popularity: np.ndarray, k: int,
          exclude: Sequence[int]) -> Ranking:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if query is None:
        scores, method = popularity.astype(np.float64), POPULARITY
    else:
        scores, method = candidates @ query, PERSONAS
    scores = scores.astype(np.float64, copy=True)
    scores[np.asarray(exclude, np.int64)] = -np.inf
    k = min(k, len(scores) - len(set(exclude)))
    top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    # ties broken by index, so equal popularity gives a stable order
    top = top[np.lexsort((top, -scores[top]))]
    return Ranking(indices=top, scores=scores[top], method=method)


def _check_personas(persona_embeddings) -> None:
    if persona_embeddings is None or np.ndim(persona_embeddings) != 2 or not len(persona_embeddings):
        raise ValueError("cold start needs persona embeddings: train lgcn3 or algcn3, not a model without personas")


def graph_counts(data: RecData) -> dict[str, np.ndarray]:
    """Popularity of items, activity of users and which personas had an edge, in ``data``'s training graph."""
    known = np.zeros(data.n_personas, bool)
    known[data.user_personas[:, 1]] = True
    known[data.item_personas[:, 1]] = True
    return {"item_popularity": np.bincount(data.train[:, 1], minlength=data.n_items),
            "user_activity": np.bincount(data.train[:, 0], minlength=data.n_users),
            "persona_known": known}


def persona_centroids(data: RecData, user_embeddings, item_embeddings, persona_embeddings) -> dict[str, np.ndarray]:
    """Per persona the mean final embedding of its labelled users and of its tagged items; a
    persona without any keeps its own embedding there."""
    out = {}
    for name, pairs, embeddings in (("user_centroids", data.user_personas, user_embeddings),
                                    ("item_centroids", data.item_personas, item_embeddings)):
        sums = np.array(persona_embeddings, np.float64, copy=True)
        counts = np.bincount(pairs[:, 1], minlength=data.n_personas)
        if len(pairs):
            sums[counts > 0] = 0.0
            np.add.at(sums, pairs[:, 1], np.asarray(embeddings, np.float64)[pairs[:, 0]])
        out[name] = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
    return out
