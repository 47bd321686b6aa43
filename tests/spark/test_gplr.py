"""GPLR: sampling, budget accounting, assignment, evaluation and incremental refresh."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F

from persona_spark import assignment, evaluate, gplr, sampling
from persona_spark.cli import main
from persona_spark.config import load_config
from persona_spark.errors import QualityAlert
from persona_spark.stages import STAGES, RunContext
from persona_spark.tables.store import TableStore

ROOT = Path(__file__).resolve().parents[2]


def test_du_score_matches_numpy(spark):
    q_hat = np.array([0.5, 0.3, 0.2])
    rows = [(0, [0.2, 0.1, 0.1]), (1, [0.0, 0.0, 0.9])]
    affinity = spark.createDataFrame(rows, "user_idx int, scores array<double>")
    candidates = spark.createDataFrame([(0,), (1,), (2,)], "user_idx int")
    got = {r.user_idx: r.du_score for r in sampling.du_scores(candidates, affinity, q_hat).collect()}
    eps = sampling.SMOOTHING
    for user, scores in [(0, rows[0][1]), (1, rows[1][1]), (2, [1.0, 1.0, 1.0])]:
        q = (np.array(scores) + eps) / (np.sum(scores) + 3 * eps)
        expected = np.sum(q_hat * np.log(q_hat / q)) - np.sum(q * np.log(q))
        assert got[user] == pytest.approx(expected, rel=1e-9)
    assert got[1] > got[0]  # concentrated on a rarely labelled persona: more diverse


def test_random_pick_is_reproducible_from_seed(spark):
    users = spark.range(200).select(F.col("id").cast("int").alias("user_idx"))
    pick = lambda seed, df: sorted(r.user_idx for r in sampling.pick_random(df, 10, seed).collect())  # noqa: E731
    assert pick(3, users) == pick(3, users.repartition(5))
    assert pick(3, users) != pick(4, users)


def test_reach_counts_users_without_any_psi_and_what_they_get(spark):
    rows = [(0, [0.5], [0.2], [1.0]), (1, None, [0.1], None), (2, None, None, [1.0]), (3, None, None, None),
            (4, None, None, None)]
    signals = spark.createDataFrame(rows, "user_idx int, psi array<double>, psi2 array<double>, items array<double>")
    learned = assignment.AssignmentModel("learned", uses_item_signal=True)
    assert gplr.reach_counts(signals, learned, ell=1) == {
        "ell": max(gplr.LEARNED_DEPTHS), "unlabelled_users": 5, "unreached_users": 3,
        "unreached_receive": {"item_signal": 1, "prior_only": 2}}
    topk = gplr.reach_counts(signals.drop("psi2", "items"), assignment.AssignmentModel("topk"), ell=3)
    assert topk == {"ell": 3, "unlabelled_users": 5, "unreached_users": 4, "unreached_receive": {"no_persona": 4}}


def test_evaluation_counts_by_hand(spark):
    schema = "user_idx int, persona_idx int"
    predicted = spark.createDataFrame([(1, 0), (1, 1), (2, 0), (3, 2)], schema)
    reference = spark.createDataFrame([(1, 0), (2, 0), (2, 1), (3, 1), (9, 0)], schema)
    eval_users = spark.createDataFrame([(1,), (2,), (3,)], "user_idx int")
    summary, per = evaluate.evaluate_sets(predicted, reference, eval_users)
    # tp = 2 ((1,0), (2,0)); predicted 4; actual 4 (user 9 is not evaluated)
    assert summary["micro_f1"] == pytest.approx(0.5) and summary["precision"] == pytest.approx(0.5)
    assert per.set_index("persona_idx").loc[0, "recall"] == pytest.approx(1.0)
    assert summary["macro_f1"] == pytest.approx((1.0 + 0.0 + 0.0) / 3)  # personas 0, 1, 2


def test_llm_rows_rank_personas_in_the_order_the_answer_gave_them(spark):
    labels = spark.createDataFrame(
        [(1, "ok", [5, 2, 7]), (2, "ok", [3, 3, 1]), (3, "error", [4]), (4, "ok", [])],
        "user_idx int, status string, persona_idx array<int>")
    rows = gplr.llm_persona_rows(gplr.ok_prototypes(labels)).collect()
    ranks = {(r.user_idx, r.persona_idx): r.rank for r in rows}
    assert ranks == {(1, 5): 1, (1, 2): 2, (1, 7): 3, (2, 3): 1, (2, 1): 2}
    assert {(r.source, r.score, r.probability) for r in rows} == {("llm", 1.0, 1.0)}


def _demo_config(tmp_path, *extra):
    return load_config(None, [
        f"tables.root={tmp_path / 'tables'}", f"labeling.journal_dir={tmp_path / 'journal'}",
        "demo.users=120", "demo.items=90", "demo.mean_orders_per_user=4", "demo.partitions=2",
        "demo.dirty_share=0", "ingest.cancellation_prefix=C",
        "labeling.backend=recorded", "labeling.recorded.table=recorded_labels",
        "gplr.budget_users=30", "gplr.rounds=2", "gplr.cv_folds=2", "gplr.item_signal=false", "gplr.audit_users=0",
        *extra,
    ])


def _record_planted_labels(store, drop_users=(), bad_users=()):
    """The 'LLM' answers with the planted personas; some users unknown (unrepresentable) or invalid (error)."""
    users = store.read_table("users")
    planted = store.read_table("planted_personas").join(users, "customer_id")
    answers = planted.groupBy("user_idx").agg(F.sort_array(F.collect_list("persona_idx")).alias("persona_idx"))
    answers = answers.filter(~F.col("user_idx").isin(list(drop_users)))
    answers = answers.withColumn(
        "persona_idx", F.when(F.col("user_idx").isin(list(bad_users)), F.array(F.lit(99))).otherwise(F.col("persona_idx")))
    store.write_table(answers, "recorded_labels")


@pytest.fixture(scope="module")
def shop(spark, tmp_path_factory) -> Path:
    """generate -> ingest -> build-graph once per module; each test gets its own copy of the tables."""
    base = tmp_path_factory.mktemp("shop")
    cfg = _demo_config(base)
    store = TableStore(spark, cfg.tables)
    for stage in ("generate", "ingest", "build-graph"):
        STAGES[stage](RunContext(cfg, store))
    return Path(cfg.tables.root)


def _prepare(cfg, spark, shop: Path) -> TableStore:
    shutil.copytree(shop, cfg.tables.root)  # a Delta table's log names its files relative to the table
    return TableStore(spark, cfg.tables)


def test_gplr_end_to_end_budget_accounting_quality_and_audit(spark, shop, tmp_path, capsys):
    cfg = _demo_config(tmp_path, "gplr.audit_users=20")
    store = _prepare(cfg, spark, shop)
    _record_planted_labels(store, drop_users=range(0, 120, 4), bad_users=range(1, 120, 4))
    started = time.perf_counter()
    summary = STAGES["gplr"](RunContext(cfg, store))
    seconds = time.perf_counter() - started
    assert summary["edge_tiles"] == "loaded"  # build-graph's tiles, cut from the same edges version
    phases = summary["phases"]  # disjoint: none counted inside another ("graph": loading the tiles)
    assert {"requests", "sampling", "labeling", "graph", "affinity", "cross_fitting", "model_fit", "assignment", "diff",
            "writes", "refresh"} <= set(phases) and min(phases.values()) >= 0 and sum(phases.values()) <= seconds
    rounds = summary["per_round"]
    answered = sum(r["answered"] for r in rounds)
    assert answered == 30  # errors are not paid answers: their budget moved to the next round
    assert sum(r["unrepresentable"] for r in rounds) > 0 and sum(r["errors"] for r in rounds) > 0
    assert rounds[0]["sampling"] == "random" and rounds[1]["sampling"] == "du"
    personas = store.read_table("personas")
    asked = store.read_table("gplr_prototypes").filter("role = 'prototype'")
    llm_users = {r.user_idx for r in personas.filter("source = 'llm'").select("user_idx").distinct().collect()}
    ok_users = {r.user_idx for r in asked.filter("status = 'ok'").collect()}
    assert llm_users == ok_users and len(ok_users) == sum(r["ok"] for r in rounds)
    propagated = personas.filter("source = 'propagated'")
    assert propagated.join(asked, "user_idx").count() == 0  # nobody asked gets a propagated row
    assert propagated.select("user_idx").distinct().count() == 120 - asked.count()
    per_user = propagated.groupBy("user_idx").count().agg(F.min("count"), F.max("count")).first()
    assert per_user[0] >= 1 and per_user[1] <= cfg.gplr.max_personas_per_user
    result = STAGES["evaluate"](RunContext(cfg, store))
    assert result["users"] == 120 - asked.count()
    assert result["micro_f1"] > result["baseline_micro_f1"]  # planted personas are recoverable
    run = store.read_table("gplr_runs").first()
    model = json.loads(run.details)["model"]
    assert model["mode"] == "learned"
    assert model["fitted_on"]["prototypes_used"] == model["fitted_on"]["prototypes_available"] == len(ok_users)
    assert not model["fitted_on"]["capped"]
    reach = summary["reach"]
    assert json.loads(run.details)["reach"] == reach and reach["ell"] == max(gplr.LEARNED_DEPTHS)
    assert reach["unlabelled_users"] == 120 - asked.count()
    assert sum(reach["unreached_receive"].values()) == reach["unreached_users"]
    assert store.read_table("evaluation").first().run_ts == run.run_ts  # the latest evaluation is found by run_ts
    _check_audit(store, summary, asked, run)
    _check_a_later_run(store, cfg, tmp_path, summary, capsys)


def _check_audit(store, summary, prototypes, run):
    """The audit: 20 users the run did not pick, labelled, keeping their predicted personas, scored against the
    answers exactly as ``evaluate`` scores them; stored in gplr_runs and persona_audit."""
    audit_asked = store.read_table("gplr_prototypes").filter("role = 'audit'")
    assert audit_asked.count() == 20 and audit_asked.join(prototypes, "user_idx").count() == 0
    personas = store.read_table("personas")
    assert personas.join(audit_asked, "user_idx").filter("source != 'propagated'").count() == 0
    scored = audit_asked.filter("status != 'error'").select("user_idx")
    answers = store.read_table("recorded_labels").join(audit_asked.filter("status = 'ok'"), "user_idx", "left_semi")
    expected, _ = evaluate.evaluate_sets(personas, answers.select("user_idx", F.explode("persona_idx").alias("persona_idx")),
                                         scored)
    found = summary["audit"]
    assert (found["asked"], found["users"]) == (20, scored.count()) and found["errors"] == 20 - scored.count() > 0
    for name in ("micro_f1", "precision", "recall", "macro_f1"):
        assert found[name] == pytest.approx(expected[name], abs=1e-4)
        assert found[f"{name}_lower"] <= found[name] <= found[f"{name}_upper"]
    assert found["guard"] == "off" and run.audit_guard == "off" and run.audit_users == found["users"]
    assert run.audit_micro_f1 == pytest.approx(found["micro_f1"], abs=1e-4)
    rows = store.read_table("persona_audit").filter(F.col("run_id") == run.run_id)
    overall = {r.metric: r for r in rows.filter("persona_idx IS NULL").collect()}
    assert set(overall) == {"micro_f1", "precision", "recall", "macro_f1"} and overall["micro_f1"].users == found["users"]
    assert rows.filter("metric = 'recall' AND persona_idx IS NOT NULL").count() == len(found["recall_per_persona"]) > 0


def _check_a_later_run(store, cfg, tmp_path, first, capsys):
    """A second run (from the CLI) reuses the audited users as prototypes at no new cost, draws a fresh audit,
    and a guard no estimate reaches ends it with status 3 and one line, its tables written."""
    first_audit = {r.user_idx for r in store.read_table("gplr_prototypes").filter("role = 'audit' AND status = 'ok'")
                   .collect()}
    # a guard no upper bound reaches: unrepresentable answers among the audited are wrong predictions
    overrides = [f"tables.root={cfg.tables.root}", f"labeling.journal_dir={tmp_path / 'journal'}",
                 "labeling.backend=recorded", "labeling.recorded.table=recorded_labels", "gplr.budget_users=30",
                 "gplr.rounds=2", "gplr.cv_folds=2", "gplr.item_signal=false", "gplr.audit_users=20",
                 "gplr.min_audit_micro_f1=1.0", "mlflow.enabled=false"]
    capsys.readouterr()
    status = main(["gplr", *[a for o in overrides for a in ("--set", o)]])
    captured = capsys.readouterr()
    assert status == QualityAlert.STATUS == 3
    line = captured.err.strip().splitlines()[-1]
    assert "Traceback" not in captured.err and line.startswith("persona-spark gplr: quality alert: audit micro-F1")
    assert "gplr.min_audit_micro_f1 = 1" in line
    second = json.loads(captured.out)
    reused = second["per_round"][0]
    first_ok = sum(r["ok"] for r in first["per_round"])
    assert reused["sampling"] == "reused" and reused["answered"] == first_ok + len(first_audit)  # no new cost
    asked = store.read_table("gplr_prototypes")
    prototypes = {r.user_idx for r in asked.filter("role = 'prototype'").collect()}
    fresh = {r.user_idx for r in asked.filter("role = 'audit'").collect()}
    assert first_audit <= prototypes and len(fresh) == 20 and not fresh & prototypes
    runs = store.read_table("gplr_runs").orderBy("run_ts").collect()  # both runs' tables are written
    assert [r.audit_guard for r in runs] == ["off", "failed"] and runs[1].run_id == second["run_id"] != first["run_id"]
    assert store.read_table("persona_audit").select("run_id").distinct().count() == 2


def test_capped_assignment_fit_still_assigns_everyone_and_says_what_it_was_fitted_on(spark, shop, tmp_path):
    cfg = _demo_config(tmp_path, "gplr.max_train_users=12", "gplr.min_train_per_persona=2")
    store = _prepare(cfg, spark, shop)
    _record_planted_labels(store)
    summary = STAGES["gplr"](RunContext(cfg, store))
    fitted_on = summary["assignment_fitted_on"]
    assert fitted_on["capped"] and fitted_on["prototypes_used"] == 12 and fitted_on["prototypes_available"] == 30
    assert json.loads(store.read_table("gplr_runs").first().details)["model"]["fitted_on"] == fitted_on
    assert fitted_on["drawn_weight"] > 1  # the uniform part stands for the prototypes left out
    asked = store.read_table("gplr_prototypes").filter("role = 'prototype'")
    propagated = store.read_table("personas").filter("source = 'propagated'")
    assert propagated.select("user_idx").distinct().count() == 120 - asked.count()
    assert summary["assignment_cv_micro_f1"] > 0


def test_paper_mode_gplr_runs_algorithm_1_as_configured(spark, shop, tmp_path):
    """conf/paper.yaml's GPLR and affinity sections (ℓ̂ = 1, β = 0.5, top-5 of Ψ, DU rounds); its
    T = 10 is checked in test_wiring, three rounds keep this test short."""
    paper = load_config(ROOT / "conf" / "paper.yaml")
    sections = {"gplr": paper.gplr.model_dump(exclude={"budget_fraction", "budget_users"}), "affinity": paper.affinity.model_dump()}
    cfg = _demo_config(tmp_path, *(f"{s}.{k}={v}" for s, values in sections.items() for k, v in values.items()
                                   if v is not None), "gplr.rounds=3", "gplr.audit_users=0")
    store = _prepare(cfg, spark, shop)
    _record_planted_labels(store)
    summary = STAGES["gplr"](RunContext(cfg, store))
    assert [r["sampling"] for r in summary["per_round"]] == ["random", "du", "du"]
    assert [r["answered"] for r in summary["per_round"]] == [10, 10, 10]  # τ/T users a round
    propagated = store.read_table("personas").filter("source = 'propagated'")
    per_user = propagated.groupBy("user_idx").agg(F.max("rank").alias("r"), F.count(F.lit(1)).alias("n")).collect()
    assert {r.r for r in per_user} <= set(range(1, 6)) and max(r.n for r in per_user) == 5
    run = store.read_table("gplr_runs").first()
    assert (run.ell, run.beta) == (1, 0.5) and json.loads(run.details)["model"]["mode"] == "topk"
    reach = summary["reach"]
    assert reach["ell"] == 1 and reach["unreached_receive"] == {"no_persona": reach["unreached_users"]}
    # the top-k rule: every reached unlabelled user gets personas, the unreached get none
    assert len(per_user) == reach["unlabelled_users"] - reach["unreached_users"]
    assert propagated.filter("probability IS NOT NULL").count() == 0  # Ψ of the top-k rule is no probability


def test_dry_run_prices_the_budget_and_calls_nothing(spark, shop, tmp_path):
    cfg = _demo_config(tmp_path, "labeling.backend=openai", "labeling.openai.base_url=http://127.0.0.1:9/v1",
                       "labeling.dry_run=true", "gplr.item_signal=true")
    store = _prepare(cfg, spark, shop)
    estimate = STAGES["gplr"](RunContext(cfg, store))
    assert estimate["dry_run"] and estimate["budget"] == 30 and estimate["audit_users"] == 0
    assert estimate["users"]["entities"] == 30 and estimate["items"]["entities"] == store.read_table("items").count()
    assert estimate["prompt_tokens"] == estimate["users"]["prompt_tokens"] + estimate["items"]["prompt_tokens"] > 0
    assert estimate["cost_expected_usd"] > 0
    assert not store.exists("personas") and not store.exists("user_labels")  # nothing was paid for or written


def _skewed_prototypes(spark, n_users: int = 2000):
    """Persona 0 on everyone, 1 on 30 users, 2 on 5, 3 on every other user (of 2000): ``user_idx, persona_idx``."""
    rows = [(u, 0) for u in range(n_users)] + [(u, 1) for u in range(7, 7 + 30 * 61, 61)]
    rows += [(u, 2) for u in range(3, 3 + 5 * 397, 397)] + [(u, 3) for u in range(0, n_users, 2)]
    return spark.createDataFrame([r for r in rows if r[0] < n_users], "user_idx int, persona_idx int")


def _drawn(sample) -> dict[int, float]:
    return {r.user_idx: r.weight for r in sample.collect()}


def test_training_sample_keeps_the_cap_the_floor_and_the_seed(spark):
    prototypes = _skewed_prototypes(spark)
    sample, fitted_on = gplr.training_sample(prototypes, cap=200, floor=20, seed=3)
    drawn = _drawn(sample)
    assert len(drawn) == 200 and fitted_on["prototypes_used"] == 200 and fitted_on["capped"]
    assert fitted_on["prototypes_available"] == 2000
    carriers = {p: {r.user_idx for r in prototypes.filter(F.col("persona_idx") == p).collect()} for p in (1, 2)}
    assert len(carriers[1] & drawn.keys()) >= 20  # a uniform 10 % draw would keep about 3 of the 30
    assert carriers[2] <= drawn.keys()  # fewer than the floor: all of them
    # the floor users count once, the uniform rest for everyone else: the weights add up to all prototypes
    assert sum(drawn.values()) == pytest.approx(2000)
    assert sorted(set(drawn.values())) == [1.0, pytest.approx((2000 - fitted_on["floor_prototypes"])
                                                             / (200 - fitted_on["floor_prototypes"]))]
    again, _ = gplr.training_sample(prototypes.repartition(7), cap=200, floor=20, seed=3)
    assert _drawn(again) == drawn  # the seed decides, not the partitioning
    other, _ = gplr.training_sample(prototypes, cap=200, floor=20, seed=4)
    assert _drawn(other).keys() != drawn.keys()


def test_training_sample_under_the_cap_takes_everyone_and_a_tight_cap_halves_the_floor(spark):
    prototypes = _skewed_prototypes(spark, 300)
    everyone, fitted_on = gplr.training_sample(prototypes, cap=500, floor=20, seed=0)
    assert _drawn(everyone) == {u: 1.0 for u in range(300)} and not fitted_on["capped"]
    tight, fitted_on = gplr.training_sample(prototypes, cap=8, floor=20, seed=0)
    drawn = _drawn(tight)
    # the floor (46 candidates) gets half the cap, the other half stands for everyone else
    assert len(drawn) == 8 and fitted_on["floor_prototypes"] == 4
    assert sorted(drawn.values()) == [1.0] * 4 + [pytest.approx((300 - 4) / 4)] * 4
    floor_users = [u for u, w in drawn.items() if w == 1.0]
    kept = prototypes.filter(F.col("user_idx").isin(floor_users)).select("persona_idx").distinct().collect()
    assert {r.persona_idx for r in kept} == {0, 1, 2, 3}  # each persona's first carrier before anyone's second
