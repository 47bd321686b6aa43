"""Segmentation's silhouette score equals scikit-learn's, duplicates and one-point clusters included."""

from __future__ import annotations

import numpy as np
import pytest

from persona_spark import segment


def test_silhouette_score_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    points = np.vstack([rng.normal(c, 0.3, size=(40, 3)) for c in (0.0, 1.0, 2.5)] + [[[9.0, 9.0, 9.0]]])
    points[5] = points[6]  # duplicate points: distance 0
    labels = np.array([0] * 40 + [1] * 40 + [2] * 40 + [7])  # 7: a cluster of one scores 0
    for chunk in (7, 1024):
        assert segment.silhouette_score(points, labels, chunk) == pytest.approx(metrics.silhouette_score(points, labels))
    assert np.isnan(segment.silhouette_score(points, np.zeros(len(points))))  # one cluster
