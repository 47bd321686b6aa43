"""MLflow tracking of a gplr run: a local file store, the SQLite default, and a local ``mlflow server``.

One tiny gplr run (the 40-customer shop of tests/persona_world.py, recorded labels) is tracked to a ``file:``
store through the stage; the other tests log that run's summary through the same function the stage calls.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from persona_spark import tracking
from persona_spark.config import MLflowConf, load_config
from persona_spark.stages import STAGES, RunContext
from persona_spark.tables.store import TableStore
from tests.persona_world import COMBOS, N_USERS, build_world, write_persona_set, write_world
from tests.production_world import free_port, wait_for_port

mlflow = pytest.importorskip("mlflow")

BUDGET = 12


def _config(tmp_path, store_uri: str, *extra: str):
    return load_config(None, [
        f"root={tmp_path}", f"personas={write_persona_set(tmp_path / 'personas.yaml')}",
        "labeling.backend=recorded", "labeling.recorded.table=recorded_labels",
        f"gplr.budget_users={BUDGET}", "gplr.rounds=2", "gplr.cv_folds=2", "gplr.item_signal=false",
        f"mlflow.tracking_uri={store_uri}", "mlflow.experiment=persona-spark-test", *extra])


@pytest.fixture(scope="module")
def tracked(spark, tmp_path_factory):
    """One gplr run of the tiny shop, tracked to a file store: (config, stage summary)."""
    base = tmp_path_factory.mktemp("tracked")
    cfg = _config(base, (base / "mlruns").as_uri())
    store = TableStore(spark, cfg.tables)
    write_world(store, build_world().frames(spark), names=("users", "items", "edges", "persona_set"))
    answers = [(user, list(COMBOS[user % len(COMBOS)])) for user in range(N_USERS)]
    store.write_table(spark.createDataFrame(answers, "user_idx int, persona_idx array<int>"), "recorded_labels")
    return cfg, STAGES["gplr"](RunContext(cfg, store)), store


def test_gplr_run_is_an_mlflow_run_with_settings_ledger_quality_reach_and_phases(tracked):
    cfg, summary, store = tracked
    logged = summary["mlflow"]
    assert logged["tracking_uri"] == cfg.mlflow.tracking_uri and "skipped" not in logged
    run = mlflow.MlflowClient(cfg.mlflow.tracking_uri).get_run(logged["run_id"])
    assert mlflow.MlflowClient(cfg.mlflow.tracking_uri).get_experiment(run.info.experiment_id).name == "persona-spark-test"
    # the run id of its Delta writes: the gplr_runs row and the personas rows' run
    assert run.data.tags["persona_spark.run_id"] == summary["run_id"] == store.read_table("gplr_runs").first().run_id
    params, metrics = run.data.params, run.data.metrics
    assert params["gplr.budget_users"] == str(BUDGET) and params["gplr.rounds"] == "2"
    assert params["affinity.ell"] == str(cfg.affinity.ell) and params["labeling.backend"] == "recorded"
    assert metrics["budget"] == BUDGET == summary["budget"]
    # the cost ledger: every round's answers, which a recorded labeler pays no tokens for
    assert metrics["ledger.answered"] == sum(r["answered"] for r in summary["per_round"]) == BUDGET
    assert metrics["ledger.asked"] == store.read_table("gplr_prototypes").count()
    assert metrics["ledger.prompt_tokens"] == metrics["ledger.cost_usd"] == 0
    # the audit: its default asks for more than the budget, which caps it; its share of the users asked
    assert metrics["ledger.audit_asked"] == summary["audit"]["asked"] == BUDGET < N_USERS - BUDGET
    assert metrics["ledger.audit_share"] == pytest.approx(BUDGET / (2 * BUDGET))
    assert metrics["quality.audit.micro_f1"] == pytest.approx(summary["audit"]["micro_f1"]) and summary["audit"]["micro_f1"] > 0
    assert metrics["quality.cross_fitted_micro_f1"] == pytest.approx(summary["assignment_cv_micro_f1"])
    assert 0 < metrics["quality.cross_fitted_micro_f1"] <= 1
    reach = summary["reach"]
    assert metrics["reach.unlabelled_users"] == reach["unlabelled_users"] == N_USERS - BUDGET
    assert metrics["reach.unreached_users"] == reach["unreached_users"]
    assert {f"phase_seconds.{name}" for name in summary["phases"]} <= set(metrics)
    assert metrics["phase_seconds.writes"] == summary["phases"]["writes"]
    propagated = store.read_table("personas").filter(F.col("source") == "propagated").count()
    assert metrics["personas.propagated"] == propagated
    artifact = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="gplr_summary.json",
                                                   tracking_uri=cfg.mlflow.tracking_uri)
    assert json.loads(Path(artifact).read_text())["run_id"] == summary["run_id"]


def test_without_settings_runs_go_to_a_sqlite_store_under_the_tables_root(tracked, tmp_path, monkeypatch):
    cfg, summary, _ = tracked
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing lands in the working directory
    (tmp_path / "tables").mkdir()
    local = cfg.model_copy(update={"tables": cfg.tables.model_copy(update={"root": str(tmp_path / "tables")}),
                                   "mlflow": MLflowConf()})
    logged = tracking.log_gplr_run(local, summary)
    assert logged["tracking_uri"] == f"sqlite:///{tmp_path}/tables/mlflow.db"
    client = mlflow.MlflowClient(logged["tracking_uri"])
    run = client.get_run(logged["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "persona-spark"
    assert run.data.tags["persona_spark.run_id"] == summary["run_id"]
    assert run.info.artifact_uri.startswith((tmp_path / "tables" / "mlartifacts").as_uri())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tables"]
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == ["mlartifacts", "mlflow.db"]


def test_a_failing_tracking_store_is_one_warning_line_not_a_failed_stage(tracked, caplog):
    cfg, summary, _ = tracked

    def broken(_mlflow):
        raise OSError("disk full")

    with caplog.at_level(logging.WARNING, logger="persona_spark"):
        result = tracking.tracked_run(cfg, "gplr", "broken", broken)
    assert result == {"skipped": "OSError: disk full"}
    assert [r.getMessage() for r in caplog.records] == [
        f"mlflow: the gplr run was not logged to {cfg.mlflow.tracking_uri}: OSError: disk full"]


def test_gplr_run_logs_to_a_local_mlflow_server(tracked, tmp_path):
    """``mlflow server`` on 127.0.0.1, started and stopped here: artifacts served by the server, runs in its
    file store (a SQLite store takes seconds longer to start: it migrates the schema first)."""
    cfg, summary, _ = tracked
    port, before = free_port(), os.environ.get("MLFLOW_TRACKING_URI")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ALLOW_FILE_STORE": "true"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", (tmp_path / "store").as_uri(), "--artifacts-destination",
         (tmp_path / "artifacts").as_uri()],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"))
    try:
        wait_for_port(port, timeout_s=120)
        uri = f"http://127.0.0.1:{port}"
        served = cfg.model_copy(update={"mlflow": cfg.mlflow.model_copy(update={"tracking_uri": uri})})
        deadline = time.monotonic() + 60  # the port opens before the app has loaded
        while "run_id" not in (logged := tracking.log_gplr_run(served, summary)) and time.monotonic() < deadline:
            time.sleep(1)
        assert logged["tracking_uri"] == uri, (logged, (tmp_path / "server.log").read_text()[-2000:])
        # MLflow mirrors its tracking URI into the environment: put back, so the next run finds its own store
        assert os.environ.get("MLFLOW_TRACKING_URI") == before
        run = mlflow.MlflowClient(uri).get_run(logged["run_id"])
        assert run.data.tags["persona_spark.run_id"] == summary["run_id"]
        assert run.data.metrics["budget"] == BUDGET and run.data.params["gplr.budget_users"] == str(BUDGET)
        artifact = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="gplr_summary.json",
                                                       dst_path=str(tmp_path / "download"), tracking_uri=uri)
        assert json.loads(Path(artifact).read_text()) == json.loads(json.dumps(summary, default=str))
    finally:
        server.terminate()
        server.wait(timeout=30)
