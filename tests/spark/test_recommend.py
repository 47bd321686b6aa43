"""Recommender: the Spark export writes the directory the trainer reads."""

from __future__ import annotations

import numpy as np

from persona_spark.recommend.data import read_directory


def test_export_writes_the_directory_the_trainer_reads(spark, tmp_path):
    from persona_spark.recommend.export import interaction_pairs, item_persona_edges, user_persona_edges, write_export

    edges = spark.createDataFrame(
        [(0, 0, "train"), (0, 1, "test"), (1, 1, "train"), (2, 0, "train")], "user_idx int, item_idx int, split string"
    )
    personas = spark.createDataFrame(
        [(0, 1, 0.9, 1, "llm"), (0, 0, 0.2, 2, "llm"), (1, 1, 0.5, 1, "propagated")],
        "user_idx int, persona_idx int, score double, rank int, source string",
    )
    item_labels = spark.createDataFrame(
        [(0, [0, 1], "ok", 1), (0, [1], "ok", 2), (1, None, "error", 3), (1, [0], "ok", 1)],
        "item_idx int, persona_idx array<int>, status string, ts int",
    )
    parts = {
        "train": interaction_pairs(edges, "train"),
        "test": interaction_pairs(edges, "test"),
        "user_personas": user_persona_edges(personas, "score", max_rank=1),
        "item_personas": item_persona_edges(item_labels),
    }
    counts = write_export(tmp_path / "export", parts, n_users=3, n_items=2, persona_names=("A", "B"))
    assert counts == {"train": 3, "test": 1, "user_personas": 2, "item_personas": 2}
    data = read_directory(tmp_path / "export")
    assert sorted(map(tuple, data.train)) == [(0, 0), (1, 1), (2, 0)]
    assert sorted(map(tuple, data.item_personas)) == [(0, 1), (1, 0)]  # newest valid answer per item
    order = np.argsort(data.user_personas[:, 0])
    assert data.user_personas[order].tolist() == [[0, 1], [1, 1]]
    np.testing.assert_allclose(data.user_persona_weight[order], [0.9, 0.5])
    assert data.persona_names == ("A", "B")
    plain = item_persona_edges(spark.createDataFrame([(1, 0)], "item_idx int, persona_idx int"))
    assert [tuple(r) for r in plain.collect()] == [(1, 0, 1.0)]
