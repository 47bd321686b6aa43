"""The parts of a gplr run's refresh record (``refresh.record_run``), each timed on its own.

    python benchmarks/refresh_profile.py                      # 20k users, 1 M edges (gplr_scale's default graph)
    python benchmarks/refresh_profile.py --users 60000 --items 20000 --edges 3000000

The graph is ``gplr_scale.py``'s (the same generator and tables). The personas are synthetic but
shaped like the loopback run's: ``--labelled-frac`` of the users are LLM-labelled with 1–5
personas, every other user gets ``--per-user`` propagated personas (the loopback run gives 8: its
answers carry no signal). Each part is forced with a ``noop`` write, so only its own plan runs:
``history`` (named_personas + history_changes, first run), ``catalog``, ``reasons`` (whole),
and ``record_refresh`` (the stage's call, Delta writes included). One JSON line per size.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone

import yaml
from pyspark.sql import functions as F

sys.path.insert(0, os.path.dirname(__file__))
from affinity import add_graph_arguments  # noqa: E402
from gplr_scale import write_graph_tables, write_persona_set  # noqa: E402

from persona_spark import refresh, tables  # noqa: E402
from persona_spark.runtime.runs import new_run
from persona_spark.config import load_config  # noqa: E402
from persona_spark.graph import PurchaseGraph
from persona_spark.refresh import RunPersonas
from persona_spark.tables.store import TableStore  # noqa: E402
from persona_spark.personas import load_persona_set  # noqa: E402
from persona_spark.runtime.session import get_spark  # noqa: E402
from persona_spark.stages import RunContext, record_refresh  # noqa: E402
from persona_spark.stages.common import persona_names  # noqa: E402


def synthetic_personas(spark, users: int, personas: int, labelled_frac: float, per_user: int, seed: int):
    """``user_idx, persona_idx, score, rank, source, probability, percentile`` like a gplr run's rows."""
    u = spark.range(users).select(F.col("id").cast("int").alias("user_idx"))
    h = F.abs(F.xxhash64(F.col("user_idx"), F.lit(seed)))
    labelled = (h % 10_000) < int(labelled_frac * 10_000)
    k = F.when(labelled, (h % 5) + 1).otherwise(per_user)
    rows = (u.withColumn("llm", labelled).withColumn("k", k)
            .select("user_idx", "llm", F.explode(F.sequence(F.lit(0), F.col("k").cast("int") - 1)).alias("j"))
            .withColumn("persona_idx", (F.abs(F.xxhash64("user_idx", "j", F.lit(seed + 1))) % personas).cast("int"))
            .dropDuplicates(["user_idx", "persona_idx"]))
    score = F.when(F.col("llm"), F.lit(1.0)).otherwise(F.rand(seed))
    frame = rows.select("user_idx", "persona_idx", score.alias("score"),
                        F.row_number().over(__import__("pyspark.sql").sql.Window.partitionBy("user_idx")
                                            .orderBy("persona_idx")).alias("rank"),
                        F.when(F.col("llm"), "llm").otherwise("propagated").alias("source"),
                        score.alias("probability"))
    return refresh.with_percentile(frame).localCheckpoint()


def timed(build) -> float:
    """Seconds to build the frame (eager checkpoints inside count) and run it into a ``noop`` sink."""
    started = time.perf_counter()
    build().write.format("noop").mode("overwrite").save()
    return round(time.perf_counter() - started, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_graph_arguments(parser)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--labelled-frac", type=float, default=0.05)
    parser.add_argument("--per-user", type=int, default=8)
    parser.add_argument("--parts", default="history,catalog,reasons,record", help="comma-separated parts to time")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="10g")
    parser.add_argument("--trace", default="", help="also time reasons at these trace_items x trace_buyers, e.g. 5x10,3x10")
    parser.add_argument("--exact-check", action="store_true",
                        help="compare each --trace's neighbours with nothing cut (1e6 x 1e6): top-3 overlap, top-1 ratio")
    parser.add_argument("--old", metavar="PATH", help="also time reasons and catalog from another refresh.py (e.g. "
                        "`git show 03ba0a2:persona_spark/refresh.py > /tmp/old.py`), at its conf's trace")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory(prefix="refresh-profile-") as tmp:
        write_persona_set(f"{tmp}/personas.yaml", args.personas)
        cfg = load_config(None, [f"root={tmp}", f"personas={tmp}/personas.yaml", f"spark.master={args.master}",
                                 "spark.shuffle_partitions=2", "spark.default_parallelism=2",
                                 f"spark.driver_memory={args.driver_memory}", "spark.app_name=refresh-profile",
                                 *args.overrides])
        spark = get_spark(cfg.spark)
        store = TableStore(spark, cfg.tables)
        started = time.perf_counter()
        n_edges = write_graph_tables(spark, store, args)
        persona_set = load_persona_set(cfg.personas)
        store.write_table(persona_set.to_dataframe(spark), tables.PERSONA_SET)
        personas = synthetic_personas(spark, args.users, args.personas, args.labelled_frac, args.per_user, args.seed)
        run_id, run_ts = new_run(datetime(2026, 1, 1, tzinfo=timezone.utc))
        store.write_table(spark.createDataFrame([(run_id, run_ts)], "run_id string, run_ts timestamp"), tables.GPLR_RUNS)
        counts = personas.groupBy("source").count().collect()
        line = {"users": args.users, "items": args.items, "edges": n_edges, "personas": args.personas,
                "persona_rows": {r["source"]: r["count"] for r in counts},
                "tables_s": round(time.perf_counter() - started, 1), "load_before": list(os.getloadavg())}
        users, items, edges = (store.read_table(t) for t in (tables.USERS, tables.ITEMS, tables.EDGES))
        ctx = RunContext(cfg, store)
        names, conf, graph = persona_names(ctx), cfg.refresh, PurchaseGraph(users, items, edges)
        line["refresh_conf"] = conf.model_dump()
        if "history" in parts:
            line["history_s"] = timed(lambda: refresh.history_changes(None, refresh.named_personas(personas, users, names),
                                                                      run_id, run_ts))
        if "catalog" in parts:
            line["catalog_s"] = timed(lambda: refresh.catalog(personas, persona_set.to_dataframe(spark), edges, items, run_id,
                                                      conf.catalog_products))
        if "reasons" in parts:
            line["reasons_s"] = timed(lambda: refresh.reasons(personas, graph, run_id, conf, cfg.affinity.beta,
                                                              cfg.affinity.weighted))
        def reasons_at(k: int, b: int):
            limits = conf.model_copy(update={"trace_items": k, "trace_buyers": b})
            return refresh.reasons(personas, graph, run_id, limits, cfg.affinity.beta, cfg.affinity.weighted)

        exact = None
        if args.exact_check:
            started = time.perf_counter()
            exact = reasons_at(10**6, 10**6).select("user_idx", "persona_idx", F.col("neighbours").alias("exact")).localCheckpoint()
            line["exact_s"] = round(time.perf_counter() - started, 2)
        for spec in filter(None, args.trace.split(",")):
            k, b = (int(x) for x in spec.split("x"))
            entry = {"seconds": timed(lambda: reasons_at(k, b))}
            if exact is not None:
                got = reasons_at(k, b).select("user_idx", "persona_idx", "neighbours").join(exact, ["user_idx", "persona_idx"])
                ids = lambda c: F.transform(F.coalesce(c, F.array()), lambda e: e["user_idx"])  # noqa: E731
                both = got.filter(F.size(F.coalesce("exact", F.array())) > 0)
                q = both.agg(
                    F.avg(F.size(F.array_intersect(ids("neighbours"), ids("exact"))) / F.size("exact")).alias("top3_overlap"),
                    F.avg((F.element_at(ids("neighbours"), 1) == F.element_at(ids("exact"), 1)).cast("double")).alias("top1_same"),
                    F.avg(F.element_at("neighbours", 1)["contribution"] / F.element_at("exact", 1)["contribution"])
                    .alias("top1_contribution_ratio"), F.count(F.lit(1)).alias("rows")).first()
                entry.update({key: round(v, 4) if isinstance(v, float) else v for key, v in q.asDict().items()})
            line[f"reasons_{spec}"] = entry
        if args.old:
            import importlib.util

            spec = importlib.util.spec_from_file_location("old_refresh", args.old)
            old = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(old)
            line["old_catalog_s"] = timed(lambda: old.catalog(personas, persona_set.to_dataframe(spark), edges, items,
                                                              run_id, conf.catalog_products))
            line["old_reasons_20x20_s"] = timed(lambda: old.reasons(
                personas, edges, items, users, run_id, n_items=conf.reason_items, n_neighbours=conf.reason_neighbours,
                trace_items=20, trace_buyers=20, beta=cfg.affinity.beta, weighted=cfg.affinity.weighted))
        if "record" in parts:
            started = time.perf_counter()
            record_refresh(ctx, RunPersonas((run_id, run_ts), personas))
            line["record_refresh_s"] = round(time.perf_counter() - started, 2)
        line["load_after"] = list(os.getloadavg())
        print(json.dumps(line), flush=True)
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
