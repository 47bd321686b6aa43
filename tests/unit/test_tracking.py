"""MLflow tracking without MLflow or Spark: where runs go, what a gplr run's numbers are, a missing package."""

from __future__ import annotations

import logging
import sys

import pytest

from persona_spark import tracking
from persona_spark.config import MLflowConf, load_config
from persona_spark.errors import UserError

ROUNDS = [
    {"sampling": "reused", "asked": 4, "ok": 4, "unrepresentable": 0, "errors": 0, "answered": 4,
     "prompt_tokens": 900, "completion_tokens": 90},
    {"sampling": "random", "asked": 6, "ok": 4, "unrepresentable": 1, "errors": 1, "answered": 5,
     "prompt_tokens": 1000, "completion_tokens": 100},
    {"sampling": "du", "asked": 5, "ok": 5, "unrepresentable": 0, "errors": 0, "answered": 5,
     "prompt_tokens": 2000, "completion_tokens": 300},
]
SUMMARY = {"run_id": "r1", "budget": 14, "seconds": 9.5, "rows_rewritten": 40, "per_round": ROUNDS,
           "reach": {"ell": 2, "unlabelled_users": 30, "unreached_users": 3,
                     "unreached_receive": {"item_signal": 1, "prior_only": 2}},
           "persona_rows": {"llm": 20, "propagated": 70}, "phases": {"labeling": 1.5, "ndcg@10": 0.5},
           "assignment_cv_micro_f1": 0.61, "persona_set_version": "v3", "edge_tiles": "loaded"}


@pytest.fixture()
def clean_env(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "DATABRICKS_RUNTIME_VERSION"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_runs_go_to_the_setting_then_the_environment_then_databricks_then_a_sqlite_file(clean_env, tmp_path):
    local = str(tmp_path / "tables")
    assert tracking.tracking_uri(MLflowConf(), local) == f"sqlite:///{tmp_path}/tables/mlflow.db"
    assert tracking.tracking_uri(MLflowConf(), f"file://{tmp_path}/t") == f"sqlite:///{tmp_path}/t/mlflow.db"
    assert tracking.artifact_location(f"sqlite:///{tmp_path}/tables/mlflow.db") == (tmp_path / "tables" / "mlartifacts").as_uri()
    assert tracking.artifact_location("http://127.0.0.1:5000") is None
    assert tracking.tracking_uri(MLflowConf(), "s3a://bucket/tables") is None  # no file store on object storage
    assert tracking.experiment_name(MLflowConf(), "file:///x") == "persona-spark"
    clean_env.setenv("DATABRICKS_RUNTIME_VERSION", "17.3")
    assert tracking.tracking_uri(MLflowConf(), local) == "databricks"
    assert tracking.experiment_name(MLflowConf(), "databricks") is None  # the notebook's own experiment
    clean_env.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri(MLflowConf(), local) == "http://127.0.0.1:5000"
    conf = MLflowConf(tracking_uri="file:///runs", experiment="/Users/me/personas")
    assert tracking.tracking_uri(conf, local) == "file:///runs" and tracking.experiment_name(conf, "x") == "/Users/me/personas"


def test_credentials_in_a_tracking_uri_are_never_shown():
    assert tracking.shown("https://user:s3cret@mlflow.example/path") == "https://mlflow.example/path"
    assert tracking.shown("file:///tmp/mlruns") == "file:///tmp/mlruns"


def test_gplr_metrics_ledger_counts_paid_answers_and_prices_their_tokens():
    cfg = load_config(None, ["labeling.backend=openai", "labeling.openai.prices.prompt=0.5",
                             "labeling.openai.prices.completion=2"])
    metrics = tracking.gplr_metrics(cfg, SUMMARY)
    # the reused round was paid by an earlier run: counted apart, not in the tokens
    assert metrics["ledger.prompt_tokens"] == 3000 and metrics["ledger.completion_tokens"] == 400
    assert metrics["ledger.answered"] == 10 and metrics["ledger.errors"] == 1 and metrics["ledger.reused"] == 4
    assert metrics["ledger.cost_usd"] == pytest.approx(3000 / 1000 * 0.5 + 400 / 1000 * 2)
    assert metrics["budget"] == 14 and metrics["quality.cross_fitted_micro_f1"] == 0.61
    assert metrics["reach.unreached_receive.prior_only"] == 2 and metrics["personas.propagated"] == 70
    assert metrics["phase_seconds.ndcg_at_10"] == 0.5  # a name MLflow accepts
    assert "quality.audit" not in metrics and not any(key.startswith("quality.audit") for key in metrics)
    batch = load_config(None, ["labeling.backend=openai_batch", "labeling.openai.batch_prices.prompt=0.25",
                               "labeling.openai.batch_prices.completion=1"])
    assert tracking.gplr_metrics(batch, SUMMARY)["ledger.cost_usd"] == pytest.approx(3000 / 1000 * 0.25 + 400 / 1000)


def test_an_audit_estimate_is_logged_when_the_run_has_one():
    cfg = load_config(None)
    nested = tracking.gplr_metrics(cfg, {**SUMMARY, "audit": {"micro_f1": 0.58, "users": 200, "method": "sample"}})
    assert nested["quality.audit.micro_f1"] == 0.58 and nested["quality.audit.users"] == 200
    assert tracking.gplr_metrics(cfg, {**SUMMARY, "audit": 0.57})["quality.audit"] == 0.57


def test_the_ledger_counts_the_audit_in_the_spend_and_shows_its_share():
    cfg = load_config(None, ["labeling.backend=openai", "labeling.openai.prices.prompt=0.5",
                             "labeling.openai.prices.completion=2"])
    audit = {"asked": 5, "users": 5, "prompt_tokens": 1000, "completion_tokens": 100, "micro_f1": 0.7,
             "recall_per_persona": {"3": {"recall": 0.5, "lower": 0.1, "upper": 0.9, "carriers": 2}}}
    metrics = tracking.gplr_metrics(cfg, {**SUMMARY, "audit": audit})
    assert metrics["ledger.prompt_tokens"] == 3000 + 1000 and metrics["ledger.completion_tokens"] == 400 + 100
    assert metrics["ledger.audit_cost_usd"] == pytest.approx(1000 / 1000 * 0.5 + 100 / 1000 * 2)
    assert metrics["ledger.audit_share"] == pytest.approx(0.7 / (2.3 + 0.7))
    assert metrics["quality.audit.recall_per_persona.3.upper"] == 0.9
    unpriced = load_config(None, ["labeling.openai.prices.prompt=0", "labeling.openai.prices.completion=0"])
    free = tracking.gplr_metrics(unpriced, {**SUMMARY, "audit": audit})
    assert free["ledger.audit_share"] == pytest.approx(5 / free["ledger.asked"])  # nothing costs: share of users asked


def test_gplr_params_are_the_settings_without_the_endpoint_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-logged")
    cfg = load_config(None, ["labeling.backend=openai", "gplr.rounds=3", "affinity.ell=1"])
    params = tracking.gplr_params(cfg, SUMMARY)
    assert params["gplr.rounds"] == "3" and params["affinity.ell"] == "1" and params["labeling.openai.model"] == "gpt-4o-mini"
    assert params["persona_set_version"] == "v3"
    assert not any("sk-never-logged" in value for value in params.values())


def test_a_missing_mlflow_is_one_warning_line_and_the_stage_goes_on(clean_env, monkeypatch, tmp_path, caplog):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what an environment without the package gives: ImportError
    cfg = load_config(None, [f"tables.root={tmp_path}"])

    def never(_mlflow):
        raise AssertionError("nothing is logged without MLflow")

    with caplog.at_level(logging.WARNING, logger="persona_spark"):
        assert tracking.tracked_run(cfg, "gplr", "r1", never) == {"skipped": "MLflow is not installed"}
    assert [r.getMessage() for r in caplog.records] == [
        "mlflow: not installed, the gplr run is not tracked (pip install 'persona-spark[mlflow]', or set "
        "mlflow.enabled=false)"]
    caplog.clear()
    off = load_config(None, [f"tables.root={tmp_path}", "mlflow.enabled=false"])
    assert tracking.tracked_run(off, "gplr", "r1", never) == {"skipped": "mlflow.enabled is false"}
    assert not caplog.records  # switched off: not a word
    with pytest.raises(UserError, match=r"model_uri needs MLflow: pip install 'persona-spark\[mlflow\]'"):
        with tracking.model_files(cfg, "runs:/abc/model"):
            pass
