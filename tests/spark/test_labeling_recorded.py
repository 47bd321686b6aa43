"""The recorded backend: replays another LLM's labels, only for the users asked."""

from __future__ import annotations

import json
from datetime import datetime

from persona_spark.config import DEFAULT_PERSONAS, LabelingConf
from persona_spark.labeling import build_user_histories
from persona_spark.personas import load_persona_set
from persona_spark.stages.cache import label_entities
from tests.conftest import shared_path


def requests_for(spark, users: list[int]):
    ts = datetime(2011, 1, 1)
    edges = spark.createDataFrame(
        [(u, u % 3, 1, 1, ts, ts, "train") for u in users],
        "user_idx int, item_idx int, n_purchases int, quantity long, first_ts timestamp, last_ts timestamp, split string",
    )
    items = spark.createDataFrame([(i, str(i), f"item {i}", 1) for i in range(3)], "item_idx int, item_id string, item_name string, degree int")
    return build_user_histories(edges, items)


def test_replays_gpt4_labels_for_asked_users_only(spark, store):
    folder = shared_path("online_retail_gplr")
    personas = load_persona_set(folder / "personas.json")
    recorded = {int(k): v for k, v in json.loads((folder / "user_personas_gpt4.json").read_text()).items()}
    asked = [0, 1, 2, 3, 4, 263]  # 3 and 263 have no GPT-4 label (Unrepresentable)
    conf = LabelingConf.model_validate({"backend": "recorded", "recorded": {"path": str(folder / "user_personas_gpt4.json")}})
    rows = {r["user_idx"]: r for r in label_entities(store, requests_for(spark, asked), personas, conf).collect()}
    assert sorted(rows) == asked
    for user in (0, 1, 2, 4):
        assert rows[user]["status"] == "ok" and rows[user]["persona_idx"] == recorded[user]
        assert rows[user]["personas"] == [personas.names[i] for i in recorded[user]]
        assert rows[user]["model"] == "recorded:user_personas_gpt4"
    assert rows[3]["status"] == rows[263]["status"] == "unrepresentable" and rows[3]["persona_idx"] == []
    assert store.read_table("user_labels").count() == len(asked)  # the budget spent is what was asked


def test_indices_outside_the_persona_set_are_errors(spark, store, tmp_path):
    personas = load_persona_set(DEFAULT_PERSONAS)
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"0": [1, 3], "1": [2, len(personas)], "2": []}))
    conf = LabelingConf.model_validate({"backend": "recorded", "recorded": {"path": str(path), "model": "gpt-x"}})
    rows = {r["user_idx"]: r for r in label_entities(store, requests_for(spark, [0, 1, 2]), personas, conf).collect()}
    assert rows[0]["personas"] == [personas.names[1], personas.names[3]] and rows[0]["model"] == "gpt-x"
    assert rows[1]["status"] == "error" and str(len(personas)) in rows[1]["error"] and rows[1]["personas"] == []
    assert rows[2]["status"] == "unrepresentable"
