"""Segmentation, RFM and two-period robustness (paper §7.4) on a tiny planted shop and the raw Online Retail sample."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from pyspark.ml.functions import vector_to_array
from pyspark.sql import functions as F

from persona_spark import segment
from persona_spark.config import Config
from persona_spark.stages import STAGES, RunContext
from tests.conftest import shared_path
from tests.persona_world import COMBOS, N_USERS, PERSONAS, combo_of, frames, world, write_persona_set, write_world  # noqa: F401 (module fixtures)


def test_persona_vectors_are_multi_hot(frames):
    vectors = segment.persona_vectors(frames["personas"], len(PERSONAS))
    got = {r["user_idx"]: r["v"] for r in vectors.select("user_idx", vector_to_array("features").alias("v")).collect()}
    assert sorted(got) == list(range(N_USERS))
    for user, vector in got.items():
        assert vector == [1.0 if p in combo_of(user) else 0.0 for p in range(len(PERSONAS))]


def test_persona_index_outside_the_set_is_reported(spark):
    bad = spark.createDataFrame([(1, 0), (2, 7)], "user_idx int, persona_idx int")
    with pytest.raises(Exception, match=r"persona_idx out of range 0\.\.2: 7 for user_idx=2"):
        segment.persona_vectors(bad, 3).collect()


def test_segmentation_recovers_planted_persona_groups(frames):
    result = segment.segment_users(segment.persona_vectors(frames["personas"], len(PERSONAS)), ks=[2, 4],
                                   clustering=segment.Clustering(seed=1))
    try:
        scores = {row["k"]: row for row in result.silhouettes}
        # Four distinct persona combinations: with k=4 every cluster is one point, perfectly separated.
        assert scores[4]["clusters"] == 4 and scores[4]["silhouette"] == pytest.approx(1.0)
        assert 0.0 < scores[2]["silhouette"] < 1.0
        assignments = result.assignments.filter("k = 4").toPandas()
        assignments["combo"] = assignments["user_idx"].map(combo_of)
        segments_per_combo = assignments.groupby("combo")["segment"].nunique()
        assert (segments_per_combo == 1).all()
        assert assignments.groupby("segment")["combo"].nunique().max() == 1
        points = result.points().toPandas()
        assert len(points) == N_USERS
        assert np.allclose(np.linalg.norm(points[["x", "y", "z"]].to_numpy(), axis=1), 1.0)
    finally:
        result.release()


def test_segment_users_rejects_bad_k(frames):
    with pytest.raises(ValueError, match="at least 2"):
        segment.segment_users(segment.persona_vectors(frames["personas"], 3), ks=[1])


def test_rfm_values_match_pandas(world, frames):
    got = segment.rfm_values(frames["transactions"]).toPandas().set_index("customer_id").sort_index()
    lines = pd.DataFrame(world.transactions, columns=frames["transactions"].columns)
    as_of = lines["ts"].max()
    per_user = lines.assign(value=lines["quantity"] * lines["unit_price"]).groupby("customer_id")
    expected = pd.DataFrame(
        {
            "recency_days": (as_of - per_user["ts"].max()).dt.total_seconds() / 86400,
            "frequency": per_user["order_id"].nunique().astype(float),
            "monetary": per_user["value"].sum(),
        }
    ).sort_index()
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)


def test_rfm_buckets_are_ordered_deciles(frames):
    bucketed = segment.rfm_buckets(segment.rfm_values(frames["transactions"]), buckets=10).toPandas()
    for value, bucket in zip(segment.RFM_COLUMNS, segment.RFM_BUCKETS):
        assert bucketed[bucket].between(0, 9).all()
        ordered = bucketed.sort_values(value)
        assert ordered[bucket].is_monotonic_increasing, f"{bucket} not monotone in {value}"
    assert bucketed["m_bucket"].nunique() >= 5  # monetary values are varied enough to fill buckets
    vectors = segment.rfm_vectors(frames["transactions"]).features.select(vector_to_array("features").alias("v")).toPandas()
    assert all(sum(v) == 3.0 for v in vectors["v"])  # one bucket on for each of R, F and M


def test_describe_segments_names_planted_personas_and_items(spark, frames):
    # Segments = the planted combinations themselves, so the expected description is known.
    assignments = spark.createDataFrame(
        [(user, 4, COMBOS.index(combo_of(user))) for user in range(N_USERS)], "user_idx int, k int, segment int"
    )
    summary = segment.describe_segments(
        assignments, frames["personas"], frames["edges"], frames["items"], frames["persona_set"], top_items=3
    ).toPandas()
    assert sorted(summary["segment"]) == [0, 1, 2, 3]
    assert summary["size"].sum() == N_USERS and summary["share"].sum() == pytest.approx(1.0)
    by_segment = summary.set_index("segment")
    for segment_id, combo in enumerate(COMBOS):
        row = by_segment.loc[segment_id]
        top = [p["persona_idx"] for p in row["personas"] if p["share"] == 1.0]
        assert sorted(top) == list(combo)
        item_personas = {i["item_idx"] // 5 for i in row["top_items"]}
        assert item_personas <= set(combo), "distinctive items must come from the segment's personas"
        assert 15 not in {i["item_idx"] for i in row["top_items"]}, "the bestseller is bought by all: lift 1"
        for persona in combo:
            assert PERSONAS.names[persona] in row["description"]
    assert by_segment.loc[2, "description"].startswith("10 customers (25.0%). Mostly Book Lover (100%)")


def test_split_periods_halves_each_users_orders(spark):
    rows = [
        ("a", "o1", "2024-01-01"), ("a", "o1", "2024-01-01"), ("a", "o2", "2024-02-01"), ("a", "o3", "2024-03-01"),
        ("b", "o4", "2024-01-05"), ("b", "o5", "2024-01-06"),
        ("c", "o6", "2024-01-07"),  # a single order cannot be split
        ("d", "o7", "2024-01-01"), ("d", "o8", None),  # undated lines cannot be placed in time
    ]
    lines = spark.createDataFrame(rows, "customer_id string, order_id string, day string").withColumn(
        "ts", F.to_timestamp("day")
    )
    periods = segment.split_periods(lines)
    got = sorted({(r["customer_id"], r["order_id"], r["period"]) for r in periods.collect()})
    assert got == [("a", "o1", 1), ("a", "o2", 1), ("a", "o3", 2), ("b", "o4", 1), ("b", "o5", 2)]
    assert periods.count() == 6  # both lines of order o1 kept


def test_robustness_counts_unchanged_users(spark, world):
    # Every customer repeats its first-period orders 100 days later, so RFM deciles cannot change;
    # one customer switches to another persona's items in the second period.
    switcher = "C005"
    lines = []
    for customer, order, item_id, name, quantity, price, ts in world.transactions:
        lines.append((customer, order, item_id, name, quantity, price, ts))
        item = int(item_id[1:])
        if customer == switcher and item < 15:
            item = (item + 10) % 15  # its Home Baker items become Gardener items
        lines.append((customer, order + "-later", f"I{item:02d}", name, quantity, price, ts + timedelta(days=100)))
    lines.append(("C999", "single", "I00", "GARDEN TROWEL", 1, 1.0, world.transactions[0][6]))
    transactions = spark.createDataFrame(lines, "customer_id string, order_id string, item_id string, "
                                                "item_name string, quantity long, unit_price double, ts timestamp")

    def labeler(part):  # persona = the item's block of five, the bestseller says nothing
        idx = F.regexp_extract("item_id", r"I(\d+)", 1).cast("int")
        return part.filter(idx < 15).select("customer_id", (idx / 5).cast("int").alias("persona_idx"))

    result = {r["representation"]: r for r in segment.robustness(transactions, labeler).collect()}
    assert result["personas"]["users"] == N_USERS == result["rfm"]["users"]  # C999 has one order
    assert result["personas"]["unchanged"] == N_USERS - 1
    assert result["rfm"]["unchanged"] == N_USERS
    assert result["rfm"]["share_unchanged"] == pytest.approx(1.0)
    only_rfm = segment.robustness(transactions, None).collect()
    assert [r["representation"] for r in only_rfm] == ["rfm"]


def test_robustness_on_raw_online_retail_sample(spark):
    csv = shared_path("online_retail_raw", "online_retail_sample_40k.csv")
    raw = pd.read_csv(csv, dtype={"InvoiceNo": str, "StockCode": str})
    raw = raw[raw["CustomerID"].notna() & (raw["Quantity"] > 0)]
    canonical = pd.DataFrame(
        {
            "customer_id": raw["CustomerID"].astype(int).astype(str),
            "order_id": raw["InvoiceNo"],
            "item_id": raw["StockCode"],
            "item_name": raw["Description"],
            "quantity": raw["Quantity"].astype("int64"),
            "unit_price": raw["UnitPrice"].astype(float),
            "ts": pd.to_datetime(raw["InvoiceDate"]),
        }
    )
    transactions = spark.createDataFrame(canonical)

    def first_digit_labeler(part):  # a crude but deterministic labeler: stock-code families
        family = F.expr("try_cast(substring(item_id, 1, 1) AS INT)")  # POST, DOT, C2 ... are no family
        return part.select("customer_id", family.alias("persona_idx")).dropna()

    result = {r["representation"]: r for r in segment.robustness(transactions, first_digit_labeler).collect()}
    splittable = int((canonical.groupby("customer_id")["order_id"].nunique() >= 2).sum())
    assert result["rfm"]["users"] == splittable > 500
    for row in result.values():
        assert 0 < row["unchanged"] < row["users"]


def test_segment_and_robustness_stages_write_their_tables(store, frames, tmp_path):
    write_world(store, frames)
    cfg = Config.model_validate(
        {
            "personas": str(write_persona_set(tmp_path / "tiny_shop.yaml")),
            "segment": {"ks": [2, 4], "seed": 1, "robustness_customers": 30},
            "labeling": {"embedding": {"partitions": 1}},
        }
    )
    summary = STAGES["segment"](RunContext(cfg, store))
    silhouettes = {(r["representation"], r["k"]): r["silhouette"] for r in summary["silhouette"]}
    assert set(silhouettes) == {("personas", 2), ("personas", 4), ("rfm", 2), ("rfm", 4)}
    assert silhouettes[("personas", 4)] == pytest.approx(1.0)  # four planted combinations, four points
    segments = store.read_table("segments").toPandas()
    assert segments.groupby(["representation", "k"])["user_idx"].nunique().eq(N_USERS).all()
    described = store.read_table("segment_summary").filter("k = 4").toPandas()
    assert described["size"].sum() == N_USERS and len(described) == 4
    named = {tuple(sorted(p["name"] for p in ps if p["share"] == 1.0)) for ps in described["personas"]}
    assert named == {tuple(sorted(PERSONAS.names[i] for i in combo)) for combo in COMBOS}
    assert store.read_table("segment_points").filter("representation = 'personas'").count() == N_USERS

    # Robustness with the real offline labeler: customers buy from the same favourites in both halves.
    result = {r["representation"]: r for r in STAGES["robustness"](RunContext(cfg, store))["robustness"]}
    assert result["rfm"]["users"] == 30  # the sample; every customer has at least two orders
    assert 0 < result["personas"]["users"] <= 30
    personas = result["personas"]
    assert 0 < personas["unchanged"] <= personas["users"]  # the same favourites give many the same set
    assert personas["share_unchanged"] == pytest.approx(personas["unchanged"] / personas["users"])
    # The paper's Table 8 finding: personas are more stable than RFM deciles (which shift with the period).
    assert result["personas"]["share_unchanged"] > result["rfm"]["share_unchanged"]
    assert store.read_table("robustness").count() == 2
    assert not store.exists("user_labels"), "robustness labels must not land in the LLM label cache"


def _sequence_only(spark, world):
    """The tiny shop as Instacart records it: no timestamps, no prices, an order sequence instead."""
    rows = []
    for customer, order, item_id, name, quantity, _, _ in world.transactions:
        position = int(order.split("-")[1])
        days = None if position == 0 else float(2 + int(customer[1:]) % 9)  # the wait varies by customer
        rows.append((customer, order, item_id, name, quantity, None, None, position + 1, days))
    return spark.createDataFrame(
        rows,
        "customer_id string, order_id string, item_id string, item_name string, quantity long, "
        "unit_price double, ts timestamp, order_number long, days_since_prior_order double",
    )


def test_rfm_on_a_source_without_timestamps_or_prices(spark, world):
    transactions = _sequence_only(spark, world)
    values = segment.rfm_values(transactions).toPandas().set_index("customer_id").sort_index()
    orders = pd.Series({f"C{u:03d}": 2 + u % 3 for u in range(N_USERS)}).sort_index()
    assert values["frequency"].tolist() == orders.astype(float).tolist()
    waits = [float(2 + u % 9) for u in range(N_USERS)]  # every customer has >= 2 orders
    assert values["recency_days"].tolist() == waits
    assert values["monetary"].isna().all()

    parts = {p.part: p for p in segment.rfm_parts(transactions, segment.rfm_values(transactions))}
    assert [parts[p].computed for p in ("recency", "frequency", "monetary")] == [True, True, False]
    assert "order sequence" in parts["recency"].source and "unit_price" in parts["monetary"].source

    vectors = segment.rfm_vectors(transactions)
    assert [p.computed for p in vectors.parts] == [True, True, False]
    assert "m_bucket" not in vectors.features.columns
    one_hot = vectors.features.select(vector_to_array("features").alias("v")).toPandas()
    assert len(one_hot) == N_USERS and all(sum(v) == 2.0 for v in one_hot["v"])  # R and F only


def test_rfm_with_neither_timestamps_nor_order_sequence_keeps_frequency(spark, world):
    transactions = _sequence_only(spark, world).drop("order_number", "days_since_prior_order")
    vectors = segment.rfm_vectors(transactions)
    assert [p.computed for p in vectors.parts] == [False, True, False]
    assert "no timestamps" in vectors.parts[0].source
    assert vectors.features.columns == ["customer_id", "f_bucket", "features"]
    with pytest.raises(ValueError, match="no timestamps.*no order_number"):
        segment.split_periods(transactions)


def test_robustness_splits_by_order_sequence_without_timestamps(spark, world):
    transactions = _sequence_only(spark, world)
    periods = segment.split_periods(transactions).toPandas()
    bounds = periods.pivot_table(index="customer_id", columns="period", values="order_number", aggfunc=["max", "min"])
    assert (bounds[("max", 1)] < bounds[("min", 2)]).all() and len(bounds) == N_USERS
    result = {r["representation"]: r for r in segment.robustness(transactions, None).collect()}
    assert result["rfm"]["users"] == N_USERS


def test_segment_stage_on_a_source_without_timestamps_or_prices(spark, store, frames, world, tmp_path):
    write_world(store, {**frames, "transactions": _sequence_only(spark, world)})
    cfg = Config.model_validate({"personas": str(write_persona_set(tmp_path / "tiny_shop.yaml")),
                                 "segment": {"ks": [2, 4], "seed": 1}})
    summary = STAGES["segment"](RunContext(cfg, store))
    assert {(r["representation"], r["k"]) for r in summary["silhouette"]} == {
        ("personas", 2), ("personas", 4), ("rfm", 2), ("rfm", 4)}
    parts = {r["part"]: r for r in store.read_table("rfm_parts").collect()}
    assert not parts["monetary"]["computed"] and "unit_price" in parts["monetary"]["source"]
    assert parts["recency"]["computed"] and parts["frequency"]["computed"]
    assert summary["rfm_parts"] == [{"part": p, "computed": parts[p]["computed"], "source": parts[p]["source"]}
                                    for p in ("recency", "frequency", "monetary")]
    assert store.read_table("segment_summary").filter("k = 4").count() == 4


# ---- the paper protocol (Tables 8 and 9) ------------------------------------------------------------
def _lines(spark, rows):
    """(customer, order, item, ts, quantity, price) -> canonical transaction lines."""
    return spark.createDataFrame(
        [(c, o, i, f"ITEM {i}", q, p, ts) for c, o, i, ts, q, p in rows],
        "customer_id string, order_id string, item_id string, item_name string, quantity long, unit_price double, "
        "ts string",
    ).withColumn("ts", F.to_timestamp("ts"))


def test_year_periods_are_the_two_calendar_halves_of_the_year(spark):
    lines = _lines(spark, [
        ("a", "o1", "I1", "2010-12-03 10:00:00", 1, 1.0),  # earliest: the year starts 2010-12-01
        ("a", "o2", "I1", "2011-05-31 23:59:00", 1, 1.0),
        ("a", "o3", "I1", "2011-06-01 00:00:00", 1, 1.0),  # month 7 of the year: second period
        ("b", "o4", "I1", "2011-11-30 18:00:00", 1, 1.0),
        ("b", "o5", "I1", "2011-12-01 00:00:00", 1, 1.0),  # past the year: dropped
        ("b", "o6", "I1", None, 1, 1.0),  # undated: dropped
    ])
    got = sorted((r["order_id"], r["period"]) for r in segment.year_periods(lines).collect())
    assert got == [("o1", 1), ("o2", 1), ("o3", 2), ("o4", 2)]
    assert sorted(r["order_id"] for r in segment.first_six_months(lines).collect()) == ["o1", "o2"]
    shifted = sorted((r["order_id"], r["period"]) for r in segment.year_periods(lines, "2011-01-01").collect())
    assert shifted == [("o2", 1), ("o3", 1), ("o4", 2), ("o5", 2)]
    with pytest.raises(ValueError, match="no timestamps"):
        segment.year_periods(lines.withColumn("ts", F.lit(None).cast("timestamp")))


def _paper_shop(spark):
    lines = _lines(spark, [
        ("c1", "o1", "I1", "2023-01-05 00:00:00", 2, 5.0),
        ("c1", "o2", "I2", "2023-03-01 00:00:00", 1, 10.0),
        ("c2", "o3", "I1", "2023-06-30 23:00:00", 3, 1.0),  # the first six months' last line: recency 0
        ("c3", "o4", "I2", "2023-07-01 00:00:00", 1, 1.0),  # second period only
        ("c4", "o5", "I3", "2023-02-01 00:00:00", 1, 4.0),
        ("c4", "o6", "I3", "2023-08-01 00:00:00", 5, 4.0),  # second period: not in c4's Table 9 values
        ("c5", "o7", "I1", "2024-01-02 00:00:00", 1, 1.0),  # past the year
    ])
    users = spark.createDataFrame([(f"c{i + 1}", i) for i in range(5)], "customer_id string, user_idx int")
    personas = spark.createDataFrame([(0, 0), (0, 1), (1, 2), (2, 3), (3, 4), (3, 5), (4, 0)],
                                     "user_idx int, persona_idx int")
    return lines, users, personas


def test_paper_segmentation_takes_the_first_six_months_and_raw_rfm_values(spark):
    lines, users, personas = _paper_shop(spark)
    chosen = segment.segment_representations(personas, 6, lines, users, protocol="paper")
    assert chosen.reduce == {"personas": True, "rfm": False}
    assert [p.computed for p in chosen.rfm_parts] == [True, True, True]
    rfm = {r["user_idx"]: r["v"] for r in chosen.features["rfm"].select("user_idx", vector_to_array("features").alias("v")).collect()}
    assert sorted(rfm) == [0, 1, 3]  # c3 only bought in the second period, c5 after the year
    assert rfm[0] == pytest.approx([121 + 23 / 24, 2.0, 20.0])  # days before 2023-06-30 23:00, orders, money
    assert rfm[1] == pytest.approx([0.0, 1.0, 3.0])
    assert rfm[3] == pytest.approx([149 + 23 / 24, 1.0, 4.0])
    assert sorted(r["user_idx"] for r in chosen.features["personas"].collect()) == [0, 1, 3]

    project = segment.segment_representations(personas, 6, lines, users)
    assert project.reduce == {"personas": True, "rfm": True}
    assert project.features["personas"].count() == 5 and project.features["rfm"].count() == 5
    with pytest.raises(ValueError, match="transactions and users"):
        segment.segment_representations(personas, 6, protocol="paper")


def test_paper_segmentation_reduces_personas_to_three_dimensions(spark):
    lines, users, personas = _paper_shop(spark)
    chosen = segment.segment_representations(personas, 6, lines, users, protocol="paper")
    result = {name: segment.segment_users(features, [2], segment.Clustering(seed=1, silhouette="euclidean"),
                                          reduce=chosen.reduce[name])
              for name, features in chosen.features.items()}
    try:
        embedded = {name: {r["user_idx"]: r["e"] for r in res.embedded.select("user_idx", vector_to_array("embedding").alias("e")).collect()}
                    for name, res in result.items()}
        assert all(len(e) == 3 and np.linalg.norm(e) == pytest.approx(1.0) for e in embedded["personas"].values())
        raw = np.array([149 + 23 / 24, 1.0, 4.0])
        assert embedded["rfm"][3] == pytest.approx(list(raw / np.linalg.norm(raw)))  # L2 of the values, no PCA
        for res in result.values():
            (row,) = res.silhouettes
            assert row["clusters"] == 2 and -1.0 <= row["silhouette"] <= 1.0
        points = np.array([embedded["rfm"][u] for u in (0, 1, 3)])
        labels = result["rfm"].assignments.toPandas().set_index("user_idx").loc[[0, 1, 3], "segment"].to_numpy()
        assert result["rfm"].silhouettes[0]["silhouette"] == pytest.approx(segment.silhouette_score(points, labels))
    finally:
        for res in result.values():
            res.release()


def test_active_sample_keeps_customers_with_more_than_ten_transactions(spark):
    rows = [(c, f"{c}-o{i % orders}", "I1", f"2023-01-{1 + i:02d} 00:00:00", 1, 1.0)
            for c, n, orders in (("a", 11, 11), ("b", 10, 10), ("c", 12, 2), ("d", 30, 30), ("e", 11, 11))
            for i in range(n)]
    lines = _lines(spark, rows)
    kept = lambda frame: sorted(r["customer_id"] for r in frame.select("customer_id").distinct().collect())  # noqa: E731
    assert kept(segment.active_sample(lines)) == ["a", "c", "d", "e"]  # b has exactly 10
    assert kept(segment.active_sample(lines, unit="orders")) == ["a", "d", "e"]  # c: 12 lines but 2 orders
    two = kept(segment.active_sample(lines, customers=2, seed=5))
    assert len(two) == 2 and set(two) <= {"a", "c", "d", "e"}
    assert kept(segment.active_sample(lines, customers=2, seed=5)) == two  # seeded
    sizes = {"a": 11, "c": 12, "d": 30, "e": 11}
    assert segment.active_sample(lines, customers=2, seed=5).count() == sum(sizes[c] for c in two)  # all their lines


def test_dominant_personas_known_answer(spark):
    counted = spark.createDataFrame(
        [("a", p) for p in (4, 4, 4, 1, 1, 7, 2)]  # 4 ×3, 1 ×2, then 7 and 2 tie: the lower index
        + [("b", 5)] + [("b", 3)],  # fewer than three: keeps both
        "customer_id string, persona_idx int",
    )
    got = {r["customer_id"]: r["value"] for r in segment.dominant_personas(counted).collect()}
    assert got == {"a": [1, 2, 4], "b": [3, 5]}
    ranked = spark.createDataFrame([("a", 9, 0), ("a", 4, 1), ("a", 0, 2), ("a", 1, 3), ("a", 1, 3)],
                                   "customer_id string, persona_idx int, rank int")  # the answer order wins
    assert segment.dominant_personas(ranked).first()["value"] == [0, 4, 9]
    assert segment.dominant_personas(ranked, top=1).first()["value"] == [9]


def test_paper_robustness_known_answer(spark):
    def lines_of(customer, h1, h2, extra=()):  # persona families per line in each half of 2023
        rows = [(customer, f"{customer}-1-{i}", f"I{p}", f"2023-03-{1 + i:02d} 00:00:00", 1, 1.0) for i, p in enumerate(h1)]
        rows += [(customer, f"{customer}-2-{i}", f"I{p}", f"2023-09-{1 + i:02d} 00:00:00", 1, 1.0) for i, p in enumerate(h2)]
        return rows + [(customer, f"{customer}-x-{i}", f"I{p}", "2024-02-01 00:00:00", 1, 1.0) for i, p in enumerate(extra)]

    rows = (
        lines_of("A", [0, 0, 0, 1, 1, 2], [0, 1, 2, 5, 0, 1])  # top three {0, 1, 2} both times (5 is fourth)
        + lines_of("B", [0, 1, 2] * 3 + [3, 3], [])  # 11 lines, none in the second period
        + lines_of("C", [0] * 5, [0] * 5)  # 10 lines: not > 10
        + lines_of("D", [0, 0, 1, 1, 2, 2], [3, 3, 4, 4, 5])  # changes
        + lines_of("E", [0] * 5, [0] * 5, extra=[0])  # the 11th line is past the year
    )
    lines = _lines(spark, rows)

    def labeler(part):  # one row per line: the item's family
        return part.select("customer_id", F.regexp_extract("item_id", r"I(\d+)", 1).cast("int").alias("persona_idx"))

    year_2023 = segment.PaperSample(year_start="2023-01-01")
    result = {r["representation"]: r for r in segment.paper_robustness(lines, labeler, sample=year_2023).collect()}
    personas = result["personas"]
    assert (personas["users"], personas["in_both_periods"], personas["unchanged"]) == (3, 2, 1)  # A, B, D; A stays
    assert personas["share_unchanged"] == pytest.approx(1 / 3)
    assert (result["rfm"]["users"], result["rfm"]["in_both_periods"]) == (3, 2)
    assert result["rfm"]["unchanged"] <= 2
    # the project protocol compares every customer with two orders over all their lines, full persona sets
    project = {r["representation"]: r for r in segment.robustness(lines, labeler).collect()}
    assert project["personas"]["users"] == 5
    two_customers = segment.PaperSample(customers=2, year_start="2023-01-01")
    only_rfm = segment.paper_robustness(lines, None, sample=two_customers).collect()
    assert [(r["representation"], r["users"]) for r in only_rfm] == [("rfm", 2)]


def test_paper_protocol_on_raw_online_retail_sample(spark):
    csv = shared_path("online_retail_raw", "online_retail_sample_40k.csv")
    raw = pd.read_csv(csv, dtype={"InvoiceNo": str, "StockCode": str})
    raw = raw[raw["CustomerID"].notna() & (raw["Quantity"] > 0)]
    raw = raw.assign(ts=pd.to_datetime(raw["InvoiceDate"]), customer_id=raw["CustomerID"].astype(int).astype(str))
    transactions = spark.createDataFrame(pd.DataFrame({
        "customer_id": raw["customer_id"], "order_id": raw["InvoiceNo"], "quantity": raw["Quantity"].astype("int64"),
        "unit_price": raw["UnitPrice"].astype(float), "ts": raw["ts"]}))
    first = segment.first_six_months(transactions)  # the year starts 2010-12-01
    expected = set(raw.loc[raw["ts"] < "2011-06-01", "customer_id"])
    assert {r["customer_id"] for r in first.select("customer_id").distinct().collect()} == expected
    in_year = raw[raw["ts"] < "2011-12-01"].groupby("customer_id").size()
    sample = segment.active_sample(segment.year_periods(transactions)).groupBy("customer_id").count().toPandas()
    assert len(sample) == 300 < int((in_year > 10).sum())
    assert (in_year.loc[sample["customer_id"]] > 10).all()


def test_segment_and_robustness_stages_under_the_paper_protocol(store, frames, world, tmp_path):
    # Every customer repeats its first-period orders 190 days later (the tiny shop's orders all fall in
    # its first months), so both periods hold the same baskets: every sampled customer is consistent.
    later = frames["transactions"].withColumn("order_id", F.concat("order_id", F.lit("-later"))).withColumn(
        "ts", F.col("ts") + F.expr("INTERVAL 190 DAYS"))
    write_world(store, {**frames, "transactions": frames["transactions"].unionByName(later)})
    cfg = Config.model_validate(
        {
            "personas": str(write_persona_set(tmp_path / "tiny_shop.yaml")),
            "segment": {"ks": [2, 4], "seed": 1, "protocol": "paper",
                        "paper": {"robustness_customers": 30, "min_transactions": 0, "year_start": "2024-01-01"}},
            "labeling": {"backend": "recorded", "recorded": {"table": "recorded_labels"}},  # fast: no embeddings
        }
    )
    store.write_table(store.spark.createDataFrame([(u, list(combo_of(u))) for u in range(N_USERS)],
                                                  "user_idx int, persona_idx array<int>"), "recorded_labels")
    summary = STAGES["segment"](RunContext(cfg, store))
    silhouettes = {(r["representation"], r["k"]): r["silhouette"] for r in summary["silhouette"]}
    assert set(silhouettes) == {("personas", 2), ("personas", 4), ("rfm", 2), ("rfm", 4)}
    assert silhouettes[("personas", 4)] == pytest.approx(1.0)  # four combinations: four points, Euclidean too
    points = store.read_table("segment_points").toPandas()
    assert points.groupby("representation")["user_idx"].nunique().eq(N_USERS).all()  # all bought in months 1-6

    result = {r["representation"]: r for r in STAGES["robustness"](RunContext(cfg, store))["robustness"]}
    for row in result.values():
        assert (row["users"], row["in_both_periods"], row["unchanged"]) == (30, 30, 30)
