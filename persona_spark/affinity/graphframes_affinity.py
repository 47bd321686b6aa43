"""Ψ written the way a Spark user writes it with GraphFrames' ``aggregateMessages``: the side-by-side
reference for the engine, not the product path (GPLR and the ``affinity`` stage use ``engine``, which
also runs on Spark Connect, where GraphFrames does not).

The program is the usual GraphFrames one: one vertex table, users ``2·user_idx`` and items
``2·item_idx + 1`` (``graph.node_edges``), every vertex with its state, an ``array<double>`` of |R|
personas (null where nothing has arrived yet); the transition weights P and P' as edge columns. Each hop
is one ``aggregateMessages``: a message per edge (the sender's state × the edge's weight), summed per
receiving vertex (``zip_with`` over ``collect_list``, which skips the null messages of unreached
senders). GraphFrames returns the messages persisted; the next vertex table (every vertex, the sums
joined on) is checkpointed and the messages unpersisted, as GraphFrames' own iterative algorithms do, so
the plan stays flat. 2ℓ̂ hops, the user states after the even hops summed and scaled by 1/ℓ̂:
Ψ = (1/ℓ̂) Σ_{ℓ=1..ℓ̂} (P·P')^ℓ · L, exactly what ``compute_affinity`` computes (no pruning).
``benchmarks/affinity.py --graphframes`` times the two in one process.
"""

from __future__ import annotations

import time

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from persona_spark.config import AffinityConf
from persona_spark.graph import node_edges, require_graphframes
from persona_spark.runtime.checkpoint import CheckpointMode, checkpoint
from persona_spark.runtime.frames import union_all


def sum_arrays(column: Column, width: int) -> Column:
    """Aggregate: the element-wise sum of the ``array<double>`` values of ``column`` in a group (nulls skipped)."""
    return F.aggregate(F.collect_list(column), F.array_repeat(F.lit(0.0), width),
                       lambda total, x: F.zip_with(total, x, lambda a, b: a + b))


def scaled(state: Column, weight: Column) -> Column:
    """A message: the sender's state times the edge's weight (null from a sender nothing has reached)."""
    return F.transform(state, lambda x: x * weight)


def transition_edges(edges: DataFrame, weighted: bool) -> DataFrame:
    """``src`` (user), ``dst`` (item), ``to_dst`` = P'[item, user], ``to_src`` = P[user, item] (row-normalized)."""
    weight = F.col("n_purchases").cast("double") if weighted else F.lit(1.0)
    pairs = node_edges(edges, weight.alias("w"))
    at_src = pairs.groupBy("src").agg(F.sum("w").alias("src_degree"))
    at_dst = pairs.groupBy("dst").agg(F.sum("w").alias("dst_degree"))
    return pairs.join(at_src, "src").join(at_dst, "dst").select(
        "src", "dst", (F.col("w") / F.col("dst_degree")).alias("to_dst"), (F.col("w") / F.col("src_degree")).alias("to_src"))


def graphframes_affinity(edges: DataFrame, prototypes: DataFrame, n_personas: int, conf: AffinityConf | None = None,
                         trace: list[dict] | None = None, checkpoint_mode: CheckpointMode = "local") -> DataFrame:
    """Exact Ψ by GraphFrames ``aggregateMessages`` hops → ``user_idx int, scores array<double>`` (reached
    users only), equal to ``compute_affinity(edges, prototypes, n_personas, conf)`` with ``conf.eps = 0``;
    ``trace`` receives the seconds of the edge weights and of each hop."""
    require_graphframes(edges.sparkSession, "graphframes_affinity")
    from graphframes import GraphFrame
    from graphframes.lib import AggregateMessages as AM

    conf = conf or AffinityConf()
    if conf.eps:
        raise ValueError("graphframes_affinity is the exact reference: affinity.eps must be 0")

    def timed(label: str, frame: DataFrame, started: float | None = None) -> DataFrame:
        """Checkpoint ``frame``; the seconds since ``started`` (default: now) go to ``trace``."""
        started = time.perf_counter() if started is None else started
        frame = checkpoint(frame, checkpoint_mode)
        if trace is not None:
            trace.append({"phase": label, "seconds": round(time.perf_counter() - started, 3)})
        return frame

    weights = timed("transition edges", transition_edges(edges, conf.weighted))
    ids = weights.select(F.col("src").alias("id")).union(weights.select(F.col("dst").alias("id"))).distinct()
    vertices = timed("vertices", ids.join(prototypes.select((F.col("user_idx").cast("long") * 2).alias("id"), "vec"),
                                          "id", "left"))
    total = sum_arrays(AM.msg, n_personas).alias("vec")
    hops = ((AM.dst, "to_src", "sendToSrc"), (AM.src, "to_dst", "sendToDst"))
    terms = []
    for hop in range(1, 2 * conf.ell + 1):
        sender, weight, direction = hops[hop % 2]
        message = scaled(sender["vec"], AM.edge[weight])
        started = time.perf_counter()  # aggregateMessages computes and persists the sums before it returns
        sums = GraphFrame(vertices, weights).aggregateMessages([total], **{direction: [message]})
        vertices = timed(f"hop {hop} ({'users→items' if hop % 2 else 'items→users'})",
                         ids.join(sums, "id", "left"), started)
        sums.unpersist()
        if hop % 2 == 0:
            terms.append(vertices.where(F.col("id") % 2 == 0))
    psi = union_all(terms).groupBy("id").agg(sum_arrays(F.col("vec"), n_personas).alias("vec"))
    scores = F.transform("vec", lambda x: x / F.lit(float(conf.ell)))
    return psi.select((F.col("id") / 2).cast("int").alias("user_idx"), scores.alias("scores")).where(
        F.exists("scores", lambda x: x != 0))
