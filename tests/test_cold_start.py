"""Cold start through personas: planted signal recovered, popularity fallback, name errors, batch stages."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from persona_spark.config import Config, RecommendConf  # noqa: E402
from persona_spark.recommend.coldstart import (  # noqa: E402
    NO_MATCH_SHARE, PERSONAS, POPULARITY, ColdStartModel, persona_purchase_share)
from persona_spark.recommend.data import RecData  # noqa: E402
from persona_spark.recommend.train import train  # noqa: E402
from tests.recommend_world import FAST, planted_world  # noqa: E402

ITEMS_PER_PERSONA, USERS_PER_PERSONA = 20, 30


@pytest.fixture(scope="module")
def trained():
    """LGCN3 on the planted world, with persona 3 stripped of every edge (so it carries no signal)."""
    world = planted_world()
    data = replace(world, user_personas=world.user_personas[world.user_personas[:, 1] != 3],
                   user_persona_weight=None,
                   item_personas=world.item_personas[world.item_personas[:, 1] != 3], item_persona_weight=None)
    result = train(data, RecommendConf(**FAST, model="lgcn3"), seed=0)
    return data, ColdStartModel.from_training(data, result.user_embeddings, result.item_embeddings,
                                              result.persona_embeddings)


@pytest.mark.parametrize("query", ["embedding", "centroid"])
def test_new_customer_gets_the_items_of_the_chosen_persona(trained, query):
    model = replace(trained[1], query=query)
    for persona in (0, 1, 2):
        ranking = model.recommend_for_personas([f"Persona {persona}"], k=10)
        assert ranking.method == PERSONAS
        in_block = (ranking.indices // ITEMS_PER_PERSONA) == persona
        assert in_block.sum() >= 9, (persona, ranking.indices)
        assert np.all(np.diff(ranking.scores) <= 0)


def test_new_item_reaches_the_customers_of_its_personas(trained):
    ranking = trained[1].audience_for_item(["persona 1"], k=20)  # case-insensitive name match
    assert ranking.method == PERSONAS
    assert ((ranking.indices // USERS_PER_PERSONA) == 1).sum() >= 18, ranking.indices


def purchase_world() -> RecData:
    """Three customers, four items; item 0 tagged {0}, item 1 {0, 1}, item 2 {1}, item 3 untagged.

    A: 10 purchases, 4 of item 0 and 2 of item 1 -> share of persona 0 = (4 + 2/2) / 10 = 0.5
    B: 2 purchases, both of item 0             -> share of persona 0 = 1.0
    C: 20 purchases, all of item 3             -> 0
    """
    a, b, c = 0, 1, 2
    train = [(a, 0)] * 4 + [(a, 1)] * 2 + [(a, 2)] * 1 + [(a, 3)] * 3 + [(b, 0)] * 2 + [(c, 3)] * 20
    return RecData(n_users=3, n_items=4, n_personas=2, train=np.array(train), test=np.empty((0, 2), np.int64),
                   user_personas=np.empty((0, 2), np.int64), item_personas=np.array([(0, 0), (1, 0), (1, 1), (2, 1)]))


def test_persona_purchase_share_by_hand():
    data = purchase_world()
    share = persona_purchase_share(data, np.bincount(data.train[:, 0], minlength=3))
    np.testing.assert_allclose(share, [[0.5, 0.2], [1.0, 0.0], [0.0, 0.0]], rtol=1e-6)


def test_audience_weighs_persona_share_by_activity():
    """γ = 0 ranks by share alone (B first), γ = 0.5 lets A's larger history win, γ = 1 is raw purchase
    count on the tagged items; C, who never bought a tagged item, is last whatever γ."""
    data = purchase_world()
    model = ColdStartModel.from_training(data, np.zeros((3, 2)), np.zeros((4, 2)), np.ones((2, 2)))
    assert list(replace(model, activity_exponent=0.0).audience_for_item([0], k=3).indices) == [1, 0, 2]
    assert list(model.audience_for_item([0], k=3).indices) == [0, 1, 2]
    scores = replace(model, activity_exponent=1.0).audience_for_item([0], k=3).scores
    np.testing.assert_allclose(scores, [(0.5 + NO_MATCH_SHARE) * 10, (1.0 + NO_MATCH_SHARE) * 2, NO_MATCH_SHARE * 20])


def test_spark_purchase_profile_and_audience_equal_the_in_memory_ones(spark):
    from persona_spark.recommend.coldstart_batch import audiences_for_items, persona_purchase_profile

    data = purchase_world()
    train = spark.createDataFrame([(int(u), int(i)) for u, i in data.train], "user_idx int, item_idx int")
    tags = spark.createDataFrame([(int(i), int(p), 1.0) for i, p in data.item_personas],
                                 "item_idx int, persona_idx int, weight double")
    profile = persona_purchase_profile(train, tags, 2).toPandas().sort_values("user_idx")
    assert list(profile.activity) == [10, 2, 20]
    np.testing.assert_allclose(np.stack(profile.persona_share), [[0.5, 0.2], [1.0, 0.0], [0.0, 0.0]])
    # item 7 tagged with persona 0, item 8 with persona 1; k=2 of 3 customers
    recs = audiences_for_items([(7, [0]), (8, [1])], persona_purchase_profile(train, tags, 2), 2, 2, 0.5).toPandas()
    model = ColdStartModel.from_training(data, np.zeros((3, 2)), np.zeros((4, 2)), np.ones((2, 2)))
    for item, persona in ((7, 0), (8, 1)):
        rows = recs[recs.subject_idx == item].sort_values("rank")
        expected = model.audience_for_item([persona], k=2)
        assert list(rows.target_idx) == list(expected.indices)
        np.testing.assert_allclose(rows.score, expected.scores)
        assert set(rows.method) == {PERSONAS}


def test_two_personas_mix_their_items(trained):
    _, model = trained
    blocks = model.recommend_for_personas([0, 2], k=20).indices // ITEMS_PER_PERSONA
    assert set(blocks) <= {0, 2} and min((blocks == 0).sum(), (blocks == 2).sum()) >= 4


def test_persona_without_signal_or_no_persona_falls_back_to_popularity(trained):
    data, model = trained
    popularity = np.bincount(data.train[:, 1], minlength=data.n_items)
    for chosen in (["Persona 3"], []):
        ranking = model.recommend_for_personas(chosen, k=5)
        assert ranking.method == POPULARITY
        assert list(ranking.indices) == sorted(range(data.n_items), key=lambda i: (-popularity[i], i))[:5]
    activity = np.bincount(data.train[:, 0], minlength=data.n_users)
    audience = model.audience_for_item(["Persona 3"], k=3, exclude=[int(np.argmax(activity))])
    assert audience.method == POPULARITY and int(np.argmax(activity)) not in audience.indices
    # a known persona next to the signal-less one still decides
    assert model.recommend_for_personas(["Persona 3", "Persona 0"], k=5).method == PERSONAS


def test_unknown_persona_names_are_errors(trained):
    _, model = trained
    with pytest.raises(KeyError, match="'Gardening Guru' is not in persona set"):
        model.recommend_for_personas(["Persona 0", "Gardening Guru"], k=5)
    with pytest.raises(KeyError, match="persona index 9 is outside 0..3"):
        model.audience_for_item([9], k=5)
    with pytest.raises(ValueError, match="k must be at least 1"):
        model.recommend_for_personas([0], k=0)


def test_model_without_personas_cannot_do_cold_start(trained, tmp_path):
    data, model = trained
    with pytest.raises(ValueError, match="persona embeddings"):
        ColdStartModel.from_training(data, np.zeros((data.n_users, 4)), model.item_embeddings, None)
    saved = train(data, RecommendConf(**FAST, model="mf"), seed=0).save(tmp_path / "mf", data)
    with pytest.raises(ValueError, match="persona embeddings"):
        ColdStartModel.from_run(saved)


def test_export_train_cold_start_stages_write_cold_start_recs(spark, store, tmp_path):
    """The three stages on tables of the planted world plus one new customer and one new item."""
    from persona_spark.recommend.coldstart import EMBEDDINGS_FILE
    from persona_spark.stages import STAGES, RunContext

    world = planted_world()
    new_user, new_item = world.n_users, world.n_items  # no purchases at all
    edges = [(int(u), int(i), "train") for u, i in world.train] + [(int(u), int(i), "test") for u, i in world.test]
    store.write_table(spark.createDataFrame(edges, "user_idx int, item_idx int, split string"), "edges")
    store.write_table(spark.createDataFrame([(u, f"c{u}") for u in range(new_user + 1)],
                                            "user_idx int, customer_id string"), "users")
    store.write_table(spark.createDataFrame([(i, f"s{i}", f"item {i}") for i in range(new_item + 1)],
                                            "item_idx int, item_id string, item_name string"), "items")
    store.write_table(spark.createDataFrame([(p, name) for p, name in enumerate(world.persona_names)],
                                            "persona_idx int, name string"), "persona_set")
    store.write_table(spark.createDataFrame([(int(u), int(p), 1.0, 1, "llm") for u, p in world.user_personas],
                                            "user_idx int, persona_idx int, score double, rank int, source string"),
                      "personas")
    tags = [(int(i), [int(p)], "ok") for i, p in world.item_personas] + [(new_item, [2], "ok")]
    store.write_table(spark.createDataFrame(tags, "item_idx int, persona_idx array<int>, status string"), "item_labels")
    store.write_table(spark.createDataFrame([(new_user, 1)], "user_idx int, persona_idx int"), "declared_personas")
    recommend = {**FAST, "seeds": [0], "export_dir": str(tmp_path / "export"), "model_dir": str(tmp_path / "models"),
                 "eigen_cache_dir": str(tmp_path / "eig"), "cold_start_k": 10}
    cfg = Config(recommend=recommend)

    exported = STAGES["export-tripartite"](RunContext(cfg, store))
    assert exported["rows"]["train"] == len(world.train) and exported["rows"]["item_personas"] == new_item + 1
    trained = STAGES["train"](RunContext(cfg, store))
    assert trained["runs"][0]["model"] == "lgcn3" and trained["runs"][0]["ndcg@10"] > 0.25
    runs = store.read_table("recommend_runs").collect()
    saved = json.loads((tmp_path / "models" / "lgcn3-seed0" / "run.json").read_text())
    assert len(runs) == 1 and saved["f1@10"] > 0 and runs[0]["f1_at_10"] == pytest.approx(saved["f1@10"])
    assert runs[0]["metrics"]["ndcg@10"] == pytest.approx(saved["ndcg@10"])
    assert (tmp_path / "models" / "lgcn3-seed0" / EMBEDDINGS_FILE).exists()

    summary = STAGES["cold-start"](RunContext(cfg, store))
    assert summary["subjects"] == {"persona": 4, "new_customer": 1, "new_item": 1}
    recs = store.read_table("cold_start_recs").toPandas()
    customer = recs[recs.subject == "new_customer"].sort_values("rank")
    assert list(customer["rank"]) == list(range(1, 11)) and set(customer.method) == {PERSONAS}
    assert (customer.target_idx // ITEMS_PER_PERSONA == 1).sum() >= 9  # declared persona 1's items
    audience = recs[recs.subject == "new_item"].sort_values("rank")
    assert len(audience) == 10 and audience.target_idx.is_unique
    assert (audience.target_idx // USERS_PER_PERSONA == 2).sum() >= 9  # tagged persona 2's customers
    assert np.all(np.diff(audience.score.to_numpy()) <= 0)
    # the Spark audience equals the in-memory one
    model = ColdStartModel.from_run(tmp_path / "models" / "lgcn3-seed0")
    expected = model.audience_for_item([2], k=10)
    assert list(audience.target_idx) == list(expected.indices)
