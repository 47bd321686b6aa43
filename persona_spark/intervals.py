"""Agreement of predicted persona sets with an LLM's on a random sample of users, with 95 % intervals (numpy only).

A run's audit (``persona_spark.audit``) hands this module two small 0/1 matrices, users × personas: what the run
predicted for each sampled user and what the LLM answered. The figures are those of ``persona_spark.evaluate``
(micro-F1, precision, recall, macro-F1 over the personas either side names, recall per persona), computed on the
sample; each is a ratio of sums over users, so it estimates the same ratio over the population the users were
drawn from uniformly (bias of order 1/n, far below the sampling error at a few hundred users).

Intervals: the overall figures by a percentile bootstrap over users (users are the sampled unit; a user's
personas are correlated, so resampling (user, persona) pairs would be too narrow). Recall per persona by Wilson's
score interval: each sampled carrier of a persona is one independent yes/no (was it predicted), and Wilson's
interval keeps its coverage at the few carriers a rare persona has, where a bootstrap collapses to a point
(every carrier recalled: [1, 1]). Sampling without replacement from a finite population makes both slightly
conservative (the finite-population factor 1 - n/N is left out).
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000
OVERALL = ("micro_f1", "precision", "recall", "macro_f1")


@dataclass(frozen=True)
class Estimate:
    """A figure on the sample and its interval at ``confidence``."""

    value: float
    lower: float
    upper: float

    def covers(self, x: float) -> bool:
        return self.lower <= x <= self.upper


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros_like(numerator, dtype=float), where=denominator > 0)


def figures(tp: np.ndarray, predicted: np.ndarray, actual: np.ndarray) -> dict[str, np.ndarray]:
    """Per-persona sums (``... × personas``; any leading axes, e.g. bootstrap resamples) -> the overall figures.

    Macro-F1 averages the personas that either side names at least once, as ``evaluate.summarize_counts`` does."""
    t, p, a = tp.sum(axis=-1), predicted.sum(axis=-1), actual.sum(axis=-1)
    present = (predicted > 0) | (actual > 0)
    per_f1 = _ratio(2.0 * tp, predicted + actual)
    n_present = present.sum(axis=-1)
    macro = _ratio((per_f1 * present).sum(axis=-1), n_present.astype(float))
    return {"micro_f1": _ratio(2.0 * t, p + a), "precision": _ratio(1.0 * t, p), "recall": _ratio(1.0 * t, a),
            "macro_f1": macro}


def bootstrap(predicted: np.ndarray, actual: np.ndarray, confidence: float = CONFIDENCE,
              resamples: int = RESAMPLES, seed: int = 0) -> dict[str, Estimate]:
    """The overall figures of 0/1 matrices (users × personas) with percentile-bootstrap intervals over users."""
    predicted, actual = np.asarray(predicted, dtype=float), np.asarray(actual, dtype=float)
    if predicted.shape != actual.shape or predicted.ndim != 2:
        raise ValueError(f"predicted {predicted.shape} and actual {actual.shape} must be the same users × personas")
    n = len(predicted)
    if n == 0:
        raise ValueError("no users to estimate from")
    tp = predicted * actual
    point = figures(tp.sum(axis=0), predicted.sum(axis=0), actual.sum(axis=0))
    # each resample as how often it draws every user: sums over a resample are one matrix product
    drawn = np.random.default_rng(seed).integers(0, n, (resamples, n))
    offsets = (drawn + n * np.arange(resamples)[:, None]).ravel()
    counts = np.bincount(offsets, minlength=resamples * n).reshape(resamples, n).astype(float)
    resampled = figures(counts @ tp, counts @ predicted, counts @ actual)
    tail = (1.0 - confidence) / 2
    out = {}
    for name in OVERALL:
        lower, upper = np.quantile(resampled[name], [tail, 1.0 - tail])
        value = float(point[name])
        out[name] = Estimate(value, min(float(lower), value), max(float(upper), value))
    return out


def wilson(successes: int, trials: int, confidence: float = CONFIDENCE) -> Estimate:
    """Wilson's score interval of a proportion (``trials`` > 0)."""
    if trials <= 0:
        raise ValueError("Wilson's interval needs at least one trial")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    share = successes / trials
    centre = (share + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z / (1 + z * z / trials) * np.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials))
    return Estimate(share, max(0.0, float(centre - half)), min(1.0, float(centre + half)))


def recall_per_persona(predicted: np.ndarray, actual: np.ndarray,
                       confidence: float = CONFIDENCE) -> dict[int, tuple[Estimate, int]]:
    """Per persona some sampled user carries in ``actual``: its recall with Wilson's interval, and the carriers."""
    predicted, actual = np.asarray(predicted) > 0, np.asarray(actual) > 0
    carriers, recalled = actual.sum(axis=0), (predicted & actual).sum(axis=0)
    return {int(r): (wilson(int(recalled[r]), int(carriers[r]), confidence), int(carriers[r]))
            for r in np.flatnonzero(carriers)}
