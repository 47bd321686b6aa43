"""MF, LightGCN, LGCN and LGCN3 as one family: an embedding per graph node plus a propagation.

Every model keeps one embedding table over the node layout of ``spectral`` (users, items, then
personas for LGCN3) and exposes ``propagate()`` — the final embeddings of all nodes — so training,
evaluation and cold start treat them alike. AFDGCF is LightGCN and A-LGCN3 is LGCN3, each trained
with AFDGCF's adaptive de-correlation loss (``afd_loss``, added by ``train``), not different networks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from persona_spark.recommend.data import RecData
from persona_spark.recommend.spectral import EigenCache, normalized_adjacency

MODELS = ("mf", "lightgcn", "afdgcf", "lgcn", "lgcn3", "algcn3")
WITH_PERSONAS = {"lgcn3", "algcn3"}
# trained with AFDGCF's de-correlation loss: AFDGCF = LightGCN + it, A-LGCN3 = LGCN3 + it
DECORRELATED = {"afdgcf", "algcn3"}
# α of each when recommend.train.decorrelation_weight is unset. afdgcf: the AFDGCF authors' setting for
# LightGCN (U-rara/AFDGCF README, ``--model=afd-lightgcn --alpha=1e-4``). algcn3: this project's 0.1,
# not tuned (the GPLR authors tuned theirs and did not publish it). At 0.1 AFDGCF's layer term,
# summed over three propagated layers, outweighs BPR and the model collapses (docs/guides/recommender.md).
DEFAULT_DECORRELATION = {"afdgcf": 1e-4, "algcn3": 0.1}


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

    def decorrelated_layers(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(final embeddings of all nodes, the node matrices ``afd_loss`` de-correlates), one propagation.

        Default: the final embeddings are the one "layer" (see ``LGCN``, which keeps it).
        """
        final = self.propagate()
        return final, [final]

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
        return self.decorrelated_layers()[0]

    def decorrelated_layers(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(mean of E, ÂE, …, Â^L E; the propagated layers ÂE, …, Â^L E).

        AFDGCF de-correlates layers 1..L, not the ego layer 0 nor the mean (U-rara/AFDGCF,
        ``models/afd_lightgcn.py``: ``for i in range(1, self.n_layers + 1)`` over ``embeddings_list``).
        """
        layer = self.embedding.weight.float()
        total, layers = layer, []
        for _ in range(self.layers):
            layer = torch.sparse.mm(self.adjacency, layer)
            layers.append(layer)
            total = total + layer
        return total / (self.layers + 1), layers


class LGCN(Recommender):
    """Yu et al. (AAAI '22): one spectral layer E1 = U·diag(θ)·Uᵀ·E0, sum pooling E0 + ½E1.

    ``basis`` holds the eigenvectors of the k smallest normalized-Laplacian eigenvalues of the
    bi- or tripartite graph; θ (one gain per eigenvector) is learned. With personas in the graph
    (LGCN3) the persona embeddings are trainable nodes like the others.

    What A-LGCN3's de-correlation loss sees (``decorrelated_layers``, inherited): the final, pooled
    embeddings E0 + ½E1 of all nodes, as one layer. LGCN has no stack of LightGCN layers to weight
    (one spectral layer, a filter of E0, not Â applied L times), and the GPLR authors' A-LGCN3 does
    exactly this: ``afd_loss([self.all_embeddings])`` on the pooled embeddings, split into users,
    items and personas (Hanc1999/LGCN, ``model_LGCN_afd_tri.py``; so does their A-LGCN,
    ``model_LGCN_afd.py``). With one layer AFDGCF's adaptive weight is 1: A-LGCN3's term is α times
    the correlation of the final user, item and persona embeddings. Our choice, not stated in the
    GPLR paper (§7.1 says only "adding AFDGCF's de-correlation loss"); the alternative, E1 alone as
    AFDGCF's "layer 1", would leave the ego part of the scored embeddings free.
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
        # Uᵀ·E0 needs every node; U·(…) only the requested rows, so a batch skips it for every other node.
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
    if name in ("lightgcn", "afdgcf"):
        return LightGCN(adjacency, data.n_users, data.n_items, dim, lightgcn_layers)
    _, basis = (cache or EigenCache()).lowpass_basis(adjacency, min(eigen_k, adjacency.shape[0]))
    return LGCN(basis, data.n_users, data.n_items, data.n_personas if with_personas else 0, dim)


def column_correlation(embeddings: torch.Tensor) -> torch.Tensor:
    """Corr(X) of AFDGCF: Frobenius norm of the strict upper triangle of the d × d Pearson correlations
    between the columns (embedding dimensions) of X, over its rows.

    As ``x.T.corrcoef().triu(diagonal=1).norm()`` (U-rara/AFDGCF, ``loss.py``), plus 1e-8 in the
    denominators so a constant column counts as uncorrelated instead of giving NaN.
    """
    centered = embeddings - embeddings.mean(dim=0, keepdim=True)
    normalized = centered / (centered.norm(dim=0, keepdim=True) + 1e-8)
    correlation = normalized.T @ normalized
    return torch.triu(correlation, diagonal=1).norm()


def adaptive_layer_weights(correlations: torch.Tensor) -> torch.Tensor:
    """AFDGCF's per-layer weights w_l = (1/C_l) / Σ_k (1/C_k) of the layer correlations C_l, as constants.

    From U-rara/AFDGCF ``models/afd_lightgcn.py`` (``user_layer_correlations_coef``): the inverse
    correlations, normalised to sum to 1, built with ``torch.tensor(list)`` and so without gradient
    (``detach`` here). A MORE correlated layer gets a SMALLER weight, and every weighted term
    w_l·C_l has the same value, 1/Σ_k(1/C_k): the gradient Σ_l w_l ∇C_l ∝ Σ_l ∇ log C_l asks each
    layer for the same relative drop in correlation, so the most correlated (deepest, smoothest)
    layer does not dominate the penalty.
    """
    inverse = 1.0 / correlations.detach().clamp_min(1e-8)
    return inverse / inverse.sum()


def afd_loss(blocks: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """AFDGCF's de-correlation loss (Wu et al., SIGIR '24), without its α:  Σ_b Σ_l w_l^b · Corr(X_l^b).

    ``blocks`` holds one list of layer matrices per node type — users, items (and personas for
    A-LGCN3) — each matrix all nodes of that type in one layer, rows = nodes, columns = dimensions.
    Each block gets its own adaptive weights (``adaptive_layer_weights``) over its own layers, and the
    blocks are summed: the authors' ``cor_loss_u + cor_loss_i`` (U-rara/AFDGCF,
    ``models/afd_lightgcn.py``, ``calculate_loss``; α multiplies both). Correlations are taken over
    every user / item of the layer, not the batch's, as the authors' code does (the paper's
    correlation of "the representation matrix"; a batch would only estimate it).
    """
    total = None
    for layers in blocks:
        correlations = torch.stack([column_correlation(layer.float()) for layer in layers])
        term = (adaptive_layer_weights(correlations) * correlations).sum()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("afd_loss needs at least one block of layers")
    return total


def afd_blocks(model: Recommender, layers: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
    """The node-type blocks of ``layers`` (users, items, personas when the model has any), for ``afd_loss``.

    The persona block is the GPLR authors' (``cor_loss_p`` in Hanc1999/LGCN ``model_LGCN_afd_tri.py``),
    not AFDGCF's, which has no personas. With 20 personas and d = 64 its correlation cannot reach 0
    (64 centred columns in a 19-dimensional space: the Welch bound puts Corr ≥ √(d²/19 − d)/√2 ≈ 8.7);
    it is kept as published, a bounded push towards spread-out persona dimensions.
    """
    per_layer = [model.split(layer) for layer in layers]
    blocks = [[split[kind] for split in per_layer] for kind in range(3)]
    return [block for block in blocks if block[0].shape[0] > 1]
