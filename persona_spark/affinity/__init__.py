"""GPLR's affinity engine: labelled users' personas propagated to everyone over the purchase graph.

Public API (pure DataFrame transforms; the ``affinity`` stage and GPLR call them):

* ``prototype_labels(labels, n_personas, beta)`` → ``user_idx, vec``: the rows of L
  (``prototype_weights(labels, beta)``: the same as ``user_idx, persona_idx, weight`` entries).
* ``compute_affinity(edges, prototypes, n_personas, conf)`` → ``user_idx, scores``: Ψ
  (``compute_affinity_depths(..., depths)``: Ψ at several ℓ̂ from one walk, ``{ℓ̂: user_idx, scores}``;
  ``compute_affinity_depths_of_sets(..., label_sets, ...)``: the same for several L side by side).
* ``propagate_to_users(edges, item_vectors, conf)`` → ``user_idx, vec``: one item → user step.
* ``prepare_graph(edges, conf)`` → ``AffinityGraph``: the edges cut into cached tiles once; pass it
  instead of ``edges`` to the two calls above when propagating repeatedly, ``release()`` it after.
  ``graph.to_table()`` / ``AffinityGraph.from_table(df).load()`` keep the tiles as a table between
  jobs (build-graph's ``edge_tiles``).
* ``affinity_long(scores)`` → ``user_idx, persona_idx, score`` (non-zero scores only).

``reference`` holds the single-machine scipy exact Ψ and the paper's RevAff for tests/benchmarks.
"""

from persona_spark.affinity.engine import (
    AffinityGraph,
    affinity_long,
    compute_affinity,
    compute_affinity_depths,
    compute_affinity_depths_of_sets,
    prepare_graph,
    propagate_to_users,
)
from persona_spark.affinity.prototypes import debias_weights, prototype_labels, prototype_weights

__all__ = ["AffinityGraph", "affinity_long", "compute_affinity", "compute_affinity_depths",
           "compute_affinity_depths_of_sets", "debias_weights", "prepare_graph",
           "propagate_to_users", "prototype_labels", "prototype_weights"]
