"""The offline embedding labeler (real all-MiniLM-L6-v2 weights, no network) and the label stages."""

from __future__ import annotations

import json

import numpy as np
import pytest

from persona_spark.config import EmbeddingLabelConf
from persona_spark.labeling import CacheKey
from persona_spark.labeling.embedding import EmbeddingScorer


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
