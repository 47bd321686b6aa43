"""The user–item bipartite graph: dense indices, aggregated edges, a stable train/test split.

Indices are stable: a rebuild keeps every known customer's and item's index and appends new ones
after the current maximum, so caches keyed by index (LLM labels) survive monthly refreshes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from persona_spark.errors import UserError
from persona_spark.runtime.checkpoint import checkpoint
from persona_spark.runtime.session import has_graphframes
from persona_spark.tables import storage

if TYPE_CHECKING:
    from graphframes import GraphFrame

USERS_SCHEMA = "user_idx int, customer_id string, degree int"
ITEMS_SCHEMA = "item_idx int, item_id string, item_name string, degree int"


def dense_index(keys: DataFrame, key: str, idx: str, existing: DataFrame | None = None) -> DataFrame:
    """Assign dense int indices to distinct ``key`` values, keeping those already in ``existing``.

    New keys get ``max(existing) + 1 …`` in sorted key order. Distributed: range-partition the
    sorted keys, number rows inside each partition, offset by the (tiny) per-partition counts.
    """
    distinct = keys.select(key).distinct()
    start = 0
    if existing is not None:
        known = existing.select(key, idx)
        distinct = distinct.join(known.select(key), key, "left_anti")
        start = (known.agg(F.max(idx)).first()[0] or -1) + 1
    ranged = checkpoint(
        distinct.repartitionByRange(key)
        .sortWithinPartitions(key)
        .withColumn("_part", F.spark_partition_id())
    )
    counts = sorted((r["_part"], r["count"]) for r in ranged.groupBy("_part").count().collect())
    offsets, running = [], start
    for part, count in counts:
        offsets.append((part, running))
        running += count
    spark = keys.sparkSession
    offset_df = spark.createDataFrame(offsets or [(0, start)], "_part int, _offset long")
    numbered = ranged.withColumn("_pos", F.row_number().over(Window.partitionBy("_part").orderBy(key)) - 1)
    fresh = numbered.join(F.broadcast(offset_df), "_part").select(key, (F.col("_offset") + F.col("_pos")).cast("int").alias(idx))
    if existing is None:
        return fresh
    return existing.select(key, F.col(idx).cast("int").alias(idx)).unionByName(fresh)


def aggregate_edges(transactions: DataFrame) -> DataFrame:
    """One row per (customer, item): distinct orders, total quantity, first and last purchase."""
    return transactions.groupBy("customer_id", "item_id").agg(
        F.countDistinct("order_id").cast("int").alias("n_purchases"),
        F.sum("quantity").cast("long").alias("quantity"),
        F.min("ts").alias("first_ts"),
        F.max("ts").alias("last_ts"),
    )


def filter_degrees(pairs: DataFrame, min_user_degree: int, min_item_degree: int) -> DataFrame:
    """One pass of degree filtering (users, then items), as configured."""
    if min_user_degree > 1:
        keep = pairs.groupBy("customer_id").count().filter(F.col("count") >= min_user_degree).select("customer_id")
        pairs = pairs.join(keep, "customer_id")
    if min_item_degree > 1:
        keep = pairs.groupBy("item_id").count().filter(F.col("count") >= min_item_degree).select("item_id")
        pairs = pairs.join(keep, "item_id")
    return pairs


def split_edges(pairs: DataFrame, test_fraction: float, seed: int) -> DataFrame:
    """Add ``split``: a seeded hash of (customer, item) puts ~test_fraction of each user's items in test.

    The hash depends only on the pair and the seed, so the split is the same across reruns,
    cluster sizes and new purchases of other items. A user whose items all hashed to test keeps
    the lowest-hash one in train, so every user with >= 1 item has >= 1 train item.
    """
    score = (F.xxhash64(F.lit(seed), "customer_id", "item_id").bitwiseAND(F.lit(0x7FFFFFFF)) / F.lit(float(0x7FFFFFFF)))
    per_user = Window.partitionBy("customer_id")
    all_test = F.max("_h").over(per_user) < F.lit(test_fraction)
    keep_in_train = all_test & (F.col("_h") == F.min("_h").over(per_user))
    is_test = (F.col("_h") < F.lit(test_fraction)) & ~keep_in_train
    return pairs.withColumn("_h", score).withColumn("split", F.when(is_test, "test").otherwise("train")).drop("_h")


def build_graph(
    transactions: DataFrame,
    min_user_degree: int = 1,
    min_item_degree: int = 1,
    test_fraction: float = 0.2,
    seed: int = 42,
    existing_users: DataFrame | None = None,
    existing_items: DataFrame | None = None,
) -> tuple[DataFrame, DataFrame, DataFrame]:
    """transactions -> (users, items, edges) with dense stable indices and a train/test split."""
    pairs = filter_degrees(aggregate_edges(transactions), min_user_degree, min_item_degree)
    # Read five times below: materialized once, held only as long as the returned frames need it
    # (a persist() stays in Spark's cache until someone unpersists it, which no caller can).
    pairs = checkpoint(split_edges(pairs, test_fraction, seed))
    user_index = dense_index(pairs, "customer_id", "user_idx", existing_users)
    item_index = dense_index(pairs, "item_id", "item_idx", existing_items)
    names = transactions.groupBy("item_id").agg(F.max("item_name").alias("item_name"))
    edges = (
        pairs.join(user_index, "customer_id")
        .join(item_index, "item_id")
        .select("user_idx", "item_idx", "n_purchases", "quantity", "first_ts", "last_ts", "split")
    )
    user_degree = pairs.groupBy("customer_id").agg(F.count("*").cast("int").alias("degree"))
    item_degree = pairs.groupBy("item_id").agg(F.count("*").cast("int").alias("degree"))
    users = user_index.join(user_degree, "customer_id").select("user_idx", "customer_id", "degree")
    items = item_index.join(item_degree, "item_id").join(names, "item_id", "left").select(
        "item_idx", "item_id", "item_name", "degree"
    )
    return users, items, edges


@dataclass(frozen=True)
class PurchaseGraph:
    """The purchase graph GPLR runs on: ``users``, ``items`` and ``edges`` in the tables' schemas.

    ``edges``: ``user_idx, item_idx, n_purchases, quantity, first_ts, last_ts, split``; GPLR propagates
    over the ``train`` ones. Build one from order lines with :meth:`from_orders`, or from stored tables
    by passing the three frames.

    Example::

        graph = PurchaseGraph.from_orders(orders, min_user_degree=2)
        graph.users.count(), graph.items.count(), graph.train_edges.count()
    """

    users: DataFrame
    items: DataFrame
    edges: DataFrame

    @classmethod
    def from_orders(cls, orders: DataFrame, min_user_degree: int = 1, min_item_degree: int = 1,
                    test_fraction: float = 0.0, seed: int = 42) -> PurchaseGraph:
        """The graph of order lines with the canonical columns (``customer_id, order_id, item_id, item_name,
        quantity, ts``: ingest's ``transactions``). Customers with fewer than ``min_user_degree`` products,
        and products with fewer than ``min_item_degree`` customers, are left out; ``test_fraction`` of each
        customer's products are held out as ``test`` edges (none by default: every purchase counts). The
        three frames are materialized once (every GPLR round reads them)."""
        return cls(*(checkpoint(frame) for frame in build_graph(orders, min_user_degree, min_item_degree,
                                                                       test_fraction, seed)))

    @property
    def train_edges(self) -> DataFrame:
        """The edges personas propagate over (``split = 'train'``)."""
        return self.edges.filter(F.col("split") == "train")

    def graphframe(self) -> GraphFrame:
        """The graph as a GraphFrames ``GraphFrame`` (the ``graph`` extra, on a classic session with its jars).

        ``vertices``: ``id`` (users ``2·user_idx``, items ``2·item_idx + 1``: one long id space, as GraphFrames
        wants it), ``kind`` (``user`` or ``item``), ``key`` (``customer_id`` or ``item_id``), ``name``
        (``item_name``; null for users), ``degree``. ``edges``: ``src`` (the user) → ``dst`` (the item),
        ``n_purchases, quantity, first_ts, last_ts, split``.

        Example::

            g = graph.graphframe()
            g.inDegrees.orderBy("inDegree", ascending=False).show(5)       # best-selling items
            g.find("(u)-[]->(a); (u)-[]->(b)").filter("a.id < b.id")      # items bought together
            g.pageRank(resetProbability=0.15, maxIter=10).vertices.filter("kind = 'item'")
        """
        require_graphframes(self.edges.sparkSession, "PurchaseGraph.graphframe")
        from graphframes import GraphFrame

        users = self.users.select((F.col("user_idx").cast("long") * 2).alias("id"), F.lit("user").alias("kind"),
                                  F.col("customer_id").alias("key"), F.lit(None).cast("string").alias("name"), "degree")
        items = self.items.select((F.col("item_idx").cast("long") * 2 + 1).alias("id"), F.lit("item").alias("kind"),
                                  F.col("item_id").alias("key"), F.col("item_name").alias("name"), "degree")
        edges = node_edges(self.edges, "n_purchases", "quantity", "first_ts", "last_ts", "split")
        return GraphFrame(users.unionByName(items), edges)


def require_graphframes(spark: SparkSession, what: str) -> None:
    """Raise a one-line ``UserError`` saying how to get GraphFrames when this session cannot run it."""
    if not has_graphframes(spark):
        raise UserError(f"{what} needs GraphFrames: pip install 'persona-spark[graph]' and a classic session "
                        "with its jars (spark.graphframes=true resolves them from Maven; Spark Connect has none)")


def node_edges(edges: DataFrame, *extra: Column) -> DataFrame:
    """Edges in one vertex id space, as GraphFrames wants them: ``src`` = 2·user_idx, ``dst`` = 2·item_idx + 1
    (longs), then the ``extra`` columns."""
    return edges.select((F.col("user_idx").cast("long") * 2).alias("src"),
                        (F.col("item_idx").cast("long") * 2 + 1).alias("dst"), *extra)


def _oriented(pairs: DataFrame) -> DataFrame:
    """Undirected edges as distinct (larger, smaller) pairs, self loops dropped."""
    return (pairs.where(F.col("src") != F.col("dst"))
            .select(F.greatest("src", "dst").alias("src"), F.least("src", "dst").alias("dst")).distinct())


def _large_star(e: DataFrame) -> DataFrame:
    """Every node u links each larger neighbour v to m(u), the least of u and its neighbours."""
    both = e.unionByName(e.select(F.col("dst").alias("src"), F.col("src").alias("dst")))
    least = both.groupBy("src").agg(F.least(F.min("dst"), F.col("src")).alias("m"))
    return both.where(F.col("dst") > F.col("src")).join(least, "src").select(
        F.col("dst").alias("src"), F.col("m").alias("dst")).distinct()


def _small_star(e: DataFrame) -> DataFrame:
    """Every node u links itself and each smaller neighbour to m(u), the least of them."""
    least = e.groupBy("src").agg(F.min("dst").alias("m"))
    spokes = e.join(least, "src").where(F.col("dst") != F.col("m")).select(
        F.col("dst").alias("src"), F.col("m").alias("dst"))
    return spokes.unionByName(least.select("src", F.col("m").alias("dst"))).distinct()


def _is_star_forest(e: DataFrame) -> bool:
    """Each node points at one node that points nowhere: the stars are the components, both steps keep them."""
    counts = e.agg(F.count(F.lit(1)).alias("edges"), F.countDistinct("src").alias("sources")).first()
    if counts["edges"] != counts["sources"]:
        return False
    return e.select(F.col("dst").alias("src")).join(e.select("src"), "src", "left_semi").limit(1).count() == 0


def connected_components(pairs: DataFrame, checkpoint_mode: str = "local") -> DataFrame:
    """``node, component`` (the least node id in it) for every node of the undirected ``src, dst`` long pairs.

    Large-star / small-star alternation (Kiveris et al., "Connected Components in MapReduce and Beyond",
    SoCC 2014), the algorithm GraphFrames' ``connectedComponents`` runs: both steps keep the components
    and shrink every tree towards a star around its least node, in O(log² n) rounds (log n in practice).
    Rounds run until the edges form such stars; each step is checkpointed, so the plan stays flat.
    """
    current = checkpoint(_oriented(pairs), checkpoint_mode)
    while not _is_star_forest(current):
        current = checkpoint(_large_star(current), checkpoint_mode)
        current = checkpoint(_small_star(current), checkpoint_mode)
    roots = current.select(F.col("dst").alias("node")).distinct().withColumn("component", F.col("node"))
    return current.select(F.col("src").alias("node"), F.col("dst").alias("component")).unionByName(roots)


def graphframes_components(pairs: DataFrame, checkpoint_mode: str = "local", inner: str = "graphx") -> DataFrame:
    """``id, component`` (an id its nodes share) of the undirected ``src, dst`` long pairs by GraphFrames'
    ``connectedComponents`` with its ``inner`` algorithm: ``graphx`` (GraphX's Pregel rounds) or ``graphframes``
    (its own DataFrame large-star/small-star, pinned as ``checkpoint_mode`` says: local checkpoints, or reliable
    ones in the session's checkpoint directory). GraphFrames returns the result persisted: ``unpersist()`` it
    when done."""
    require_graphframes(pairs.sparkSession, f"graph.components_algorithm={inner}")
    from graphframes import GraphFrame

    edges = pairs.select("src", "dst")
    vertices = edges.select(F.col("src").alias("id")).union(edges.select(F.col("dst").alias("id"))).distinct()
    # max_iter: graphframes-py 0.10.1's default is 2 ^ 31 - 2, an XOR (31), which stops GraphX's rounds
    # before a long path is labelled; its own algorithm ignores it
    return GraphFrame(vertices, edges).connectedComponents(
        algorithm=inner, use_local_checkpoints=checkpoint_mode == "local", max_iter=2**31 - 2)


ComponentsAlgorithm = Literal["auto", "large-star", "graphframes", "graphx"]
GRAPHFRAMES_ALGORITHMS = ("graphframes", "graphx")  # the two algorithms of GraphFrames' connectedComponents
# What "auto" runs where GraphFrames is available: the fastest of the three at 13 M edges
# (benchmarks/affinity.py --components, on the benchmarks page)
AUTO_WITH_GRAPHFRAMES = "graphx"


def pick_components_algorithm(requested: ComponentsAlgorithm, graphframes_available: bool) -> str:
    """The algorithm that runs: ``auto`` is ``AUTO_WITH_GRAPHFRAMES`` where GraphFrames runs, else large-star."""
    if requested == "auto":
        return AUTO_WITH_GRAPHFRAMES if graphframes_available else "large-star"
    return requested


def component_summary(edges: DataFrame, checkpoint_mode: str = "local",
                      algorithm: ComponentsAlgorithm = "auto") -> dict:
    """Connected components of the user–item graph of ``edges``: how many, the largest one's users and
    items, and the users outside it (they can only take personas from prototypes in their own component),
    and which ``algorithm`` found them (``pick_components_algorithm``): the package's ``large-star`` rounds,
    or GraphFrames' ``connectedComponents`` with its ``graphframes`` or ``graphx`` algorithm."""
    chosen = pick_components_algorithm(algorithm, has_graphframes(edges.sparkSession))
    if chosen in GRAPHFRAMES_ALGORITHMS:
        labels = graphframes_components(node_edges(edges), checkpoint_mode, chosen)
        try:
            return {**_summarize_components(labels.select(F.col("id").alias("node"), "component")),
                    "algorithm": chosen}
        finally:
            labels.unpersist()
    return {**_summarize_components(connected_components(node_edges(edges), checkpoint_mode)), "algorithm": chosen}


def _summarize_components(labels: DataFrame) -> dict:
    sizes = labels.groupBy("component").agg(
        F.count(F.when(F.col("node") % 2 == 0, 1)).alias("users"),
        F.count(F.when(F.col("node") % 2 == 1, 1)).alias("items"))
    stats = sizes.agg(F.count(F.lit(1)).alias("components"), F.sum("users").alias("users"),
                      F.max(F.struct(F.col("users") + F.col("items"), "users", "items")).alias("largest")).first()
    if not stats["components"]:
        return {"components": 0, "largest_users": 0, "largest_items": 0, "users_outside_largest": 0}
    largest = stats["largest"]
    return {"components": stats["components"], "largest_users": largest["users"], "largest_items": largest["items"],
            "users_outside_largest": stats["users"] - largest["users"]}


def load_gplr_split(spark: SparkSession, data_dir: str | os.PathLike) -> dict[str, DataFrame]:
    """The paper's index-based OnlineRetail split as ``users``, ``items``, ``edges`` tables.

    Also returns the authors' GPT-4 labels as ``reference_personas`` (user_idx, persona_idx) and
    ``reference_item_personas`` (item_idx, persona_idx) when present. The files are a fixed
    reference dataset of a few hundred thousand edges, read on the driver from any ``storage``
    location (a path, a volume, ``s3a://``).
    """
    edge_rows = []
    for split in ("train", "test"):
        for user, item_list in json.loads(storage.read_text(storage.join(data_dir, f"{split}.json"))).items():
            edge_rows.extend((int(user), int(item), 1, 1, None, None, split) for item in item_list)
    edges = spark.createDataFrame(
        edge_rows,
        "user_idx int, item_idx int, n_purchases int, quantity long, first_ts timestamp, last_ts timestamp, split string",
    )
    user_ids = sorted({r[0] for r in edge_rows})
    item_ids = sorted({r[1] for r in edge_rows})
    degree_u: dict[int, int] = {}
    degree_i: dict[int, int] = {}
    for u, i, *_ in edge_rows:
        degree_u[u] = degree_u.get(u, 0) + 1
        degree_i[i] = degree_i.get(i, 0) + 1
    users = spark.createDataFrame([(u, str(u), degree_u[u]) for u in user_ids], USERS_SCHEMA)
    items = spark.createDataFrame([(i, str(i), f"item {i}", degree_i[i]) for i in item_ids], ITEMS_SCHEMA)
    tables = {"users": users, "items": items, "edges": edges}
    for file_name, table, key in (
        ("user_personas_gpt4.json", "reference_personas", "user_idx"),
        ("item_personas_gpt4.json", "reference_item_personas", "item_idx"),
    ):
        location = storage.join(data_dir, file_name)
        if storage.exists(location):
            rows = [(int(k), int(p)) for k, ps in json.loads(storage.read_text(location)).items() for p in ps]
            tables[table] = spark.createDataFrame(rows, f"{key} int, persona_idx int")
    return tables


def distinctive_items(
    members: DataFrame,
    edges: DataFrame,
    items: DataFrame,
    top_n: int = 10,
    group_cols: list[str] | None = None,
    bought: DataFrame | None = None,
) -> DataFrame:
    """Items a group of users buys more than everyone does: ``group_cols…, item_rank, item_idx,
    item_id, item_name, buyers, buyer_share, lift``.

    ``lift`` = share of the group buying the item / share of all users buying it. Items are ranked
    by buyers × ln(lift): common in the group *and* characteristic of it, so the shop's bestsellers
    (bought by everyone, lift ≈ 1) do not top every list. Only items with lift > 1 are kept.
    ``bought``: the groups' buyers per item (``group_cols…, item_idx, buyers``: distinct members who
    bought it, as counted here) when the caller has them already.
    """
    group_cols = list(group_cols or [])
    pairs = edges.select("user_idx", "item_idx").distinct()
    n_users = pairs.select("user_idx").distinct().count()
    base_rate = pairs.groupBy("item_idx").agg((F.count("*") / F.lit(n_users)).alias("base_rate"))
    members = members.select("user_idx", *group_cols)
    sizes = members.groupBy(*group_cols).agg(F.count("*").alias("group_size")) if group_cols else None
    if bought is None:
        bought = members.join(pairs, "user_idx").groupBy(*group_cols, "item_idx").agg(F.count("*").alias("buyers"))
    if sizes is None:
        bought = bought.crossJoin(members.agg(F.count("*").alias("group_size")))
    else:
        bought = bought.join(sizes, group_cols)
    scored = (
        bought.join(base_rate, "item_idx")
        .withColumn("buyer_share", F.col("buyers") / F.col("group_size"))
        .withColumn("lift", F.col("buyer_share") / F.col("base_rate"))
        .filter(F.col("lift") > 1.0)
        .withColumn("score", F.col("buyers") * F.log("lift"))
    )
    order = Window.partitionBy(*[F.col(c) for c in group_cols]) if group_cols else Window.partitionBy()
    ranked = scored.withColumn(
        "item_rank", F.row_number().over(order.orderBy(F.desc("score"), F.desc("buyers"), "item_idx"))
    ).filter(F.col("item_rank") <= top_n)
    named = ranked.join(items.select("item_idx", "item_id", "item_name"), "item_idx", "left")
    return named.select(*group_cols, "item_rank", "item_idx", "item_id", "item_name", "buyers", "buyer_share", "lift")
