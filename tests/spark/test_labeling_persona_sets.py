"""Persona-set generation (paper App. B) against the loopback OpenAI-protocol server."""

from __future__ import annotations

import json
import re
from datetime import datetime

import pytest

from persona_spark.config import Config
from persona_spark.personas import load_persona_set
from persona_spark.stages import STAGES, RunContext
from persona_spark.testing.openai_server import LoopbackChatServer, Reply, entity_ids

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
            "persona_generation": {"sample_users": 10, "histories_per_prompt": 4, "target_size": 3,
                                   "title": "test_shop", "output": str(tmp_path / "generated.yaml")},
        }})
        dry = STAGES["generate-personas"](RunContext(cfg.model_copy(update={"labeling": cfg.labeling.model_copy(update={"dry_run": True})}), shop))
        assert dry["dry_run"] and dry["requests"] == 3 + 1 and dry["prompt_tokens"] > 0 and server.request_count == 0
        summary = STAGES["generate-personas"](RunContext(cfg, shop))
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


def paper_steps(body: dict, n: int) -> Reply:
    """App. B's answers as numbered lists: step 1 names personas after its users, steps 2 and 3
    repeat every persona they were shown (duplicates included); one step-1 answer is garbage."""
    system, request = body["messages"][0]["content"], body["messages"][-1]["content"]
    if "deducing high-level consumer keywords" in system:  # step 1 (Fig. 2.a)
        ids = entity_ids(body)
        if ids[0] == "0":
            return Reply(content="I cannot see any data.")
        return Reply(content="\n".join(f"{k}. Group {ids[0]} Persona {k}\n - buys what user {ids[0]} buys" for k in (1, 2, 3)))
    names = re.findall(r"^\d+\. (.+)$", request, flags=re.M)
    listing = "\n".join(f"{k}. {name}\n - kept" for k, name in enumerate(names, 1))
    return Reply(content=f"Here are the personas:\n{listing}")


def test_paper_method_runs_app_b_three_steps(shop, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    generate = {"method": "paper", "candidate_prompts": 5, "histories_per_prompt": 4, "candidates_per_prompt": 3,
                "refine_prompts": 3, "sets_per_refine": 2, "target_size": 3, "output": str(tmp_path / "paper.yaml")}
    with LoopbackChatServer(paper_steps) as server:
        cfg = Config.model_validate({"labeling": {
            "backend": "openai", "user_prompt": "paper_v1",
            "openai": {"base_url": server.base_url, "api_key_env": KEY_ENV, "concurrency": 2, "max_attempts": 1},
            "persona_generation": generate}})
        dry = STAGES["generate-personas"](RunContext(cfg.model_copy(update={"labeling": cfg.labeling.model_copy(update={"dry_run": True})}), shop))
        assert dry["dry_run"] and dry["requests"] == 5 + 3 + 1 and dry["sample_users"] == 5 * 4 and server.request_count == 0
        summary = STAGES["generate-personas"](RunContext(cfg, shop))
        bodies = list(server.requests)

    step1 = [b for b in bodies if "deducing high-level consumer keywords" in b["messages"][0]["content"]]
    step2 = [b for b in bodies if "randomly select" in b["messages"][-1]["content"]]
    step3 = [b for b in bodies if "that is to say" in b["messages"][-1]["content"]]
    assert (len(step1), len(step2), len(step3)) == (5, 3, 1) and len(bodies) == 9
    groups = [entity_ids(b) for b in step1]
    assert all(len(set(g)) == 4 for g in groups) and len({tuple(g) for g in groups}) > 1  # fresh users per prompt
    first = step1[0]["messages"][-1]["content"]
    assert "about 4 (33.3 percent) users" in first and "High Coverage" in first and "High Accuracy" in first
    assert "he bought: Garden tool" in first and "response_format" not in step1[0]  # the paper's history sentence, no JSON mode
    refine = step2[0]["messages"][-1]["content"]
    assert "Now we have 4 persona_sets, each containing 3 personas, and I will randomly select two persona_sets" in refine
    assert refine.count("\n1. ") == 2 and "Group 0" not in refine  # the failed step-1 set is not drawn
    final = step3[0]["messages"][-1]["content"]
    assert "Now we have 3 persona sets, each containing 3 personas, for a total of 9 personas" in final
    assert "Here are the three sets of personas" in final
    assert summary["method"] == "paper" and summary["failed_candidate_requests"] == 1 and summary["refine_requests"] == 3
    persona_set = load_persona_set(tmp_path / "paper.yaml")
    assert len(persona_set) == 3 and all(name.startswith("Group ") for name in persona_set.names)  # repeats dropped
    assert persona_set.descriptions[0] == "kept"
