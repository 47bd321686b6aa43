"""The offline embedding labeler (real all-MiniLM-L6-v2 weights, no network) and the label stages."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest
from pyspark.sql import functions as F

from persona_spark.config import Config, EmbeddingLabelConf, LabelingConf
from persona_spark.labeling import build_user_histories
from persona_spark.labeling.embedding import ITEM_EMBEDDINGS_SCHEMA, BoundEmbeddingLabeler
from persona_spark.stages import STAGES, RunContext
from persona_spark.stages.cache import label_entities

ITEMS = ["Dry dog food 10kg", "Cat litter 5l", "Tomato seeds", "Organic loose leaf green tea", "Whey protein 1kg",
         "Chef knife 20cm", "Baby nappies size 3"]
# user -> [(item, purchases, quantity)]
PURCHASES = {0: [(0, 3, 6), (1, 2, 2)], 1: [(2, 1, 4), (3, 1, 4)], 2: [(4, 5, 5), (5, 1, 1)]}


def graph(spark, purchases):
    ts = datetime(2024, 5, 1)
    edges = spark.createDataFrame(
        [(u, i, n, q, ts, ts, "train") for u, lines in purchases.items() for i, n, q in lines],
        "user_idx int, item_idx int, n_purchases int, quantity long, first_ts timestamp, last_ts timestamp, split string",
    )
    items = spark.createDataFrame([(i, f"SKU{i}", name, 1) for i, name in enumerate(ITEMS)], "item_idx int, item_id string, item_name string, degree int")
    return edges, items


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
    backend = BoundEmbeddingLabeler(conf.embedding, personas, "user_idx", conf.max_personas_per_answer, conf.max_name_chars,
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
