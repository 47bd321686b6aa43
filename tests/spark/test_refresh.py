"""The monthly refresh: persona history (SCD 2), drift between runs, catalog, reasons, audiences.

A hand-made world of four customers and three runs a month apart gives exact expectations for
intervals, transitions, flows and audience diffs; one test runs the real pipeline on two ingestion
batches a month apart and checks that the tables agree with the personas each run wrote.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import yaml
from pyspark.sql import functions as F

from persona_spark import audience as audience_lib
from persona_spark import explore, refresh
from persona_spark.cli import main as cli_main
from persona_spark.config import RefreshConf, load_config
from persona_spark.errors import UserError
from persona_spark.graph import PurchaseGraph
from persona_spark.personas import load_persona_set
from persona_spark.refresh import RunPersonas
from persona_spark.runtime.runs import changed_rows
from persona_spark.stages import STAGES, RunContext, record_refresh
from persona_spark.tables.store import TableStore
from tests.spark.test_gplr import shop  # noqa: F401 (module fixture: the prepared demo shop)

PET, BARGAIN, CHEF = 0, 1, 2
RUNS = [("run-1", datetime(2026, 1, 1, 3, tzinfo=timezone.utc)),
        ("run-2", datetime(2026, 2, 1, 3, tzinfo=timezone.utc)),
        ("run-3", datetime(2026, 3, 1, 3, tzinfo=timezone.utc))]
# (user_idx, persona_idx, source) per run: u1 loses Pet Lover in run 3, u2 drops Pet Lover then adds
# Home Chef, u3's Home Chef changes source (propagated -> LLM label), u4 arrives and swaps Pet Lover
# for Bargain Hunter.
SETS = [
    {(1, PET, "llm"), (2, PET, "propagated"), (2, BARGAIN, "propagated"), (3, CHEF, "propagated")},
    {(1, PET, "llm"), (2, BARGAIN, "propagated"), (3, CHEF, "llm"), (4, PET, "propagated")},
    {(2, BARGAIN, "propagated"), (2, CHEF, "propagated"), (3, CHEF, "llm"), (4, BARGAIN, "propagated")},
]


def _persona_file(folder):
    path = folder / "personas.yaml"
    path.write_text(yaml.safe_dump([{"name": "Pet Lover", "description": "pets"},
                                    {"name": "Bargain Hunter", "description": "deals"},
                                    {"name": "Home Chef", "description": "cooks"}]))
    return path


AUDIENCE = {"name": "pets_or_cooks", "query": "Pet Lover | Home Chef & !Bargain Hunter"}


class World:
    """users, items, edges and a persona set by hand; ``apply(k)`` records run k as the gplr stage does."""

    def __init__(self, spark, folder):
        self.folder = folder
        self.cfg = load_config(None, [f"tables.root={folder / 'tables'}", f"personas={_persona_file(folder)}",
                                      "refresh.catalog_products=2", "refresh.reasons=false"])
        self.store = store = TableStore(spark, self.cfg.tables)
        store.write_table(spark.createDataFrame([(u, f"c{u}", 2) for u in range(1, 5)],
                                                "user_idx int, customer_id string, degree int"), "users")
        store.write_table(spark.createDataFrame([(0, "i0", "kibble", 3), (1, "i1", "coupon", 2), (2, "i2", "pan", 2)],
                                                "item_idx int, item_id string, item_name string, degree int"), "items")
        edges = [(1, 0), (2, 0), (4, 0), (2, 1), (4, 1), (3, 2), (2, 2)]
        store.write_table(spark.createDataFrame([(u, i, 1, 1, None, None, "train") for u, i in edges],
                                                "user_idx int, item_idx int, n_purchases int, quantity long, "
                                                "first_ts timestamp, last_ts timestamp, split string"), "edges")
        store.write_table(load_persona_set(self.cfg.personas).to_dataframe(spark), "persona_set")

    def apply(self, k):
        spark, store = self.store.spark, self.store
        run_id, run_ts = RUNS[k]
        known = store.read_table("gplr_runs").filter(F.col("run_id") == run_id).count() if store.exists("gplr_runs") else 0
        if not known:
            store.write_table(spark.createDataFrame([(run_id, run_ts)], "run_id string, run_ts timestamp"), "gplr_runs", "append")
        rows = [(u, p, 1.0 if s == "llm" else 0.5, 1, s, 1.0 if s == "llm" else 0.5) for u, p, s in sorted(SETS[k])]
        frame = spark.createDataFrame(rows, "user_idx int, persona_idx int, score double, rank int, source string, "
                                            "probability double")
        frame = refresh.with_percentile(frame).localCheckpoint()
        summary = record_refresh(RunContext(self.cfg, store), RunPersonas(RUNS[k], frame))
        store.write_table(frame, "personas")  # after: a refused run leaves the tables as they were
        return summary

    def audience(self, **settings):
        audience = self.cfg.audience.model_copy(update={**AUDIENCE, "export_path": str(self.folder / "exports" / "{audience}" / "{run_id}"), **settings})
        return STAGES["audience"](RunContext(self.cfg.model_copy(update={"audience": audience}), self.store))


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    """The three runs played once, the audience exported after runs 2 and 3 (what the bundle does)."""
    played = World(spark, tmp_path_factory.mktemp("refresh"))
    played.summaries = [played.apply(0), played.apply(1)]
    played.exports = [played.audience()]
    played.summaries.append(played.apply(2))
    played.exports.append(played.audience())
    return played


def _intervals(store):
    return {(r.user_idx, r.persona_idx, r.source, r.valid_from.astimezone(timezone.utc),
             r.valid_to.astimezone(timezone.utc) if r.valid_to else None, r.run_id)
            for r in store.read_table("persona_history").collect()}


def test_history_keeps_exact_intervals_and_answers_as_of(world):
    store = world.store
    t1, t2, t3 = (ts for _, ts in RUNS)
    assert _intervals(store) == {
        (1, PET, "llm", t1, t3, "run-1"),
        (2, PET, "propagated", t1, t2, "run-1"),
        (2, BARGAIN, "propagated", t1, None, "run-1"),
        (3, CHEF, "propagated", t1, t2, "run-1"),
        (3, CHEF, "llm", t2, None, "run-2"),
        (4, PET, "propagated", t2, t3, "run-2"),
        (2, CHEF, "propagated", t3, None, "run-3"),
        (4, BARGAIN, "propagated", t3, None, "run-3"),
    }
    history = store.read_table("persona_history")
    for k, (_, ts) in enumerate(RUNS):
        for at in (ts, ts + timedelta(days=10)):
            held = {(r.user_idx, r.persona_idx, r.source) for r in refresh.personas_as_of(history, at).collect()}
            assert held == SETS[k], f"as of {at}"
    assert refresh.personas_as_of(history, t1 - timedelta(seconds=1)).count() == 0
    named = history.filter("user_idx = 4 AND valid_to IS NULL").first()
    assert (named.customer_id, named.persona) == ("c4", "Bargain Hunter")


def test_rerunning_a_run_changes_nothing_and_older_runs_are_refused(world):
    store = world.store
    tables = ["persona_history", "persona_transitions", "persona_flows", "persona_catalog",
              "audience_members", "audience_changes"]
    versions = {t: store.version(t) for t in tables}
    assert world.apply(2)["history_rows_merged"] == 0
    again = world.audience()["audiences"]["pets_or_cooks"]
    assert {t: store.version(t) for t in tables} == versions  # nothing committed
    assert (again["removed"], again["previous_run_id"]) == (2, "run-2")
    with pytest.raises(ValueError, match="already holds a run after"):
        world.apply(1)


def test_transitions_and_flows_between_consecutive_runs(world):
    store = world.store
    first, _, second = world.summaries
    assert "previous_run_id" not in first  # nothing to compare the first run with
    assert (second["previous_run_id"], second["customers_changed"], second["share_changed"]) == ("run-2", 3, 0.75)
    rows = {(r.from_run_id, r.to_run_id, r.persona_idx): (r.customers_before, r.customers_after, r.kept, r.gained, r.lost,
                                                          r.customers, r.customers_changed, r.share_changed)
            for r in store.read_table("persona_transitions").collect()}
    assert rows == {
        ("run-1", "run-2", PET): (2, 2, 1, 1, 1, 4, 2, 0.5),
        ("run-1", "run-2", BARGAIN): (1, 1, 1, 0, 0, 4, 2, 0.5),
        ("run-1", "run-2", CHEF): (1, 1, 1, 0, 0, 4, 2, 0.5),  # a source change is no persona change
        ("run-2", "run-3", PET): (2, 0, 0, 0, 2, 4, 3, 0.75),
        ("run-2", "run-3", BARGAIN): (1, 2, 1, 1, 0, 4, 3, 0.75),
        ("run-2", "run-3", CHEF): (1, 2, 1, 1, 0, 4, 3, 0.75),
    }
    flows = {(r.to_run_id, r.from_persona_idx, r.to_persona_idx): r.customers for r in store.read_table("persona_flows").collect()}
    none = refresh.NOTHING
    assert flows == {
        ("run-2", PET, PET): 1, ("run-2", BARGAIN, BARGAIN): 1, ("run-2", CHEF, CHEF): 1,
        ("run-2", PET, none): 1, ("run-2", none, PET): 1,
        ("run-3", BARGAIN, BARGAIN): 1, ("run-3", CHEF, CHEF): 1,
        ("run-3", PET, none): 1, ("run-3", none, CHEF): 1, ("run-3", PET, BARGAIN): 1,
    }


def test_catalog_per_persona_and_run(world):
    cfg, store = world.cfg, world.store
    catalog = {r.persona_idx: r for r in store.read_table("persona_catalog").filter("run_id = 'run-2'").collect()}
    pet = catalog[PET]
    assert (pet.run_id, pet.name, pet.description, pet.customers, pet.llm_share, pet.propagated_share) == (
        "run-2", "Pet Lover", "pets", 2, 0.5, 0.5)
    assert pet.persona_set_version == load_persona_set(cfg.personas).version
    assert pet.top_products == ["kibble", "coupon"]  # u1, u4 both bought kibble; u4 the coupon
    assert catalog[CHEF].top_products == ["pan"] and catalog[CHEF].llm_share == 1.0
    # kibble: 2 of 2 Pet Lovers vs 3 of 4 customers (lift 4/3); coupon: 1/2 vs 2/4 (lift 1, not distinctive)
    assert pet.distinctive_products == ["kibble"]
    assert store.read_table("persona_catalog").filter("run_id = 'run-3' AND persona_idx = 0").first().customers == 0


def test_catalog_counts_match_a_join_of_every_purchase_with_every_persona(spark):
    """On a random graph (customers with up to five personas, repeated train/test pairs) the catalog's top
    and distinctive products are the ones counted by joining each purchase with each of its buyer's
    personas: top by brute force in Python, distinctive by ``distinctive_items`` counting the buyers itself."""
    import random
    from collections import Counter

    from persona_spark.graph import distinctive_items

    rng = random.Random(11)
    n_users, n_items, n_personas, top_n = 80, 25, 6, 4
    pairs = {(u, min(n_items - 1, int(rng.paretovariate(1.2)) - 1)) for u in range(n_users) for _ in range(rng.randint(1, 9))}
    edge_rows = [(u, i, "train") for u, i in pairs] + [(u, i, "test") for u, i in list(pairs)[:20]]  # repeats too
    held = {u: rng.sample(range(n_personas), rng.randint(1, 5)) for u in range(n_users) if u % 7}  # some have none
    personas = spark.createDataFrame([(u, p, 0.5, 1, "llm" if u % 5 == 0 else "propagated") for u, ps in held.items() for p in ps],
                                     "user_idx int, persona_idx int, score double, rank int, source string")
    edges = spark.createDataFrame(edge_rows, "user_idx int, item_idx int, split string")
    items = spark.createDataFrame([(i, f"i{i}", f"item {i}") for i in range(n_items)], "item_idx int, item_id string, item_name string")
    persona_set = spark.createDataFrame([(p, f"P{p}", "d", "v1") for p in range(n_personas + 1)],  # one persona nobody has
                                        "persona_idx int, name string, description string, version string")
    got = {r.persona_idx: r for r in refresh.catalog(personas, persona_set, edges, items, "r", top_n).collect()}

    buyers = Counter((p, i) for u, i in pairs for p in held.get(u, []))
    assert set(got) == set(range(n_personas + 1)) and got[n_personas].top_products == []
    members = personas.select("user_idx", "persona_idx")
    distinctive = {}
    for r in distinctive_items(members, edges, items, top_n=top_n, group_cols=["persona_idx"]).orderBy("item_rank").collect():
        distinctive.setdefault(r.persona_idx, []).append(r.item_name)
    for p in range(n_personas):
        ranked = sorted((i for q, i in buyers if q == p), key=lambda i: (-buyers[(p, i)], i))[:top_n]
        assert got[p].top_products == [f"item {i}" for i in ranked], p
        assert got[p].distinctive_products == distinctive.get(p, []), p
        assert got[p].customers == sum(p in ps for ps in held.values())
    assert sum(len(v) for v in distinctive.values()) > n_personas  # the comparison is not vacuous


def test_percentile_ranks_propagated_rows_within_their_persona(spark):
    rows = [(1, 0, 0.2, "propagated", 0.2), (2, 0, 0.9, "propagated", 0.9), (3, 0, 0.5, "propagated", 0.5),
            (4, 0, 1.0, "llm", 1.0), (5, 1, 0.3, "propagated", 0.3)]
    frame = spark.createDataFrame(rows, "user_idx int, persona_idx int, score double, source string, probability double")
    got = {r.user_idx: r.percentile for r in refresh.with_percentile(frame).collect()}
    assert got == {1: 0.0, 3: 0.5, 2: 1.0, 4: 1.0, 5: 0.0}


# ---- audiences ------------------------------------------------------------------------------------

def test_changed_rows_are_what_differs_plus_tombstones(spark):
    schema = "user_idx int, persona_idx int, score double"
    old = spark.createDataFrame([(1, PET, 0.9), (2, BARGAIN, 0.5), (3, CHEF, 0.7)], schema)
    new = spark.createDataFrame([(1, PET, 0.9), (2, BARGAIN, 0.6), (4, CHEF, 0.2)], schema)
    got = {tuple(r) for r in changed_rows(old, new, ["user_idx", "persona_idx"]).collect()}
    assert got == {(2, BARGAIN, 0.6, False), (4, CHEF, 0.2, False), (3, CHEF, 0.7, True)}
    assert {tuple(r) for r in changed_rows(None, new, ["user_idx", "persona_idx"]).collect()} == {
        (1, PET, 0.9, False), (2, BARGAIN, 0.6, False), (4, CHEF, 0.2, False)}


def test_query_language_matches_set_logic(spark, tmp_path):
    persona_set = load_persona_set(_persona_file(tmp_path))
    sets = {1: [PET], 2: [BARGAIN], 3: [PET, BARGAIN], 4: [CHEF], 5: [PET, CHEF], 6: []}
    frame = spark.createDataFrame([(u, p) for u, p in sets.items()], "user_idx int, persona_idx array<int>")
    cases = {
        "Pet Lover & !Bargain Hunter": lambda s: PET in s and BARGAIN not in s,
        "pet lover | home  chef & !Pet Lover": lambda s: PET in s or (CHEF in s and PET not in s),  # & binds tighter
        "(Pet Lover | Home Chef) & !\"Bargain Hunter\"": lambda s: (PET in s or CHEF in s) and BARGAIN not in s,
        "!(Pet Lover | Bargain Hunter | Home Chef)": lambda s: not s,
        "!!Home Chef": lambda s: CHEF in s,
    }
    for query, rule in cases.items():
        got = {r.user_idx for r in audience_lib.members(frame, audience_lib.parse(query, persona_set)).collect()}
        assert got == {u for u, s in sets.items() if rule(set(s))}, query


def test_audience_members_changes_and_export(world):
    store = world.store

    def members(run_id):
        return {r.customer_id for r in store.read_table("audience_members").filter(
            (F.col("audience") == "pets_or_cooks") & (F.col("run_id") == run_id)).collect()}

    def changes(run_id):
        return {(r.customer_id, r.change, r.previous_run_id) for r in store.read_table("audience_changes").filter(
            (F.col("audience") == "pets_or_cooks") & (F.col("run_id") == run_id)).collect()}

    assert members("run-2") == {"c1", "c3", "c4"}
    assert changes("run-2") == {("c1", "added", None), ("c3", "added", None), ("c4", "added", None)}
    first = world.exports[0]["audiences"]["pets_or_cooks"]
    assert (first["members"], first["added"], first["removed"]) == (3, 3, 0)
    assert members("run-3") == {"c3"}  # c2 has Home Chef now, but also Bargain Hunter
    assert changes("run-3") == {("c1", "removed", "run-2"), ("c4", "removed", "run-2")}
    exported = store.spark.read.option("header", True).csv(str(world.folder / "exports" / "pets_or_cooks" / "run-3"))
    assert [r.customer_id for r in exported.collect()] == ["c3"]


def test_defined_audiences_run_when_none_is_given(world):
    defined = [{"name": "chefs", "query": "Home Chef"}, {"name": "deal_hunters", "query": "Bargain Hunter & !Pet Lover"}]
    cfg = world.cfg.model_copy(update={"audience": type(world.cfg.audience).model_validate({"defined": defined})})
    done = STAGES["audience"](RunContext(cfg, world.store))["audiences"]
    assert {name: a["members"] for name, a in done.items()} == {"chefs": 2, "deal_hunters": 2}


def test_cli_rejects_a_bad_query_with_status_2(world, capsys):
    cfg = world.cfg
    argv = ["audience", "--set", f"tables.root={cfg.tables.root}", "--set", f"personas={cfg.personas}",
            "--set", "audience.name=pets", "--set", "audience.query=Pet Lover & !Bargian Hunter"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "persona-spark audience: error: unknown persona 'Bargian Hunter' at position 13" in err
    assert "Traceback" not in err
    assert cli_main(["audience", "--set", f"tables.root={cfg.tables.root}", "--set", f"personas={cfg.personas}"]) == 2
    assert "set audience.name and audience.query, or list audience.defined" in capsys.readouterr().err


# ---- the real pipeline: two ingestion batches a month apart ------------------------------------------

def _snapshot(store):
    return {(r.user_idx, r.persona_idx, r.source) for r in store.read_table("personas").collect()}


def _expected_transitions(before, after):
    held = lambda rows: {(u, p) for u, p, _ in rows}  # noqa: E731
    before, after = held(before), held(after)
    users = {u for u, _ in before | after}
    sets = lambda rows, u: {p for v, p in rows if v == u}  # noqa: E731
    changed = sum(sets(before, u) != sets(after, u) for u in users)
    personas = {p for _, p in before | after}
    return {p: (len({u for u, q in before & after if q == p}), len({u for u, q in after - before if q == p}),
                len({u for u, q in before - after if q == p}), len(users), changed) for p in personas}


def test_two_ingestion_batches_a_month_apart(spark, shop, tmp_path):
    """The second run reuses every prototype whose history did not change (no answer paid twice),
    rewrites exactly the persona rows that differ, and history, drift and audiences follow the two
    runs' personas."""
    from tests.spark.test_gplr import _demo_config, _prepare, _record_planted_labels

    cfg = _demo_config(tmp_path, "gplr.sampling=random", "gplr.rounds=1", "refresh.trace_items=1000",
                       "refresh.trace_buyers=1000", "audience.name=pets_or_gardeners",
                       "audience.query=Pet Lover | Gardener & !Bargain Hunter", "report.path=" + str(tmp_path / "report" / "index.html"))
    store = _prepare(cfg, spark, shop)
    _record_planted_labels(store)
    first = STAGES["gplr"](RunContext(cfg, store))
    first_rows = _snapshot(store)
    assert first["rows_rewritten"] == store.read_table("personas").count()
    labels_before = store.read_table("user_labels").count()
    STAGES["audience"](RunContext(cfg, store))

    # A month later: six customers buy again, three of them what others bought (their graph changes).
    t = store.read_table("transactions")
    ids = [r.customer_id for r in t.select("customer_id").distinct().orderBy("customer_id").limit(6).collect()]
    movers = dict(zip(ids[3:], ids[:3]))
    batch = (t.filter(F.col("customer_id").isin(ids)).replace(movers, subset=["customer_id"])
             .withColumn("order_id", F.concat(F.lit("m2-"), "order_id"))
             .withColumn("ts", F.col("ts") + F.expr("INTERVAL 30 DAYS")))
    batch_path = str(tmp_path / "batch2.parquet")
    batch.write.parquet(batch_path)
    STAGES["ingest"](RunContext(cfg.model_copy(update={"ingest": cfg.ingest.model_copy(
        update={"source": batch_path, "format": "parquet", "mode": "append"})}), store))
    STAGES["build-graph"](RunContext(cfg, store))
    _record_planted_labels(store)
    personas_version = store.version("personas")
    second = STAGES["gplr"](RunContext(cfg, store))
    second_rows = _snapshot(store)
    STAGES["audience"](RunContext(cfg, store))

    assert second["per_round"][0]["sampling"] == "reused"
    reused = second["per_round"][0]["ok"]
    assert reused >= 30 - len(ids)  # every prototype whose history did not change is reused
    assert store.read_table("user_labels").count() - labels_before == 30 - reused  # only replacements were asked
    assert store.version("personas") == personas_version + 1  # one MERGE
    before, after = store.read_table("personas", version=personas_version), store.read_table("personas")
    keys = ["user_idx", "persona_idx"]
    differing = after.exceptAll(before).count() + before.join(after.select(*keys), keys, "left_anti").count()
    # what Delta says the MERGE touched: exactly the differing rows, nothing rewritten as it was
    from delta.tables import DeltaTable

    metrics = DeltaTable.forPath(spark, store.location("personas")).history(1).first()["operationMetrics"]
    touched = sum(int(metrics[k]) for k in ("numTargetRowsInserted", "numTargetRowsUpdated", "numTargetRowsDeleted"))
    assert touched == second["rows_rewritten"] == differing
    # a reused prototype's LLM rows are the same rows in both versions
    kept = after.filter("source = 'llm'").intersect(before).select("user_idx").distinct().count()
    assert kept >= reused

    runs = {r.run_id: r.run_ts for r in store.read_table("gplr_runs").collect()}
    assert set(runs) == {first["run_id"], second["run_id"]} and runs[second["run_id"]] > runs[first["run_id"]]
    assert second["refresh"]["previous_run_id"] == first["run_id"]
    history = store.read_table("persona_history")
    for run, rows in ((first, first_rows), (second, second_rows)):
        as_of = refresh.personas_as_of(history, runs[run["run_id"]].astimezone(timezone.utc))
        assert {(r.user_idx, r.persona_idx, r.source) for r in as_of.collect()} == rows
    assert history.count() == len(first_rows | second_rows)  # one interval per (customer, persona, source) here

    got = {r.persona_idx: (r.kept, r.gained, r.lost, r.customers, r.customers_changed)
           for r in store.read_table("persona_transitions").collect() if r.customers_before + r.customers_after}
    assert got == _expected_transitions(first_rows, second_rows)

    persona_set = load_persona_set(cfg.personas)
    query = audience_lib.parse(cfg.audience.query, persona_set)
    pet, gardener, bargain = (persona_set.index_of(n) for n in ("Pet Lover", "Gardener", "Bargain Hunter"))

    def expected_members(rows):
        sets = {}
        for u, p, _ in rows:
            sets.setdefault(u, set()).add(p)
        return {u for u, s in sets.items() if pet in s or (gardener in s and bargain not in s)}

    assert query[0] == "or"
    diff = {(r.user_idx, r.change) for r in store.read_table("audience_changes").filter(
        F.col("run_id") == second["run_id"]).collect()}
    before, after = expected_members(first_rows), expected_members(second_rows)
    assert diff == {(u, "added") for u in after - before} | {(u, "removed") for u in before - after}
    assert store.read_table("audience_members").filter(F.col("run_id") == second["run_id"]).count() == len(after)

    personas = store.read_table("personas")
    bounds = personas.agg(F.min("probability"), F.max("probability"), F.min("percentile"), F.max("percentile")).first()
    assert 0 < bounds[0] <= bounds[1] <= 1 and bounds[2] == 0 and bounds[3] == 1
    assert personas.filter("source = 'llm' AND (probability != 1 OR percentile != 1)").count() == 0
    calibration = store.read_table("persona_calibration").filter(F.col("run_id") == second["run_id"]).toPandas()
    prototypes = personas.filter("source = 'llm'").select("user_idx").distinct().count()
    assert calibration["pairs"].sum() == prototypes * len(persona_set)  # every held-out (prototype, persona) pair
    assert ((calibration["mean_predicted"] >= calibration["lower"]) & (calibration["mean_predicted"] <= calibration["upper"])).all()

    catalog = {r.persona_idx: r.customers for r in store.read_table("persona_catalog").filter(
        F.col("run_id") == second["run_id"]).collect()}
    assert catalog == {p: len({u for u, q, _ in second_rows if q == p}) for p in range(len(persona_set))}

    assert not store.exists("persona_reasons") and second["refresh"]["reasons"].startswith("on request")
    user, other = (r.user_idx for r in personas.filter("source = 'propagated'").groupBy("user_idx").count()
                   .orderBy("user_idx").limit(2).collect())
    ids = {r.user_idx: r.customer_id for r in store.read_table("users").filter(F.col("user_idx").isin(user, other)).collect()}

    def explain(*customers):
        asked = cfg.model_copy(update={"refresh": cfg.refresh.model_copy(update={"explain": list(customers)})})
        return STAGES["reasons"](RunContext(asked, store))

    assert explain(ids[user])["rows"] == personas.filter(F.col("user_idx") == user).count()
    explain(ids[user], ids[other])  # asked again with another: merged, each row once
    stored = store.read_table("persona_reasons")
    assert stored.count() == personas.filter(F.col("user_idx").isin(user, other)).count()
    with pytest.raises(UserError, match="1 customer id"):
        explain(ids[user], "no-such-customer")
    why = explore.explain(user, personas, store.read_table("edges"), store.read_table("items"), persona_set, top_n=3)
    reasons = stored.filter(F.col("user_idx") == user).collect()
    assert len(reasons) == personas.filter(F.col("user_idx") == user).count() and {r.run_id for r in reasons} == {second["run_id"]}
    for kind, key in (("items", "item_idx"), ("neighbours", "neighbour_idx")):
        expected = {}
        for row in getattr(why, kind).collect():
            expected.setdefault(row.persona_idx, []).append((row[key], round(row.contribution, 12)))
        batch_form = {r.persona_idx: [(e.item_idx if kind == "items" else e.user_idx, round(e.contribution, 12))
                                      for e in getattr(r, kind)] for r in reasons if getattr(r, kind)}
        assert batch_form == expected, kind

    versions = {t: store.version(t) for t in ("persona_history", "persona_transitions", "persona_catalog", "persona_reasons")}
    record_refresh(RunContext(cfg, store), RunPersonas((second["run_id"], runs[second["run_id"]].astimezone(timezone.utc)),
                                                       personas))
    assert {t: store.version(t) for t in versions} == versions  # the same run again: nothing committed

    report = STAGES["report"](RunContext(cfg, store))
    assert report["sections"]["drift"] == "ok" and report["sections"]["calibration"] == "ok"
    page = open(report["report"]).read()
    assert "changed their persona set" in page and "calibration error" in page


def _reference_reasons(edges, labels, beta_weights, rows, weighted):
    """The t=1 contributions of every (user, persona) row by brute force in Python: items and neighbours."""
    w = {(u, i): (n if weighted else 1.0) for u, i, n in edges}
    out, back = {}, {}
    for (u, i), x in w.items():
        out[u] = out.get(u, 0.0) + x
        back[i] = back.get(i, 0.0) + x
    expected = {}
    for u, m in rows:
        items, neighbours = {}, {}
        for (v, i), x in w.items():
            if (v, m) in beta_weights and (u, i) in w:
                c = w[(u, i)] / out[u] * x / back[i] * beta_weights[(v, m)]
                items[i] = items.get(i, 0.0) + c
                neighbours[v] = neighbours.get(v, 0.0) + c
        expected[(u, m)] = (items, neighbours)
    return expected


@pytest.mark.parametrize("weighted", [False, True])
def test_reasons_match_brute_force_and_cut_traces_are_lower_bounds(spark, weighted):
    """Every row's products, shares and (nothing cut) neighbours are the brute-force t=1 terms; with the
    trace cut to one product and one buyer, items stay exact and the one neighbour listed is a lower bound."""
    import random

    from persona_spark.affinity import prototype_weights

    rng = random.Random(5)
    n_users, n_items = 40, 12
    edges = sorted({(u, rng.randrange(n_items), rng.randint(1, 3)) for u in range(n_users) for _ in range(rng.randint(1, 6))})
    edges = list({(u, i): (u, i, n) for u, i, n in edges}.values())
    labelled = rng.sample(range(n_users), 10)
    persona_rows = [(u, p, 1.0, 1, "llm", 1.0) for u in labelled for p in rng.sample(range(4), rng.randint(1, 3))]
    persona_rows += [(u, p, 0.5, 1, "propagated", 0.5) for u in range(n_users) if u not in labelled
                     for p in rng.sample(range(4), 2)]
    personas = spark.createDataFrame(persona_rows, "user_idx int, persona_idx int, score double, rank int, source string, "
                                                   "probability double")
    edge_frame = spark.createDataFrame([(u, i, n, "train") for u, i, n in edges],
                                       "user_idx int, item_idx int, n_purchases int, split string")
    items = spark.createDataFrame([(i, f"item {i}") for i in range(n_items)], "item_idx int, item_name string")
    users = spark.createDataFrame([(u, f"c{u}") for u in range(n_users)], "user_idx int, customer_id string")
    llm = personas.filter("source = 'llm'").select("user_idx", "persona_idx")
    weights = {(r.user_idx, r.persona_idx): r.weight for r in prototype_weights(llm, 0.5).collect()}
    rows = [(u, p) for u, p, *_ in persona_rows]
    expected = _reference_reasons(edges, llm, weights, rows, weighted)

    def assert_top(listed, contributions, total, key):
        """``listed`` is a top 3 of ``contributions`` (ties in exact arithmetic may come in either order)."""
        assert len(listed) == min(3, len(contributions)), key
        for k, (idx, c, share) in enumerate(listed):
            assert c == pytest.approx(contributions[idx], rel=1e-9) and share == pytest.approx(c / total, rel=1e-9), key
            assert k == 0 or c <= listed[k - 1][1] * (1 + 1e-9), key
        rest = [c for idx, c in contributions.items() if idx not in {e[0] for e in listed}]
        assert not listed or not rest or max(rest) <= listed[-1][1] * (1 + 1e-9), key

    def got(trace_items, trace_buyers, asked=None):
        limits = RefreshConf(reason_items=3, reason_neighbours=3, trace_items=trace_items, trace_buyers=trace_buyers)
        frame = refresh.reasons(personas, PurchaseGraph(users, items, edge_frame), "r", limits, weighted=weighted,
                                users=asked)
        return {(r.user_idx, r.persona_idx): r for r in frame.collect()}

    exact = got(1000, 1000)
    assert set(exact) == set(rows)
    # the rows of a few customers (labelled ones among them) asked for alone are the same rows
    few = sorted(labelled[:2]) + [u for u in range(n_users) if u not in labelled][:3]
    alone = got(1000, 1000, spark.createDataFrame([(u,) for u in few + few[:1]], "user_idx int"))
    assert alone == {key: r for key, r in exact.items() if key[0] in few} and len(alone) >= len(few)
    reached = 0
    for key, (item_c, neighbour_c) in expected.items():
        r, total = exact[key], sum(item_c.values())
        assert_top([(e.item_idx, e.contribution, e.share) for e in r.items or []], item_c, total, key)
        assert all(e.item_name == f"item {e.item_idx}" for e in r.items or [])
        assert_top([(e.user_idx, e.contribution, e.share) for e in r.neighbours or []], neighbour_c, total, key)
        assert all(e.customer_id == f"c{e.user_idx}" for e in r.neighbours or [])
        reached += bool(item_c)
    assert reached > len(rows) // 2  # the check is not vacuous

    cut = got(1, 1)
    for key, (item_c, neighbour_c) in expected.items():
        assert cut[key].items == exact[key].items, key
        listed = cut[key].neighbours or []
        assert len(listed) == (1 if item_c else 0), key
        for e in listed:
            assert 0 < e.contribution <= neighbour_c[e.user_idx] * (1 + 1e-9), key
