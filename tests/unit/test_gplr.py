"""GPLR's single-machine parts: the sampler's round sizes and the numpy assignment model."""

from __future__ import annotations

import numpy as np
import pytest

from persona_spark import assignment, sampling
from persona_spark.config import load_config


def test_round_sizes_spread_the_remainder():
    assert sampling.round_sizes(10, 4) == [3, 3, 2, 2]
    assert sum(sampling.round_sizes(215, 4)) == 215
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        sampling.round_sizes(5, 0)


def test_select_personas_bounds():
    scores = np.array([[0.9, 0.8, 0.1, 0.7], [0.1, 0.2, 0.05, 0.0]])
    chosen = assignment.select_personas(scores, threshold=0.5, max_personas=2)
    assert chosen.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0]]  # capped at 2; at least 1


def test_logistic_fit_separates_a_planted_signal():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    y = (x[:, 0] - 0.5 * x[:, 1] > 0).astype(float)
    w = assignment.fit_logistic(x, y, l2=0.1)
    accuracy = ((assignment.predict_logistic(w, x) > 0.5) == y).mean()
    assert accuracy > 0.95 and w[0] > 0 > w[1]


def test_learned_assignment_gives_big_buyers_more_personas_when_the_labels_do():
    """Signals alike, labels not: shoppers of many products carry 4 personas, of few 1 — the degree
    features let one model (one threshold) give each group its count."""
    rng = np.random.default_rng(0)
    n_personas, folds = 8, []
    for _ in range(4):
        psi = rng.dirichlet(np.full(n_personas, 0.5), size=120)
        degree = np.where(np.arange(120) % 2 == 0, 3, 300)
        order = np.argsort(-psi, axis=1)
        labels = np.zeros_like(psi, dtype=np.int8)
        for i, m in enumerate(np.where(degree > 10, 4, 1)):
            labels[i, order[i, :m]] = 1
        folds.append(assignment.Fold([psi, psi], degree, labels))
    conf = load_config(None).gplr
    model = assignment.fit_assignment(folds, np.full(n_personas, 1 / n_personas), conf, uses_item_signal=False)
    test = folds[0]
    chosen = model.select(model.scores(test.signals, test.degree)).sum(axis=1)
    assert chosen[test.degree > 10].mean() > 3.5 and chosen[test.degree < 10].mean() < 1.5


def test_weighted_fit_counts_a_row_as_often_as_its_weight():
    """An integer weight must act exactly like repeating the row (likelihood and micro-F1 counts)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 3))
    y = (x[:, 0] + rng.normal(size=60) > 0).astype(float)
    times = rng.integers(1, 5, size=60)
    weighted = assignment.fit_logistic(x, y, l2=0.5, weight=times.astype(float))
    repeated = assignment.fit_logistic(np.repeat(x, times, axis=0), np.repeat(y, times), l2=0.5)
    np.testing.assert_allclose(weighted, repeated, rtol=1e-8, atol=1e-10)
    assert not np.allclose(weighted, assignment.fit_logistic(x, y, l2=0.5))  # the weights do change the fit
    predicted, actual = rng.integers(0, 2, size=(60, 4)), rng.integers(0, 2, size=(60, 4))
    assert assignment.micro_f1(predicted, actual, times) == pytest.approx(
        assignment.micro_f1(np.repeat(predicted, times, axis=0), np.repeat(actual, times, axis=0)))


def test_class_balance_weighs_a_rare_personas_carriers_up_and_recalls_it_more():
    labels = np.array([[1, 0], [1, 1], [1, 0], [0, 0]] * 4)
    weights = assignment.positive_weights(labels, np.ones(len(labels)), 0.5)
    np.testing.assert_allclose(weights, np.sqrt(0.5 / np.array([0.75, 0.25])))
    np.testing.assert_allclose(assignment.positive_weights(labels, np.ones(len(labels)), 0.0), [1, 1])
    # persona 1 is rare and its signal weak: square-root re-balancing recalls more of its carriers
    rng = np.random.default_rng(4)
    folds = []
    for _ in range(4):
        truth = np.column_stack([rng.random(150) < 0.6, rng.random(150) < 0.08]).astype(np.int8)
        psi = np.clip(truth * 0.3 + rng.random((150, 2)) * 0.7, 0, None)
        folds.append(assignment.Fold([psi, psi], np.full(150, 10), truth))
    recall = {}
    for power in (0.0, 0.5):
        conf = load_config(None, [f"gplr.class_balance={power}"]).gplr
        model = assignment.fit_assignment(folds, np.array([0.6, 0.08]), conf, uses_item_signal=False)
        chosen = np.vstack([model.select(model.scores(f.signals, f.degree)) for f in folds])
        truth = np.vstack([f.labels for f in folds])
        recall[power] = (chosen[:, 1] & truth[:, 1]).sum() / truth[:, 1].sum()
        assert model.calibration  # the probabilities are still calibrated on the unbalanced labels
    assert recall[0.5] > recall[0.0]
