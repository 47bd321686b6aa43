"""The notebooks run headlessly on the embedded default: each code cell exec'd in order in one namespace.

Notebook 01 runs the pipeline once on a tiny generated shop (module fixture); 02-04 read its tables, as a
user running them one after the other would. On Spark Connect all four run on S3 in one child process in
tests/e2e/test_production_path.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import SMALL_DATA_SPARK
from tests.notebook_world import execute

pytestmark = pytest.mark.slow(minutes=6)  # end to end: run first, skipped by `-m "not slow"`


def write_conf(folder: Path) -> Path:
    """A tiny generated shop with every output under ``folder``: the notebooks' embedded default, shrunk."""
    conf = {
        "spark": {"master": "local[2]", "shuffle_partitions": 2, "default_parallelism": 2,
                  "checkpoint_dir": str(folder / "checkpoints"), "extra": SMALL_DATA_SPARK},
        "tables": {"root": str(folder / "tables")},
        "demo": {"users": 200, "items": 80, "seed": 3},
        "ingest": {"cancellation_prefix": "C"},
        "gplr": {"budget_fraction": 0.1, "rounds": 2, "cv_folds": 2},
        "labeling": {"journal_dir": str(folder / "journal"), "embedding": {"partitions": 1},
                     "openai": {"partitions": 1}},
        "segment": {"ks": [3, 5]},
        "report": {"path": str(folder / "report" / "index.html")},
        "recommend": {"export": {"dir": str(folder / "rec" / "export")},
                      "train": {"model_dir": str(folder / "rec" / "models"),
                                "eigen_cache_dir": str(folder / "rec" / "eigen"), "max_epochs": 2, "eigen_k": 16,
                                "dim": 16, "progress": False, "cutoffs": [5, 10, 20]}},
    }
    path = folder / "conf.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


@pytest.fixture(scope="module")
def quick_start(spark, tmp_path_factory):
    """Notebook 01 run once on the tiny shop; the other notebooks read the tables it wrote."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PERSONA_SPARK_CONF", str(write_conf(tmp_path_factory.mktemp("notebooks"))))
        env.setenv("MPLBACKEND", "Agg")
        env.delenv("OPENAI_BASE_URL", raising=False)
        yield execute("01_quick_start.py")


def test_01_quick_start_runs_the_pipeline(quick_start):
    ns = quick_start
    assert {"gplr", "evaluate", "segment", "report"} <= set(ns["summaries"])
    assert Path(ns["cfg"].report.path).exists()
    counts = ns["persona_counts"]
    assert len(counts) >= 2 and counts["propagated"].sum() > counts["llm"].sum() > 0
    quality = ns["quality"].iloc[0]
    assert quality["micro_f1"] > quality["baseline_micro_f1"], "propagated personas beat the popularity baseline"
    assert len(ns["segments"]) == min(ns["cfg"].segment.ks)
    customers = ns["store"].read_table("transactions").select("customer_id").distinct().count()
    assert ns["quick"].personas.select("customer_id").distinct().count() == customers  # the API cell: everyone


def test_02_gplr_with_the_stand_in_endpoint_and_cost_estimate(quick_start):
    ns = execute("02_gplr_with_llm_endpoint.py")
    assert ns["stand_in"] is not None, "no endpoint configured: the local stand-in answers"
    estimate, budget = ns["estimate"], ns["budget"]
    assert estimate["entities"] == budget + ns["plan"]["audit_users"] > budget > 0 and estimate["prompt_tokens"] > 0
    assert 0 < estimate["cost_expected_usd"] <= estimate["cost_max_usd"]
    labels = ns["llm_store"].read_table("user_labels").toPandas()
    assert set(labels["model"]) == {"keyword-stand-in"} and len(labels) >= budget
    assert ns["spent"]["entities"] == len(labels) and ns["spent"]["cost_usd"] > 0
    run = ns["llm_store"].read_table("gplr_runs").first()  # the ledger adds up: run = its rounds = the cache
    rounds = sum(r["prompt_tokens"] for r in ns["gplr_summary"]["per_round"] if r["sampling"] != "reused")
    assert run.prompt_tokens == rounds + run.audit_prompt_tokens and run.audit_prompt_tokens > 0
    assert run.prompt_tokens == int(labels["prompt_tokens"].sum()) > 0
    store = ns["store"]
    llm_personas = ns["llm_store"].read_table("personas")
    assert llm_personas.select("user_idx").distinct().count() == store.read_table("users").count()
    assert store.read_table("user_labels").filter("model = 'keyword-stand-in'").count() == 0, "the run's own cache is untouched"


@pytest.fixture(scope="module")
def explored(quick_start, spark):
    """Notebook 03 after a second gplr run (other prototypes: drift to show), once for the module."""
    from persona_spark.stages import STAGES, RunContext
    from persona_spark.tables.store import TableStore

    cfg = quick_start["cfg"]
    next_month = cfg.model_copy(update={"gplr": cfg.gplr.model_copy(update={"seed": cfg.gplr.seed + 1})})
    STAGES["gplr"](RunContext(next_month, TableStore(spark, cfg.tables)))
    return execute("03_explore_personas.py")


def test_03_explore_personas(explored):
    ns = explored
    groups = ns["groups"]
    both_group = groups[[len(idx) == 2 for idx in groups["persona_idx"]]]
    assert int(both_group["users"].sum()) == ns["both"].count()
    assert len(ns["persona_items"]) > 0 and (ns["persona_items"]["lift"] > 1).all()
    assert len(ns["own"]) > 0
    shares = ns["why"].neighbours.toPandas().groupby("persona_idx")["share"].sum()
    assert (shares <= 1.0 + 1e-9).all() and (shares > 0).all()
    assert ns["exported"]["members"] == ns["only_first"].count()
    assert len(ns["stored_reasons"]) == len(ns["confidence"]) == len(ns["own"])
    assert ns["drift"] is not None and len(ns["moves"]) > 0


def test_04_recommender_results(quick_start):
    pytest.importorskip("torch")
    ns = execute("04_recommender_results.py")
    assert len(ns["all_runs"]) >= 1 and set(ns["stats"]["model"]) == {ns["cfg"].recommend.train.model}
    assert set(ns["stats"]["k"]) == {5, 10, 20}


def test_04_without_a_training_run_says_so(spark, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PERSONA_SPARK_CONF", str(write_conf(tmp_path)))
    ns = execute("04_recommender_results.py")
    assert ns["runs"] is None and ns["cold_start"] is None
    assert "No training run yet" in capsys.readouterr().out
