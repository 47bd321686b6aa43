"""Labelers as objects: built from keyword arguments or from a configuration, then labeling without a table store."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from persona_spark.config import DEFAULT_PERSONAS, BatchConf, EmbeddingLabelConf, LabelingConf, OpenAIConf, RecordedConf
from persona_spark.errors import UserError
from persona_spark.labeling import (
    EmbeddingLabeler,
    MemoryCache,
    OpenAIBatchLabeler,
    OpenAILabeler,
    RecordedLabeler,
    build_item_requests,
    build_user_histories,
    label_entities,
    labeler_from_config,
)
from persona_spark.personas import load_persona_set
from persona_spark.testing.openai_server import LoopbackChatServer, Reply, answer, entity_ids, server_error

KEY_ENV = "PS_LABELERS_TEST_KEY"
ITEMS = ["Dry dog food 10kg", "Cat litter 5l", "Tomato seeds", "Organic loose leaf green tea", "Whey protein 1kg",
         "Chef knife 20cm"]
PURCHASES = {0: [(0, 3, 6), (1, 2, 2)], 1: [(2, 1, 4), (3, 1, 4)], 2: [(4, 5, 5), (5, 1, 1)]}


@pytest.fixture(scope="module")
def personas():
    return load_persona_set(DEFAULT_PERSONAS)


def graph(spark):
    ts = datetime(2024, 5, 1)
    edges = spark.createDataFrame(
        [(u, i, n, q, ts, ts, "train") for u, lines in PURCHASES.items() for i, n, q in lines],
        "user_idx int, item_idx int, n_purchases int, quantity long, first_ts timestamp, last_ts timestamp, split string",
    )
    items = spark.createDataFrame([(i, f"SKU{i}", name, 1) for i, name in enumerate(ITEMS)],
                                  "item_idx int, item_id string, item_name string, degree int")
    return edges, items


def test_each_labeler_validates_its_keyword_arguments_as_its_config_section():
    assert EmbeddingLabeler(temperature=0.5, partitions=1).conf == EmbeddingLabelConf(temperature=0.5, partitions=1)
    chat = OpenAILabeler(model="m", base_url="http://127.0.0.1:1/v1", api_key_env="SOME_KEY", concurrency=3)
    assert chat.conf == OpenAIConf(model="m", base_url="http://127.0.0.1:1/v1", api_key_env="SOME_KEY", concurrency=3)
    batch = OpenAIBatchLabeler(model="m", batch={"wait_s": 5})
    assert batch.conf == OpenAIConf(model="m") and batch.batch == BatchConf(wait_s=5)
    assert OpenAIBatchLabeler(batch=BatchConf(max_lines=10)).batch.max_lines == 10
    assert OpenAIBatchLabeler().batch == BatchConf()
    recorded = RecordedLabeler(path="users.json", item_path="items.json", model="gpt-4")
    assert recorded.conf == RecordedConf(path="users.json", item_path="items.json", model="gpt-4")
    assert repr(chat) == ("OpenAILabeler(base_url='http://127.0.0.1:1/v1', model='m', api_key_env='SOME_KEY', "
                          "concurrency=3)")
    assert repr(batch) == "OpenAIBatchLabeler(model='m', batch={'wait_s': 5.0})"


@pytest.mark.parametrize(("make", "named"), [
    (lambda: OpenAILabeler(modle="gpt-4o"), "modle"),
    (lambda: EmbeddingLabeler(temperature=0), "temperature"),
    (lambda: OpenAILabeler(json_mode="yaml"), "json_mode"),
    (lambda: OpenAIBatchLabeler(batch={"max_lines": 0}), "max_lines"),
    (lambda: RecordedLabeler(paht="labels.json"), "paht"),
])
def test_a_wrong_argument_is_one_line_naming_it(make, named):
    with pytest.raises(UserError) as caught:
        make()
    message = str(caught.value)
    assert named in message and "\n" not in message


@pytest.mark.parametrize(("backend", "kind"), [
    ("embedding", EmbeddingLabeler), ("openai", OpenAILabeler), ("openai_batch", OpenAIBatchLabeler),
    ("recorded", RecordedLabeler),
])
def test_labeler_from_config_builds_the_named_backend_from_its_section(backend, kind):
    conf = LabelingConf.model_validate({
        "backend": backend, "embedding": {"temperature": 0.7}, "openai": {"model": "chosen-model"},
        "batch": {"wait_s": 9}, "recorded": {"path": "recorded.json"},
    })
    labeler = labeler_from_config(conf)
    assert type(labeler) is kind and labeler.backend == backend
    section = {"embedding": conf.embedding, "openai": conf.openai, "openai_batch": conf.openai, "recorded": conf.recorded}
    assert labeler.conf == section[backend]
    if backend == "openai_batch":
        assert labeler.batch == conf.batch


def test_embedding_labeler_labels_without_a_table_store(spark, personas):
    """cache=None keeps answers for the call; a MemoryCache keeps them across calls, so nothing is labelled twice."""
    edges, items = graph(spark)
    requests = build_user_histories(edges, items)
    labeler = EmbeddingLabeler(partitions=1)
    once = {r["user_idx"]: r for r in label_entities(None, requests, personas, labeler=labeler).collect()}
    assert once[0]["personas"][0] == "Pet Lover" and once[2]["personas"][0] == "Fitness Enthusiast"
    assert {r["status"] for r in once.values()} == {"ok"} and {r["channel"] for r in once.values()} == {"offline"}

    cache = MemoryCache(spark)
    first = {r["user_idx"]: r.asDict() for r in label_entities(cache, requests, personas, labeler=labeler).collect()}
    assert cache.read("user_labels").count() == 3 and cache.read("item_embeddings").count() == 6
    again = {r["user_idx"]: r.asDict() for r in label_entities(cache, requests, personas, labeler=labeler).collect()}
    assert again == first and cache.read("user_labels").count() == 3  # answered from the cache, same rows and ts
    assert {u: r["personas"] for u, r in first.items()} == {u: r["personas"] for u, r in once.items()}


def test_recorded_labeler_replays_the_kind_it_is_asked_for(spark, personas, tmp_path):
    users, items_file = tmp_path / "users.json", tmp_path / "items.json"
    users.write_text(json.dumps({"0": [1], "1": [2, 3]}))
    items_file.write_text(json.dumps({"0": [4]}))
    labeler = RecordedLabeler(path=str(users), item_path=str(items_file))
    edges, items = graph(spark)
    user_rows = {r["user_idx"]: r for r in label_entities(None, build_user_histories(edges, items), personas,
                                                          labeler=labeler).collect()}
    assert user_rows[0]["persona_idx"] == [1] and user_rows[1]["persona_idx"] == [2, 3]
    assert user_rows[2]["status"] == "unrepresentable" and user_rows[0]["model"] == "recorded:users"
    item_rows = {r["item_idx"]: r for r in label_entities(None, build_item_requests(items), personas, kind="item",
                                                          labeler=labeler).collect()}
    assert item_rows[0]["persona_idx"] == [4] and item_rows[0]["model"] == "recorded:items"
    assert item_rows[1]["status"] == "unrepresentable"


def test_a_recorded_table_must_be_handed_over(spark, personas):
    edges, items = graph(spark)
    with pytest.raises(ValueError, match="recorded.table"):
        label_entities(None, build_user_histories(edges, items), personas, labeler=RecordedLabeler(table="answers"))
    rows = spark.createDataFrame([(0, [5])], "user_idx int, persona_idx array<int>")
    labeler = RecordedLabeler(table="answers").with_recordings(user=rows)
    labels = {r["user_idx"]: r for r in label_entities(None, build_user_histories(edges, items), personas,
                                                       labeler=labeler).collect()}
    assert labels[0]["persona_idx"] == [5] and labels[0]["model"] == "recorded:answers"


def test_openai_labeler_object_is_what_answers_and_a_failed_call_is_a_row(spark, personas, monkeypatch, tmp_path):
    """The labeler's own settings reach the endpoint (not ``conf.openai``); the key comes from its env var."""
    monkeypatch.setenv(KEY_ENV, "sk-labelers-secret")
    seen_models = set()

    def respond(body: dict, _n: int) -> Reply:
        seen_models.add(body["model"])
        (uid,) = entity_ids(body)
        return server_error(500) if uid == "1" else Reply(content=answer([uid], lambda _: ["Gardener"]))

    edges, items = graph(spark)
    conf = LabelingConf(journal_dir=str(tmp_path / "journal"), progress_interval_s=0.2)
    with LoopbackChatServer(respond) as server:
        labeler = OpenAILabeler(base_url=server.base_url, model="object-model", api_key_env=KEY_ENV, max_attempts=1,
                                timeout_s=5, partitions=1)
        rows = {r["user_idx"]: r for r in label_entities(None, build_user_histories(edges, items), personas, conf,
                                                         labeler=labeler).collect()}
    assert seen_models == {"object-model"} and {r["model"] for r in rows.values()} == {"object-model"}
    assert rows[0]["personas"] == ["Gardener"] and rows[0]["channel"] == "sync"
    assert rows[1]["status"] == "error" and "500" in rows[1]["error"]
    assert "sk-labelers-secret" not in repr(labeler) + json.dumps([r.asDict() for r in rows.values()], default=str)
