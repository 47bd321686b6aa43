"""The affinity engine against single-machine references: exact scipy Ψ and the paper's RevAff.

Graphs are tiny (tens of nodes) so the whole file stays well under a minute of Spark work; the
paths the engine takes at scale (shuffle join, several source blocks) are forced by a small
``broadcast_max_bytes`` instead of big data.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyspark.testing import assertDataFrameEqual

from persona_spark.affinity import (
    AffinityGraph,
    affinity_long,
    compute_affinity,
    compute_affinity_depths,
    compute_affinity_depths_of_sets,
    prepare_graph,
    propagate_to_users,
    prototype_labels,
)
from persona_spark.affinity.engine import Blocking, pack_vectors, state_row_bytes
from persona_spark.affinity.graphframes_affinity import graphframes_affinity
from persona_spark.affinity.reference import exact_affinity, rev_aff
from persona_spark.config import AffinityConf, load_config
from persona_spark.stages import STAGES, RunContext
from persona_spark.stages.sources import write_edge_tiles
from tests.affinity_world import small_graphs

N_USERS, N_ITEMS, N_PERSONAS = 60, 25, 4


def random_graph(seed: int, n_users: int = N_USERS, n_items: int = N_ITEMS, n_edges: int = 200,
                 labelled_every: int = 6, n_personas: int = N_PERSONAS):
    """Unique (user, item) pairs and a non-negative L with a few labelled users."""
    rng = np.random.default_rng(seed)
    pairs = np.unique(np.stack([rng.integers(n_users, size=n_edges), rng.integers(n_items, size=n_edges)], 1), axis=0)
    labels = np.zeros((n_users, n_personas))
    for user in range(0, n_users, labelled_every):
        labels[user, rng.choice(n_personas, size=rng.integers(1, 3), replace=False)] = rng.uniform(0.2, 1.0)
    return pairs[:, 0], pairs[:, 1], labels


def edges_df(spark, users, items, purchases=None):
    purchases = np.ones(len(users), dtype=int) if purchases is None else purchases
    rows = [(int(u), int(i), int(n)) for u, i, n in zip(users, items, purchases)]
    return spark.createDataFrame(rows, "user_idx int, item_idx int, n_purchases int")


def vectors_df(spark, matrix: np.ndarray, idx_col: str):
    rows = [(int(k), [float(v) for v in matrix[k]]) for k in range(len(matrix)) if matrix[k].any()]
    return spark.createDataFrame(rows, f"{idx_col} int, vec array<double>")


def dense(df, n_rows: int, width: int, idx_col: str = "user_idx", vec_col: str = "scores") -> np.ndarray:
    out = np.zeros((n_rows, width))
    for row in df.collect():
        assert not out[row[idx_col]].any(), f"{idx_col} {row[idx_col]} appears twice"
        out[row[idx_col]] = row[vec_col]
    return out


def spark_affinity(spark, users, items, labels, conf: AffinityConf, trace=None, purchases=None) -> np.ndarray:
    scores = compute_affinity(edges_df(spark, users, items, purchases), vectors_df(spark, labels, "user_idx"),
                              labels.shape[1], conf, trace)
    return dense(scores, labels.shape[0], labels.shape[1])


@pytest.fixture(scope="module")
def graph():
    return random_graph(seed=7)


# ---- exactness and the two data paths ----------------------------------------------------------
@pytest.mark.parametrize("eps", [0.0, 0.05])
def test_broadcast_and_shuffle_paths_agree_and_match_references(spark, graph, eps):
    users, items, labels = graph
    results = {}
    for path, limit in (("broadcast", 1_000_000), ("shuffle", 4)):
        trace: list[dict] = []
        results[path] = spark_affinity(spark, users, items, labels,
                                       AffinityConf(ell=2, eps=eps, broadcast_max_bytes=limit * state_row_bytes(N_PERSONAS)), trace)
        assert {t["path"] for t in trace if "path" in t} == {path}
    np.testing.assert_allclose(results["shuffle"], results["broadcast"], rtol=0, atol=1e-12)
    exact = exact_affinity(users, items, labels, 2, N_ITEMS)
    if eps == 0:
        np.testing.assert_allclose(results["broadcast"], exact, rtol=0, atol=1e-12)
        np.testing.assert_allclose(rev_aff(users, items, labels, 2, 0.0, N_ITEMS), exact, rtol=0, atol=1e-12)
        assert np.count_nonzero(exact) > 0
    else:
        # Level-synchronous pruning (the engine) vs the paper's asynchronous push: each below
        # exact within its own bound, (ℓ̂+1)θ and ℓ̂θ.
        engine_gap = exact - results["broadcast"]
        rev_gap = exact - rev_aff(users, items, labels, 2, eps, N_ITEMS)
        assert engine_gap.max() > 1e-6 and rev_gap.max() > 1e-6  # this ε prunes something
        assert min(engine_gap.min(), rev_gap.min()) >= -1e-12
        assert engine_gap.max() <= 3 * eps / 4 + 1e-12 and rev_gap.max() <= eps / 2 + 1e-12


def test_ids_wider_than_16_bits_survive_the_cut(spark, graph):
    """The cut ships ids as uint16 where they fit (``_id_dtype``); spread users here need 32 bits, as do their
    local rows in a user block, while items still fit in 16."""
    users, items, labels = graph
    spread = 3001  # user ids up to 177,059
    wide_users, wide_labels = users * spread, np.zeros((N_USERS * spread, N_PERSONAS))
    wide_labels[np.arange(N_USERS) * spread] = labels
    got = spark_affinity(spark, wide_users, items, wide_labels, AffinityConf(ell=2, target_blocks=2))
    exact = exact_affinity(wide_users, items, wide_labels, 2, N_ITEMS)
    np.testing.assert_allclose(got, exact, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got[np.arange(N_USERS) * spread], exact_affinity(users, items, labels, 2, N_ITEMS),
                               rtol=0, atol=1e-12)
    assert np.count_nonzero(got) > 0


def test_weighted_edges_use_purchase_counts(spark, graph):
    users, items, labels = graph
    purchases = np.random.default_rng(3).integers(1, 6, size=len(users))
    got = spark_affinity(spark, users, items, labels, AffinityConf(ell=1, weighted=True), purchases=purchases)
    np.testing.assert_allclose(got, exact_affinity(users, items, labels, 1, N_ITEMS, weights=purchases), atol=1e-12)
    assert np.abs(got - exact_affinity(users, items, labels, 1, N_ITEMS)).max() > 1e-3  # weights matter here


@pytest.mark.parametrize(("ell", "weighted"), [(1, False), (2, True)])
def test_graphframes_version_equals_the_engine_and_scipy(graphframes, graph, ell, weighted):
    """Ψ by GraphFrames' aggregateMessages is the same Ψ, users no prototype reaches left out."""
    spark = graphframes
    users, items, labels = graph
    purchases = np.random.default_rng(3).integers(1, 6, size=len(users)) if weighted else None
    conf = AffinityConf(ell=ell, weighted=weighted)
    edges, prototypes = edges_df(spark, users, items, purchases), vectors_df(spark, labels, "user_idx")
    trace: list[dict] = []
    psi = graphframes_affinity(edges, prototypes, N_PERSONAS, conf, trace)
    got = dense(psi, N_USERS, N_PERSONAS)
    np.testing.assert_allclose(got, exact_affinity(users, items, labels, ell, N_ITEMS, weights=purchases), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got, spark_affinity(spark, users, items, labels, conf, purchases=purchases), rtol=0, atol=1e-12)
    reached = {r.user_idx for r in compute_affinity(edges, prototypes, N_PERSONAS, conf).select("user_idx").collect()}
    assert {r.user_idx for r in psi.select("user_idx").collect()} == reached and 0 < len(reached) < N_USERS
    assert [t["phase"] for t in trace][-2 * ell:] == [f"hop {h} ({'users→items' if h % 2 else 'items→users'})"
                                                      for h in range(1, 2 * ell + 1)]


@pytest.fixture(scope="module")
def prepared(spark, graph):
    users, items, _ = graph
    prepared_graph = prepare_graph(edges_df(spark, users, items), AffinityConf(), N_PERSONAS)
    yield prepared_graph
    prepared_graph.release()


def test_lineage_stays_flat_up_to_four_round_trips(spark, graph, prepared):
    users, items, labels = graph
    protos = vectors_df(spark, labels, "user_idx")

    def plan(ell: int):
        scores = compute_affinity(prepared, protos, N_PERSONAS, AffinityConf(ell=ell))
        return scores, scores._jdf.queryExecution().logical().treeString()

    def depth(tree: str) -> int:
        return max(len(line) - len(line.lstrip(" :|+-")) for line in tree.splitlines())

    _, two = plan(2)
    four_scores, four = plan(4)
    # every hop is checkpointed: Ψ sums one checkpointed leaf per term, and 8 hops plan as deep as 4
    assert four.count("LogicalRDD") == 4 and depth(four) == depth(two)
    np.testing.assert_allclose(dense(four_scores, N_USERS, N_PERSONAS),
                               exact_affinity(users, items, labels, 4, N_ITEMS), atol=1e-12)


def test_prepared_graph_serves_repeated_calls(spark, graph, prepared):
    users, items, labels = graph
    # A prototype beyond every user with edges: it has no edges, so it changes nothing.
    isolated = np.vstack([labels, np.zeros((4, N_PERSONAS))])
    isolated[-1, 0] = 1.0
    got = dense(compute_affinity(prepared, vectors_df(spark, isolated, "user_idx"), N_PERSONAS, AffinityConf(ell=1)),
                len(isolated), N_PERSONAS)
    np.testing.assert_allclose(got[:N_USERS], exact_affinity(users, items, labels, 1, N_ITEMS), atol=1e-12)
    assert not got[N_USERS:].any()
    item_vectors = np.eye(N_ITEMS, 2)
    pushed = dense(propagate_to_users(prepared, vectors_df(spark, item_vectors, "item_idx")), N_USERS, 2, vec_col="vec")
    degree = np.bincount(users, minlength=N_USERS)
    np.testing.assert_allclose(pushed[:, 0], np.bincount(users[items == 0], minlength=N_USERS) / np.maximum(degree, 1))
    # ε so large that hop 1 prunes everything: the later hops run no Spark job and nobody has a score.
    trace: list[dict] = []
    assert compute_affinity(prepared, vectors_df(spark, labels, "user_idx"), N_PERSONAS,
                            AffinityConf(ell=2, eps=10.0), trace).count() == 0
    assert [t["path"] for t in trace if "path" in t] == ["broadcast", "empty", "empty", "empty"]
    with pytest.raises(ValueError, match="cut for"):
        compute_affinity(prepared, vectors_df(spark, labels, "user_idx"), N_PERSONAS, AffinityConf(weighted=True))


@pytest.mark.parametrize("source_rows", [None, 8])  # None: one source block; 8: several, through the shuffle join
def test_tiles_written_as_a_table_serve_like_the_cut_graph(spark, graph, tmp_path, source_rows):
    users, items, labels = graph
    bmb = source_rows * state_row_bytes(N_PERSONAS) if source_rows else AffinityConf().broadcast_max_bytes
    conf = AffinityConf(ell=2, broadcast_max_bytes=bmb)
    cut = prepare_graph(edges_df(spark, users, items), conf, N_PERSONAS, edges_version=3)
    cut.to_table().write.format("delta").save(str(tmp_path / "tiles"))
    cut.release()
    stored = AffinityGraph.from_table(spark.read.format("delta").load(str(tmp_path / "tiles")))
    assert (stored.users, stored.items, stored.edges_version) == (cut.users, cut.items, 3)
    assert (stored.items.source_blocks > 1) == bool(source_rows)
    trace: list[dict] = []
    stored.load(trace)
    try:
        got = dense(compute_affinity(stored, vectors_df(spark, labels, "user_idx"), N_PERSONAS, conf, trace),
                    N_USERS, N_PERSONAS)
        assert [t["phase"] for t in trace][0] == "load tiles" and "tiles" not in [t["phase"] for t in trace]
        np.testing.assert_allclose(got, exact_affinity(users, items, labels, 2, N_ITEMS), atol=1e-12)
        # The widest state the stored blocks hold within the broadcast limit, not just the width asked for.
        assert stored.width == (bmb // max(stored.users.source_rows, stored.items.source_rows) - 4) // 8 >= N_PERSONAS
        assert stored.mismatch(conf, stored.width) is None
        assert "at most" in stored.mismatch(conf, stored.width + 1)
        assert "weighted" in stored.mismatch(AffinityConf(ell=2, broadcast_max_bytes=bmb, weighted=True), N_PERSONAS)
    finally:
        stored.release()


def test_one_walk_gives_every_depth_within_eps(spark, graph, prepared):
    """Ψ(ℓ̂=1) and Ψ(ℓ̂=3) from one 3-round-trip walk: exact at ε = 0, and at ε > 0 each within ε
    below the exact value although both share the deeper walk's τ = ε/6."""
    users, items, labels = graph
    prototypes = vectors_df(spark, labels, "user_idx")
    for eps in (0.0, 0.05):
        trace: list[dict] = []
        got = compute_affinity_depths(prepared, prototypes, N_PERSONAS, (1, 3), AffinityConf(eps=eps), trace)
        assert sorted(got) == [1, 3] and len([t for t in trace if t["phase"].startswith("hop")]) == 6
        for depth, scores in got.items():
            gap = exact_affinity(users, items, labels, depth, N_ITEMS) - dense(scores, N_USERS, N_PERSONAS)
            assert gap.min() >= -1e-12 and gap.max() <= (eps + 1e-12 if eps else 1e-12), (eps, depth)
    with pytest.raises(ValueError, match="must be >= 1"):
        compute_affinity_depths(prepared, prototypes, N_PERSONAS, (0, 2))


def test_label_sets_side_by_side_equal_a_walk_each(spark, graph, prepared):
    """Cross-fitting's shape: sets of prototypes (all but one fold, all, and a single one), stacked as wide as
    ``stack_max_bytes`` allows. Exact: each set's Ψ at every depth, and which users have a row, match scipy's.
    Pruned, two sets a walk: the single prototype's Ψ, rows included, equals a walk of its own (its stacked
    walk's other set reaches users it does not)."""
    users, items, labels = graph
    labelled = np.flatnonzero(labels.any(axis=1))
    sets = [np.where(np.isin(np.arange(N_USERS), labelled[k::2])[:, None], 0.0, labels) for k in range(2)] + [labels]
    sets.append(np.where(np.arange(N_USERS)[:, None] == labelled[0], labels, 0.0))
    frames = [vectors_df(spark, matrix, "user_idx") for matrix in sets]
    narrow = AffinityConf(eps=0.05, stack_max_bytes=N_USERS * state_row_bytes(2 * N_PERSONAS))
    for conf, walks in ((AffinityConf(), 1), (narrow, 2)):
        trace: list[dict] = []
        got = compute_affinity_depths_of_sets(prepared, frames, N_PERSONAS, (1, 2), conf, trace)
        assert len(got) == len(sets) and len([t for t in trace if t["phase"].startswith("hop")]) == 4 * walks
        alone = compute_affinity_depths(prepared, frames[-1], N_PERSONAS, (1, 2), conf) if conf.eps else {}
        for depth in (1, 2):
            if conf.eps == 0:
                for i, matrix in enumerate(sets):
                    exact = exact_affinity(users, items, matrix, depth, N_ITEMS)
                    np.testing.assert_allclose(dense(got[i][depth], N_USERS, N_PERSONAS), exact, rtol=0, atol=1e-12)
                    rows = {r["user_idx"] for r in got[i][depth].select("user_idx").collect()}
                    assert rows == set(np.flatnonzero(exact.any(axis=1))), (i, depth)
            else:  # the same τ = ε/4 as the stacked walk to ℓ̂ = 2
                np.testing.assert_allclose(dense(got[-1][depth], N_USERS, N_PERSONAS),
                                           dense(alone[depth], N_USERS, N_PERSONAS), rtol=0, atol=1e-12)
                assert ({r["user_idx"] for r in got[-1][depth].select("user_idx").collect()}
                        == {r["user_idx"] for r in alone[depth].select("user_idx").collect()}), depth
    assert got[-1][1].count() < got[-2][1].count()  # the narrow walk's other set reached users this one does not


# ---- the ε guarantee -----------------------------------------------------------------------------
@settings(max_examples=5, deadline=None, derandomize=True, database=None)
@given(small_graphs(), st.integers(1, 3), st.floats(0.005, 0.6), st.sampled_from([3, 1_000_000]))
def test_spark_pruned_affinity_is_within_eps_below_exact(spark, graph_case, ell, eps, broadcast_max_rows):
    users, items, labels, n_items = graph_case
    limit = broadcast_max_rows * state_row_bytes(labels.shape[1])
    got = spark_affinity(spark, users, items, labels, AffinityConf(ell=ell, eps=eps, broadcast_max_bytes=limit))
    gap = exact_affinity(users, items, labels, ell, n_items) - got
    assert gap.min() >= -1e-12  # pruning only removes mass
    assert gap.max() <= eps + 1e-12


# ---- float32 states: the relative guarantee -----------------------------------------------------
def float32_relative_bound(users, items, ell: int, source_blocks: int) -> float:
    """The engine docstring's bound: (1 + γ_{m_I})^ℓ̂ (1 + γ_{m_U})^ℓ̂ (1 + γ_{ℓ̂+1}) − 1, m = d + S + 1
    with d the largest item (hops onto items) or user (onto users) degree, u = 2⁻²⁴."""
    u = 2.0 ** -24
    gamma = lambda m: m * u / (1 - m * u)  # noqa: E731
    m_items, m_users = (np.bincount(nodes).max() + source_blocks + 1 for nodes in (items, users))
    return ((1 + gamma(m_items)) * (1 + gamma(m_users))) ** ell * (1 + gamma(ell + 1)) - 1


@settings(max_examples=6, deadline=None, derandomize=True, database=None)
@given(small_graphs(), st.integers(1, 3), st.booleans(), st.sampled_from([3, 1_000_000]))
def test_float32_states_are_within_the_relative_bound(spark, graph_case, ell, weighted, broadcast_max_rows):
    """Elementwise |Ψ̂ − Ψ| ≤ bound·Ψ (so zeros stay zero), on the shuffle / several-source-block
    paths too; at ℓ̂ = 1 every score is a widened float32 (the products really ran in float32)."""
    users, items, labels, n_items = graph_case
    purchases = (np.arange(len(users)) % 3 + 1) if weighted else None
    limit = broadcast_max_rows * state_row_bytes(labels.shape[1])
    got = spark_affinity(spark, users, items, labels, AffinityConf(ell=ell, weighted=weighted, broadcast_max_bytes=limit,
                                                                   state_precision="float32"), purchases=purchases)
    exact = exact_affinity(users, items, labels, ell, n_items, weights=purchases)
    bound = float32_relative_bound(users, items, ell, source_blocks=labels.shape[0])
    assert (np.abs(got - exact) <= bound * exact + 1e-38).all(), np.max(np.abs(got - exact) / np.maximum(exact, 1e-300))
    if ell == 1:
        assert (got.astype(np.float32).astype(np.float64) == got).all()


def test_float32_states_ship_half_the_bytes_and_refuse_eps(spark, graph):
    users, items, labels = graph
    with pytest.raises(ValueError, match="float64 states only"):
        AffinityConf(eps=0.01, state_precision="float32")
    packed = pack_vectors(vectors_df(spark, labels, "user_idx"), "user_idx", "vec", Blocking(N_USERS, 2, 1), N_PERSONAS,
                          np.float32).collect()
    assert sum(len(r["vals"]) for r in packed) == 4 * N_PERSONAS * sum(r["n"] for r in packed) > 0
    exact = exact_affinity(users, items, labels, 2, N_ITEMS)
    for limit in (1_000_000, 4):  # broadcast, shuffle join
        trace: list[dict] = []
        got = spark_affinity(spark, users, items, labels, AffinityConf(
            ell=2, state_precision="float32", broadcast_max_bytes=limit * state_row_bytes(N_PERSONAS, 4)), trace)
        assert {t["path"] for t in trace if "path" in t} == {"broadcast" if limit > 4 else "shuffle"}
        rel = np.abs(got - exact) / np.where(exact > 0, exact, np.inf)
        assert 0 < rel.max() <= float32_relative_bound(users, items, 2, N_USERS)  # rounded, within the bound
        assert ((got > 0) == (exact > 0)).all()


# ---- L: prototype labels and de-bias ------------------------------------------------------------
def test_prototype_labels_normalize_each_user_and_debias_rare_personas(spark):
    labels = spark.createDataFrame(
        [(0, 0, 1.0), (0, 1, 1.0), (1, 0, 2.0), (2, 0, 1.0), (2, 0, 1.0), (2, 2, 2.0), (3, 1, 0.0)],
        "user_idx int, persona_idx int, weight double")
    got = {r.user_idx: r.vec for r in prototype_labels(labels, 4, beta=1.0).collect()}
    # persona mass Q: 0 -> 1 + 2 + 2 = 5, 1 -> 1, 2 -> 2 (user 3's zero weight adds nothing); c = (1/Q)^1 · 1
    c = np.array([1 / 5, 1.0, 1 / 2, 0.0])
    assert sorted(got) == [0, 1, 2]  # user 3 has only a zero weight
    np.testing.assert_allclose(got[0], c * [0.5, 0.5, 0, 0])
    np.testing.assert_allclose(got[1], c * [1, 0, 0, 0])
    np.testing.assert_allclose(got[2], c * [0.5, 0, 0.5, 0])
    # Without weights every row counts 1, so user 2's repeated persona 0 counts twice; β = 0: no de-bias.
    unweighted = {r.user_idx: r.vec for r in prototype_labels(labels.drop("weight"), 4, beta=0.0).collect()}
    np.testing.assert_allclose(unweighted[2], [2 / 3, 0, 1 / 3, 0])
    np.testing.assert_allclose(unweighted[3], [0, 1, 0, 0])


def test_bad_inputs_name_the_column(spark, graph):
    users, items, labels = graph
    protos = vectors_df(spark, labels, "user_idx")
    with pytest.raises(ValueError, match="persona_idx must lie in \\[0, 4\\)"):
        prototype_labels(spark.createDataFrame([(0, 4)], "user_idx int, persona_idx int"), 4, 0.5)
    nulls = spark.createDataFrame([(0, 1, 1), (None, 2, 1)], "user_idx int, item_idx int, n_purchases int")
    with pytest.raises(ValueError, match="null user_idx"):
        compute_affinity(nulls, protos, N_PERSONAS)
    with pytest.raises(ValueError, match="length 5"):
        compute_affinity(edges_df(spark, users, items), protos, 5)
    with pytest.raises(ValueError, match="missing column.*item_idx"):
        compute_affinity(edges_df(spark, users, items).drop("item_idx"), protos, N_PERSONAS)


# ---- the item → user step and the long format ----------------------------------------------------
def test_propagate_to_users_is_one_row_normalized_step(spark, graph):
    users, items, _ = graph
    item_vectors = np.zeros((N_ITEMS, 3))
    item_vectors[::3] = np.random.default_rng(5).uniform(size=(len(item_vectors[::3]), 3))
    got = propagate_to_users(edges_df(spark, users, items), vectors_df(spark, item_vectors, "item_idx"),
                             AffinityConf(broadcast_max_bytes=4 * state_row_bytes(3)))
    adjacency = np.zeros((N_USERS, N_ITEMS))
    adjacency[users, items] = 1
    degree = adjacency.sum(1, keepdims=True)
    expected = np.divide(adjacency, degree, out=np.zeros_like(adjacency), where=degree > 0) @ item_vectors
    np.testing.assert_allclose(dense(got, N_USERS, 3, vec_col="vec"), expected, atol=1e-12)


def test_affinity_long_keeps_non_zero_scores(spark):
    wide = spark.createDataFrame([(3, [0.0, 0.25, 0.0]), (5, [0.5, 0.0, 0.125])], "user_idx int, scores array<double>")
    expected = spark.createDataFrame([(3, 1, 0.25), (5, 0, 0.5), (5, 2, 0.125)], "user_idx int, persona_idx int, score double")
    assertDataFrameEqual(affinity_long(wide), expected)


# ---- the stage -----------------------------------------------------------------------------------
def test_affinity_stage_uses_train_edges_and_writes_long_table(spark, store, graph):
    users, items, labels = graph
    split = np.where(np.arange(len(users)) % 5 == 0, "test", "train")
    edges = spark.createDataFrame([(int(u), int(i), 1, str(s)) for u, i, s in zip(users, items, split)],
                                  "user_idx int, item_idx int, n_purchases int, split string")
    store.write_table(edges, "edges")
    store.write_table(spark.createDataFrame(
        [(k, f"persona {k}", "", "v1") for k in range(N_PERSONAS)],
        "persona_idx int, name string, description string, version string"), "persona_set")
    labelled = [(int(u), int(r)) for u, r in zip(*np.nonzero(labels))]
    store.write_table(spark.createDataFrame(labelled, "user_idx int, persona_idx int"), "prototype_labels")

    cfg = load_config(None, ["affinity.ell=2", "affinity.beta=1.0"])
    summary = STAGES["affinity"](RunContext(cfg, store))

    # Independent L: unit weights, row-normalized, c_r = min Q / Q_r.
    marks = (labels > 0).astype(float)
    mass = marks.sum(0)
    c = np.divide(mass[mass > 0].min(), mass, out=np.zeros_like(mass), where=mass > 0)
    row_sums = marks.sum(1, keepdims=True)
    prototype_matrix = np.divide(marks, row_sums, out=np.zeros_like(marks), where=row_sums > 0) * c
    train = split == "train"
    expected = exact_affinity(users[train], items[train], prototype_matrix, 2, N_ITEMS)
    assert np.abs(expected - exact_affinity(users, items, prototype_matrix, 2, N_ITEMS)).max() > 1e-3  # split matters
    got = np.zeros_like(expected)
    table = store.read_table("affinity")
    assert table.dtypes == [("user_idx", "int"), ("persona_idx", "int"), ("score", "double")]
    rows = sorted(map(tuple, table.collect()))
    for row in rows:
        got[row[0], row[1]] = row[2]
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert summary["rows"] == np.count_nonzero(expected) and summary["users_reached"] == (expected > 0).any(1).sum()
    assert "tiles" in [p["phase"] for p in summary["phases"]]  # no edge_tiles table: cut in the call

    # build-graph's tiles are used while they describe the current edges, and give the same Ψ.
    assert write_edge_tiles(RunContext(cfg, store))["edge_tiles"]["edges_version"] == store.version("edges")
    stored = STAGES["affinity"](RunContext(cfg, store))
    assert [p["phase"] for p in stored["phases"]][0] == "load tiles"
    assert "tiles" not in [p["phase"] for p in stored["phases"]]
    assert sorted(map(tuple, store.read_table("affinity").collect())) == rows
    store.write_table(edges.where("user_idx > 0"), "edges")  # a new edges version: the stored tiles are stale
    assert "tiles" in [p["phase"] for p in STAGES["affinity"](RunContext(cfg, store))["phases"]]
