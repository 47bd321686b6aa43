"""The production path, for real: the Delta connector on an S3-compatible store, a multi-process
standalone cluster, a worker lost in the middle of GPLR.

Everything runs through the CLI in child processes, as a job would, against servers started here
on 127.0.0.1: moto's S3 server, a Spark master and two workers (separate JVMs, own work and
scratch directories), and an OpenAI-protocol chat server (a deterministic keyword stand-in for a
model). Data is the generated demo shop at a small size.
"""

from __future__ import annotations

import json
import threading

import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from persona_spark.config import DEFAULT_PERSONAS
from persona_spark.personas import load_persona_set
from persona_spark.testing.openai_server import LoopbackChatServer, keyword_responder
from tests.conftest import SMALL_DATA_SPARK
from tests.production_world import (
    S3Server,
    StandaloneCluster,
    local_connect_server_slot,
    run_python,
    run_stages,
    write_conf,
)

pytestmark = pytest.mark.slow(minutes=12)

BUCKET = "lake"
KEY_ENV = "PERSONA_SPARK_TEST_LLM_KEY"
# On the cluster: what the lost worker and the Batch API path touch, and the report read back from S3
# (evaluate, segment and the recommender run in the Connect demo).
CLUSTER_STAGES = ["generate", "ingest", "build-graph", "gplr", "report"]


@pytest.fixture(scope="module")
def s3():
    with S3Server.with_bucket(BUCKET) as server:
        yield server


@pytest.fixture(scope="module")
def llm():
    personas = load_persona_set(DEFAULT_PERSONAS)
    with LoopbackChatServer(keyword_responder(list(personas.names), list(personas.descriptions)),
                            model="keyword-stand-in") as server:
        yield server


def settings(root: str, master: str, llm_url: str, scratch: str, **more) -> dict:
    """A small shop, the openai backend against the stand-in, every location under ``root``."""
    conf = {
        "root": root,
        "spark": {"master": master, "shuffle_partitions": 2, "default_parallelism": 2, "driver_memory": "1g",
                  "extra": {"spark.executor.memory": "1g", "spark.local.dir": scratch, **SMALL_DATA_SPARK}},
        "demo": {"users": 240, "items": 120, "partitions": 2},
        "gplr": {"budget_fraction": 0.1, "rounds": 2, "cv_folds": 2},
        "labeling": {"backend": "openai", "openai": {"base_url": llm_url, "model": "keyword-stand-in",
                                                      "api_key_env": KEY_ENV, "partitions": 2}},
        "segment": {"ks": [3, 5]},
        "recommend": {"train": {"max_epochs": 2, "dim": 16, "eigen_k": 16, "progress": False}},
    }
    for key, value in more.items():
        section, field = key.split("__")
        conf.setdefault(section, {})[field] = value
    return conf


def personas_on_s3(s3: S3Server, prefix: str, version: int | None = None) -> list[tuple]:
    table = DeltaTable(f"s3://{BUCKET}/{prefix}/tables/personas", version=version,
                       storage_options=s3.delta_options()).to_pyarrow_table()
    rows = zip(*(table.column(c).to_pylist() for c in ("user_idx", "persona_idx", "source")),
               pc.round(table.column("score"), 9).to_pylist())
    return sorted(rows)


# The child on Spark Connect: notebook 01 (the demo's stages), notebook 02 (GPLR against the endpoint,
# its dry-run estimate first), notebooks 03 and 04 on 01's tables (what serverless notebooks get), then
# a job's entry point, the CLI, on the same Connect server: the report, then every stage the demo does
# not run (on the demo's tables, the paper split's on S3).
CONNECT_CHILD = """
import contextlib, io, json, os, sys
from tests.spark.test_labeling_persona_sets import candidates
from tests.notebook_world import execute
from persona_spark.tables import storage
from persona_spark.cli import main
from persona_spark.testing.openai_server import LoopbackChatServer
quick = execute("01_quick_start.py")
assert not hasattr(quick["spark"], "_jsc"), "notebook 01 did not get a Spark Connect session"
endpoint = execute("02_gplr_with_llm_endpoint.py")
users = endpoint["store"].read_table("users").count()
print("NOTEBOOKS " + json.dumps({
    "stages": sorted(quick["summaries"]), "llm": int(quick["persona_counts"]["llm"].sum()),
    "propagated": int(quick["persona_counts"]["propagated"].sum()),
    "micro_f1": float(quick["quality"].iloc[0]["micro_f1"]),
    "baseline_micro_f1": float(quick["quality"].iloc[0]["baseline_micro_f1"]),
    "budget": endpoint["budget"], "audit_users": endpoint["plan"]["audit_users"],
    "estimated": endpoint["estimate"]["entities"], "users": users,
    "llm_run_users": endpoint["llm_store"].read_table("personas").select("user_idx").distinct().count(),
    "llm_models": sorted(r["model"] for r in endpoint["llm_store"].read_table("user_labels").select("model").distinct().collect()),
}), flush=True)
explored = execute("03_explore_personas.py")
recommender = execute("04_recommender_results.py")
assert not any(hasattr(ns["spark"], "_jsc") for ns in (explored, recommender)), "03/04 did not get a Spark Connect session"
shares = explored["why"].neighbours.toPandas().groupby("persona_idx")["share"].sum()
print("EXPLORER " + json.dumps({
    "top_two": [explored["persona_set"].names.index(n) for n in explored["top_two"]],
    "groups": {",".join(map(str, sorted(g))): int(n) for g, n in zip(explored["groups"]["persona_idx"], explored["groups"]["users"])},
    "both": explored["both"].count(), "only_first": explored["only_first"].count(),
    "members": explored["exported"]["members"], "user": int(explored["propagated_user"]),
    "own": sorted(int(i) for i in explored["own"]["persona_idx"]), "stored_reasons": len(explored["stored_reasons"]),
    "confidence": len(explored["confidence"]), "lifts": [float(x) for x in explored["persona_items"]["lift"]],
    "shares": [float(x) for x in shares], "recommender_runs": len(recommender["all_runs"]),
    "recommender_models": sorted(set(recommender["stats"]["model"])), "model": recommender["cfg"].recommend.train.model,
}), flush=True)
assert main(["report", "--conf", os.environ["PERSONA_SPARK_CONF"]]) == 0


def stage(name, *settings):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main([name, "--conf", os.environ["PERSONA_SPARK_CONF"], *(a for s in settings for a in ("--set", s))])
    assert code == 0, (name, code)
    return json.loads(printed.getvalue())


store, names = quick["store"], list(quick["persona_counts"]["persona"])
labelled = store.read_table("personas").filter("source = 'llm'").select("user_idx", "persona_idx")
store.write_table(labelled, "prototype_labels")
done = {"prototypes": labelled.select("user_idx").distinct().count(), "items": store.read_table("items").count(),
        "affinity": stage("affinity"), "label-items": stage("label-items"),
        "label-users": stage("label-users", "labeling.users.size=12"),
        "audience": stage("audience", "audience.name=either", f"audience.query={names[0]} | {names[1]}"),
        "robustness": stage("robustness", "segment.robustness_customers=12")}
# The affinity stage again with a broadcast limit of a few rows: the hop states take the shuffle path
# (cogrouped source blocks) on Connect too, and give the scores the closure broadcast gave.
def affinity_scores():
    return sorted((r.user_idx, r.persona_idx, r.score) for r in store.read_table("affinity").collect())
broadcast = affinity_scores()
shuffled = stage("affinity", "affinity.broadcast_max_bytes=2048")
again = affinity_scores()
done["affinity_shuffle"] = {
    "paths": sorted({p["path"] for p in shuffled["phases"] if "path" in p}),
    "same_pairs": [s[:2] for s in again] == [b[:2] for b in broadcast],
    "max_abs_diff": max((abs(s[2] - b[2]) for s, b in zip(again, broadcast)), default=0.0)}
with LoopbackChatServer(candidates) as writer:
    done["generate-personas"] = stage(
        "generate-personas", f"labeling.openai.base_url={writer.base_url}", "labeling.openai.max_attempts=1",
        "labeling.persona_generation.sample_users=10", "labeling.persona_generation.histories_per_prompt=4",
        "labeling.persona_generation.target_size=3",
        "labeling.persona_generation.output=s3a://lake/connect/generated_personas.yaml")
split = "s3a://lake/paper_split"
for file_name, rows in (("train.json", {"0": [0, 1], "1": [1, 2], "2": [2]}), ("test.json", {"0": [2], "1": [0]}),
                        ("user_personas_gpt4.json", {"0": [3], "1": [3, 5], "2": [1]})):
    storage.write_text(storage.join(split, file_name), json.dumps(rows))
done["load-paper-split"] = stage("load-paper-split", "root=s3a://lake/connect_paper", f"graph.paper_split_dir={split}")
print("STAGES " + json.dumps(done, default=str), flush=True)
"""


@pytest.fixture(scope="module")
def connect_run(s3, llm, tmp_path_factory):
    """The notebooks 01 and 02 and the CLI on a local Spark Connect server, as Databricks serverless and
    standard-access clusters run them: no SparkContext, RDDs or JVM on the client. Notebook 01 runs
    the whole demo (generate -> ... -> train, cold start, report). Every location is on S3 and the
    client starts in an empty working directory."""
    base = tmp_path_factory.mktemp("connect_run")
    workdir, scratch = base / "work", base / "scratch"
    workdir.mkdir()
    scratch.mkdir()
    conf = settings(f"s3a://{BUCKET}/connect", "local[2]", llm.base_url, str(scratch))
    conf["spark"]["remote"] = "local[2]"
    env = {**s3.env, KEY_ENV: "sk-test", "TMPDIR": str(scratch), "MPLBACKEND": "Agg",
           "PERSONA_SPARK_CONF": write_conf(base / "conf.yaml", conf)}
    with local_connect_server_slot():
        result = run_python(CONNECT_CHILD, env, workdir)
    assert result.returncode == 0, result.stdout[-6000:]
    shown = {}
    for tag in ("NOTEBOOKS", "EXPLORER", "STAGES"):
        (line,) = [out for out in result.stdout.splitlines() if out.startswith(f"{tag} ")]
        shown[tag] = json.loads(line[len(tag) + 1:])
    return workdir, result, shown


def test_demo_on_spark_connect_and_object_storage_leaves_nothing_on_local_disk(s3, connect_run):
    workdir, result, _ = connect_run
    assert "persona-spark run on a Spark Connect server" in result.stdout, "the CLI did not run on a Spark Connect session"
    # the server got its static settings at launch: setting them again on the session is not worth a warning each
    assert "CANNOT_MODIFY_CONFIG" not in result.stdout
    # nor is the Delta connector probe (a read the server logs as an error) worth more than one per session
    assert result.stdout.count("Path does not exist: /persona-spark-delta-probe") <= 1
    keys = s3.keys(BUCKET, "connect/")
    for table in ("raw_transactions", "transactions", "edges", "personas", "user_labels", "item_labels",
                  "gplr_runs", "evaluation", "segments", "recommend_runs", "cold_start_recs", "personas_llm"):
        assert f"connect/tables/{table}/_delta_log/00000000000000000000.json" in keys, table
    for location in ("connect/report/index.html", "connect/report/figures/persona_distribution.png",
                     "connect/recommend/export/meta.json", "connect/recommend/models/lgcn3-seed0/embeddings.npz",
                     "connect/recommend/models/lgcn3-seed0/run.json"):
        assert location in keys, location
    assert any(k.startswith("connect/recommend/eigen_cache/eig-") for k in keys)
    assert any(k.startswith("connect/recommend/export/train/") and k.endswith(".parquet") for k in keys)
    # The journal held the paid answers until each chunk was committed to user_labels, then went away.
    assert not any(k.startswith("connect/labels_journal/") and k.endswith(".jsonl") for k in keys)
    assert list(workdir.iterdir()) == [], "a run location fell back to the local disk"
    assert len(personas_on_s3(s3, "connect")) > 240  # every customer has at least one persona


def test_notebooks_01_and_02_on_spark_connect(connect_run):
    """What tests/e2e/test_notebooks.py checks on the classic session, on Connect and S3."""
    shown = connect_run[2]["NOTEBOOKS"]
    assert {"gplr", "evaluate", "export-tripartite", "train", "cold-start", "segment", "report"} <= set(shown["stages"])
    assert shown["propagated"] > shown["llm"] > 0
    assert shown["micro_f1"] > shown["baseline_micro_f1"], "propagated personas beat the popularity baseline"
    assert shown["estimated"] == shown["budget"] + shown["audit_users"] > shown["budget"] > 0
    assert shown["llm_run_users"] == shown["users"] > 0 and shown["llm_models"] == ["keyword-stand-in"]


def test_notebooks_03_and_04_on_spark_connect_show_what_the_tables_hold(s3, connect_run):
    """The explorer and the recommender notebook on Connect and S3 (serverless notebooks get a Connect
    session), checked against the personas table read back with delta-rs and counted in Python."""
    shown = connect_run[2]["EXPLORER"]
    held: dict[int, set[int]] = {}
    for user, persona, _, _ in personas_on_s3(s3, "connect"):
        held.setdefault(user, set()).add(persona)
    first, second = shown["top_two"]
    groups: dict[str, int] = {}
    for persona_idx in held.values():
        key = ",".join(map(str, sorted(persona_idx & {first, second})))
        groups[key] = groups.get(key, 0) + 1
    assert shown["groups"] == groups
    assert shown["both"] == sum({first, second} <= p for p in held.values()) > 0
    assert shown["members"] == shown["only_first"] == sum(first in p and second not in p for p in held.values())
    assert shown["own"] == sorted(held[shown["user"]]) and shown["stored_reasons"] == shown["confidence"] == len(shown["own"])
    assert shown["lifts"] and min(shown["lifts"]) > 1
    assert shown["shares"] and all(0 < s <= 1 + 1e-9 for s in shown["shares"])
    assert shown["recommender_runs"] >= 1 and shown["recommender_models"] == [shown["model"]]


def test_every_stage_outside_the_demo_on_spark_connect(s3, connect_run, monkeypatch):
    """affinity, label-items/-users, audience, robustness, generate-personas and load-paper-split,
    through the CLI on the Connect server, reading and writing S3."""
    done = connect_run[2]["STAGES"]
    assert done["affinity"]["users_reached"] > done["prototypes"] > 0 and done["affinity"]["rows"] >= done["affinity"]["users_reached"]
    shuffle = done["affinity_shuffle"]
    assert "shuffle" in shuffle["paths"] and shuffle["same_pairs"] and shuffle["max_abs_diff"] < 1e-12, shuffle
    assert done["label-items"]["entities"] == done["label-items"]["ok"] == done["items"] > 0
    assert done["label-users"]["entities"] == done["label-users"]["ok"] == 12
    assert 0 < done["audience"]["audiences"]["either"]["members"] <= 240
    assert {r["representation"] for r in done["robustness"]["robustness"]} == {"personas", "rfm"}
    assert 0 < {r["representation"]: r["users"] for r in done["robustness"]["robustness"]}["rfm"] <= 12
    generated = done["generate-personas"]
    assert generated["personas"] == 3 and generated["file"] == f"s3a://{BUCKET}/connect/generated_personas.yaml"
    for name, value in s3.env.items():  # the S3 server's endpoint and keys, as the child had them
        monkeypatch.setenv(name, value)
    assert load_persona_set(f"s3a://{BUCKET}/connect/generated_personas.yaml").version == generated["version"]
    paper = done["load-paper-split"]
    assert (paper["users"], paper["items"], paper["train_edges"], paper["test_edges"]) == (3, 3, 5, 2)
    assert "reference_personas" in paper["tables_written"]
    keys = s3.keys(BUCKET, "")
    for table in ("connect/tables/affinity", "connect/tables/audience_members", "connect/tables/robustness",
                  "connect/tables/generated_persona_sets", "connect_paper/tables/edges",
                  "connect_paper/tables/reference_personas"):
        assert f"{table}/_delta_log/00000000000000000000.json" in keys, table


def test_cluster_on_object_storage_survives_a_lost_worker_and_matches_connect(s3, llm, connect_run, tmp_path):
    """Two worker JVMs, everything on S3, the Batch API path (its JSONL files written by Spark tasks
    and read by the driver through the same URIs), reliable checkpoints; a worker (and its executor)
    is killed at GPLR's first hop. The personas are those of the synchronous run on Spark Connect:
    the same seed gives the same personas on a classic cluster session and on a Connect session."""
    env = {**s3.env, KEY_ENV: "sk-test"}
    cluster = StandaloneCluster(tmp_path / "cluster", env).start()
    try:
        scratch = tmp_path / "driver_scratch"
        scratch.mkdir()
        root = f"s3a://{BUCKET}/cluster"
        refused = run_stages(["generate"], write_conf(tmp_path / "rs.yaml", settings(
            root, cluster.url, llm.base_url, str(scratch), tables__backend="delta-rs")), env, tmp_path)
        assert refused.returncode != 0 and "delta-rs only works on one machine" in refused.stdout

        killed = threading.Event()

        def kill_at_first_hop(line: str) -> None:
            if not killed.is_set() and "hop 1" in line:
                cluster.kill_worker(0)
                killed.set()

        conf = settings(root, cluster.url, llm.base_url, str(scratch), spark__checkpoint="reliable")
        conf["labeling"]["backend"] = "openai_batch"
        conf["labeling"]["batch"] = {"poll_initial_s": 0.2, "poll_max_s": 1.0}
        result = run_stages(CLUSTER_STAGES, write_conf(tmp_path / "conf.yaml", conf), env, tmp_path,
                            on_line=kill_at_first_hop)
        assert killed.is_set(), "GPLR ended before a worker could be killed"
        assert result.returncode == 0, result.stdout[-6000:]
        assert "lost executor" in result.stdout.lower()
        assert personas_on_s3(s3, "cluster") == personas_on_s3(s3, "connect"), "the cluster gave other personas"
        keys = s3.keys(BUCKET, "cluster/")
        assert "cluster/report/index.html" in keys
        assert any(k.startswith("cluster/checkpoints/") for k in keys)
        assert "cluster/tables/label_batches/_delta_log/00000000000000000000.json" in keys
        left = [k for k in keys if k.startswith("cluster/labels_batches/") and not k.endswith("/")]
        assert left == [], "collected batch files were left behind"
    finally:
        cluster.stop()


def test_journal_on_object_storage_keeps_every_written_answer(s3, monkeypatch):
    """No append on S3: every write is its own object, readable at once by another process's reader."""
    from persona_spark.labeling import journal

    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    folder = journal.chunk_dir(f"s3a://{BUCKET}/journal-test", "user", "run1", 0)
    writer = journal.JournalWriter(folder, partition=3, attempt=0)
    tail = journal.JournalTail(folder)
    writer.write([{"user_idx": 1, "status": "ok", "prompt_tokens": 10}])
    tail.poll()
    writer.write([{"user_idx": 2, "status": "error"}, {"user_idx": 3, "status": "ok", "completion_tokens": 4}])
    writer.close()
    tail.poll()
    files = journal.journal_files(folder)
    assert len(files) == 2 and all(f.startswith(f"s3a://{BUCKET}/journal-test/user/run1-c0/part-00003-0-") for f in files)
    assert [r["user_idx"] for r in journal.read_rows(files)] == [1, 2, 3]
    assert (tail.rows, tail.statuses, tail.prompt_tokens, tail.completion_tokens) == (3, {"ok": 2, "error": 1}, 10, 4)
    journal.remove(journal.chunk_dir(f"s3a://{BUCKET}/journal-test", "user", "run1", 0))
    assert journal.journal_files(folder) == []
