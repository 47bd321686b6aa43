"""Full-ranking evaluation: every item is a candidate, known purchases are masked out.

The metric functions take a boolean hit matrix (users × ranks) so tests can check them on small written-out cases;
``evaluate`` produces it from embeddings in user batches on whatever device they live on.
"""

from __future__ import annotations

import numpy as np
import torch

from persona_spark.recommend.data import csr

KS = (2, 5, 10, 20, 50, 100)


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def ndcg_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Per-user NDCG@k, binary gains, ideal DCG over min(|relevant|, k) hits."""
    discounts = _discounts(k)
    dcg = (hits[:, :k] * discounts[: hits[:, :k].shape[1]]).sum(axis=1)
    ideal = np.cumsum(discounts)[np.minimum(n_relevant, k) - 1]
    return dcg / ideal


def recall_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    return hits[:, :k].sum(axis=1) / n_relevant


def f1_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Per-user F1 of precision@k (hits / k) and recall@k (hits / |relevant|); 0 without hits."""
    found = hits[:, :k].sum(axis=1)
    precision, recall = found / k, found / n_relevant
    total = precision + recall
    return np.divide(2 * precision * recall, total, out=np.zeros_like(total, dtype=float), where=total > 0)


METRICS = {"ndcg": ndcg_at_k, "f1": f1_at_k, "recall": recall_at_k}


def summarize(hits: np.ndarray, n_relevant: np.ndarray, ks=KS) -> dict[str, float]:
    """Mean of every metric at every k over the rows of ``hits``."""
    return {f"{name}@{k}": float(fn(hits, n_relevant, k).mean()) for k in ks for name, fn in METRICS.items()}


def top_k(
    query: torch.Tensor,
    candidates: torch.Tensor,
    rows: np.ndarray,
    exclude: tuple[np.ndarray, np.ndarray] | None,
    k: int,
    batch_size: int = 1024,
) -> np.ndarray:
    """Indices of the ``k`` best-scoring candidates (inner product) for ``query[rows]``.

    ``exclude`` is a CSR (indptr, indices) over query rows whose candidates are never returned
    (training purchases). Scores are computed batch by batch on the tensors' device.
    """
    k = min(k, candidates.shape[0])
    out = np.empty((len(rows), k), np.int64)
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        scores = query[torch.as_tensor(batch, device=query.device)].float() @ candidates.float().T
        if exclude is not None:
            indptr, indices = exclude
            lengths = indptr[batch + 1] - indptr[batch]
            local = np.repeat(np.arange(len(batch)), lengths)
            offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            cols = indices[np.repeat(indptr[batch], lengths) + offsets]
            scores[torch.as_tensor(local, device=scores.device), torch.as_tensor(cols, device=scores.device)] = -torch.inf
        out[start : start + len(batch)] = scores.topk(k, dim=1).indices.cpu().numpy()
    return out


def hit_matrix(top: np.ndarray, rows: np.ndarray, relevant: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """hits[r, j] = whether ``top[r, j]`` is among the relevant candidates of query row ``rows[r]``."""
    indptr, indices = relevant
    n_candidates = int(max(indices.max(initial=0), top.max(initial=0))) + 1
    keys = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr)) * n_candidates + indices
    wanted = rows[:, None] * n_candidates + top
    pos = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    return keys[pos] == wanted if len(keys) else np.zeros(top.shape, bool)


def evaluate(
    query: torch.Tensor,
    candidates: torch.Tensor,
    relevant_pairs: np.ndarray,
    exclude_pairs: np.ndarray | None,
    ks=KS,
) -> dict[str, float]:
    """Mean metrics over query rows with at least one relevant candidate; others are skipped.

    Pairs are (query row, candidate) index pairs: (user, item) for recommendation, (item, user)
    when ranking customers for an item.
    """
    n_rows = query.shape[0]
    relevant = csr(relevant_pairs, n_rows)
    n_relevant = np.diff(relevant[0])
    rows = np.flatnonzero(n_relevant)
    if not len(rows):
        return {}
    exclude = csr(exclude_pairs, n_rows) if exclude_pairs is not None else None
    top = top_k(query, candidates, rows, exclude, max(ks))
    return {**summarize(hit_matrix(top, rows, relevant), n_relevant[rows], ks), "evaluated": len(rows)}
