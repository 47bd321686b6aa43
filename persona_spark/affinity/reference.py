"""Single-machine references for the Spark engine: exact scipy, and the paper's RevAff.

Both take the graph as index arrays (one entry per edge) and L as a dense (|U| × |R|) array, and
return Ψ as a dense (|U| × |R|) array. They are for tests and benchmarks: everything lives in
one process's memory.
"""

from __future__ import annotations

import heapq
from typing import Literal

import numpy as np
import scipy.sparse as sp

Degree = Literal["receiver", "sender"]  # whose degree a pushed Δ is divided by (see ``rev_aff``)


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
                   n_items: int | None = None, weights: np.ndarray | None = None,
                   degree: Degree = "receiver") -> np.ndarray:
    """Ψ = (1/ℓ̂) Σ_{ℓ=1..ℓ̂} (P P')^ℓ L (Eq. 2 and 4) by sparse × dense products, all personas at once.

    ``degree='sender'`` is the walk Algorithm 2 line 6 computes instead, (1/ℓ̂) Σ ((P P')ᵀ)^ℓ L
    (see ``rev_aff``): the exact counterpart its approximation is measured against.
    """
    n_items = n_items if n_items is not None else int(item_idx.max()) + 1
    P, P_t = transition_matrices(user_idx, item_idx, labels.shape[0], n_items, weights)
    to_items, to_users = (P_t, P) if degree == "receiver" else (P.T.tocsr(), P_t.T.tocsr())
    state, total = np.asarray(labels, dtype=np.float64), np.zeros(labels.shape)
    for _ in range(ell):
        state = to_users @ (to_items @ state)
        total += state
    return total / ell


def rev_aff(user_idx: np.ndarray, item_idx: np.ndarray, labels: np.ndarray, ell: int, eps: float,
            n_items: int | None = None, weights: np.ndarray | None = None,
            degree: Degree = "receiver") -> np.ndarray:
    """The paper's RevAff (Sec. 5.2, Algorithm 2): per persona, a reverse push with one max-heap.

    Per persona r, residues q_t and estimates Ψ̂_t live on every node for hops t = 0..2ℓ̂;
    q_0 = Ψ̂_0 = L[:, r] (line 2). The largest residue q_t[ŵ] over all hops and nodes is popped
    (line 4); every neighbour w of ŵ gets Δ added to *both* Ψ̂_{t+1}[w] (line 7) and q_{t+1}[w]
    (line 8), and q_t[ŵ] is reset (line 9). Popping stops when every residue of the hops
    t = 1..2ℓ̂ is below θ = ε/(2ℓ̂) — the text of Sec. 5.2 ranges over t = 1..2ℓ̂, so the
    labels (t = 0) are always pushed in full; hop 2ℓ̂ is never pushed (there is no hop after it).
    The result is (1/ℓ̂) Σ_ℓ Ψ̂_{2ℓ} over the users (line 10).

    Δ, and the paper's inconsistency: Eq. 2 walks *from* the user, P[u,v] = 1/|N(u)| and
    P'[v,u] = 1/|N(v)|, so pushing mass backwards from ŵ to w must divide by the *receiving*
    node's degree, Δ = q_t[ŵ]/|N(w)| (edge weight / w's weighted degree when weighted) — the
    recurrence Theorem 3's proof (App. A.2) uses. Algorithm 2 line 6 (and the recurrence in
    Sec. 5.2) divides by the *sending* node's degree, Δ = q_t[ŵ]/|N(ŵ)|, which conserves mass
    but computes the transposed walk (1/ℓ̂) Σ ((P P')ᵀ)^ℓ L, the chance that a walk from the
    prototype reaches u. ``degree='receiver'`` (the default) is Eq. 2; ``degree='sender'`` is
    line 6 as printed, compared with ``exact_affinity(degree='sender')``.

    Error. With hop matrices A_k (column ŵ, row w holds the Δ factor) the estimates satisfy
    Ψ̂_k = A_k (Ψ̂_{k-1} − q_{k-1}) with the left-over residues 0 ≤ q_{k-1} < θ (k ≥ 2) and
    q_0 = 0, so the gap e_k = x_k − Ψ̂_k to the exact level-k vector is e_k = A_k (e_{k-1} + q_{k-1}):
    non-negative, and e_k ≤ B_k := A_k (B_{k-1} + θ·1), B_1 = 0 (``push_error_bound``). For
    ``receiver`` every A_k has row sums ≤ 1, so B_{2ℓ} ≤ (2ℓ−1)θ and
    0 ≤ Ψ − Ψ̂ ≤ (1/ℓ̂) Σ_ℓ (2ℓ−1)θ = ℓ̂θ = ε/2. (Dropping sub-threshold residues instead of adding
    them, as a level-synchronous prune does, costs one more θ per output hop: (ℓ̂+1)θ, the
    engine's bound.) For ``sender`` the row sums of A_k are Σ_{ŵ∈N(w)} 1/|N(ŵ)|, which can
    exceed 1: Theorem 3's ε guarantee does not hold for line 6 as printed, only B.
    """
    n_users, n_personas = labels.shape
    n_items = n_items if n_items is not None else int(item_idx.max()) + 1
    from_user, from_item = push_matrices(user_idx, item_idx, n_users, n_items, weights, degree)
    last = 2 * ell
    theta = eps / last
    psi = np.zeros((n_users, n_personas))
    for r in range(n_personas):
        # residue[t][x] = q_t[x] and estimate[t][x] = Ψ̂_t[x], node x a user at even t, an item at odd t.
        residue: list[dict[int, float]] = [{} for _ in range(last + 1)]
        estimate: list[dict[int, float]] = [{} for _ in range(last + 1)]
        heap: list[tuple[float, int, int]] = []

        def push(t: int, x: int, value: float, residue=residue, estimate=estimate, heap=heap) -> None:
            matrix = from_user if t % 2 == 0 else from_item
            start, end = matrix.indptr[x], matrix.indptr[x + 1]
            for w, factor in zip(matrix.indices[start:end], matrix.data[start:end]):
                w, delta = int(w), factor * value
                estimate[t + 1][w] = estimate[t + 1].get(w, 0.0) + delta
                if t + 1 < last:
                    residue[t + 1][w] = residue[t + 1].get(w, 0.0) + delta
                    if residue[t + 1][w] >= theta:
                        heapq.heappush(heap, (-residue[t + 1][w], t + 1, w))

        for user in np.flatnonzero(labels[:, r]):
            push(0, int(user), float(labels[user, r]))
        while heap:
            negative, t, x = heapq.heappop(heap)
            if residue[t].get(x, 0.0) != -negative:
                continue  # stale: x received more (a fresher entry exists) or was already pushed
            residue[t][x] = 0.0
            push(t, x, -negative)
        for level in range(2, last + 1, 2):
            for user, value in estimate[level].items():
                psi[user, r] += value / ell
    return psi


def push_matrices(user_idx: np.ndarray, item_idx: np.ndarray, n_users: int, n_items: int,
                  weights: np.ndarray | None, degree: Degree) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """CSR matrices whose row x lists the Δ factors of a push from user x (to items) and from item x."""
    P, P_t = transition_matrices(user_idx, item_idx, n_users, n_items, weights)
    if degree == "receiver":
        return P_t.T.tocsr(), P.T.tocsr()  # item v receives from u with P'[v, u]; user u from v with P[u, v]
    if degree == "sender":
        return P, P_t
    raise ValueError(f"degree must be 'receiver' or 'sender', got {degree!r}")


def push_error_bound(user_idx: np.ndarray, item_idx: np.ndarray, n_users: int, ell: int, eps: float,
                     n_items: int | None = None, weights: np.ndarray | None = None,
                     degree: Degree = "receiver") -> np.ndarray:
    """Per-user upper bound on Ψ − ``rev_aff`` (one column, the same for every persona): B of its docstring."""
    n_items = n_items if n_items is not None else int(item_idx.max()) + 1
    from_user, from_item = push_matrices(user_idx, item_idx, n_users, n_items, weights, degree)
    to_items, to_users = from_user.T.tocsr(), from_item.T.tocsr()  # gather form: row w sums over senders
    theta = eps / (2 * ell)
    # B_1 = 0 (the labels are pushed in full); then B_k = A_k (B_{k-1} + θ), alternately onto users and items.
    bound_items, total = np.zeros(n_items), np.zeros(n_users)
    for _ in range(ell):
        bound_users = to_users @ (bound_items + theta)
        total += bound_users
        bound_items = to_items @ (bound_users + theta)
    return total / ell
