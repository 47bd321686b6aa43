"""The audit's interval math: point figures as ``evaluate`` counts them, and intervals that cover the truth.

Coverage is checked on synthetic predictions whose population figures are known in closed form: each user
carries persona r with probability q_r; the prediction misses a carried persona with probability m_r and adds
an uncarried one with probability f_r. Then per user and persona E[tp] = q(1 - m), E[predicted] = q(1 - m) +
(1 - q) f, E[actual] = q, and the population's micro-F1 is 2 Σ E[tp] / (Σ E[predicted] + Σ E[actual]).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom

from persona_spark import audit, evaluate, intervals

TRIALS = 60  # samples drawn per synthetic population


def synthetic(rng, n: int, q: np.ndarray, miss: np.ndarray, extra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    actual = rng.random((n, len(q))) < q
    predicted = np.where(actual, rng.random(actual.shape) >= miss, rng.random(actual.shape) < extra)
    return predicted.astype(np.int8), actual.astype(np.int8)


def population(q: np.ndarray, miss: np.ndarray, extra: np.ndarray) -> dict[str, float]:
    tp, actual = q * (1 - miss), q
    predicted = tp + (1 - q) * extra
    return {"micro_f1": 2 * tp.sum() / (predicted.sum() + actual.sum()), "precision": tp.sum() / predicted.sum(),
            "recall": tp.sum() / actual.sum(), "macro_f1": float(np.mean(2 * tp / (predicted + actual)))}


@settings(max_examples=3, deadline=None, derandomize=True)
@given(personas=st.integers(3, 12), n=st.integers(200, 500), seed=st.integers(0, 2**31),
       miss=st.floats(0.1, 0.6), extra=st.floats(0.02, 0.3))
def test_bootstrap_intervals_cover_the_known_population_figures(personas, n, seed, miss, extra):
    rng = np.random.default_rng(seed)
    q = rng.uniform(0.1, 0.6, personas)
    misses, extras = np.full(personas, miss), np.full(personas, extra)
    truth = population(q, misses, extras)
    covered = {name: 0 for name in intervals.OVERALL}
    values, widths = [], []
    for trial in range(TRIALS):
        found = intervals.bootstrap(*synthetic(rng, n, q, misses, extras), resamples=400, seed=trial)
        for name in intervals.OVERALL:
            covered[name] += found[name].covers(truth[name])
        values.append(found["micro_f1"].value)
        widths.append(found["micro_f1"].upper - found["micro_f1"].lower)
    for name, hits in covered.items():
        assert hits / TRIALS >= 0.85, (name, hits, truth[name])  # nominal 0.95; 3.5 standard errors below
    # neither too narrow nor padded: the mean width is that of ±1.96 sd of the estimate across samples
    assert 0.75 < np.mean(widths) / (2 * 1.96 * np.std(values)) < 1.35


def test_an_interval_narrows_as_the_sample_grows():
    rng = np.random.default_rng(7)
    q, m, f = np.full(6, 0.3), np.full(6, 0.3), np.full(6, 0.1)
    small = intervals.bootstrap(*synthetic(rng, 100, q, m, f))["micro_f1"]
    large = intervals.bootstrap(*synthetic(rng, 1600, q, m, f))["micro_f1"]
    ratio = (small.upper - small.lower) / (large.upper - large.lower)
    assert 3 < ratio < 5.5  # about sqrt(16)


def test_point_figures_are_evaluates_on_the_same_users():
    rng = np.random.default_rng(3)
    predicted, actual = synthetic(rng, 60, rng.uniform(0.05, 0.5, 9), np.full(9, 0.4), np.full(9, 0.1))
    predicted[:, 8] = actual[:, 8] = 0  # a persona neither side names: out of the macro average
    counts = pd.DataFrame({"persona_idx": range(9), "tp": (predicted * actual).sum(axis=0),
                           "predicted": predicted.sum(axis=0), "actual": actual.sum(axis=0)})
    expected, _ = evaluate.summarize_counts(counts)
    found = intervals.bootstrap(predicted, actual, resamples=50)
    for name in intervals.OVERALL:
        assert found[name].value == pytest.approx(expected[name])
        assert found[name].lower <= found[name].value <= found[name].upper


@settings(max_examples=25, deadline=None, derandomize=True)
@given(trials=st.integers(5, 300), share=st.floats(0.05, 0.95))
def test_wilson_interval_covers_a_persona_recall_exactly_computed(trials, share):
    # coverage summed over every possible count of recalled carriers, weighted by its binomial probability
    hits = [k for k in range(trials + 1) if intervals.wilson(k, trials).covers(share)]
    assert binom.pmf(hits, trials, share).sum() >= 0.88  # nominal 0.95: Wilson's dips stay above this


def test_recall_per_persona_counts_carriers_and_skips_personas_nobody_carries():
    predicted = np.array([[1, 0, 1], [1, 0, 0], [0, 1, 0]])
    actual = np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0]])
    found = intervals.recall_per_persona(predicted, actual)
    assert set(found) == {0}
    estimate, carriers = found[0]
    assert carriers == 3 and estimate.value == pytest.approx(2 / 3) and 0 < estimate.lower < 2 / 3 < estimate.upper < 1
    every = intervals.wilson(4, 4)
    assert every.value == 1 and every.upper == 1 and every.lower < 0.6  # all recalled: still an interval, not [1, 1]


def test_bootstrap_refuses_mismatched_or_empty_input():
    with pytest.raises(ValueError, match="same users"):
        intervals.bootstrap(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="no users"):
        intervals.bootstrap(np.zeros((0, 2)), np.zeros((0, 2)))


def sets_frame() -> pd.DataFrame:
    return pd.DataFrame({"user_idx": [1, 2, 3, 4], "status": ["ok", "ok", "unrepresentable", "error"],
                         "predicted": [[0, 1], [2], [1], [0]], "actual": [[0], [2, 3], [], None]})


def test_an_audit_scores_usable_answers_and_counts_errors_apart():
    found = audit.score(sets_frame(), 4, {"prompt_tokens": 40, "completion_tokens": 8}, seed=0)
    assert (found.asked, found.scored, found.errors) == (4, 3, 1)
    # tp = 2 (user 1: 0; user 2: 2), predicted 4, actual 3
    assert found.overall["micro_f1"].value == pytest.approx(4 / 7)
    assert found.overall["precision"].value == pytest.approx(0.5) and found.overall["recall"].value == pytest.approx(2 / 3)
    assert {r: n for r, (_, n) in found.per_persona.items()} == {0: 1, 2: 1, 3: 1}
    rows = found.rows(("run-1", None))
    assert len(rows) == 4 + 3 and {r[2] for r in rows} == {"micro_f1", "precision", "recall", "macro_f1"}
    summary = found.summary()
    assert summary["users"] == 3 and summary["prompt_tokens"] == 40 and summary["recall_per_persona"]["3"]["recall"] == 0


def test_the_guard_fails_below_the_minimum_or_without_an_estimate_and_says_so_in_one_line():
    found = audit.score(sets_frame(), 4, {}, seed=0)
    upper = found.overall["micro_f1"].upper
    assert audit.guard_state(found, None) == "off"
    assert audit.guard_state(found, upper) == "passed"
    assert audit.guard_state(found, min(1.0, upper + 0.01)) == "failed"
    line = audit.guard_message(found, 0.99, "r1")
    assert "\n" not in line and "0.99" in line and "r1" in line and f"{found.overall['micro_f1'].value:.3f}" in line
    nobody = audit.score(sets_frame().iloc[3:], 4, {}, seed=0)
    assert nobody.scored == 0 and audit.guard_state(nobody, 0.1) == "failed"
    assert "no audit estimate" in audit.guard_message(nobody, 0.1, "r1")
