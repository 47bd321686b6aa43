"""Cold start through personas: planted signal recovered, popularity fallback, name errors, batch stages."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from persona_spark.config import RecommendTrainConf  # noqa: E402
from persona_spark.recommend.coldstart import (  # noqa: E402
    NO_MATCH_SHARE,
    PERSONAS,
    POPULARITY,
    ColdStartModel,
    persona_purchase_share,
)
from persona_spark.recommend.train import train  # noqa: E402
from tests.recommend_world import FAST, ITEMS_PER_PERSONA, USERS_PER_PERSONA, planted_world, purchase_world  # noqa: E402


@pytest.fixture(scope="module")
def trained():
    """LGCN3 on the planted world, with persona 3 stripped of every edge (so it carries no signal)."""
    world = planted_world()
    data = replace(world, user_personas=world.user_personas[world.user_personas[:, 1] != 3],
                   user_persona_weight=None,
                   item_personas=world.item_personas[world.item_personas[:, 1] != 3], item_persona_weight=None)
    result = train(data, RecommendTrainConf(**FAST, model="lgcn3"), seed=0)
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
    saved = train(data, RecommendTrainConf(**FAST, model="mf"), seed=0).save(tmp_path / "mf", data)
    with pytest.raises(ValueError, match="persona embeddings"):
        ColdStartModel.from_run(saved)
