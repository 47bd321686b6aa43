"""Graph building: dense stable indices, aggregated edges, a deterministic per-user split."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from persona_spark import graph
from persona_spark.config import DEFAULT_PERSONAS, DemoConf
from persona_spark.generate import generate
from persona_spark.personas import load_persona_set
from tests.conftest import shared_path

TX = "customer_id string, order_id string, item_id string, item_name string, quantity long, unit_price double, ts timestamp"


def _tx(spark, rows):
    return spark.createDataFrame(rows, TX)


def _many_users(spark, users=60, items_per_user=7):
    t = dt.datetime(2024, 1, 1)
    rows = [
        (f"u{u}", f"o{u}-{k % 3}", f"i{(u * 3 + k) % 40}", f"item {(u * 3 + k) % 40}", 1 + k % 2, 1.0, t + dt.timedelta(days=k))
        for u in range(users)
        for k in range(1 + u % items_per_user)
    ]
    return _tx(spark, rows)


def test_edges_aggregate_orders_quantities_and_times(spark):
    t1, t2 = dt.datetime(2024, 1, 1), dt.datetime(2024, 2, 1)
    tx = _tx(spark, [("a", "o1", "x", "X", 2, 1.0, t1), ("a", "o2", "x", "X", 3, 1.0, t2), ("a", "o2", "y", "Y", 1, 1.0, t2)])
    users, items, edges = graph.build_graph(tx, test_fraction=0.0)
    rows = {r["item_idx"]: r for r in edges.collect()}
    x = items.filter("item_id = 'x'").first()["item_idx"]
    assert (rows[x].n_purchases, rows[x].quantity, rows[x].first_ts, rows[x].last_ts) == (2, 5, t1, t2)
    assert users.first().degree == 2
    assert {r["item_id"]: r["degree"] for r in items.collect()} == {"x": 1, "y": 1}


def test_build_graph_leaves_nothing_in_the_session_cache(spark):
    """Its intermediate is held only by the frames it returns: nothing for a caller to unpersist."""
    spark.catalog.clearCache()
    users, items, edges = graph.build_graph(_many_users(spark))
    assert edges.count() > 0 and users.count() == 60
    assert spark._jsparkSession.sharedState().cacheManager().isEmpty()


def test_indices_are_dense_and_sorted(spark):
    users, items, _ = graph.build_graph(_many_users(spark))
    got = [(r.user_idx, r.customer_id) for r in users.orderBy("user_idx").collect()]
    assert [idx for idx, _ in got] == list(range(60))
    assert [c for _, c in got] == sorted(c for _, c in got)
    assert sorted(r.item_idx for r in items.collect()) == list(range(items.count()))


def test_split_invariants_and_determinism(spark):
    tx = _many_users(spark)
    _, _, edges = graph.build_graph(tx, test_fraction=0.3, seed=5)
    per_user = edges.groupBy("user_idx").agg(
        F.count("*").alias("n"), F.sum((F.col("split") == "train").cast("int")).alias("train")
    )
    assert per_user.filter("train < 1").count() == 0  # every user keeps a train item
    share = edges.filter("split = 'test'").count() / edges.count()
    assert 0.15 < share < 0.45
    again = graph.build_graph(tx.repartition(7), test_fraction=0.3, seed=5)[2]
    assertDataFrameEqual(again, edges)  # row order free: the split depends on the seed, not the partitioning
    other_seed = graph.build_graph(tx, test_fraction=0.3, seed=6)[2]
    with pytest.raises(AssertionError):
        assertDataFrameEqual(other_seed, edges)


def test_rebuild_keeps_known_indices_and_appends_new(spark):
    t = dt.datetime(2024, 1, 1)
    first = _tx(spark, [("m", "1", "b", "B", 1, 1.0, t), ("z", "2", "a", "A", 1, 1.0, t)])
    users1, items1, _ = graph.build_graph(first)
    second = first.union(_tx(spark, [("a", "3", "c", "C", 1, 1.0, t), ("b", "4", "b", "B", 1, 1.0, t)]))
    users2, items2, _ = graph.build_graph(second, existing_users=users1, existing_items=items1)
    before = {r.customer_id: r.user_idx for r in users1.collect()}
    after = {r.customer_id: r.user_idx for r in users2.collect()}
    assert {k: after[k] for k in before} == before == {"m": 0, "z": 1}
    assert (after["a"], after["b"]) == (2, 3)
    assert {r.item_id: r.item_idx for r in items2.collect()} == {"a": 0, "b": 1, "c": 2}


def test_degree_filters(spark):
    users, items, edges = graph.build_graph(_many_users(spark), min_user_degree=3)
    assert users.filter("degree < 3").count() == 0
    assert edges.join(users, "user_idx").count() == edges.count()


def test_generated_demo_data_has_planted_personas(spark):
    personas = load_persona_set(DEFAULT_PERSONAS)
    conf = DemoConf(users=40, items=120, seed=3, partitions=2)
    raw, planted, catalog = generate(spark, personas, conf)
    raw_rows = raw.collect()
    assert len({r.customer_id for r in raw_rows if r.customer_id}) == 40
    per_user = planted.groupBy("customer_id").count().collect()
    assert len(per_user) == 40 and all(1 <= r["count"] <= 4 for r in per_user)
    assert len(catalog) == 120 and catalog["item_name"].is_unique
    again = generate(spark, personas, conf)[0].collect()
    assert sorted(map(tuple, raw_rows), key=str) == sorted(map(tuple, again), key=str)


def test_paper_split_loader(spark):
    data = shared_path("online_retail_gplr", "train.json")
    tables = graph.load_gplr_split(spark, data.parent)
    split = {r["split"]: r["count"] for r in tables["edges"].groupBy("split").count().collect()}
    assert split == {"train": 208_956, "test": 54_311}
    assert tables["users"].count() == 4_297 and tables["items"].count() == 3_846
    assert tables["reference_personas"].select("user_idx").distinct().count() == 4_286


def _bipartite_labels(users, items, n_users, n_items):
    """scipy's components of the user–item graph, users as nodes 0..n_users-1 and items after them."""
    import numpy as np
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    adjacency = sp.coo_matrix((np.ones(len(users)), (users, n_users + np.asarray(items))),
                              shape=(n_users + n_items,) * 2)
    return connected_components(adjacency, directed=False)[1]


@pytest.mark.parametrize("seed", [0, 1])
def test_connected_components_match_scipy_on_a_random_graph(spark, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    n_users, n_items, n_edges = 300, 200, 260  # sparse: many components, some of one edge
    users, items = rng.integers(n_users, size=n_edges), rng.integers(n_items, size=n_edges)
    edges = spark.createDataFrame([(int(u), int(i)) for u, i in zip(users, items)], "user_idx int, item_idx int")
    got = {r.node: r.component for r in graph.connected_components(graph.node_edges(edges)).collect()}
    nodes = {2 * int(u) for u in users} | {2 * int(i) + 1 for i in items}
    assert set(got) == nodes  # every node with an edge, once
    expected = _bipartite_labels(users, items, n_users, n_items)
    scipy_of = {2 * u: expected[u] for u in range(n_users)} | {2 * i + 1: expected[n_users + i] for i in range(n_items)}
    pairs = {(scipy_of[n], c) for n, c in got.items()}
    assert len(pairs) == len({c for _, c in pairs}) == len({s for s, _ in pairs})  # the same partition
    for component in got.values():
        assert component == min(n for n in got if got[n] == component)  # labelled by its least node
    summary = graph.component_summary(edges, algorithm="large-star")
    sizes = np.bincount(expected[np.unique(np.concatenate([users, n_users + items]))])
    user_sizes = np.bincount(expected[np.unique(users)], minlength=len(sizes))
    largest = int(np.argmax(sizes))
    assert summary == {"components": int((sizes > 0).sum()), "largest_users": int(user_sizes[largest]),
                       "largest_items": int(sizes[largest] - user_sizes[largest]),
                       "users_outside_largest": len(np.unique(users)) - int(user_sizes[largest]),
                       "algorithm": "large-star"}


def test_connected_components_of_a_long_path_and_known_pieces(spark):
    """A path of 20 nodes with its least id at one end (that label travels the whole path over several
    rounds), and two separate pieces that stay apart."""
    path = [(u, u) for u in range(10, 20)] + [(u + 1, u) for u in range(10, 19)]  # u10 - i10 - u11 - i11 … - u19 - i19
    piece = [(0, 0), (0, 1), (1, 1)]  # u0 - i0, u0 - i1, u1 - i1
    edges = spark.createDataFrame(path + piece + [(5, 7)], "user_idx int, item_idx int")
    summary = graph.component_summary(edges, algorithm="large-star")
    assert summary == {"components": 3, "largest_users": 10, "largest_items": 10, "users_outside_largest": 3,
                       "algorithm": "large-star"}
    labels = {r.node: r.component for r in graph.connected_components(graph.node_edges(edges)).collect()}
    assert {labels[2 * u] for u in range(10, 20)} == {20} and labels[2 * 5] == labels[2 * 7 + 1] == 10


def test_graphframes_finds_the_same_components(graphframes):
    """GraphFrames' connectedComponents (both its algorithms) and the large-star rounds summarize one graph the same
    way: a random sparse graph (dozens of components, some of one edge), a 50-node path and two separate pieces, in
    disjoint id ranges."""
    import numpy as np

    rng = np.random.default_rng(0)
    pairs = {(int(u), int(i)) for u, i in zip(rng.integers(300, size=260), rng.integers(200, size=260))}
    pairs |= {(1000 + u, 1000 + u) for u in range(25)} | {(1001 + u, 1000 + u) for u in range(24)}  # 50 nodes
    pairs |= {(2000, 2000), (2000, 2001), (2001, 2001), (2005, 2007)}
    edges = graphframes.createDataFrame(sorted(pairs), "user_idx int, item_idx int")
    ours = graph.component_summary(edges, algorithm="large-star")
    assert ours["components"] > 10 and ours["algorithm"] == "large-star"
    for algorithm in graph.GRAPHFRAMES_ALGORITHMS:  # the path is longer than graphframes-py 0.10.1's max_iter default (31)
        assert graph.component_summary(edges, algorithm=algorithm) == {**ours, "algorithm": algorithm}
    assert graph.component_summary(edges.limit(0), algorithm="graphx")["components"] == 0


def test_build_graph_stage_reports_train_components(spark, tmp_path):
    from persona_spark.config import load_config
    from persona_spark.runtime.session import has_graphframes
    from persona_spark.stages import STAGES, RunContext
    from persona_spark.tables.store import TableStore

    cfg = load_config(None, [f"tables.root={tmp_path / 'tables'}"])
    store = TableStore(spark, cfg.tables)
    t = dt.datetime(2024, 1, 1)
    # two shops that share no customer and no product, one of them a single purchase
    rows = [(f"u{u}", f"o{u}", f"i{(u + k) % 5}", "x", 1, 1.0, t) for u in range(8) for k in range(3)]
    store.write_table(_tx(spark, rows + [("loner", "o-l", "j0", "y", 1, 1.0, t)]), "transactions")
    summary = STAGES["build-graph"](RunContext(cfg, store))
    train = store.read_table("edges").where("split = 'train'")
    assert summary["train_components"] == graph.component_summary(train)
    assert summary["train_components"]["components"] == 2 and summary["train_components"]["users_outside_largest"] == 1
    assert summary["train_components"]["algorithm"] == graph.pick_components_algorithm("auto", has_graphframes(spark))
    off = load_config(None, [f"tables.root={tmp_path / 'tables'}", "graph.components=false"])
    assert "train_components" not in STAGES["build-graph"](RunContext(off, store))
