"""Ψ written the way a Spark user writes it with GraphFrames' ``aggregateMessages``: the side-by-side
reference for the engine, not the product path (GPLR and the ``affinity`` stage use ``engine``).

GraphFrames' ``aggregateMessages(agg, sendToSrc, sendToDst)`` joins the edges with their vertices
(the *triplets*), computes one message column per edge and aggregates the messages per receiving
vertex. Its jar is not on this project's Maven mirror, so ``aggregate_messages`` below is that plan in
plain DataFrames, with one simplification in its favour: only the *sender's* vertex rows are joined
(GraphFrames joins both ends of every edge), so it is a lower bound on what the library would cost.

The propagation itself is the usual GraphFrames program: one vertex table, users ``2·user_idx`` and
items ``2·item_idx + 1`` (``graph.node_edges``), the state an ``array<double>`` of |R| personas per
vertex (reached vertices only), the transition weights P and P' as edge columns, and per hop the
messages state × weight summed per vertex (``zip_with`` over ``collect_list``), checkpointed as
GraphFrames' iterative algorithms do, so the plan stays flat. 2ℓ̂ hops, the user states after the even
hops summed and scaled by 1/ℓ̂: Ψ = (1/ℓ̂) Σ_{ℓ=1..ℓ̂} (P·P')^ℓ · L, exactly what ``compute_affinity``
computes (no pruning). ``benchmarks/affinity.py --dataframe-messages`` times the two in one process.
"""

from __future__ import annotations

import time

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from persona_spark.config import AffinityConf
from persona_spark.graph import node_edges
from persona_spark.runtime.checkpoint import CheckpointMode, checkpoint
from persona_spark.runtime.frames import union_all


def sum_arrays(column: str, width: int) -> Column:
    """Aggregate: the element-wise sum of the ``array<double>`` values of ``column`` in a group."""
    return F.aggregate(F.collect_list(column), F.array_repeat(F.lit(0.0), width),
                       lambda total, x: F.zip_with(total, x, lambda a, b: a + b))


def aggregate_messages(vertices: DataFrame, edges: DataFrame, agg: Column, send_to_src: Column | None = None,
                       send_to_dst: Column | None = None) -> DataFrame:
    """GraphFrames' ``aggregateMessages``: ``id`` and ``agg`` over the column ``msg`` of the messages each vertex got.

    ``vertices`` has ``id``, ``edges`` ``src`` and ``dst``; a message to the destination reads the sender as
    ``src.*`` and the edge as ``edge.*``, one to the source reads ``dst.*`` and ``edge.*``.
    """
    sent = []
    for message, sender, receiver in ((send_to_dst, "src", "dst"), (send_to_src, "dst", "src")):
        if message is not None:
            triplets = edges.alias("edge").join(vertices.alias(sender), F.col(f"edge.{sender}") == F.col(f"{sender}.id"))
            sent.append(triplets.select(F.col(f"edge.{receiver}").alias("id"), message.alias("msg")))
    return union_all(sent).groupBy("id").agg(agg)


def transition_edges(edges: DataFrame, weighted: bool) -> DataFrame:
    """``src`` (user), ``dst`` (item), ``to_dst`` = P'[item, user], ``to_src`` = P[user, item] (row-normalized)."""
    weight = F.col("n_purchases").cast("double") if weighted else F.lit(1.0)
    pairs = node_edges(edges, weight.alias("w"))
    at_src = pairs.groupBy("src").agg(F.sum("w").alias("src_degree"))
    at_dst = pairs.groupBy("dst").agg(F.sum("w").alias("dst_degree"))
    return pairs.join(at_src, "src").join(at_dst, "dst").select(
        "src", "dst", (F.col("w") / F.col("dst_degree")).alias("to_dst"), (F.col("w") / F.col("src_degree")).alias("to_src"))


def message_affinity(edges: DataFrame, prototypes: DataFrame, n_personas: int, conf: AffinityConf | None = None,
                     trace: list[dict] | None = None, checkpoint_mode: CheckpointMode = "local") -> DataFrame:
    """Exact Ψ by aggregateMessages hops → ``user_idx int, scores array<double>`` (reached users only),
    equal to ``compute_affinity(edges, prototypes, n_personas, conf)`` with ``conf.eps = 0``; ``trace``
    receives the seconds of the edge weights and of each hop."""
    conf = conf or AffinityConf()
    if conf.eps:
        raise ValueError("message_affinity is the exact reference: affinity.eps must be 0")

    def timed(label: str, frame: DataFrame) -> DataFrame:
        started = time.perf_counter()
        frame = checkpoint(frame, checkpoint_mode)
        if trace is not None:
            trace.append({"phase": label, "seconds": round(time.perf_counter() - started, 3)})
        return frame

    graph = timed("transition edges", transition_edges(edges, conf.weighted))
    total = sum_arrays("msg", n_personas).alias("vec")
    state = prototypes.select((F.col("user_idx").cast("long") * 2).alias("id"), "vec")
    terms = []
    for step in range(1, conf.ell + 1):
        items = timed(f"hop {2 * step - 1} (users→items)", aggregate_messages(
            state, graph, total, send_to_dst=F.transform("src.vec", lambda x: x * F.col("edge.to_dst"))))
        state = timed(f"hop {2 * step} (items→users)", aggregate_messages(
            items, graph, total, send_to_src=F.transform("dst.vec", lambda x: x * F.col("edge.to_src"))))
        terms.append(state)
    psi = union_all(terms).groupBy("id").agg(sum_arrays("vec", n_personas).alias("vec"))
    scores = F.transform("vec", lambda x: x / F.lit(float(conf.ell)))
    return psi.select((F.col("id") / 2).cast("int").alias("user_idx"), scores.alias("scores")).where(
        F.exists("scores", lambda x: x != 0))
