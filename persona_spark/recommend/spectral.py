"""Graph matrices and the low-pass eigenbasis LGCN filters with, cached on disk per graph.

Node layout everywhere: users ``0..n_users-1``, then items, then personas.
"""

from __future__ import annotations

import hashlib
import io
import logging

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import lobpcg

from persona_spark.recommend.data import RecData
from persona_spark.tables import storage

log = logging.getLogger(__name__)


def graph_edges(data: RecData, with_personas: bool, persona_edge_weight: float = 1.0):
    """(rows, cols, weights) of the undirected user–item(–persona) graph, each edge once."""
    n_users, n_items = data.n_users, data.n_items
    rows = [data.train[:, 0]]
    cols = [n_users + data.train[:, 1]]
    weights = [np.ones(len(data.train), np.float64)]
    if with_personas:
        persona_base = n_users + n_items
        rows += [data.user_personas[:, 0], n_users + data.item_personas[:, 0]]
        cols += [persona_base + data.user_personas[:, 1], persona_base + data.item_personas[:, 1]]
        weights += [persona_edge_weight * data.user_persona_weight, persona_edge_weight * data.item_persona_weight]
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(weights).astype(np.float64)


def normalized_adjacency(data: RecData, with_personas: bool, persona_edge_weight: float = 1.0) -> sp.csr_matrix:
    """D^-1/2 A D^-1/2 of the symmetric graph without self-loops; isolated nodes get zero rows.

    Its largest eigenvalues are the smallest of the normalized Laplacian I - D^-1/2 A D^-1/2.
    Repeated pairs are summed (a weight, not a multi-edge).
    """
    n_nodes = data.n_users + data.n_items + (data.n_personas if with_personas else 0)
    rows, cols, weights = graph_edges(data, with_personas, persona_edge_weight)
    upper = sp.coo_matrix((weights, (rows, cols)), shape=(n_nodes, n_nodes)).tocsr()
    adjacency = (upper + upper.T).tocsr()
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    inv_sqrt = np.divide(1.0, np.sqrt(degree), out=np.zeros_like(degree), where=degree > 0)
    scale = sp.diags(inv_sqrt)
    normalized = (scale @ adjacency @ scale).tocsr()
    normalized.sort_indices()
    return normalized


def graph_key(matrix: sp.csr_matrix, k: int) -> str:
    """Content hash of the matrix and k: equal graphs share cached eigenvectors, edited ones never do."""
    digest = hashlib.sha256()
    digest.update(np.asarray(matrix.shape, np.int64).tobytes())
    digest.update(np.int64(k).tobytes())
    for array in (matrix.indptr, matrix.indices, matrix.data):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:24]


class EigenCache:
    """The ``k`` largest eigenpairs of a normalized adjacency, computed once per graph.

    Stored as ``eig-<graph hash>.npz`` under ``directory`` (None: memory only). ``hits`` and
    ``misses`` count lookups, so callers and tests can see that a cached basis was reused.
    """

    def __init__(self, directory: str | None = None):
        self.directory = str(directory) if directory is not None else None
        self.hits = 0
        self.misses = 0
        self._memory: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def lowpass_basis(self, matrix: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(eigenvalues descending, eigenvectors as float32 columns) of the top-``k`` spectrum."""
        n_nodes = matrix.shape[0]
        if not 0 < k <= n_nodes:
            raise ValueError(f"eigen_k={k} must be in 1..{n_nodes} (the number of graph nodes)")
        key = graph_key(matrix, k)
        path = storage.join(self.directory, f"eig-{key}.npz") if self.directory is not None else None
        if key in self._memory:
            self.hits += 1
            return self._memory[key]
        if path is not None and storage.exists(path):
            self.hits += 1
            with np.load(io.BytesIO(storage.read_bytes(path))) as stored:
                result = stored["values"], stored["vectors"]
        else:
            self.misses += 1
            result = top_eigenpairs(matrix, k)
            if path is not None:
                buffer = io.BytesIO()
                np.savez(buffer, values=result[0], vectors=result[1])
                storage.write_bytes(path, buffer.getvalue())
        self._memory[key] = result
        return result


def top_eigenpairs(matrix: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Largest-``k`` eigenpairs of a symmetric matrix: block LOBPCG, or dense for small graphs.

    LOBPCG with a block a bit wider than ``k`` gives the same eigenvalues as ARPACK (``eigsh``) and is
    faster at the k LGCN filters with: it multiplies the matrix by the whole block at once, where ARPACK's
    Lanczos iteration takes one vector at a time.
    """
    n_nodes = matrix.shape[0]
    block = k + max(8, k // 4)
    if n_nodes <= max(512, 5 * block):
        values, vectors = np.linalg.eigh(matrix.toarray())
        values, vectors = values[::-1][:k], vectors[:, ::-1][:, :k]
    else:
        # A fixed start block makes the basis (and so every run on this graph) reproducible.
        start = np.random.default_rng(0).standard_normal((n_nodes, block))
        values, vectors = lobpcg(matrix, start, largest=True, tol=1e-4, maxiter=300)
        order = np.argsort(values)[::-1][:k]
        values, vectors = values[order], vectors[:, order]
        residual = np.linalg.norm(matrix @ vectors - vectors * values, axis=0).max()
        if residual > 1e-2:
            log.warning("eigenbasis: LOBPCG residual %.3g after 300 iterations", residual)
    log.info("eigenbasis: %d nodes, k=%d, eigenvalues %.4f..%.4f", n_nodes, k, values[0], values[-1])
    return values.astype(np.float32), np.ascontiguousarray(vectors, dtype=np.float32)
