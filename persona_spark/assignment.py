"""The learned assignment: which personas a user gets from its propagated signals (numpy only).

A logistic model over (user, persona) pairs, trained on the driver from the prototypes' cross-fitted
signals (:func:`fit_assignment`) and applied in Spark tasks to every other user
(``AssignmentModel.scores`` / ``select``). Keeping it free of Spark makes the driver fit and the task
scoring the same code, and lets it be tested on plain arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from persona_spark.config import GPLRConf


def _normalized(m: np.ndarray) -> np.ndarray:
    total = m.sum(axis=1, keepdims=True)
    return np.divide(m, total, out=np.zeros_like(m), where=total > 0)


def pair_features(signals: list[np.ndarray], q_hat: np.ndarray, degree: np.ndarray) -> np.ndarray:
    """(n users × |R| personas) signal matrices and the users' train degrees -> one feature row per
    (user, persona), n·|R| rows.

    log(1 + degree) enters alone and times every signal feature: how many personas a shopper
    carries, and how far a share of the propagated mass can be trusted, both grow with how much
    of the catalogue they bought.
    """
    n, n_personas = signals[0].shape
    columns = []
    for signal in signals:
        share = _normalized(signal)
        rank = np.argsort(np.argsort(-signal, axis=1, kind="stable"), axis=1)
        reached = (signal.sum(axis=1, keepdims=True) > 0).astype(float)
        columns += [share, np.sqrt(share), (rank < 3) * reached, (rank < 6) * reached]
    log_degree = np.broadcast_to(np.log1p(np.asarray(degree, dtype=float))[:, None], (n, n_personas))
    columns += [c * log_degree for c in columns] + [log_degree]
    columns.append(np.broadcast_to(q_hat, (n, n_personas)))
    dense = np.stack(columns, axis=-1)
    one_hot = np.broadcast_to(np.eye(n_personas), (n, n_personas, n_personas))
    return np.concatenate([dense, one_hot], axis=-1).reshape(n * n_personas, -1)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, iterations: int = 25,
                 weight: np.ndarray | None = None) -> np.ndarray:
    """L2-regularized logistic regression by Newton's method (a few thousand rows, tens of features);
    ``weight`` per row: how many rows of the full set a sampled row stands for."""
    x = np.hstack([x, np.ones((len(x), 1))])
    c = np.ones(len(x)) if weight is None else weight
    w = np.zeros(x.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -30, 30)))
        gradient = x.T @ (c * (p - y)) + l2 * w
        hessian = (x * (c * p * (1 - p))[:, None]).T @ x + l2 * np.eye(len(w))
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def predict_logistic(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x @ w[:-1] + w[-1], -30, 30)))


def select_personas(scores: np.ndarray, threshold: float, max_personas: int, min_personas: int = 1) -> np.ndarray:
    """0/1 matrix: personas scoring >= threshold, at least ``min_personas``, at most ``max_personas``."""
    order = np.argsort(-scores, axis=1, kind="stable")
    rank = np.argsort(order, axis=1)
    chosen = (scores >= threshold) | (rank < min_personas)
    return (chosen & (rank < max_personas)).astype(np.int8)


def micro_f1(predicted: np.ndarray, actual: np.ndarray, weight: np.ndarray | None = None) -> float:
    """Micro-F1 of 0/1 (user × persona) matrices; ``weight`` per user (a sampled user counts for that many)."""
    c = np.ones((len(actual), 1)) if weight is None else np.asarray(weight, dtype=float)[:, None]
    denominator = (c * predicted).sum() + (c * actual).sum()
    return float(2 * (c * predicted * actual).sum() / denominator) if denominator else 0.0


@dataclass
class AssignmentModel:
    """How personas are picked from a user's signals; stored in ``gplr_runs`` as JSON."""

    mode: str  # 'learned' | 'topk'
    top_k: int = 5
    max_personas: int = 8
    threshold: float = 0.0
    weights: list[float] = field(default_factory=list)
    q_hat: list[float] = field(default_factory=list)
    uses_item_signal: bool = False
    cv_micro_f1: float | None = None
    # Platt scaling of the model's scores, fitted on out-of-fold predictions: p = σ(a·logit(s) + b).
    calibration: list[float] = field(default_factory=list)
    # Held-out reliability: per probability bin, the pairs, their mean calibrated probability and how
    # many of them the LLM actually labelled so (each fold calibrated without its own predictions).
    reliability: list[dict] = field(default_factory=list)
    # What the model was fitted on: prototypes available and used, whether the cap bit, the floor (training_sample).
    fitted_on: dict = field(default_factory=dict)

    def scores(self, signals: list[np.ndarray], degree: np.ndarray | None) -> np.ndarray:
        """Per (user, persona): Ψ for the top-k rule, the model's probability for the learned one (which needs ``degree``)."""
        n, n_personas = signals[0].shape
        if self.mode == "topk":
            return signals[0]
        x = pair_features(signals, np.asarray(self.q_hat), degree)
        return predict_logistic(np.asarray(self.weights), x).reshape(n, n_personas)

    def probability(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated P(the LLM would give this persona); NaN for the top-k rule (its Ψ is no probability)."""
        if self.mode == "topk" or not self.calibration:
            return np.full_like(scores, np.nan, dtype=float)
        return platt(np.asarray(self.calibration), scores)

    def select(self, scores: np.ndarray) -> np.ndarray:
        if self.mode == "topk":  # the paper: top-k personas with positive affinity
            return select_personas(scores, np.inf, self.top_k, self.top_k) * (scores > 0)
        return select_personas(scores, self.threshold, self.max_personas)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def fit_platt(scores: np.ndarray, labels: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """(a, b) of p = σ(a·logit(score) + b), fitted by (lightly regularized) logistic regression; ``weight`` per user."""
    pair_weight = None if weight is None else np.repeat(weight, scores.shape[1])
    return fit_logistic(_logit(scores.reshape(-1))[:, None], labels.reshape(-1).astype(float), 1e-3, weight=pair_weight)


def platt(ab: np.ndarray, scores: np.ndarray) -> np.ndarray:
    return predict_logistic(ab, _logit(scores)[..., None])


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, bins: int,
                     weight: np.ndarray | None = None) -> list[dict]:
    """Equal-width probability bins: pairs, mean predicted probability, observed share of positives
    (means weighted by ``weight`` per user)."""
    p, y = probabilities.reshape(-1), labels.reshape(-1).astype(float)
    c = np.ones_like(p) if weight is None else np.repeat(weight, probabilities.shape[1])
    which = np.minimum((p * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        inside = which == b
        if inside.any():
            out.append({"bin": b, "lower": b / bins, "upper": (b + 1) / bins, "pairs": int(inside.sum()),
                        "mean_predicted": float(np.average(p[inside], weights=c[inside])),
                        "observed": float(np.average(y[inside], weights=c[inside]))})
    return out


@dataclass
class Fold:
    """One cross-fitting fold's held-out prototypes: their signals (computed without them), train degrees, labels,
    and the sampling weight of each (how many prototypes it stands for; None: 1 each)."""

    signals: list[np.ndarray]
    degree: np.ndarray
    labels: np.ndarray
    weight: np.ndarray | None = None

    @property
    def user_weight(self) -> np.ndarray:
        return np.ones(len(self.labels)) if self.weight is None else np.asarray(self.weight, dtype=float)


def positive_weights(labels: np.ndarray, weight: np.ndarray, power: float) -> np.ndarray:
    """Per persona, the weight of a carrier's (positive) pair in the likelihood: (mean share / the persona's
    share of the prototypes) ** ``power``. 0: all 1; 0.5: square-root re-balancing, a rare persona's carriers
    count more without the rarest dominating the fit."""
    share = (labels * weight[:, None]).sum(axis=0) / weight.sum()
    share = np.maximum(share, 1.0 / len(labels))  # a persona no prototype carries: as if one did
    return (share.mean() / share) ** power


def fit_assignment(folds: list[Fold], q_hat: np.ndarray, conf: GPLRConf, uses_item_signal: bool) -> AssignmentModel:
    """Cross-fitted training data per fold -> model with an out-of-fold threshold. Every sum over prototypes
    (likelihood, micro-F1 counts, calibration) is weighted by the folds' sampling weights, so a sample estimates
    the fit on all prototypes; with unit weights this is the unweighted fit. ``conf.class_balance`` also weighs
    the likelihood's positive pairs per persona (:func:`positive_weights`); the threshold, calibration and
    reliability keep the sampling weights alone, so probabilities stay calibrated to the labels."""
    xs = [pair_features(f.signals, q_hat, f.degree) for f in folds]
    ys = [f.labels.reshape(-1).astype(float) for f in folds]
    cs = [f.user_weight for f in folds]
    n_personas = folds[0].labels.shape[1]
    balance = positive_weights(np.vstack([f.labels for f in folds]), np.concatenate(cs), conf.class_balance)

    def pairs(idx: list[int]) -> np.ndarray:
        weight = np.repeat(np.concatenate([cs[i] for i in idx]), n_personas)
        positive = np.concatenate([ys[i] for i in idx]) > 0
        return weight * np.where(positive, np.tile(balance, len(weight) // n_personas), 1.0)

    out_of_fold = []
    for k in range(len(folds)):
        rest = [i for i in range(len(folds)) if i != k]
        if not rest:
            rest = [k]
        w = fit_logistic(np.vstack([xs[i] for i in rest]), np.concatenate([ys[i] for i in rest]), conf.l2,
                         weight=pairs(rest))
        out_of_fold.append(predict_logistic(w, xs[k]).reshape(folds[k].labels.shape))
    scores, labels, weight = np.vstack(out_of_fold), np.vstack([f.labels for f in folds]), np.concatenate(cs)
    held_out = []  # each fold's probabilities from a calibration fitted on the other folds only
    for k in range(len(folds)):
        rest = [i for i in range(len(folds)) if i != k] or [k]
        ab = fit_platt(np.vstack([out_of_fold[i] for i in rest]), np.vstack([folds[i].labels for i in rest]),
                       np.concatenate([cs[i] for i in rest]))
        held_out.append(platt(ab, out_of_fold[k]))
    reliability = reliability_bins(np.vstack(held_out), labels, conf.calibration_bins, weight)
    calibration = fit_platt(scores, labels, weight).tolist()
    candidates = [(micro_f1(select_personas(scores, t, conf.max_personas_per_user), labels, weight), t)
                  for t in np.linspace(0.05, 0.9, 35)]
    best_f1, threshold = max(candidates)
    weights = fit_logistic(np.vstack(xs), np.concatenate(ys), conf.l2, weight=pairs(list(range(len(folds)))))
    return AssignmentModel("learned", conf.top_k, conf.max_personas_per_user, float(threshold), weights.tolist(),
                           q_hat.tolist(), uses_item_signal, round(best_f1, 4), calibration, reliability)
