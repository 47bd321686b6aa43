"""Distributed user–persona affinity Ψ = (1/ℓ̂) Σ_{ℓ=1..ℓ̂} (P·P')^ℓ · L as Spark jobs.

P is the row-normalized user → item transition matrix and P' the item → user one (w = 1, or
``n_purchases`` with ``AffinityConf.weighted``). One DataFrame row per (node, persona) or per edge would
shuffle |E|·|R| values through Spark rows at every hop, so the train edges are cut once into CSC *tiles*
(target block × source block) and each of the 2ℓ̂ hops is a handful of partition-local sparse × dense
products of a tile with its source block's *state* (sparse in nodes, dense in personas). A small state
reaches the tiles by broadcast (on Spark Connect, in the UDF closure), a large one by a cogroup that copies
each source block once per task slot; every hop is checkpointed so the plan stays flat for any ℓ̂. Nothing
proportional to |U| or |E| reaches the driver.

With ε > 0, entries below ε/(2ℓ̂) are pruned after each hop and 0 ≤ Ψ − Ψ̂ ≤ ε elementwise; float32 states
(ε = 0) keep every score within a relative bound linear in the largest degree. The layout, both proofs and
the measured figures are in docs/concepts/affinity.md.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from persona_spark.config import AffinityConf
from persona_spark.errors import UserError
from persona_spark.runtime.checkpoint import CheckpointMode, checkpoint, has_checkpoint_dir
from persona_spark.runtime.frames import require_columns, union_all
from persona_spark.runtime.session import CONNECT_CLOSURE_MAX_BYTES, default_parallelism, is_connect, share_with_tasks

log = logging.getLogger("persona_spark.affinity")

TO_ITEMS, TO_USERS = 0, 1  # hop directions: user state → item state, item state → user state
EDGES_PER_TILE_BLOCK = 4_000_000  # automatic target blocks: at least one per this many edges
OUTPUT_BATCH_ROWS = 65_536
CUT_BATCH_ROWS = 1_000_000  # edges per Arrow batch while the tiles are cut (8 bytes each)

TILE_FIELDS = [("direction", "int"), ("tb", "int"), ("sb", "int"), ("n_rows", "int"), ("n_cols", "int"),
               ("indptr", "binary"), ("indices", "binary"), ("data", "binary"), ("row_scale", "binary")]
EDGE_PART_FIELDS = [("direction", "int"), ("tb", "int"), ("t_local", "binary"), ("s", "binary"), ("w", "binary")]
STATE_FIELDS = [("block", "int"), ("n", "int"), ("rows", "binary"), ("vals", "binary")]


def _ddl(fields: list[tuple[str, str]]) -> str:
    return ", ".join(f"{name} {kind}" for name, kind in fields)


def _arrow_schema(fields: list[tuple[str, str]]) -> pa.Schema:
    return pa.schema([(name, pa.int32() if kind == "int" else pa.binary()) for name, kind in fields])


TILE_SCHEMA, EDGE_PART_SCHEMA, STATE_SCHEMA = _ddl(TILE_FIELDS), _ddl(EDGE_PART_FIELDS), _ddl(STATE_FIELDS)
UNPACKED_SCHEMA = "idx int, vec array<double>"
UNPACKED_ARROW_SCHEMA = pa.schema([("idx", pa.int32()), ("vec", pa.list_(pa.float64()))])


# ---- blocks ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Blocking:
    """How the nodes of one kind are cut: T target blocks, S source blocks (S divides T)."""

    n_nodes: int
    target_blocks: int
    source_blocks: int

    @property
    def target_rows(self) -> int:
        return max(1, math.ceil(self.n_nodes / self.target_blocks))

    @property
    def source_rows(self) -> int:
        return self.target_rows * (self.target_blocks // self.source_blocks)

    @classmethod
    def plan(cls, n_nodes: int, parallel_blocks: int, max_source_rows: int) -> Blocking:
        source = max(1, math.ceil(n_nodes / max_source_rows))
        target = math.ceil(max(parallel_blocks, source) / source) * source
        return cls(n_nodes, target, source)


def _bytes(scalar) -> memoryview:
    return scalar.as_buffer()


def _frombuffer(buf, dtype) -> np.ndarray:
    return np.frombuffer(buf, dtype=dtype) if len(buf) else np.empty(0, dtype=dtype)


@dataclass
class BlockState:
    """Reached local rows (unique; sorted, except in a hop's source blocks) of one block and their dense persona vectors."""

    rows: np.ndarray  # int32 [n]
    vals: np.ndarray  # float64 or float32 [n, R] (``AffinityConf.state_precision``)

    @classmethod
    def from_buffers(cls, rows, vals, width: int) -> BlockState:
        """The float type is read off the buffer: 8 or 4 bytes per (row, persona) value."""
        r = _frombuffer(rows, np.int32)
        dtype = np.float32 if len(r) and width and len(vals) == 4 * len(r) * width else np.float64
        return cls(r, _frombuffer(vals, dtype).reshape(len(r), width))


def _combine(rows: np.ndarray, vals: np.ndarray, tau: float) -> BlockState:
    """Sum duplicate rows, zero entries with |v| < tau, drop rows left all zero."""
    order = np.argsort(rows, kind="stable")
    rows, vals = rows[order], vals[order]
    if len(rows):
        uniq, start = np.unique(rows, return_index=True)
        if len(uniq) != len(rows):
            vals = np.add.reduceat(vals, start, axis=0)
            rows = uniq
    return _prune(rows, vals, tau)


def _prune(rows: np.ndarray, vals: np.ndarray, tau: float) -> BlockState:
    if tau > 0:
        vals = np.where(np.abs(vals) < tau, 0.0, vals)
    keep = (vals != 0).any(axis=1)
    return BlockState(np.ascontiguousarray(rows[keep], dtype=np.int32), np.ascontiguousarray(vals[keep]))


def _state_row(block: int, state: BlockState) -> dict:
    return {"block": int(block), "n": len(state.rows), "rows": state.rows.tobytes(), "vals": state.vals.tobytes()}


def _state_batch(block: int, state: BlockState) -> pa.RecordBatch:
    """One state row whose binary values share the arrays' memory (no ``tobytes`` copy)."""
    return pa.RecordBatch.from_arrays(
        [pa.array([block], pa.int32()), pa.array([len(state.rows)], pa.int32()),
         _binary_slices(state.rows, np.array([0, len(state.rows)])),
         _binary_slices(state.vals.ravel(), np.array([0, state.vals.size]))], schema=_arrow_schema(STATE_FIELDS))


# ---- tiles -------------------------------------------------------------------------------------
def _stable_order(keys: np.ndarray, bound: int) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` for integer keys in [0, bound), as radix passes over 16 bits at a time.

    numpy's stable argsort is a linear radix sort for 16-bit types only and timsort (n log n) for wider
    ones, so on millions of random source ids one or two linear 16-bit passes beat a single timsort.
    """
    order = np.argsort((keys & 0xFFFF).astype(np.uint16), kind="stable")
    shift = 16
    while bound > 1 << shift:
        order = order[np.argsort((keys[order] >> shift & 0xFFFF).astype(np.uint16), kind="stable")]
        shift += 16
    return order


def _block_order(block: np.ndarray, blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """A stable order grouping rows by their block id in [0, blocks), and block b's [start, stop) in it at
    ``bounds[b]:bounds[b + 1]``."""
    return _stable_order(block, blocks), np.concatenate([[0], np.cumsum(np.bincount(block, minlength=blocks))])


def _binary_slices(values: np.ndarray, bounds: np.ndarray) -> pa.Array:
    """One binary value per ``values[bounds[k]:bounds[k+1]]``, sharing ``values``' memory (no copy)."""
    offsets = (bounds * values.itemsize).astype(np.int32)
    return pa.Array.from_buffers(pa.binary(), len(bounds) - 1, [None, pa.py_buffer(offsets), pa.py_buffer(values)])


def _id_dtype(bound: int) -> np.dtype:
    """The narrowest type for ids in [0, bound) in the cut's shuffle: uint16 where they fit (at 13 M edges
    three of the four id arrays), int32 otherwise. The shuffle moves every edge twice, once per direction."""
    return np.dtype(np.uint16 if bound <= 1 << 16 else np.int32)


def _edge_parts(batches: Iterable[pa.RecordBatch], users: Blocking, items: Blocking,
                directions: tuple[int, ...], flush_edges: int = 4_000_000) -> Iterator[pa.RecordBatch]:
    """Per input partition: edges grouped by (direction, target block) as compact binary rows.

    One sort by target block per direction; each block's edges are then a contiguous slice that
    becomes a binary value. Ids go as the narrowest type that holds them (``_id_dtype``), and ``w``
    stays empty for unweighted edges (the input has no ``w`` column).
    """
    pending: list[pa.RecordBatch] = []
    count = 0

    def flush() -> Iterator[pa.RecordBatch]:
        table = pa.Table.from_batches(pending)
        u = table.column("u").to_numpy().astype(np.int32, copy=False)
        i = table.column("i").to_numpy().astype(np.int32, copy=False)
        w = table.column("w").to_numpy().astype(np.float64) if "w" in table.column_names else None
        for direction in directions:
            t, s, tblk, sblk = (i, u, items, users) if direction == TO_ITEMS else (u, i, users, items)
            order, bounds = _block_order(t % tblk.target_blocks, tblk.target_blocks)
            present = np.flatnonzero(np.diff(bounds))
            starts, stops = bounds[present], bounds[present + 1]
            ranges = np.concatenate([[0], np.cumsum(stops - starts)])
            yield pa.RecordBatch.from_arrays(
                [pa.array(np.full(len(present), direction, np.int32)), pa.array(present.astype(np.int32)),
                 _binary_slices((t[order] // tblk.target_blocks).astype(_id_dtype(tblk.target_rows), copy=False), ranges),
                 _binary_slices(s[order].astype(_id_dtype(sblk.n_nodes), copy=False), ranges),
                 _binary_slices(w[order], ranges) if w is not None else pa.array([b""] * len(present), pa.binary())],
                schema=_arrow_schema(EDGE_PART_FIELDS))

    for batch in batches:
        pending.append(batch)
        count += batch.num_rows
        if count >= flush_edges:
            yield from flush()
            pending, count = [], 0
    if pending:
        yield from flush()


def _csc_columns(t: np.ndarray, s_local: np.ndarray, w: np.ndarray | None, n_cols: int):
    """CSC arrays (indptr, indices, data) of the entries (t, s_local, w), without scipy's COO round trip.

    Entries are bucketed by column with one stable sort; a repeated (row, column) stays two entries,
    which a product sums exactly as scipy's merged entry would. ``w`` None: a 0/1 pattern, no data.
    """
    order = _stable_order(s_local, n_cols)
    indptr = np.zeros(n_cols + 1, dtype=np.int64)
    np.cumsum(np.bincount(s_local, minlength=n_cols), out=indptr[1:])
    return indptr, t[order], np.empty(0) if w is None else w[order]


def _assemble_tiles(batches: Iterable[pa.RecordBatch], users: Blocking, items: Blocking) -> Iterator[pa.RecordBatch]:
    """All edges of a target block → row-normalized CSC tiles, one per source block.

    The row normalization needs every edge of a target node, which is why the edges are first
    gathered per target block; the degree is then local to this task.
    """
    table = pa.Table.from_batches(list(batches), schema=_arrow_schema(EDGE_PART_FIELDS))
    groups: dict[tuple[int, int], list[int]] = {}
    for k, key in enumerate(zip(table.column("direction").to_pylist(), table.column("tb").to_pylist())):
        groups.setdefault(key, []).append(k)

    def gather(name: str, members: list[int], dtype) -> np.ndarray:
        column = table.column(name)
        return np.concatenate([_frombuffer(_bytes(column[k]), dtype) for k in members])

    for (direction, tb), members in groups.items():
        tblk, sblk = (items, users) if direction == TO_ITEMS else (users, items)
        t = gather("t_local", members, _id_dtype(tblk.target_rows)).astype(np.int32)
        s = gather("s", members, _id_dtype(sblk.n_nodes)).astype(np.int32)
        w = gather("w", members, np.float64)
        if len(w):  # weighted: every entry carries w / (the target's weighted degree)
            w = w / np.bincount(t, weights=w, minlength=tblk.target_rows)[t]
            row_scale = np.empty(0)
        else:  # unweighted parts carry no weights: the tile is a 0/1 pattern and 1/degree per target row
            degree = np.bincount(t, minlength=tblk.target_rows)
            row_scale = np.divide(1.0, degree, out=np.zeros(len(degree)), where=degree > 0)
            w = None
        sb, s_local = s % sblk.source_blocks, s // sblk.source_blocks
        if sblk.source_blocks > 1:  # one sort by source block lays out every tile of this target block
            order = _stable_order(sb, sblk.source_blocks)
            t, s_local, sb = t[order], s_local[order], sb[order]
            w = None if w is None else w[order]
        block_bounds = np.searchsorted(sb, np.arange(sblk.source_blocks + 1))
        for b in np.flatnonzero(np.diff(block_bounds)):
            lo, hi = block_bounds[b], block_bounds[b + 1]
            indptr, indices, data = _csc_columns(t[lo:hi], s_local[lo:hi], None if w is None else w[lo:hi],
                                                 sblk.source_rows)
            row = {"direction": direction, "tb": tb, "sb": int(b), "n_rows": tblk.target_rows,
                   "n_cols": sblk.source_rows, "indptr": indptr, "indices": indices, "data": data,
                   "row_scale": row_scale}
            yield pa.RecordBatch.from_arrays(  # a batch per tile: its buffers go out without a copy
                [pa.array([row[name]], pa.int32()) if kind == "int" else _binary_slices(row[name], np.array([0, len(row[name])]))
                 for name, kind in TILE_FIELDS], schema=_arrow_schema(TILE_FIELDS))


def spread_keys(spark, partitions: int) -> list[int]:
    """keys[p] hashes to partition p under ``repartition(partitions, key)``.

    Spark places a row by murmur3(key) mod n, which lumps small block ids together (0..3 land on
    partitions 1,1,0,1 for n=2); routing block b through keys[b % n] spreads the blocks evenly.
    """
    candidates = spark.range(64 * partitions).select(
        F.col("id").cast("int").alias("key"), F.pmod(F.hash(F.col("id").cast("int")), F.lit(partitions)).alias("p"))
    keys: dict[int, int] = {}
    for row in candidates.collect():
        keys.setdefault(row.p, row.key)
    return [keys.get(p, p) for p in range(partitions)]


def build_tiles(edges: DataFrame, users: Blocking, items: Blocking, weighted: bool,
                directions: tuple[int, ...], partitions: int) -> DataFrame:
    """Cut the edges into cached transition tiles for the requested hop directions.

    One pass over the edges emits them per target block as compact binary rows; one shuffle of
    those rows (not of edge rows) gathers each target block on one task, spread evenly.
    """
    weight = [F.col("n_purchases").cast("double").alias("w")] if weighted else []
    compact = edges.select(F.col("user_idx").cast("int").alias("u"), F.col("item_idx").cast("int").alias("i"),
                           *weight)
    parts = compact.mapInArrow(partial(_edge_parts, users=users, items=items, directions=directions),
                               EDGE_PART_SCHEMA)
    keys = F.array(*[F.lit(k) for k in spread_keys(edges.sparkSession, partitions)])
    routed = parts.repartition(partitions, F.element_at(keys, F.col("tb") % partitions + 1))
    return routed.mapInArrow(partial(_assemble_tiles, users=users, items=items), TILE_SCHEMA).persist()


# ---- hops --------------------------------------------------------------------------------------
def _multiply(batches: Iterable[pa.RecordBatch], width: int, tau: float | None,
              state_of: Callable[[pa.RecordBatch, int], BlockState | None]) -> Iterator[pa.RecordBatch]:
    """tile × (state of its source block, restricted to reached columns) for every tile row.

    ``tau`` is the pruning threshold when this product is the hop's final value (one source
    block); ``None`` emits unpruned partial products to be summed per target block first.
    """
    for batch in batches:
        for k in range(batch.num_rows):
            state = state_of(batch, k)
            if state is None or len(state.rows) == 0:
                continue
            col = batch.column
            indices = _frombuffer(_bytes(col("indices")[k]), np.int32)
            data = _frombuffer(_bytes(col("data")[k]), np.float64)
            dtype = state.vals.dtype  # float32 states: float32 tiles, products accumulated in float32
            tile = sp.csc_matrix((data.astype(dtype, copy=False) if len(data) else np.ones(len(indices), dtype),
                                  indices, _frombuffer(_bytes(col("indptr")[k]), np.int64)),
                                 shape=(col("n_rows")[k].as_py(), col("n_cols")[k].as_py()))
            product = np.asarray(tile[:, state.rows] @ state.vals)
            row_scale = _frombuffer(_bytes(col("row_scale")[k]), np.float64)
            if len(row_scale):  # an unweighted tile: the row normalization 1/degree comes after the sum
                product *= row_scale.astype(dtype, copy=False)[:, None]
            result = _prune(np.arange(product.shape[0]), product, tau or 0.0)
            if len(result.rows):
                yield _state_batch(col("tb")[k].as_py(), result)


def _shared_lookup(blocks_of: Callable[[], dict], width: int, batch: pa.RecordBatch, k: int) -> BlockState | None:
    return blocks_of().get(batch.column("sb")[k].as_py())


def _multiply_pair(tiles: pa.Table, source: pa.Table, width: int, tau: float | None) -> pa.Table:
    """The shuffle join's unit of work: one source block's state and the tiles it feeds in one group
    of target blocks, so a task holds one source block at a time, however many groups it is given."""
    schema = _arrow_schema(STATE_FIELDS)
    if not tiles.num_rows or not source.num_rows:
        return schema.empty_table()
    state = BlockState.from_buffers(_bytes(source.column("srows")[0]), _bytes(source.column("svals")[0]), width)
    return pa.Table.from_batches(list(_multiply(tiles.to_batches(), width, tau, lambda batch, k: state)), schema=schema)


def _summed(states: list[BlockState], tau: float) -> BlockState:
    """The states of one block (partial products, or Ψ's terms) added up, pruned below tau."""
    states = [state for state in states if len(state.rows)] or states[:1]  # an empty one would upcast float32
    return _combine(np.concatenate([s.rows for s in states]), np.concatenate([s.vals for s in states]), tau)


def _sum_blocks(group: pd.DataFrame, width: int, tau: float) -> pd.DataFrame:
    summed = _summed([BlockState.from_buffers(r, v, width) for r, v in zip(group["rows"], group["vals"])], tau)
    return pd.DataFrame([_state_row(group["block"].iloc[0], summed)]) if len(summed.rows) else _EMPTY_STATE


_EMPTY_STATE = pd.DataFrame({"block": pd.Series(dtype="int32"), "n": pd.Series(dtype="int32"),
                             "rows": pd.Series(dtype=object), "vals": pd.Series(dtype=object)})


def sum_states(states: DataFrame, width: int, tau: float = 0.0) -> DataFrame:
    return states.groupBy("block").applyInPandas(partial(_sum_blocks, width=width, tau=tau), STATE_SCHEMA)


def _to_source_blocks(block_states: Iterable[tuple[int, BlockState]], blocking: Blocking) -> dict[int, BlockState]:
    """Re-index target-block states into source blocks (global id = local·T + block).

    The target blocks of one source block hold disjoint nodes, so their rows are only concatenated:
    a tile selects its columns in any order, and sorting a full state would cost the driver a copy of it.
    """
    by_source: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    for block, state in block_states:
        global_ids = state.rows.astype(np.int64) * blocking.target_blocks + block
        by_source.setdefault(block % blocking.source_blocks, []).append(
            (global_ids // blocking.source_blocks, state.vals))
    by_source = {sb: [p for p in parts if len(p[0])] or parts[:1]  # an empty part would upcast float32
                 for sb, parts in by_source.items()}
    return {sb: BlockState(np.concatenate([r for r, _ in parts]).astype(np.int32), np.concatenate([v for _, v in parts]))
            for sb, parts in by_source.items()}


def _reblock_group(group: pd.DataFrame, blocking: Blocking, width: int) -> pd.DataFrame:
    states = [(int(b), BlockState.from_buffers(r, v, width)) for b, r, v in zip(group["block"], group["rows"], group["vals"])]
    (sb, state), = _to_source_blocks(states, blocking).items()
    return pd.DataFrame([_state_row(sb, state)])


@dataclass
class HopPlan:
    """What a hop needs: its tiles, the source/target blockings, the persona width."""

    tiles: DataFrame
    source: Blocking
    target: Blocking
    width: int
    broadcast_max_bytes: int
    checkpoint_mode: CheckpointMode = "local"
    value_bytes: int = 8  # bytes of one state value: 8 (float64) or 4 (float32)


def hop(state: DataFrame, plan: HopPlan, tau: float, trace: list[dict] | None = None,
        label: str = "hop") -> DataFrame:
    """One averaging step: target state = rows of the tiles × source state, pruned below tau."""
    started = time.perf_counter()
    spark = state.sparkSession
    row_bytes = state_row_bytes(plan.width, plan.value_bytes)
    broadcast_max_bytes = (min(plan.broadcast_max_bytes, CONNECT_CLOSURE_MAX_BYTES) if is_connect(spark)
                           else plan.broadcast_max_bytes)
    # When every node of the source kind would fit the broadcast, the state fits whatever it
    # holds: collect it at once instead of counting it first (one Spark job less).
    table = state.toArrow() if plan.source.n_nodes * row_bytes <= broadcast_max_bytes else None
    reached = (pc.sum(table.column("n")).as_py() if table is not None
               else state.agg(F.sum("n")).first()[0]) or 0
    single_source = plan.source.source_blocks == 1
    final_tau = tau if single_source else None
    release = None
    if reached == 0:  # everything was pruned (or nothing labelled): the next state is empty too
        path, products = "empty", None
    elif reached * row_bytes <= broadcast_max_bytes:
        path = "broadcast"
        table = table if table is not None else state.toArrow()
        blocks = [(b, BlockState.from_buffers(r, v, plan.width)) for b, r, v in zip(
            table.column("block").to_pylist(), (x.as_buffer() for x in table.column("rows")),
            (x.as_buffer() for x in table.column("vals")))]
        blocks_of, release = share_with_tasks(spark, _to_source_blocks(blocks, plan.source))
        products = plan.tiles.mapInArrow(
            partial(_multiply, width=plan.width, tau=final_tau,
                    state_of=partial(_shared_lookup, blocks_of, plan.width)), STATE_SCHEMA)
    else:
        path = "shuffle"
        source_states = state.groupBy((F.col("block") % plan.source.source_blocks).alias("sb_key")).applyInPandas(
            partial(_reblock_group, blocking=plan.source, width=plan.width), STATE_SCHEMA)
        # One copy of each source block per task slot, not per target block: the tiles of target
        # blocks tb ≡ g (mod groups) meet source block sb in one cogroup call (g, sb).
        groups = min(plan.target.target_blocks, default_parallelism(spark))
        replicated = source_states.select(F.col("block").alias("sb"), F.col("rows").alias("srows"),
                                          F.col("vals").alias("svals")).crossJoin(
            spark.range(groups).select(F.col("id").cast("int").alias("group")))
        tiles = plan.tiles.withColumn("group", F.col("tb") % groups)
        products = tiles.groupBy("group", "sb").cogroup(replicated.groupBy("group", "sb")).applyInArrow(
            partial(_multiply_pair, width=plan.width, tau=final_tau), STATE_SCHEMA)
    if products is None:
        result = state
    else:
        result = checkpoint(products if single_source else sum_states(products, plan.width, tau), plan.checkpoint_mode)
    if release is not None:
        release()
    seconds = time.perf_counter() - started
    log.info("%s: %s path, %d source rows reached, %.2fs", label, path, reached, seconds)
    if trace is not None:
        trace.append({"phase": label, "path": path, "source_rows": int(reached), "seconds": round(seconds, 3)})
    return result


def state_row_bytes(width: int, value_bytes: int = 8) -> int:
    """Bytes one reached node takes in a state: its int32 local row and |R| float64 (or float32) scores."""
    return 4 + value_bytes * width


def state_dtype(conf: AffinityConf):
    return np.float32 if conf.state_precision == "float32" else np.float64


def max_source_rows(conf: AffinityConf, width: int) -> int:
    """Nodes per source block, so one block's full state stays within ``broadcast_max_bytes``."""
    return max(1, conf.broadcast_max_bytes // state_row_bytes(width))


# ---- vectors in and scores out ------------------------------------------------------------------
def _pack(batches: Iterable[pa.RecordBatch], blocking: Blocking, width: int, dtype) -> Iterator[pa.RecordBatch]:
    """Each Arrow batch of (idx, vec) rows as one state row per target block, without a shuffle.

    A block may get rows from several batches: a hop's source block concatenates them, and a tile
    multiplies a node's repeated columns and adds them up: its summed row's product, up to rounding.
    """
    for batch in batches:
        idx = batch.column("idx").to_numpy()
        vals = batch.column("vec").flatten().to_numpy().astype(dtype, copy=False).reshape(len(idx), width)
        order, bounds = _block_order(idx % blocking.target_blocks, blocking.target_blocks)
        for b in np.flatnonzero(np.diff(bounds)):
            members = order[bounds[b]:bounds[b + 1]]
            state = _combine(idx[members] // blocking.target_blocks, vals[members], 0.0)
            if len(state.rows):
                yield _state_batch(int(b), state)


def pack_vectors(vectors: DataFrame, idx_col: str, vec_col: str, blocking: Blocking, width: int,
                 dtype=np.float64) -> DataFrame:
    """(node idx, vec) rows → block states in the target blocking of that node kind (values as ``dtype``)."""
    rows = vectors.select(F.col(idx_col).cast("long").alias("idx"), F.col(vec_col).alias("vec"))
    return rows.mapInArrow(partial(_pack, blocking=blocking, width=width, dtype=dtype), STATE_SCHEMA)


def _unpacked(block: int, state: BlockState, blocking: Blocking, width: int, scale: float) -> Iterator[pa.RecordBatch]:
    ids = state.rows.astype(np.int64) * blocking.target_blocks + block
    for lo in range(0, len(ids), OUTPUT_BATCH_ROWS):
        chunk = state.vals[lo:lo + OUTPUT_BATCH_ROWS].astype(np.float64) * scale  # float32 states: exact cast
        offsets = pa.array(np.arange(len(chunk) + 1, dtype=np.int32) * width)
        yield pa.RecordBatch.from_arrays(
            [pa.array(ids[lo:lo + OUTPUT_BATCH_ROWS].astype(np.int32)),
             pa.ListArray.from_arrays(offsets, pa.array(chunk.ravel()))], schema=UNPACKED_ARROW_SCHEMA)


def _unpack(batches: Iterable[pa.RecordBatch], blocking: Blocking, width: int, scale: float) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        for k in range(batch.num_rows):
            state = BlockState.from_buffers(_bytes(batch.column("rows")[k]), _bytes(batch.column("vals")[k]), width)
            yield from _unpacked(batch.column("block")[k].as_py(), state, blocking, width, scale)


def _sum_unpack(table: pa.Table, blocking: Blocking, width: int, scale: float) -> pa.Table:
    """The states of one block (Ψ's terms) summed, then unpacked: no summed state is stored in between."""
    summed = _summed([BlockState.from_buffers(_bytes(r), _bytes(v), width)
                      for r, v in zip(table.column("rows"), table.column("vals"))], 0.0)
    return pa.Table.from_batches(list(_unpacked(table.column("block")[0].as_py(), summed, blocking, width, scale)),
                                 schema=UNPACKED_ARROW_SCHEMA)


def unpack_states(states: DataFrame, blocking: Blocking, width: int, idx_col: str, vec_col: str,
                  scale: float = 1.0, terms: int = 1) -> DataFrame:
    """Block states → (idx, vec) rows. ``terms`` > 1: ``states`` is a union of that many states, summed
    per block on the way out (one shuffle, no stored sum: Ψ's terms for ℓ̂ > 1)."""
    if terms == 1:
        out = states.mapInArrow(partial(_unpack, blocking=blocking, width=width, scale=scale), UNPACKED_SCHEMA)
    else:
        out = states.groupBy("block").applyInArrow(partial(_sum_unpack, blocking=blocking, width=width, scale=scale),
                                                   UNPACKED_SCHEMA)
    return out.withColumnsRenamed({"idx": idx_col, "vec": vec_col})


# ---- input checks ------------------------------------------------------------------------------
def edge_stats(edges: DataFrame, weighted: bool) -> dict:
    """Counts and index ranges of the edges in one pass; raises naming the offending column."""
    cols = ["user_idx", "item_idx"] + (["n_purchases"] if weighted else [])
    require_columns(edges, cols, "edges")
    aggs = [F.count(F.lit(1)).alias("edges"), F.max("user_idx").alias("max_user"), F.min("user_idx").alias("min_user"),
            F.max("item_idx").alias("max_item"), F.min("item_idx").alias("min_item")]
    aggs += [F.sum(F.col(c).isNull().cast("long")).alias(f"null_{c}") for c in cols]
    if weighted:
        aggs.append(F.min("n_purchases").alias("min_weight"))
    stats = edges.agg(*aggs).first().asDict()
    for c in cols:
        if stats[f"null_{c}"]:
            raise ValueError(f"edges: {stats[f'null_{c}']} row(s) have a null {c}")
    for kind in ("user", "item"):
        if stats[f"min_{kind}"] is not None and stats[f"min_{kind}"] < 0:
            raise ValueError(f"edges: {kind}_idx must be >= 0, found {stats[f'min_{kind}']}")
    if weighted and stats["min_weight"] is not None and stats["min_weight"] <= 0:
        raise ValueError(f"edges: n_purchases must be > 0 for weighted propagation, found {stats['min_weight']}")
    return stats


def vector_stats(vectors: DataFrame, idx_col: str, vec_col: str, what: str, width: int | None = None) -> dict:
    require_columns(vectors, [idx_col, vec_col], what)
    stats = vectors.agg(F.count(F.lit(1)).alias("rows"), F.max(idx_col).alias("max_idx"),
                        F.min(idx_col).alias("min_idx"), F.min(F.size(vec_col)).alias("min_width"),
                        F.max(F.size(vec_col)).alias("max_width"),
                        F.sum(F.col(idx_col).isNull().cast("long")).alias("null_idx"),
                        F.sum(F.col(vec_col).isNull().cast("long")).alias("null_vec")).first().asDict()
    if stats["null_idx"] or stats["null_vec"]:
        raise ValueError(f"{what}: {stats['null_idx']} null {idx_col} and {stats['null_vec']} null {vec_col} value(s)")
    if stats["min_idx"] is not None and stats["min_idx"] < 0:
        raise ValueError(f"{what}: {idx_col} must be >= 0, found {stats['min_idx']}")
    widths = {stats["min_width"], stats["max_width"]} - {None}
    if len(widths) > 1 or (width is not None and widths - {width}):
        want = f"length {width} (the number of personas)" if width is not None else "the same length"
        raise ValueError(f"{what}: every {vec_col} must have {want}; found lengths "
                         f"{stats['min_width']}..{stats['max_width']}")
    return stats


# ---- public API --------------------------------------------------------------------------------
def _require_checkpoint_dir(df: DataFrame, checkpoint_mode: CheckpointMode) -> None:
    if checkpoint_mode == "reliable" and not has_checkpoint_dir(df.sparkSession):
        raise ValueError("reliable checkpoints (spark.checkpoint=reliable) need a checkpoint directory "
                         "(SparkContext.setCheckpointDir; a stage sets spark.checkpoint_dir)")


def _parallel_blocks(edges: DataFrame, n_edges: int, conf: AffinityConf) -> int:
    if conf.target_blocks:
        return conf.target_blocks
    return max(default_parallelism(edges.sparkSession), math.ceil(n_edges / EDGES_PER_TILE_BLOCK))


@dataclass
class AffinityGraph:
    """The transition tiles of one edge set, cut once and shared by every propagation over it.

    Building the tiles (one pass and one shuffle of all edges) is the most expensive phase of a
    call. GPLR propagates over the same train edges many times (each round, ℓ̂ = 1 and 2, the item
    signal), so a caller that propagates repeatedly prepares the graph once with ``prepare_graph``,
    passes it instead of the edges, and calls ``release`` at the end.
    """

    tiles: DataFrame
    users: Blocking
    items: Blocking
    directions: tuple[int, ...]
    layout: tuple  # the AffinityConf fields the tiles were cut for
    width: int  # the widest state (personas) its source blocks hold within broadcast_max_bytes
    edges_version: int | None = None  # the version of the edges table the tiles were cut from, when known

    def mismatch(self, conf: AffinityConf, width: int, directions: tuple[int, ...] = (TO_ITEMS, TO_USERS)) -> str | None:
        """Why these tiles cannot serve a propagation with ``conf`` and ``width`` personas (None: they can)."""
        if set(directions) - set(self.directions):
            return f"the tiles were cut without hop direction(s) {sorted(set(directions) - set(self.directions))}"
        if _layout(conf) != self.layout:
            return (f"the tiles were cut for (weighted, broadcast_max_bytes, target_blocks) = {self.layout}, "
                    f"the call asks for {_layout(conf)}")
        if width > self.width:
            return f"the tiles hold states of at most {self.width} personas, the call propagates {width}"
        return None

    def plan(self, direction: int, width: int, conf: AffinityConf,
             checkpoint_mode: CheckpointMode = "local") -> HopPlan:
        reason = self.mismatch(conf, width, (direction,))
        if reason:
            raise ValueError(f"AffinityGraph: {reason}")
        source, target = (self.users, self.items) if direction == TO_ITEMS else (self.items, self.users)
        tiles = self.tiles if len(self.directions) == 1 else self.tiles.where(F.col("direction") == direction)
        return HopPlan(tiles, source, target, width, conf.broadcast_max_bytes, checkpoint_mode,
                       np.dtype(state_dtype(conf)).itemsize)

    def to_table(self) -> DataFrame:
        """The tiles with their layout (JSON, the same on every row: tiles are a few rows per block).

        Written where the graph is built and read back with ``from_table``, the cut (the most
        expensive phase of a propagation) is paid once per edges version instead of once per stage.
        """
        layout = {"format": TILE_TABLE_FORMAT, "users": _blocking_fields(self.users),
                  "items": _blocking_fields(self.items), "directions": list(self.directions),
                  "weighted": self.layout[0], "broadcast_max_bytes": self.layout[1], "target_blocks": self.layout[2],
                  "width": self.width, "edges_version": self.edges_version}
        return self.tiles.withColumn("layout", F.lit(json.dumps(layout)))

    @classmethod
    def from_table(cls, table: DataFrame) -> AffinityGraph:
        """The graph ``to_table`` wrote (its layout is read now; call ``load`` before propagating)."""
        require_columns(table, [name for name, _ in TILE_FIELDS] + ["layout"], "edge tiles")
        row = table.select("layout").limit(1).first()
        if row is None:
            raise UserError("edge tiles: the table is empty (the graph it was cut from has no edges): run build-graph "
                            "on transactions with valid lines")
        layout = json.loads(row["layout"])
        if layout.get("format") != TILE_TABLE_FORMAT:
            raise ValueError(f"edge tiles: layout format {layout.get('format')!r}, this release reads "
                             f"{TILE_TABLE_FORMAT} (rebuild the graph)")
        return cls(table.select(*[name for name, _ in TILE_FIELDS]), Blocking(*layout["users"]),
                   Blocking(*layout["items"]), tuple(layout["directions"]),
                   (layout["weighted"], layout["broadcast_max_bytes"], layout["target_blocks"]), layout["width"],
                   layout["edges_version"])

    def load(self, trace: list[dict] | None = None) -> AffinityGraph:
        """Cache the tiles read by ``from_table``: every hop scans them."""
        started = time.perf_counter()
        self.tiles = self.tiles.persist()
        self.tiles.count()
        if trace is not None:
            trace.append({"phase": "load tiles", "seconds": round(time.perf_counter() - started, 3)})
        return self

    def release(self) -> None:
        self.tiles.unpersist()


TILE_TABLE_FORMAT = 2  # bumped whenever the tile rows or the layout fields change meaning


def _blocking_fields(blocking: Blocking) -> list[int]:
    return [blocking.n_nodes, blocking.target_blocks, blocking.source_blocks]


def _supported_width(conf: AffinityConf, *blockings: Blocking) -> int:
    """The widest state whose source block still fits ``broadcast_max_bytes`` in every blocking."""
    return min((conf.broadcast_max_bytes // b.source_rows - 4) // 8 for b in blockings)


def _layout(conf: AffinityConf) -> tuple:
    return conf.weighted, conf.broadcast_max_bytes, conf.target_blocks


def prepare_graph(edges: DataFrame, conf: AffinityConf | None = None, width: int = 1,
                  directions: tuple[int, ...] = (TO_ITEMS, TO_USERS), trace: list[dict] | None = None,
                  edges_version: int | None = None) -> AffinityGraph:
    """Validate the edges and cut (and cache) their tiles; ``release()`` the result when done.

    ``edges`` are the propagation edges, already filtered by the caller (the stage keeps
    ``split='train'``): one row per (user_idx, item_idx), ``n_purchases`` used when ``conf.weighted``.
    ``width`` is the widest state propagated over it (the number of personas): source blocks are
    cut so that one block's state stays within ``broadcast_max_bytes``.
    """
    conf = conf or AffinityConf()
    started = time.perf_counter()
    stats = edge_stats(edges, conf.weighted)
    parallel = _parallel_blocks(edges, stats["edges"], conf)
    rows = max_source_rows(conf, width)
    users = Blocking.plan((stats["max_user"] or 0) + 1, parallel, rows)
    items = Blocking.plan((stats["max_item"] or 0) + 1, parallel, rows)
    tiles = build_tiles(edges, users, items, conf.weighted, directions, parallel)
    with _edge_batches(edges.sparkSession):
        tiles.count()
    if trace is not None:
        trace.append({"phase": "tiles", "seconds": round(time.perf_counter() - started, 3),
                      "user_blocks": [users.target_blocks, users.source_blocks],
                      "item_blocks": [items.target_blocks, items.source_blocks]})
    return AffinityGraph(tiles, users, items, directions, _layout(conf), max(width, _supported_width(conf, users, items)),
                         edges_version)


@contextmanager
def _edge_batches(spark):
    """Spark's Arrow batching for the jobs run inside (the cut: two or three fixed-width columns a row).

    ``CUT_BATCH_ROWS`` rows a batch instead of Spark's default 10,000 (thousands of tiny batches), and no
    byte limit: with ``maxBytesPerBatch`` set (Spark 4.0's default is 256 MiB) the JVM re-measures the
    whole batch after every row it writes: a per-row byte check as costly as the rest of handing the edges
    to Python. The row limit already keeps a batch at a few MB here.
    """
    settings = {"spark.sql.execution.arrow.maxRecordsPerBatch": str(CUT_BATCH_ROWS),
                "spark.sql.execution.arrow.maxBytesPerBatch": str(2**31 - 1)}
    before = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def _graph_for(edges: DataFrame | AffinityGraph, conf: AffinityConf, width: int, directions: tuple[int, ...],
               trace: list[dict] | None, checkpoint_mode: CheckpointMode) -> tuple[AffinityGraph, bool]:
    """The caller's prepared graph, or one prepared for this call (second value: release it after)."""
    _require_checkpoint_dir(edges.tiles if isinstance(edges, AffinityGraph) else edges, checkpoint_mode)
    if isinstance(edges, AffinityGraph):
        return edges, False
    return prepare_graph(edges, conf, width, directions, trace), True


def _with_edges(vectors: DataFrame, idx_col: str, blocking: Blocking) -> DataFrame:
    """Nodes beyond the largest index with an edge have no edges: they never push or receive mass."""
    return vectors.where(F.col(idx_col) < blocking.n_nodes)


def compute_affinity(edges: DataFrame | AffinityGraph, prototypes: DataFrame, n_personas: int,
                     conf: AffinityConf | None = None, trace: list[dict] | None = None,
                     checkpoint_mode: CheckpointMode = "local") -> DataFrame:
    """Ψ for every user reached from a prototype within 2ℓ̂ hops → ``user_idx int, scores array<double>``.

    ``edges`` are the propagation edges (see ``prepare_graph``) or a graph prepared from them.
    ``prototypes`` are the rows of L (``prototype_labels``). Users with no row have Ψ = 0 for every
    persona (unreached, or pruned to zero). ``scores[r]`` is persona r. With ``conf.eps > 0`` every
    score is within ε of the exact Ψ and never above it; with ``conf.state_precision = "float32"``
    within a relative bound of it (both proven in the module docstring). ``trace``,
    when given, receives one dict per phase (path, seconds). Every hop's state is pinned with
    ``checkpoint_mode`` (``reliable`` needs the session's checkpoint directory).
    """
    conf = conf or AffinityConf()
    return compute_affinity_depths(edges, prototypes, n_personas, (conf.ell,), conf, trace,
                                   checkpoint_mode)[conf.ell]


@contextmanager
def _phase(trace: list[dict] | None, label: str):
    """Time the block as one ``trace`` phase (nothing when there is no trace)."""
    started = time.perf_counter()
    yield
    if trace is not None:
        trace.append({"phase": label, "seconds": round(time.perf_counter() - started, 3)})


def compute_affinity_depths(edges: DataFrame | AffinityGraph, prototypes: DataFrame, n_personas: int,
                            depths: tuple[int, ...], conf: AffinityConf | None = None,
                            trace: list[dict] | None = None,
                            checkpoint_mode: CheckpointMode = "local") -> dict[int, DataFrame]:
    """Ψ at each ℓ̂ in ``depths`` (``conf.ell`` is ignored) from one propagation of max(depths) round trips.

    Ψ_ℓ̂ = (1/ℓ̂) Σ_{t≤ℓ̂} x_{2t} shares its hop states x_{2t} with every deeper ℓ̂, so one walk gives all
    of them for the hops of the deepest alone. Pruning uses τ = ε/(2·D), D = max(depths): Ψ_d is then
    within (d+1)τ = (d+1)/(2D)·ε ≤ ε of the exact value for every d ≤ D (module docstring's bound).
    """
    conf = conf or AffinityConf()
    if not depths or min(depths) < 1:
        raise ValueError(f"affinity.ell (ℓ̂) must be >= 1, got {depths}")
    deepest = max(depths)
    vector_stats(prototypes, "user_idx", "vec", "prototypes", n_personas)
    graph, own = _graph_for(edges, conf, n_personas, (TO_ITEMS, TO_USERS), trace, checkpoint_mode)
    try:
        to_items = graph.plan(TO_ITEMS, n_personas, conf, checkpoint_mode)
        to_users = graph.plan(TO_USERS, n_personas, conf, checkpoint_mode)
        tau = conf.eps / (2 * deepest)
        packed = pack_vectors(_with_edges(prototypes, "user_idx", graph.users), "user_idx", "vec", graph.users,
                              n_personas, state_dtype(conf))
        with _phase(trace, "pack prototypes"):
            state = checkpoint(packed, checkpoint_mode)
        terms = []
        for step in range(1, deepest + 1):
            state = hop(state, to_items, tau, trace, f"hop {2 * step - 1} (users→items)")
            state = hop(state, to_users, tau, trace, f"hop {2 * step} (items→users)")
            terms.append(state)
    finally:
        if own:
            graph.release()
    return {d: unpack_states(union_all(terms[:d]), graph.users, n_personas, "user_idx", "scores", scale=1.0 / d,
                             terms=d) for d in depths}


def compute_affinity_depths_of_sets(edges: DataFrame | AffinityGraph, label_sets: list[DataFrame], n_personas: int,
                                    depths: tuple[int, ...], conf: AffinityConf | None = None,
                                    trace: list[dict] | None = None,
                                    checkpoint_mode: CheckpointMode = "local") -> list[dict[int, DataFrame]]:
    """``compute_affinity_depths`` for several prototype matrices L_1..L_K over one graph, in as few walks as
    the tiles allow: one result dict per matrix, in order.

    Persona columns never mix in a hop (every hop is a sparse matrix times the state, column by column; pruning
    zeroes single entries), so the matrices placed side by side as one of K·|R| columns give each one's Ψ in its
    own |R| columns: the same products, in one walk's jobs instead of K walks'. GPLR's cross-fitting propagates
    K folds' prototypes plus all of them over the same train edges. That pays where a walk's fixed cost (its
    jobs, packing, unpacking) outweighs its products, i.e. on small states; on large ones the products dominate,
    stacking saves nothing (docs/concepts/assignment.md) and a stacked state is K times one walk's. So a walk
    stacks as many matrices as keep all users' stacked state within ``conf.stack_max_bytes`` and the tiles'
    width (``AffinityGraph.width``: one source block within ``broadcast_max_bytes``); the rest go in further
    walks. A user has a row in a matrix's result when one of its own columns is non-zero, as in a walk of its
    own.
    """
    conf = conf or AffinityConf()
    graph, own = _graph_for(edges, conf, n_personas, (TO_ITEMS, TO_USERS), trace, checkpoint_mode)
    stacked_width = (conf.stack_max_bytes // max(graph.users.n_nodes, 1) - 4) // 8
    per_walk = max(1, min(graph.width, stacked_width) // n_personas)
    results = []
    try:
        for start in range(0, len(label_sets), per_walk):
            chunk = label_sets[start:start + per_walk]
            stacked = chunk[0] if len(chunk) == 1 else _side_by_side(chunk, n_personas)
            walked = compute_affinity_depths(graph, stacked, n_personas * len(chunk), depths, conf, trace,
                                             checkpoint_mode)
            walked = {d: checkpoint(frame, checkpoint_mode) for d, frame in walked.items()}
            results.extend({d: frame if len(chunk) == 1 else _column_block(frame, i, n_personas)
                            for d, frame in walked.items()} for i in range(len(chunk)))
    finally:
        if own:
            graph.release()
    return results


def _side_by_side(label_sets: list[DataFrame], width: int) -> DataFrame:
    """``user_idx, vec`` frames of ``width`` columns -> one of ``len(label_sets)·width`` columns (zeros where a
    user has no row in a frame)."""
    tagged = union_all([s.select("user_idx", F.lit(i).alias("part"), "vec") for i, s in enumerate(label_sets)])
    per_user = tagged.groupBy("user_idx").agg(F.map_from_entries(F.collect_list(F.struct("part", "vec"))).alias("m"))
    zeros = F.array_repeat(F.lit(0.0), width)
    return per_user.select("user_idx", F.flatten(F.array(*[F.coalesce(F.try_element_at("m", F.lit(i)), zeros)
                                                          for i in range(len(label_sets))])).alias("vec"))


def _column_block(scores: DataFrame, part: int, width: int) -> DataFrame:
    """Columns ``part·width .. part·width + width - 1`` of stacked scores, users whose block is all zero left out."""
    block = F.slice("scores", part * width + 1, width)
    return scores.select("user_idx", block.alias("scores")).where(F.exists("scores", lambda x: x != 0))


def propagate_to_users(edges: DataFrame | AffinityGraph, item_vectors: DataFrame,
                       conf: AffinityConf | None = None, checkpoint_mode: CheckpointMode = "local") -> DataFrame:
    """One item → user averaging step: ``user_idx, vec`` = Σ_v P[u,v]·vec[v] (row-normalized P).

    GPLR pushes the LLM's item labels to users with it. Same tiles and hop as the affinity engine;
    ``edges`` as in ``compute_affinity``; users whose items carry no vector get no row.
    """
    conf = conf or AffinityConf()
    vec = vector_stats(item_vectors, "item_idx", "vec", "item_vectors")
    width = vec["max_width"]
    if not vec["rows"]:
        return item_vectors.sparkSession.createDataFrame([], "user_idx int, vec array<double>")
    graph, own = _graph_for(edges, conf, width, (TO_USERS,), None, checkpoint_mode)
    try:
        packed = pack_vectors(_with_edges(item_vectors, "item_idx", graph.items), "item_idx", "vec", graph.items, width,
                              state_dtype(conf))
        state = checkpoint(packed, checkpoint_mode)
        result = hop(state, graph.plan(TO_USERS, width, conf, checkpoint_mode), 0.0, label="item→user")
    finally:
        if own:
            graph.release()
    return unpack_states(result, graph.users, width, "user_idx", "vec")


def affinity_long(df: DataFrame) -> DataFrame:
    """``user_idx, scores`` → ``user_idx, persona_idx, score`` with zero scores left out."""
    exploded = df.select("user_idx", F.posexplode("scores").alias("persona_idx", "score"))
    return exploded.where(F.col("score") != 0).select(
        "user_idx", F.col("persona_idx").cast("int"), F.col("score").cast("double"))
