"""The public API (``import persona_spark as ps``): the README's few lines run, the labeler objects drive the
labeling code the stages use, and a run's context is built once."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pyspark.sql import functions as F

import persona_spark as ps
from persona_spark.labeling import labeler_from_config
from persona_spark.stages import context as context_module
from persona_spark.testing.openai_server import (
    LoopbackChatServer,
    entity_ids,
    keyword_responder,
    server_error,
)
from tests.conftest import REPO_ROOT

FAST = {"rounds": 2, "cv_folds": 2}  # a small shop: two rounds, two cross-fitting folds


@pytest.fixture(scope="module")
def shop(spark):
    orders, personas = ps.demo_shop(spark, users=150, items=60, seed=3)
    return orders.localCheckpoint(), personas


def test_the_package_exports_a_short_api_and_imports_no_spark():
    assert len(ps.__all__) <= 20 and ps.__version__
    for name in ps.__all__:
        assert getattr(ps, name) is not None, name
    probe = "import sys, persona_spark; print(sorted(m for m in sys.modules if m.startswith(('pyspark', 'persona_spark.'))))"
    done = subprocess.run([sys.executable, "-c", probe],
                          capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, check=True)
    assert json.loads(done.stdout.replace("'", '"')) == ["persona_spark.runtime", "persona_spark.runtime.worker"]


def test_a_purchase_graph_and_a_user_budget(spark, shop):
    orders, personas = shop
    graph = ps.PurchaseGraph.from_orders(orders, min_user_degree=2)
    assert graph.users.filter(F.col("degree") < 2).count() == 0
    result = ps.GPLR(budget=12, **FAST).fit(graph, personas)
    assert result.summary["budget"] == 12
    assert result.personas.select("user_idx").distinct().count() == graph.users.count()


def test_a_purchase_graph_as_a_graphframe(graphframes):
    """Three customers, two products: degrees, a motif (products bought together) and PageRank of the products."""
    spark = graphframes
    users = spark.createDataFrame([(0, "c0", 2), (1, "c1", 2), (2, "c2", 1)], "user_idx int, customer_id string, degree int")
    items = spark.createDataFrame([(0, "p0", "apple", 3), (1, "p1", "pear", 2)],
                                  "item_idx int, item_id string, item_name string, degree int")
    edges = spark.createDataFrame([(u, i, 1, 1, None, None, "train") for u, i in ((0, 0), (0, 1), (1, 0), (1, 1), (2, 0))],
                                  "user_idx int, item_idx int, n_purchases int, quantity long, first_ts timestamp, "
                                  "last_ts timestamp, split string")
    g = ps.PurchaseGraph(users, items, edges).graphframe()
    kinds = {r.key: (r.kind, r.name) for r in g.vertices.collect()}
    assert kinds == {"c0": ("user", None), "c1": ("user", None), "c2": ("user", None),
                     "p0": ("item", "apple"), "p1": ("item", "pear")}
    sold = {r.key: r.inDegree for r in g.inDegrees.join(g.vertices, "id").collect()}
    assert sold == {"p0": 3, "p1": 2} == {r.key: r.degree for r in g.vertices.filter("kind = 'item'").collect()}
    together = g.find("(u)-[]->(a); (u)-[]->(b)").filter("a.id < b.id").select("u.key", "a.name", "b.name").collect()
    assert sorted(map(tuple, together)) == [("c0", "apple", "pear"), ("c1", "apple", "pear")]
    ranks = {r.name: r.pagerank for r in g.pageRank(resetProbability=0.15, maxIter=5).vertices.filter("kind = 'item'")
             .collect()}
    assert ranks["apple"] > ranks["pear"] > 0


def _serve(responder):
    return LoopbackChatServer(responder, model="stand-in").start()


def test_the_openai_labeler_asks_the_endpoint_and_keeps_failed_calls_as_errors(spark, shop, monkeypatch):
    orders, personas = shop
    names, descriptions = list(personas.names), list(personas.descriptions)
    keyword = keyword_responder(names, descriptions)
    failing = {str(i) for i in range(0, 400, 5)}  # every fifth user id: the endpoint keeps failing

    def responder(body, attempt):
        ids = entity_ids(body)
        return server_error() if set(ids) & failing else keyword(body, attempt)

    monkeypatch.setenv("STAND_IN_KEY", "stand-in")
    server = _serve(responder)
    try:
        labeler = ps.OpenAILabeler(base_url=server.base_url, model="stand-in", api_key_env="STAND_IN_KEY",
                                   max_attempts=1, partitions=1)
        result = ps.GPLR(labeler=labeler, budget=0.2, item_signal=False, **FAST).fit(orders, personas)
    finally:
        server.stop()
    asked = result.prototypes.toPandas()
    assert server.answered_ids and len(asked) >= round(0.2 * 150)
    errors = asked[asked["status"] == "error"]
    assert len(errors) > 0 and {str(u) for u in errors["user_idx"]} <= failing
    llm = result.personas.filter(F.col("source") == "llm").select("user_idx").distinct().toPandas()
    assert not set(llm["user_idx"]) & set(errors["user_idx"]), "a failed call labels nobody"


def test_the_recorded_labeler_replays_its_file(spark, shop, tmp_path):
    orders, personas = shop
    recorded = {str(u): [u % len(personas)] for u in range(400)}
    path = tmp_path / "users.json"
    path.write_text(json.dumps(recorded))
    result = ps.GPLR(labeler=ps.RecordedLabeler(path=str(path)), budget=0.2, item_signal=False,
                     **FAST).fit(orders, personas)
    llm = result.personas.filter(F.col("source") == "llm").select("user_idx", "persona_idx").collect()
    assert llm and all(recorded[str(r.user_idx)] == [r.persona_idx] for r in llm)


@pytest.mark.parametrize(("overrides", "labeler"), [
    (["labeling.backend=embedding", "labeling.embedding.temperature=0.5"], ps.EmbeddingLabeler(temperature=0.5)),
    (["labeling.backend=openai", "labeling.openai.model=m", "labeling.openai.max_attempts=2"],
     ps.OpenAILabeler(model="m", max_attempts=2)),
    (["labeling.backend=openai_batch", "labeling.openai.model=m"], ps.OpenAIBatchLabeler(model="m")),
    (["labeling.backend=recorded", "labeling.recorded.path=x.json"], ps.RecordedLabeler(path="x.json")),
])
def test_a_labeler_object_is_the_one_the_stages_build_from_the_config(overrides, labeler):
    """The stages build their labeler from the config (``labeler_from_config``); the API takes the object."""
    configured = labeler_from_config(ps.load_config(None, overrides).labeling)
    assert type(configured) is type(labeler) and configured.conf == labeler.conf


def test_a_run_context_is_built_once(spark, tmp_path, monkeypatch):
    calls = {"config": 0, "personas": 0}
    load_config, load_persona_set = context_module.load_config, context_module.load_persona_set

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(context_module, "load_config", counted("config", load_config))
    monkeypatch.setattr(context_module, "load_persona_set", counted("personas", load_persona_set))
    ctx = ps.RunContext.open(None, [f"root={tmp_path}", "demo.users=40", "demo.items=30",
                                    "demo.partitions=1"])
    assert ctx.spark is spark  # the active session is reused
    first = ctx.run("generate")
    ctx.run("ingest")
    second = ctx.run("generate")
    assert calls == {"config": 1, "personas": 1}
    assert first["raw_lines"] == second["raw_lines"] > 0
    assert ctx.table("transactions").count() > 0 and ctx.table("personas") is None
    with pytest.raises(ps.UserError, match="no stage 'gplrr'"):
        ctx.run("gplrr")
