"""MF, LightGCN, LGCN and LGCN3 as one family: an embedding per graph node plus a propagation.

Every model keeps one embedding table over the node layout of ``spectral`` (users, items, then
personas for LGCN3) and exposes ``propagate()`` — the final embeddings of all nodes — so training,
evaluation and cold start treat them alike. A-LGCN3 is LGCN3 trained with a de-correlation loss
(``train``), not a different network.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from persona_spark.recommend.data import RecData
from persona_spark.recommend.spectral import EigenCache, normalized_adjacency

MODELS = ("mf", "lightgcn", "lgcn", "lgcn3", "algcn3")
WITH_PERSONAS = {"lgcn3", "algcn3"}


class Recommender(nn.Module):
    def __init__(self, n_users: int, n_items: int, n_personas: int, dim: int):
        super().__init__()
        self.n_users, self.n_items, self.n_personas = n_users, n_items, n_personas
        self.embedding = nn.Embedding(n_users + n_items + n_personas, dim)
        nn.init.normal_(self.embedding.weight, std=0.1)

    def propagate(self) -> torch.Tensor:
        """Final embeddings of all nodes (users, items, personas)."""
        raise NotImplementedError

    def propagate_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Final embeddings of the nodes ``rows`` only (a training batch needs no more)."""
        return self.propagate()[rows]

    def split(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(users, items, personas) blocks of a node-embedding matrix."""
        return torch.split(nodes, [self.n_users, self.n_items, self.n_personas])


class MF(Recommender):
    """Matrix factorization: the embeddings themselves (BPR-MF when trained with BPR)."""

    def propagate(self) -> torch.Tensor:
        return self.embedding.weight


class LightGCN(Recommender):
    """He et al. (SIGIR '20): mean of E, ÂE, …, Â^L E over the user–item graph."""

    def __init__(self, adjacency: sp.csr_matrix, n_users: int, n_items: int, dim: int, layers: int = 3):
        super().__init__(n_users, n_items, 0, dim)
        coo = adjacency.tocoo()
        indices = torch.as_tensor(np.vstack([coo.row, coo.col]), dtype=torch.long)
        self.register_buffer("adjacency", torch.sparse_coo_tensor(indices, torch.as_tensor(coo.data, dtype=torch.float32), coo.shape).coalesce())
        self.layers = layers

    def propagate(self) -> torch.Tensor:
        layer = self.embedding.weight.float()
        total = layer
        for _ in range(self.layers):
            layer = torch.sparse.mm(self.adjacency, layer)
            total = total + layer
        return total / (self.layers + 1)


class LGCN(Recommender):
    """Yu et al. (AAAI '22): one spectral layer E1 = U·diag(θ)·Uᵀ·E0, sum pooling E0 + ½E1.

    ``basis`` holds the eigenvectors of the k smallest normalized-Laplacian eigenvalues of the
    bi- or tripartite graph; θ (one gain per eigenvector) is learned. With personas in the graph
    (LGCN3) the persona embeddings are trainable nodes like the others.
    """

    def __init__(self, basis: np.ndarray, n_users: int, n_items: int, n_personas: int, dim: int):
        super().__init__(n_users, n_items, n_personas, dim)
        if basis.shape[0] != n_users + n_items + n_personas:
            raise ValueError(f"basis has {basis.shape[0]} rows for {n_users + n_items + n_personas} nodes")
        self.register_buffer("basis", torch.as_tensor(basis, dtype=torch.float32))
        self.theta = nn.Parameter(torch.ones(basis.shape[1]))

    def propagate(self) -> torch.Tensor:
        return self.propagate_rows(None)

    def propagate_rows(self, rows: torch.Tensor | None) -> torch.Tensor:
        # Uᵀ·E0 needs every node; U·(…) only the requested rows, which saves a third of a step.
        ego = self.embedding.weight
        filtered = self.theta[:, None] * (self.basis.T @ ego)
        if rows is None:
            return ego + 0.5 * (self.basis @ filtered)
        return ego[rows] + 0.5 * (self.basis[rows] @ filtered)


def build_model(name: str, data: RecData, dim: int, eigen_k: int, lightgcn_layers: int,
                persona_edge_weight: float, cache: EigenCache | None = None) -> Recommender:
    """The model ``name`` (one of MODELS) on the training graph of ``data``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {MODELS}")
    if name == "mf":
        return MF(data.n_users, data.n_items, 0, dim)
    with_personas = name in WITH_PERSONAS
    if with_personas and not (len(data.user_personas) or len(data.item_personas)):
        raise ValueError(f"{name} needs persona edges, but the data has no user or item personas")
    adjacency = normalized_adjacency(data, with_personas, persona_edge_weight)
    if name == "lightgcn":
        return LightGCN(adjacency, data.n_users, data.n_items, dim, lightgcn_layers)
    _, basis = (cache or EigenCache()).lowpass_basis(adjacency, min(eigen_k, adjacency.shape[0]))
    return LGCN(basis, data.n_users, data.n_items, data.n_personas if with_personas else 0, dim)


def correlation_penalty(embeddings: torch.Tensor) -> torch.Tensor:
    """AFDGCF's de-correlation term: Frobenius norm of the upper triangle of the column correlations."""
    centered = embeddings - embeddings.mean(dim=0, keepdim=True)
    normalized = centered / (centered.norm(dim=0, keepdim=True) + 1e-8)
    correlation = normalized.T @ normalized
    return torch.triu(correlation, diagonal=1).norm()
