"""The offline embedding labeler (real all-MiniLM-L6-v2 weights, no network) and the label stages."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pytest
from pyspark.sql import functions as F

from persona_spark.config import DEFAULT_PERSONAS, Config, EmbeddingLabelConf, LabelingConf
from persona_spark.labeling import CacheKey, build_user_histories
from persona_spark.labeling.embedding import ITEM_EMBEDDINGS_SCHEMA, BoundEmbeddingLabeler, EmbeddingScorer
from persona_spark.personas import load_persona_set
from persona_spark.stages import STAGES, RunContext
from persona_spark.stages.cache import label_entities

ITEMS = ["Dry dog food 10kg", "Cat litter 5l", "Tomato seeds", "Organic loose leaf green tea", "Whey protein 1kg",
         "Chef knife 20cm", "Baby nappies size 3"]
# user -> [(item, purchases, quantity)]
PURCHASES = {0: [(0, 3, 6), (1, 2, 2)], 1: [(2, 1, 4), (3, 1, 4)], 2: [(4, 5, 5), (5, 1, 1)]}


@pytest.fixture(scope="module")
def personas():
    return load_persona_set(DEFAULT_PERSONAS)


def graph(spark, purchases):
    ts = datetime(2024, 5, 1)
    edges = spark.createDataFrame(
        [(u, i, n, q, ts, ts, "train") for u, lines in purchases.items() for i, n, q in lines],
        "user_idx int, item_idx int, n_purchases int, quantity long, first_ts timestamp, last_ts timestamp, split string",
    )
    items = spark.createDataFrame([(i, f"SKU{i}", name, 1) for i, name in enumerate(ITEMS)], "item_idx int, item_id string, item_name string, degree int")
    return edges, items


def scorer(personas, **rule):
    """Three items voting for personas 0, 1 and 2 with best cosines 0.5, 0.4 and 0.05."""
    votes = np.zeros((3, len(personas)), np.float32)
    votes[0, 0], votes[1, 1], votes[2, 2] = 1.0, 1.0, 1.0
    conf = EmbeddingLabelConf(**rule)
    key = CacheKey("m", "p", personas.version)
    return EmbeddingScorer(conf, personas, 2, "user_idx", key, np.array([10, 20, 30]), votes, np.array([0.5, 0.4, 0.05], np.float32),
                          np.full(len(personas), 1.0 / len(personas)))  # the mean vote of a catalogue of one-hot votes


def test_picking_rule_weights_threshold_cap_and_unrepresentable(personas):
    history = [{"item_idx": 10, "n": 1, "quantity": 9}, {"item_idx": 20, "n": 4, "quantity": 4}, {"item_idx": 30, "n": 1, "quantity": 1}]
    verdict, audit = scorer(personas).verdict(history)  # log1p weights 2.30, 1.61, 0.69
    assert verdict.personas == (personas.names[0], personas.names[1]) and verdict.persona_idx == (0, 1)
    assert json.loads(audit)["top_scores"][personas.names[0]] == pytest.approx(10 * np.log(10) / np.log(10 * 5 * 2), abs=1e-3)
    by_count, _ = scorer(personas, weight="count").verdict(history)  # item 20 bought 4 times now leads
    assert by_count.persona_idx[0] == 1
    strict, _ = scorer(personas, relative_threshold=0.9).verdict(history)
    assert strict.persona_idx == (0,)
    capped, _ = scorer(personas, relative_threshold=0.0).verdict(history)
    assert len(capped.persona_idx) == 2  # max_personas
    unfit, _ = scorer(personas, min_similarity=0.9).verdict(history)
    assert unfit.status == "unrepresentable" and unfit.personas == ()
    unknown, _ = scorer(personas).verdict([{"item_idx": 99, "n": 1, "quantity": 1}])
    assert unknown.status == "error" and "embedding" in unknown.error


def test_embedding_labels_users_and_items_and_caches_item_embeddings(spark, store, personas):
    conf = LabelingConf.model_validate({"embedding": {"partitions": 1}})
    edges, items = graph(spark, PURCHASES)
    rows = {r["user_idx"]: r for r in label_entities(store, build_user_histories(edges, items), personas, conf).collect()}
    assert rows[0]["personas"][0] == "Pet Lover" and rows[0]["status"] == "ok"
    assert set(rows[1]["personas"][:2]) == {"Gardener", "Coffee and Tea Connoisseur"}
    assert rows[2]["personas"][0] == "Fitness Enthusiast"
    for row in rows.values():
        assert [personas.names[i] for i in row["persona_idx"]] == row["personas"] and len(row["personas"]) <= 5
        assert row["model"] == "all-MiniLM-L6-v2" and row["prompt_version"].startswith("embed_v4-")
        assert '"top_scores"' in row["answer"] and row["prompt_tokens"] == 0
    embedded = store.read_table("item_embeddings")
    assert embedded.count() == 6 and len(embedded.first()["embedding"]) == 384  # items bought, once each

    # A new user with known items is labeled without embedding anything again.
    version = store.version("item_embeddings")
    edges2, _ = graph(spark, {**PURCHASES, 3: [(0, 1, 1), (2, 1, 1)]})
    fourth = label_entities(store, build_user_histories(edges2, items), personas, conf).filter("user_idx = 3").first()
    assert store.version("item_embeddings") == version and fourth["status"] == "ok"


def test_embedding_backend_hands_back_the_item_embeddings_it_made(spark, personas):
    """No table is in reach of the backend: what it embedded comes back once from cache_rows, and a
    second call with the same items embeds nothing again."""
    conf = LabelingConf.model_validate({"embedding": {"partitions": 1}})
    edges, items = graph(spark, PURCHASES)
    backend = BoundEmbeddingLabeler(conf.embedding, personas, "user_idx", conf.max_personas, conf.max_name_chars,
                               spark.createDataFrame([], ITEM_EMBEDDINGS_SCHEMA))
    requests = build_user_histories(edges, items)
    first = {r["user_idx"]: r["personas"] for r in backend.label(requests).collect()}
    made = backend.cache_rows()
    assert set(made) == {"item_embeddings"} and made["item_embeddings"].count() == 6
    assert backend.cache_rows() == {}
    again = {r["user_idx"]: r["personas"] for r in backend.label(requests).collect()}
    assert again == first and first[0][0] == "Pet Lover" and backend.cache_rows() == {}


def test_persona_vectors_are_embedded_once_per_driver_process(spark, personas, monkeypatch):
    """A second backend (each label call makes one) gets the persona vectors without a Spark job."""
    from persona_spark.labeling import embedding

    monkeypatch.setattr(embedding, "_PERSONA_VECTORS", {})
    conf = EmbeddingLabelConf()
    made = [BoundEmbeddingLabeler(conf, personas, "user_idx", 3, 80, spark.createDataFrame([], ITEM_EMBEDDINGS_SCHEMA))
            for _ in range(2)]
    sc = spark.sparkContext
    vectors = []
    try:
        for i, backend in enumerate(made):
            sc.setJobGroup(f"persona-vectors-{i}", "persona vectors")
            vectors.append(backend.persona_vectors())
    finally:  # the job group is a thread property: later tests on this thread must not inherit it
        for key in ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel"):
            sc.setLocalProperty(key, None)
    tracker = sc.statusTracker()
    assert len(tracker.getJobIdsForGroup("persona-vectors-0")) > 0
    assert tracker.getJobIdsForGroup("persona-vectors-1") == []
    assert vectors[0].shape == (len(personas), 384) and np.array_equal(vectors[0], vectors[1])
    assert np.allclose(np.linalg.norm(vectors[0], axis=1), 1.0, atol=1e-5)


def test_label_stages_write_the_cache_tables(spark, store, personas):
    edges, items = graph(spark, PURCHASES)
    store.write_table(edges, "edges")
    store.write_table(items, "items")
    cfg = Config.model_validate({"labeling": {"embedding": {"partitions": 1}, "users": {"mode": "sample", "size": 2}}})
    summary = STAGES["label-users"](RunContext(cfg, store))
    assert summary["entities"] == 2 and summary["ok"] + summary["unrepresentable"] == 2 and summary["prompt_tokens"] == 0
    assert store.read_table("user_labels").count() == 2
    items_summary = STAGES["label-items"](RunContext(cfg, store))
    assert items_summary["entities"] == len(ITEMS) and items_summary["ok"] == len(ITEMS)
    item_rows = {r["item_idx"]: r for r in store.read_table("item_labels").collect()}
    assert item_rows[6]["personas"][0] == "Busy Parent" and item_rows[5]["personas"][0] == "Home Chef"
    assert store.read_table("item_embeddings").count() == len(ITEMS)  # each item embedded once
    dry = STAGES["label-users"](RunContext(cfg.model_copy(update={"labeling": cfg.labeling.model_copy(update={"dry_run": True})}), store))
    assert dry["dry_run"] is True and dry["entities"] == 0  # both sampled users are cached already


def test_hubness_correction_standardizes_each_persona_and_shrinks_small_catalogues():
    from persona_spark.labeling.embedding import hubness_correction

    rng = np.random.default_rng(0)
    sims = np.column_stack([rng.normal(0.5, 0.02, 500), rng.normal(0.1, 0.1, 500)])  # persona 0 is a hub
    moments = [(len(part), part.sum(0).tolist(), (part**2).sum(0).tolist()) for part in np.array_split(sims, 3)]
    centre, scale = hubness_correction(moments, prior_items=0)
    assert centre == pytest.approx(sims.mean(0), abs=1e-5) and scale == pytest.approx(sims.std(0), rel=1e-3)
    one = sims[:1]
    small_centre, _ = hubness_correction([(1, one.sum(0).tolist(), (one**2).sum(0).tolist())], prior_items=20)
    assert abs(small_centre[0] - small_centre[1]) < 0.05 * abs(one[0, 0] - one[0, 1])  # nearly one shared shift


def test_a_persona_voting_for_every_item_does_not_win_everywhere(personas):
    votes = np.full((3, len(personas)), 0.02, np.float32)
    votes[:, 0] = 0.6  # persona 0 collects most of every item's vote (a hub)
    votes[0, 1] = 0.3  # item 10 is specifically persona 1's
    conf = EmbeddingLabelConf(min_similarity=0.0)
    key = CacheKey("m", "p", personas.version)

    def top(prior):
        scorer = EmbeddingScorer(conf, personas, 2, "user_idx", key, np.array([10, 20, 30]), votes,
                                 np.array([0.5, 0.5, 0.5], np.float32), prior)
        return scorer.verdict([{"item_idx": 10, "n": 1, "quantity": 1}])[0].persona_idx[0]

    assert top(votes.mean(axis=0).astype(np.float64)) == 1
    assert top(np.ones(len(personas))) == 0  # without the catalogue prior the hub would win


def test_behaviour_evidence_goes_to_the_personas_whose_descriptions_call_for_it(personas):
    from persona_spark.labeling import signals

    weights = signals.evidence_weights(personas, 0.5)
    price, basket, cadence = (signals.MEASURES.index(m) for m in ("price_z", "basket_z", "cadence_z"))
    bargain, parent, pets = (personas.names.index(n) for n in ("Bargain Hunter", "Busy Parent", "Pet Lover"))
    assert weights[bargain, price] == -0.5 and weights[parent, basket] > 0 and weights[parent, cadence] > 0
    assert not weights[pets].any()  # a persona described by its products only gets no behaviour evidence
    votes = np.zeros((2, len(personas)), np.float32)
    votes[0, bargain], votes[1, pets] = 1.0, 1.0  # one item each; the customer bought both alike
    key = CacheKey("m", "p", personas.version)
    rule = EmbeddingLabelConf(min_similarity=0.0, relative_threshold=0.99)
    scorer = EmbeddingScorer(rule, personas, 2, "user_idx", key, np.array([10, 20]), votes, np.array([0.5, 0.5], np.float32),
                             np.full(len(personas), 0.1), weights)
    history = [{"item_idx": 10, "n": 1, "quantity": 1}, {"item_idx": 20, "n": 1, "quantity": 1}]

    def verdict(price_z):
        return scorer.verdict(history, np.array([price_z, np.nan, np.nan]))

    cheap, audit = verdict(-2.0)
    # the log-likelihood ratio d x - d^2 / 2 of a 0.5-standard-deviation shift at x = 2 below the mean
    assert cheap.persona_idx == (bargain,) and json.loads(audit)["evidence"] == {"Bargain Hunter": 0.875}
    assert verdict(2.0)[0].persona_idx == (pets,)  # dear prices are evidence against the bargain hunter
    assert verdict(-50.0)[0].persona_idx == verdict(-3.0)[0].persona_idx  # clipped to 3 standard units
    assert set(verdict(np.nan)[0].persona_idx) == {bargain, pets}  # no price column: names alone, a tie
    assert json.loads(verdict(-50.0)[1])["evidence"] == {"Bargain Hunter": 1.375}
    # An average customer is evidence against, not for, a persona that calls for the behaviour.
    assert json.loads(verdict(0.0)[1])["evidence"] == {"Bargain Hunter": -0.125}


def test_behaviour_evidence_is_a_log_likelihood_ratio_that_averages_no_gain():
    from persona_spark.labeling import signals

    weights = np.array([[0.5, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0]])  # one signal, two signals, none
    x = np.random.default_rng(0).standard_normal((20_000, 3))  # customers without the behaviour
    ratio = np.mean([np.exp(signals.evidence(weights, row)) for row in x], axis=0)
    assert ratio == pytest.approx([1.0, 1.0, 1.0], abs=0.03)  # E[likelihood ratio] under the null is 1
    assert signals.evidence(weights, np.array([np.nan, np.nan, np.nan])) == pytest.approx([0.0, 0.0, 0.0])
    assert signals.evidence(weights, np.array([1.0, np.nan, np.nan])) == pytest.approx([0.375, 0.375, 0.0])


def test_a_persona_below_the_no_evidence_score_is_not_named_however_weak_the_best(personas):
    """A basket spread thin: persona 0 leads at 1.5 x the catalogue's mean vote, every other persona
    is at 0.94 x (below what any product gives). The relative threshold alone (0.5 x 1.5) would
    name them too; the no-evidence floor keeps the verdict to persona 0."""
    n = len(personas)
    votes = np.full((1, n), 0.85 / (n - 1), np.float32)
    votes[0, 0] = 0.15
    key = CacheKey("m", "p", personas.version)
    scorer = EmbeddingScorer(EmbeddingLabelConf(min_similarity=0.0), personas, 5, "user_idx", key, np.array([10]), votes,
                             np.array([0.5], np.float32), np.full(n, 1.0 / n))
    verdict, audit = scorer.verdict([{"item_idx": 10, "n": 1, "quantity": 1}])
    assert verdict.persona_idx == (0,)
    assert json.loads(audit)["top_scores"][personas.names[0]] == pytest.approx(1.5, abs=1e-3)
    lower = np.full((1, n), 0.5 / (n - 1), np.float32)
    lower[0, 0], lower[0, 1] = 0.3, 0.2  # persona 1 at 2 x the mean vote: above the floor and the threshold
    two = EmbeddingScorer(EmbeddingLabelConf(min_similarity=0.0), personas, 5, "user_idx", key, np.array([10]), lower,
                          np.array([0.5], np.float32), np.full(n, 1.0 / n))
    assert two.verdict([{"item_idx": 10, "n": 1, "quantity": 1}])[0].persona_idx == (0, 1)


def test_a_product_every_customer_buys_counts_little(personas):
    """Two products bought alike, one by nearly every customer (idf 1.0), one by few (idf 3.0): the
    rare one's persona leads; with idf off (or no idf in the request) they tie."""
    import pandas as pd

    from persona_spark.labeling import signals

    votes = np.zeros((2, len(personas)), np.float32)
    votes[0, 0], votes[1, 1] = 1.0, 1.0
    key = CacheKey("m", "p", personas.version)
    history = [{"item_idx": 10, "n": 1, "quantity": 1}, {"item_idx": 20, "n": 1, "quantity": 1}]
    frame = pd.DataFrame({"history": [history, history], signals.IDF_COLUMN: [[(10, 1.0), (20, 3.0)], None]})
    idf, missing = signals.history_idf(frame)
    assert idf.tolist() == [1.0, 3.0] and missing is None
    assert signals.history_idf(frame.drop(columns=[signals.IDF_COLUMN])) == [None, None]

    def verdict(idf_on, idf):
        conf = EmbeddingLabelConf(min_similarity=0.0, relative_threshold=0.9, idf=idf_on)
        scorer = EmbeddingScorer(conf, personas, 2, "user_idx", key, np.array([10, 20]), votes,
                                 np.array([0.5, 0.5], np.float32), np.full(len(personas), 0.1))
        return scorer.verdict(history, None, idf)[0].persona_idx

    assert verdict(True, idf) == (1,)
    assert verdict(False, idf) == (0, 1) and verdict(True, None) == (0, 1)


def test_behaviour_measures_standardize_price_basket_and_cadence_over_training_lines(spark):
    from persona_spark.labeling.signals import behaviour_measures

    # customer 1: cheap items, three products per order, an order every 2 days; customer 2: dear
    # items, one product per order, every 30 days; customer 3 in between. Customer 1's test-split
    # purchase of the dearest item must not count.
    prices = {10: 1.0, 11: 2.0, 12: 3.0, 13: 50.0, 14: 60.0, 15: 70.0}
    lines = [(1, f"1-{o}", i, datetime(2024, 1, 1 + 2 * o)) for o in range(3) for i in (10, 11, 12)]
    lines += [(1, "1-0", 15, datetime(2024, 1, 1))]
    lines += [(2, f"2-{o}", 13 + o % 2, datetime(2024, 1 + o, 1)) for o in range(3)]
    lines += [(3, f"3-{o}", i, datetime(2024, 1, 1 + 10 * o)) for o in range(2) for i in (12, 13)]
    rows = [(c, o, i, f"item {i}", 1, prices[i], ts, None, None) for c, o, i, ts in lines]
    schema = ("customer_id long, order_id string, item_id long, item_name string, quantity long, unit_price double, "
              "ts timestamp, order_number int, days_since_prior_order double")
    transactions = spark.createDataFrame(rows, schema)
    users = spark.createDataFrame([(c, c - 1) for c in (1, 2, 3)], "customer_id long, user_idx int")
    items = spark.createDataFrame([(i, i - 10) for i in prices], "item_id long, item_idx int")
    pairs = {(c - 1, i - 10) for c, _, i, _ in lines}
    train = spark.createDataFrame([(u, i, "test" if (u, i) == (0, 5) else "train") for u, i in pairs],
                                  "user_idx int, item_idx int, split string").filter("split = 'train'")
    got = {r["user_idx"]: r for r in behaviour_measures(transactions, users, items, train).collect()}
    for measure in ("price_z", "basket_z", "cadence_z"):
        assert sum(got[u][measure] for u in got) == pytest.approx(0.0, abs=1e-9)  # standardized over customers
    assert got[0]["price_z"] < got[2]["price_z"] < got[1]["price_z"]
    assert got[0]["basket_z"] > got[2]["basket_z"] > got[1]["basket_z"]
    assert got[0]["cadence_z"] > got[2]["cadence_z"] > got[1]["cadence_z"]
    without_test_line = behaviour_measures(transactions.filter("item_id != 15"), users, items, train)
    assert {r["user_idx"]: r.asDict() for r in without_test_line.collect()} == {u: r.asDict() for u, r in got.items()}
    with_test_line = {r["user_idx"]: r for r in behaviour_measures(transactions, users, items, train.union(
        spark.createDataFrame([(0, 5, "train")], "user_idx int, item_idx int, split string"))).collect()}
    assert with_test_line[0]["basket_z"] != pytest.approx(got[0]["basket_z"])  # it would count, were it trained on
    # Instacart: no prices, no timestamps; the order sequence gives the cadence.
    sequence = transactions.withColumn("unit_price", F.lit(None).cast("double")).withColumn("ts", F.lit(None).cast("timestamp"))
    sequence = sequence.withColumn("days_since_prior_order", F.when(F.col("customer_id") == 1, 2.0).otherwise(30.0))
    # Every customer gets the smoothed idf of each product they trained on: ln((1 + 3) / (1 + buyers)) + 1.
    assert got[0]["item_idf"] == pytest.approx({0: 1 + np.log(2), 1: 1 + np.log(2), 2: 1 + np.log(4 / 3)})  # item 12: two buyers
    assert 5 not in got[0]["item_idf"]  # the test-split purchase is no training line
    instacart = {r["user_idx"]: r for r in behaviour_measures(sequence, users, items, train).collect()}
    assert all(instacart[u]["price_z"] is None for u in instacart)
    assert instacart[0]["cadence_z"] > instacart[1]["cadence_z"]
