"""Cold start through personas: planted signal recovered, popularity fallback, name errors, batch stages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from persona_spark.config import Config  # noqa: E402
from persona_spark.recommend.coldstart import PERSONAS, ColdStartModel  # noqa: E402
from tests.recommend_world import FAST, ITEMS_PER_PERSONA, USERS_PER_PERSONA, planted_world, purchase_world  # noqa: E402


def test_spark_purchase_profile_and_audience_equal_the_in_memory_ones(spark):
    from persona_spark.recommend.coldstart_batch import audiences_for_items, persona_purchase_profile

    data = purchase_world()
    train = spark.createDataFrame([(int(u), int(i)) for u, i in data.train], "user_idx int, item_idx int")
    tags = spark.createDataFrame([(int(i), int(p), 1.0) for i, p in data.item_personas],
                                 "item_idx int, persona_idx int, weight double")
    profile = persona_purchase_profile(train, tags, 2).toPandas().sort_values("user_idx")
    assert list(profile.activity) == [10, 2, 20]
    np.testing.assert_allclose(np.stack(profile.persona_share), [[0.5, 0.2], [1.0, 0.0], [0.0, 0.0]])
    # item 7 tagged with persona 0, item 8 with persona 1; k=2 of 3 customers
    recs = audiences_for_items([(7, [0]), (8, [1])], persona_purchase_profile(train, tags, 2), 2, 2, 0.5).toPandas()
    model = ColdStartModel.from_training(data, np.zeros((3, 2)), np.zeros((4, 2)), np.ones((2, 2)))
    for item, persona in ((7, 0), (8, 1)):
        rows = recs[recs.subject_idx == item].sort_values("rank")
        expected = model.audience_for_item([persona], k=2)
        assert list(rows.target_idx) == list(expected.indices)
        np.testing.assert_allclose(rows.score, expected.scores)
        assert set(rows.method) == {PERSONAS}


@pytest.fixture(scope="module")
def staged(spark, tmp_path_factory):
    """export-tripartite, train (tracked to an MLflow file store) and cold-start once, on tables of the planted
    world plus one new customer and one new item: (config, store, folder, world, train summary, cold-start summary)."""
    from persona_spark.config import TablesConf
    from persona_spark.stages import STAGES, RunContext
    from persona_spark.tables.store import TableStore

    tmp_path = tmp_path_factory.mktemp("cold_start")
    store = TableStore(spark, TablesConf(root=str(tmp_path / "tables")))
    world = planted_world()
    new_user, new_item = world.n_users, world.n_items  # no purchases at all
    edges = [(int(u), int(i), "train") for u, i in world.train] + [(int(u), int(i), "test") for u, i in world.test]
    store.write_table(spark.createDataFrame(edges, "user_idx int, item_idx int, split string"), "edges")
    store.write_table(spark.createDataFrame([(u, f"c{u}") for u in range(new_user + 1)],
                                            "user_idx int, customer_id string"), "users")
    store.write_table(spark.createDataFrame([(i, f"s{i}", f"item {i}") for i in range(new_item + 1)],
                                            "item_idx int, item_id string, item_name string"), "items")
    store.write_table(spark.createDataFrame([(p, name) for p, name in enumerate(world.persona_names)],
                                            "persona_idx int, name string"), "persona_set")
    store.write_table(spark.createDataFrame([(int(u), int(p), 1.0, 1, "llm") for u, p in world.user_personas],
                                            "user_idx int, persona_idx int, score double, rank int, source string"),
                      "personas")
    tags = [(int(i), [int(p)], "ok") for i, p in world.item_personas] + [(new_item, [2], "ok")]
    store.write_table(spark.createDataFrame(tags, "item_idx int, persona_idx array<int>, status string"), "item_labels")
    store.write_table(spark.createDataFrame([(new_user, 1)], "user_idx int, persona_idx int"), "declared_personas")
    recommend = {"export": {"dir": str(tmp_path / "export")},
                 "train": {**FAST, "seeds": [0], "model_dir": str(tmp_path / "models"),
                           "eigen_cache_dir": str(tmp_path / "eig")},
                 "cold_start": {"list_size": 10}}
    cfg = Config(recommend=recommend, tables={"root": str(tmp_path / "tables")},
                 mlflow={"tracking_uri": (tmp_path / "mlruns").as_uri(), "experiment": "cold-start-test"})
    exported = STAGES["export-tripartite"](RunContext(cfg, store))
    assert exported["rows"]["train"] == len(world.train) and exported["rows"]["item_personas"] == new_item + 1
    trained = STAGES["train"](RunContext(cfg, store))
    return cfg, store, tmp_path, world, trained, STAGES["cold-start"](RunContext(cfg, store))


def test_export_train_cold_start_stages_write_cold_start_recs(staged):
    """The three stages on tables of the planted world plus one new customer and one new item."""
    from persona_spark.recommend.coldstart import EMBEDDINGS_FILE

    cfg, store, tmp_path, world, trained, summary = staged
    assert trained["runs"][0]["model"] == "lgcn3" and trained["runs"][0]["ndcg@10"] > 0.25
    runs = store.read_table("recommend_runs").collect()
    saved = json.loads((tmp_path / "models" / "lgcn3-seed0" / "run.json").read_text())
    assert len(runs) == 1 and saved["f1@10"] > 0 and runs[0]["f1_at_10"] == pytest.approx(saved["f1@10"])
    assert runs[0]["metrics"]["ndcg@10"] == pytest.approx(saved["ndcg@10"])
    assert (tmp_path / "models" / "lgcn3-seed0" / EMBEDDINGS_FILE).exists()

    assert summary["subjects"] == {"persona": 4, "new_customer": 1, "new_item": 1}
    recs = store.read_table("cold_start_recs").toPandas()
    customer = recs[recs.subject == "new_customer"].sort_values("rank")
    assert list(customer["rank"]) == list(range(1, 11)) and set(customer.method) == {PERSONAS}
    assert (customer.target_idx // ITEMS_PER_PERSONA == 1).sum() >= 9  # declared persona 1's items
    audience = recs[recs.subject == "new_item"].sort_values("rank")
    assert len(audience) == 10 and audience.target_idx.is_unique
    assert (audience.target_idx // USERS_PER_PERSONA == 2).sum() >= 9  # tagged persona 2's customers
    assert np.all(np.diff(audience.score.to_numpy()) <= 0)
    # the Spark audience equals the in-memory one
    model = ColdStartModel.from_run(tmp_path / "models" / "lgcn3-seed0")
    expected = model.audience_for_item([2], k=10)
    assert list(audience.target_idx) == list(expected.indices)


def test_train_logs_the_model_to_mlflow_and_cold_start_loads_it_by_run_id(staged):
    """The torch flavour of the trained network and the files cold start reads, in one MLflow run per seed."""
    mlflow = pytest.importorskip("mlflow")
    from mlflow import pytorch as torch_flavour

    from persona_spark import tracking
    from persona_spark.errors import UserError
    from persona_spark.recommend.coldstart import EMBEDDINGS_FILE
    from persona_spark.recommend.train import final_embeddings
    from persona_spark.stages import STAGES, RunContext

    cfg, store, tmp_path, _, trained, _ = staged
    logged = trained["runs"][0]["mlflow"]
    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri)
    run = client.get_run(logged["run_id"])
    saved = json.loads((tmp_path / "models" / "lgcn3-seed0" / "run.json").read_text())
    assert run.data.params["train.model"] == "lgcn3" and run.data.params["train.seed"] == "0"
    assert run.data.tags["persona_spark.run_id"] == trained["run_id"]  # the recommend_runs row
    assert run.data.metrics["ndcg_at_10"] == pytest.approx(saved["ndcg@10"])
    assert run.data.metrics["val_ndcg_at_10"] == pytest.approx(saved["val_ndcg@10"]) and saved["val_ndcg@10"] > 0
    history = sorted(client.get_metric_history(run.info.run_id, "train_loss"), key=lambda m: m.step)
    assert [m.value for m in history] == pytest.approx(saved["losses"])
    # the logged network propagates to the item embeddings the model folder holds
    stored = (tmp_path / "models" / "lgcn3-seed0" / EMBEDDINGS_FILE).read_bytes()
    with tracking.model_files(cfg, logged["model_uri"]) as files:  # runs:/<run_id>/model, downloaded
        _, items, _ = final_embeddings(torch_flavour.load_model(str(Path(files).parent)))
        assert (Path(files) / EMBEDDINGS_FILE).read_bytes() == stored
    with np.load(tmp_path / "models" / "lgcn3-seed0" / EMBEDDINGS_FILE) as arrays:
        np.testing.assert_allclose(items.numpy(), arrays["items"], rtol=1e-5, atol=1e-6)
    with tracking.model_files(cfg, logged["logged_model"]) as by_model_id:  # models:/<id> names the same files
        assert (Path(by_model_id) / EMBEDDINGS_FILE).read_bytes() == stored
    with pytest.raises(UserError, match="recommend.cold_start.model_uri '0+'"):
        with tracking.model_files(cfg, "0" * 32):
            pass

    from_folder = store.read_table("cold_start_recs").toPandas()
    cold_start = cfg.recommend.cold_start.model_copy(update={"model_uri": logged["run_id"]})
    by_run = cfg.model_copy(update={"recommend": cfg.recommend.model_copy(update={"cold_start": cold_start})})
    summary = STAGES["cold-start"](RunContext(by_run, store))
    assert summary["model"] == logged["run_id"]
    columns = ["subject", "subject_idx", "rank", "target_idx"]
    from_mlflow = store.read_table("cold_start_recs").toPandas()
    assert len(from_folder) == 10 * 6 and from_mlflow.sort_values(columns).reset_index(drop=True)[columns].equals(
        from_folder.sort_values(columns).reset_index(drop=True)[columns])
