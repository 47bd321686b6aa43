"""What every stage module shares: the run's persona names, stored tiles, slice writes."""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from persona_spark import tables
from persona_spark.affinity import AffinityGraph
from persona_spark.runtime.runs import changed_rows
from persona_spark.stages.context import RunContext
from persona_spark.tables.store import TableStore

log = logging.getLogger("persona_spark")


def locations(store: TableStore, *names: str) -> dict[str, str]:
    """``{table: where it lives}`` for a stage's summary."""
    return {name: store.location(name) for name in names}


def train_edges(store: TableStore) -> DataFrame:
    """The edges personas propagate over (``split = 'train'``)."""
    return store.read_table(tables.EDGES).filter(F.col("split") == "train")


def stored_train_graph(ctx: RunContext, width: int, trace: list[dict] | None = None) -> AffinityGraph | None:
    """build-graph's ``edge_tiles``, loaded, when they were cut from the current ``edges`` for this run's
    affinity settings and ``width`` personas (the caller releases it); else None, the reason logged,
    and the library cuts the tiles in the call."""
    store = ctx.store
    if not store.exists(tables.EDGE_TILES):
        return None
    graph = AffinityGraph.from_table(store.read_table(tables.EDGE_TILES))
    current = store.version(tables.EDGES)
    reason = (f"they were cut from edges version {graph.edges_version}, edges is at version {current}"
              if graph.edges_version != current else graph.mismatch(ctx.cfg.affinity, width))
    if reason:
        log.info("edge_tiles not used, the tiles are cut in this call: %s", reason)
        return None
    return graph.load(trace)


def persona_names(ctx: RunContext) -> DataFrame:
    """``persona_idx, name`` of the run: its ``persona_set`` table, else the configured persona set."""
    if ctx.store.exists(tables.PERSONA_SET):
        return ctx.store.read_table(tables.PERSONA_SET).select("persona_idx", "name")
    return ctx.persona_set.to_dataframe(ctx.spark).select("persona_idx", "name")


def write_slice(ctx: RunContext, name: str, rows: DataFrame, where: dict[str, str], keys: list[str]) -> bool:
    """Make ``rows`` the content of the slice ``where`` (column -> value) of table ``name``.

    A new slice is appended (Spark writes the files in parallel); an existing one is MERGEd as
    changed rows plus tombstones, so a rerun commits only what differs — nothing when nothing does.
    Returns whether anything was committed.
    """
    store = ctx.store
    if not store.exists(name):
        store.write_table(rows, name)
        return True
    existing = store.read_table(name)
    for column, value in where.items():
        existing = existing.filter(F.col(column) == F.lit(value))
    if existing.limit(1).count() == 0:
        store.write_table(rows, name, "append")
        return True
    delta = ctx.pin(changed_rows(existing, rows, keys))  # pinned: the MERGE rewrites its source
    if delta.limit(1).count() == 0:
        return False
    store.merge_table(delta, name, keys, delete_when="removed")
    return True
