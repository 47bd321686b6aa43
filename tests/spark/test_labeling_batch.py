"""The openai_batch backend against the loopback server's Batch API (files, batches, output and
error files) with scripted faults: every requested entity ends as a row, no line is paid twice."""

from __future__ import annotations

from collections import Counter

import pytest
from pyspark.sql import functions as F

from persona_spark.config import LabelingConf
from persona_spark.labeling import build_user_histories, summarize
from persona_spark.labeling.batch import LEDGER_TABLE, BatchAPI, BatchesPending, BatchLedger, BatchRunner, Submission
from persona_spark.labeling.client import Secret
from persona_spark.stages.cache import TableCache, label_entities
from persona_spark.testing.openai_server import BatchFaults, LoopbackChatServer, Reply, answer, entity_ids
from tests.spark.test_labeling_openai import KEY_ENV, by_user, make_graph


def obedient_but(personas, invented: set[str] = frozenset()):
    """Answers every user with one persona of the set; users in ``invented`` get a made-up name."""

    def respond(body: dict, _n: int) -> Reply:
        (uid,) = entity_ids(body)
        name = "Space Pirate" if uid in invented else personas.names[int(uid) % len(personas)]
        return Reply(content=answer([uid], lambda _: [name]))

    return respond


@pytest.fixture()
def server(monkeypatch, personas):
    monkeypatch.setenv(KEY_ENV, "sk-loopback-test")
    with LoopbackChatServer(obedient_but(personas)) as srv:
        yield srv


def batch_conf(server, tmp_path, **batch) -> LabelingConf:
    settings = {"max_lines": 50_000, "poll_initial_s": 0.02, "poll_max_s": 0.1, "dir": str(tmp_path / "batches")}
    settings.update(batch)
    return LabelingConf.model_validate({
        "backend": "openai_batch", "journal_dir": str(tmp_path / "journal"), "batch": settings,
        "openai": {"base_url": server.base_url, "model": "loopback-model", "api_key_env": KEY_ENV, "max_attempts": 2},
    })


def ledger_states(store) -> Counter:
    rows = store.read_table(LEDGER_TABLE).groupBy("submission").agg(F.max_by("state", "ts").alias("state")).collect()
    return Counter(r["state"] for r in rows)


def test_faulty_lines_become_error_rows_and_only_they_are_asked_again(spark, store, server, personas, tmp_path):
    faults = {"1": "missing", "2": "duplicated", "3": "malformed", "4": "failed"}
    server.responder = obedient_but(personas, invented={"5"})
    server.batch_faults = BatchFaults(line_fault=lambda cid: faults.get(cid.split("-")[0]))
    edges, items = make_graph(spark, 12)
    requests = build_user_histories(edges, items)
    conf = batch_conf(server, tmp_path, max_lines=5)
    rows = by_user(label_entities(store, requests, personas, conf, "user"))

    assert sorted(rows) == list(range(12))  # 0 entities lost
    assert len(server.batches) == 3  # 12 lines split into batches of <= 5
    assert sorted(Counter(c.split("-")[0] for c in server.submitted_ids).values()) == [1] * 12
    assert {u for u, r in rows.items() if r["status"] == "ok"} == set(range(12)) - {1, 2, 3, 4, 5}
    assert "no answer line" in rows[1]["error"]
    assert "1 malformed line(s)" in rows[3]["error"] and "no answer line" in rows[3]["error"]
    assert "answered this request 2 times" in rows[2]["error"] and rows[2]["personas"] == []
    assert "HTTP 500" in rows[4]["error"]
    assert "Space Pirate" in rows[5]["error"]
    assert all(r["channel"] == "batch" for r in rows.values())
    assert rows[0]["prompt_tokens"] > 100 and rows[0]["completion_tokens"] > 0
    (body_2,) = [b for b in server.requests if entity_ids(b) == ["2"]]
    assert rows[2]["prompt_tokens"] == 2 * (sum(len(m["content"]) for m in body_2["messages"]) // 4 + 1)  # both copies billed
    assert ledger_states(store) == {"collected": 3}

    # The ledger prices batch rows at the batch rates, not the synchronous ones.
    labels = label_entities(store, requests, personas, conf.model_copy(update={"retry_errors": False}), "user")
    assert len(server.batches) == 3  # all answered from the cache
    spent = summarize(labels, conf)
    table = labels.agg(*[F.sum(c).alias(c) for c in ("prompt_tokens", "cached_prompt_tokens", "completion_tokens")]).first()
    prices = conf.openai.batch_prices
    expected = ((table["prompt_tokens"] - table["cached_prompt_tokens"]) * prices.prompt
                + table["cached_prompt_tokens"] * prices.cached_prompt
                + table["completion_tokens"] * prices.completion) / 1000
    assert spent["cost_usd"] == pytest.approx(expected, abs=1e-4) and spent["cost_usd"] > 0

    server.responder = obedient_but(personas)
    server.batch_faults = BatchFaults()
    before = Counter(server.submitted_ids)
    retried = by_user(label_entities(store, requests, personas, conf, "user"))
    asked_again = {c.split("-")[0] for c in server.submitted_ids - before}
    assert asked_again == {"1", "2", "3", "4", "5"}  # the error rows, nothing else
    assert all(r["status"] == "ok" for r in retried.values())


def test_expired_and_invalid_batches_still_give_every_entity_a_row(spark, store, server, personas, tmp_path):
    server.batch_faults = BatchFaults(expire_after=2, fail_validation=1)
    edges, items = make_graph(spark, 6)
    conf = batch_conf(server, tmp_path, max_lines=3)
    rows = by_user(label_entities(store, build_user_histories(edges, items), personas, conf, "user"))

    assert sorted(rows) == list(range(6))
    failed = {u for u, r in rows.items() if r["error"] and "failed validation" in r["error"]}
    expired = {u for u, r in rows.items() if r["error"] and "(expired): batch_expired" in r["error"]}
    ok = {u for u, r in rows.items() if r["status"] == "ok"}
    assert len(failed) == 3 and len(expired) == 1 and len(ok) == 2  # batch 1 invalid; batch 2 expired after 2 lines
    assert "scripted: the input file failed validation" in rows[min(failed)]["error"]
    assert sum(server.executed_ids.values()) == 2  # only the lines that ran were paid


def test_a_killed_run_resumes_its_batches_instead_of_paying_again(spark, store, server, personas, tmp_path):
    server.batch_faults = BatchFaults(hold=True)
    edges, items = make_graph(spark, 6)
    requests = build_user_histories(edges, items)
    conf = batch_conf(server, tmp_path, max_lines=4, wait_s=0.3)
    with pytest.raises(BatchesPending) as pending:  # the run stops while its two batches are in progress
        label_entities(store, requests, personas, conf, "user")
    assert len(pending.value.batch_ids) == 2 and not store.exists("user_labels")
    assert ledger_states(store) == {"submitted": 2}

    server.release_batches()
    rows = by_user(label_entities(store, requests, personas, conf.model_copy(update={"batch": conf.batch.model_copy(update={"wait_s": 60})}), "user"))
    assert len(server.batches) == 2  # the same two batches were polled again, none created
    assert sorted(server.submitted_ids.values()) == [1] * 6 and sorted(server.executed_ids.values()) == [1] * 6
    assert all(r["status"] == "ok" for r in rows.values()) and sorted(rows) == list(range(6))
    assert ledger_states(store) == {"collected": 2}


def test_a_batch_created_but_never_recorded_is_adopted(store, server, tmp_path):
    """A kill between creating a batch and recording its id: the rerun finds it by its input file."""
    path = tmp_path / "input-00000.jsonl"
    path.write_text('{"custom_id": "x-1", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}}\n')
    conf = batch_conf(server, tmp_path)
    api = BatchAPI(conf.openai, Secret("sk-loopback-test"))
    runner = BatchRunner(api, BatchLedger(TableCache(store)), conf.batch)
    (uploaded,) = runner.ledger.record([Submission("s1", "user", "t", "sha", str(path), 1, path.stat().st_size, api.upload(str(path)))])
    lost = api.create(uploaded.input_file_id, "24h", "s1")  # created, then the process died

    (resumed,) = runner.ledger.latest("user", "t")
    assert resumed.state == "uploaded" and resumed.batch_id is None
    (adopted,) = runner.create([resumed])
    assert adopted.batch_id == lost.id and len(server.batches) == 1
    assert [s.batch_id for s in runner.ledger.latest("user", "t")] == [lost.id]
