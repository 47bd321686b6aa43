"""Single-machine references for the Spark engine: exact scipy, and the paper's RevAff.

Both take the graph as index arrays (one entry per edge) and L as a dense (|U| × |R|) array, and
return Ψ as a dense (|U| × |R|) array. They are for tests and benchmarks: everything lives in
one process's memory.
"""

from __future__ import annotations

import heapq

import numpy as np
import scipy.sparse as sp


def transition_matrices(user_idx: np.ndarray, item_idx: np.ndarray, n_users: int, n_items: int,
                        weights: np.ndarray | None = None) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """P (users × items) and P' (items × users), each row-normalized; empty rows stay zero."""
    w = np.ones(len(user_idx)) if weights is None else np.asarray(weights, dtype=np.float64)
    adjacency = sp.csr_matrix((w, (user_idx, item_idx)), shape=(n_users, n_items))

    def row_normalize(m: sp.csr_matrix) -> sp.csr_matrix:
        sums = np.asarray(m.sum(axis=1)).ravel()
        inverse = np.divide(1.0, sums, out=np.zeros_like(sums), where=sums > 0)
        return sp.csr_matrix(sp.diags(inverse) @ m)

    return row_normalize(adjacency), row_normalize(adjacency.T.tocsr())


def exact_affinity(user_idx: np.ndarray, item_idx: np.ndarray, labels: np.ndarray, ell: int,
                   n_items: int | None = None, weights: np.ndarray | None = None) -> np.ndarray:
    """Ψ = (1/ℓ̂) Σ_{ℓ=1..ℓ̂} (P P')^ℓ L by sparse × dense products, all personas at once."""
    n_items = n_items if n_items is not None else int(item_idx.max()) + 1
    P, P_t = transition_matrices(user_idx, item_idx, labels.shape[0], n_items, weights)
    state, total = np.asarray(labels, dtype=np.float64), np.zeros(labels.shape)
    for _ in range(ell):
        state = P @ (P_t @ state)
        total += state
    return total / ell


def rev_aff(user_idx: np.ndarray, item_idx: np.ndarray, labels: np.ndarray, ell: int, eps: float,
            n_items: int | None = None, weights: np.ndarray | None = None) -> np.ndarray:
    """The paper's RevAff (Algorithm 2): per persona, a level-by-level reverse push with a max-heap.

    For persona r the residues start at the labelled users (level 0 = L[:, r]). Level k's
    residues are popped largest first; each popped residue at node x is settled — added to
    Ψ[:, r]/ℓ̂ if x is a user at an even level ≥ 2 — and pushed to x's neighbours y at level
    k+1 with weight P or P' [y, x]. From level 1 on, popping stops at the first residue below
    θ = ε/(2ℓ̂): the heap order guarantees every remaining one is smaller, and they are dropped.
    That is exactly the engine's "prune entries below ε/(2ℓ̂) after each hop", so both share
    the error bound 0 ≤ Ψ − Ψ̂ ≤ (ℓ̂+1)θ ≤ ε (proof in ``engine``).
    """
    n_users, n_personas = labels.shape
    n_items = n_items if n_items is not None else int(item_idx.max()) + 1
    P, P_t = transition_matrices(user_idx, item_idx, n_users, n_items, weights)
    # Pushing from x reaches the y with an entry in column x of the hop matrix: the rows of its transpose.
    push_from_user, push_from_item = P_t.T.tocsr(), P.T.tocsr()
    theta = eps / (2 * ell)
    psi = np.zeros((n_users, n_personas))
    for r in range(n_personas):
        residues = {int(u): float(v) for u, v in enumerate(labels[:, r]) if v != 0}
        for level in range(2 * ell + 1):
            heap = [(-abs(v), x, v) for x, v in residues.items()]
            heapq.heapify(heap)
            at_user = level % 2 == 0
            push = push_from_user if at_user else push_from_item
            following: dict[int, float] = {}
            while heap:
                magnitude, x, value = heapq.heappop(heap)
                if level > 0 and -magnitude < theta:
                    break
                if at_user and level > 0:
                    psi[x, r] += value / ell
                if level < 2 * ell:
                    start, end = push.indptr[x], push.indptr[x + 1]
                    for y, weight in zip(push.indices[start:end], push.data[start:end]):
                        following[int(y)] = following.get(int(y), 0.0) + weight * value
            residues = following
    return psi
