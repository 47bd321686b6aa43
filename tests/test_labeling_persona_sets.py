"""Persona-set generation (paper App. B) against the loopback OpenAI-protocol server."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from persona_spark.config import Config
from persona_spark.labeling.loopback import LoopbackChatServer, Reply, entity_ids
from persona_spark.personas import load_persona_set
from persona_spark.stages import STAGES

KEY_ENV = "PS_LOOPBACK_KEY"


def candidates(body: dict, n: int) -> Reply:
    """Candidate calls propose overlapping personas; the merge call returns the candidates it got."""
    request = body["messages"][-1]["content"]
    if request.startswith("Candidate personas"):
        names = [line[2:].split(":")[0] for line in request.splitlines() if line.startswith("- ")]
        merged = [{"name": name, "description": f"merged from candidates: {name.lower()}"} for name in names]
        return Reply(content=json.dumps({"personas": merged}))
    if n == 1:
        return Reply(content="Sorry, I cannot help with that.")  # one candidate call fails
    ids = entity_ids(body)
    proposals = [{"name": "Garden Lover", "description": "plants"}, {"name": "garden  lover", "description": "dup"},
                 {"name": f"Shopper Group {ids[0]}", "description": f"users like {ids[0]}"}]
    return Reply(content=json.dumps({"personas": proposals}))


@pytest.fixture()
def shop(spark, store):
    ts = datetime(2024, 2, 1)
    edges = [(u, u % 4, 1, 1, ts, ts, "train") for u in range(12)]
    store.write_table(spark.createDataFrame(edges, "user_idx int, item_idx int, n_purchases int, quantity long, first_ts timestamp, last_ts timestamp, split string"), "edges")
    items = [(i, str(i), f"Garden tool {i}", 1) for i in range(4)]
    store.write_table(spark.createDataFrame(items, "item_idx int, item_id string, item_name string, degree int"), "items")
    return store


@pytest.mark.parametrize("backend", ["openai", "openai_batch"])
def test_generate_personas_writes_a_loadable_versioned_set(shop, tmp_path, monkeypatch, backend):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    with LoopbackChatServer(candidates) as server:
        cfg = Config.model_validate({"labeling": {
            "backend": backend,
            "batch": {"dir": str(tmp_path / "batches"), "poll_initial_s": 0.02, "poll_max_s": 0.1},
            "openai": {"base_url": server.base_url, "api_key_env": KEY_ENV, "concurrency": 2, "max_attempts": 1},
            "generate": {"sample_users": 10, "histories_per_prompt": 4, "target_size": 3, "title": "test_shop",
                         "output": str(tmp_path / "generated.yaml")},
        }})
        dry = STAGES["generate-personas"](cfg.model_copy(update={"labeling": cfg.labeling.model_copy(update={"dry_run": True})}), shop)
        assert dry["dry_run"] and dry["requests"] == 3 + 1 and dry["prompt_tokens"] > 0 and server.request_count == 0
        summary = STAGES["generate-personas"](cfg, shop)
        asked = [entity_ids(b) for b in server.requests[:3]]
        batches = len(server.batches)

    assert batches == (2 if backend == "openai_batch" else 0)  # candidates, then the merge
    assert summary["channel"] == ("batch" if backend == "openai_batch" else "sync")

    assert sorted(len(ids) for ids in asked) == [2, 4, 4]  # 10 sampled users, 4 histories per prompt
    assert len({i for ids in asked for i in ids}) == 10
    assert summary["candidate_requests"] == 3 and summary["failed_candidate_requests"] == 1
    assert summary["distinct_candidates"] == 3  # "garden  lover" merged with "Garden Lover"
    persona_set = load_persona_set(tmp_path / "generated.yaml")
    assert len(persona_set) == summary["personas"] == 3
    assert persona_set.version == summary["version"] and persona_set.title == "test_shop"
    assert persona_set.names[0] == "Garden Lover" and persona_set.descriptions[0].startswith("merged")
    table = shop.read_table("generated_persona_sets")
    assert table.select("version").distinct().first()["version"] == persona_set.version
    assert table.count() == len(persona_set)
