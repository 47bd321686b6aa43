"""GPLR end to end (the real ``gplr`` stage) on a generated graph, LLM = loopback server with latency.

    python benchmarks/gplr_scale.py                                   # 20k users, 1 M edges
    python benchmarks/gplr_scale.py --users 206209 --items 49677 --edges 13300000   # Instacart Full size
    python benchmarks/gplr_scale.py --users 1500000 --items 300000 --edges 100000000 --second-month \
        --driver-memory 16g   # a platform's shop, and its next month

The purchase graph comes from ``benchmarks/affinity.py``'s generator (lognormal users, Zipf items,
generated in Spark). It is written as the Delta tables ``build-graph`` writes (``users``, ``items``
with a product name, ``edges`` with ``graph.split_edges``'s seeded 80/20 split, ``edge_tiles``); at 13 M edges,
generating and ingesting raw order lines first would take longer than the run measured. Then
``gplr_stage`` runs as the CLI runs it, on a ``TableStore`` over those tables, with the project's
defaults (5 % budget, T = 4 rounds, DU sampling, learned assignment with the item signal, so every
item is labelled too) and ``labeling.backend=openai`` against ``LoopbackChatServer`` on 127.0.0.1,
``--latency`` seconds per request. The "LLM" answers each user or item with 1–5 personas drawn
from a hash of its id (no rate limits, no faults: the figure is the pipeline's, not the provider's).

``--second-month`` then plays the next month on the same tables: ``--returning`` of the users (5 %)
buy again, ``--arriving`` new users (1 %) arrive, and the stage runs again, reusing every prototype
whose history did not change and every cached item answer (``user_tokens_saved``: what the reused
prototypes cost when they were asked; ``requests``: what the month asked the server).

Two JSON lines per month: ``{"step": "tables", ...}`` (generating and writing the tables, not part of GPLR),
then ``{"step": "gplr", "seconds", "phases", ...}``: ``seconds`` is the stage's wall time and
``phases`` the stage's own timings (its summary's ``phases``: history requests, item labelling,
graph tiles, per-round sampling, labelling, affinity, cross-fitting, assignment, the personas diff,
writes, the refresh record), plus requests made, answers, peak RSS of the process tree and the
1-minute load averages before and after (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import time

import yaml
from pyspark.sql import functions as F

sys.path.insert(0, os.path.dirname(__file__))
from affinity import PeakMemory, add_graph_arguments, synthetic_edges  # noqa: E402  (the same generator as the affinity benchmark)
from results_file import RESULTS, append_results_to  # noqa: E402

from persona_spark import tables  # noqa: E402
from persona_spark.config import load_config  # noqa: E402
from persona_spark.graph import split_edges  # noqa: E402
from persona_spark.personas import load_persona_set  # noqa: E402
from persona_spark.runtime.session import get_spark  # noqa: E402
from persona_spark.stages import RunContext, gplr_stage  # noqa: E402
from persona_spark.stages.sources import write_edge_tiles  # noqa: E402
from persona_spark.tables.store import TableStore  # noqa: E402
from persona_spark.testing.openai_server import LoopbackChatServer, obedient  # noqa: E402

KEY_ENV = "PS_BENCHMARK_KEY"


def write_persona_set(path: str, n: int) -> None:
    personas = [{"name": f"Persona {k:02d}", "description": f"Synthetic shopper type number {k}."} for k in range(n)]
    with open(path, "w") as f:
        yaml.safe_dump({"title": f"synthetic_{n}", "personas": personas}, f)


def generated_pairs(spark, _store: TableStore, args):
    """The generated (user, item) pairs with their customer and item ids."""
    return synthetic_edges(spark, args.users, args.items, args.edges, args.zipf, args.sigma, args.seed).select(
        "user_idx", "item_idx", F.col("user_idx").cast("string").alias("customer_id"),
        F.col("item_idx").cast("string").alias("item_id"))


def next_month(spark, store: TableStore, args):
    """The pairs a month later: ``--returning`` of the users buy again (pairs drawn as the generator draws,
    new ones only count) and ``--arriving`` new users (at their share of the edges); pinned, as the edges
    they are read from are overwritten next."""
    pairs = store.read_table(tables.EDGES).select("user_idx", "item_idx")
    back = F.pmod(F.xxhash64("user_idx", F.lit(args.seed)), F.lit(10_000)) < int(args.returning * 10_000)
    again = synthetic_edges(spark, args.users, args.items, int(args.edges * args.returning), args.zipf, args.sigma,
                            args.seed + 1).filter(back)
    arriving = max(1, int(args.users * args.arriving))
    new = synthetic_edges(spark, arriving, args.items, max(1, int(args.edges * args.arriving)), args.zipf, args.sigma,
                          args.seed + 2).withColumn("user_idx", F.col("user_idx") + args.users)
    return (pairs.unionByName(again).unionByName(new).dropDuplicates(["user_idx", "item_idx"]).localCheckpoint()
            .select("user_idx", "item_idx", F.col("user_idx").cast("string").alias("customer_id"),
                    F.col("item_idx").cast("string").alias("item_id")))


def write_graph_tables(store: TableStore, pairs, args) -> int:
    """``users``, ``items``, ``edges`` in build-graph's schemas from the generated pairs; the edge count.
    A pair keeps its split month after month: the split hashes the pair."""
    split = split_edges(pairs, args.test_fraction, args.seed)
    store.write_table(split.select(
        "user_idx", "item_idx", F.lit(1).alias("n_purchases"), F.lit(1).cast("long").alias("quantity"),
        F.lit(None).cast("timestamp").alias("first_ts"), F.lit(None).cast("timestamp").alias("last_ts"), "split"),
        tables.EDGES)
    edges = store.read_table(tables.EDGES)
    store.write_table(edges.groupBy("user_idx").agg(F.count(F.lit(1)).cast("int").alias("degree")).select(
        "user_idx", F.col("user_idx").cast("string").alias("customer_id"), "degree"), tables.USERS)
    name = F.concat(F.lit("ORGANIC PRODUCT "), F.col("item_idx").cast("string"), F.lit(" FAMILY SIZE"))
    store.write_table(edges.groupBy("item_idx").agg(F.count(F.lit(1)).cast("int").alias("degree")).select(
        "item_idx", F.col("item_idx").cast("string").alias("item_id"), name.alias("item_name"), "degree"), tables.ITEMS)
    return edges.count()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_graph_arguments(parser)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the server waits before every reply")
    parser.add_argument("--concurrency", type=int, default=64, help="labeling.openai.concurrency (per partition)")
    parser.add_argument("--partitions", type=int, default=2, help="labeling.openai.partitions")
    parser.add_argument("--users-per-request", type=int, default=1, help="labeling.openai.users_per_request")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="10g")
    parser.add_argument("--second-month", action="store_true",
                        help="then a month later: --returning of the users buy again, --arriving new users; the "
                             "gplr stage again on the same tables (reused prototypes and cached item answers)")
    parser.add_argument("--returning", type=float, default=0.05, help="share of the users with new orders")
    parser.add_argument("--arriving", type=float, default=0.01, help="new users, as a share of the users")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="any other setting of the run, as the CLI takes it (e.g. gplr.assignment=topk)")
    parser.add_argument("--out", default=str(RESULTS / "gplr_scale.jsonl"), help="appends here; - prints only")
    args = parser.parse_args(argv)
    append_results_to(args.out)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    os.environ[KEY_ENV] = "sk-benchmark"

    with tempfile.TemporaryDirectory(prefix="gplr-scale-") as tmp:
        write_persona_set(f"{tmp}/personas.yaml", args.personas)
        names = list(load_persona_set(f"{tmp}/personas.yaml").names)
        return run(args, tmp, names)


def run(args, tmp: str, names: list[str]) -> int:
    """Tables, then the gplr stage, against the loopback server; the two JSON lines to stdout."""
    def personas_for(entity: str) -> list[str]:
        rng = random.Random(f"{args.seed}:{entity}")
        return rng.sample(names, rng.randint(1, 5))

    with LoopbackChatServer(obedient(personas_for), latency_s=args.latency) as server:
        cfg = load_config(None, [
            f"root={tmp}", f"personas={tmp}/personas.yaml", f"spark.master={args.master}",
            "spark.shuffle_partitions=2", "spark.default_parallelism=2", f"spark.driver_memory={args.driver_memory}",
            "spark.app_name=gplr-scale-benchmark", "labeling.backend=openai",
            f"labeling.openai.base_url={server.base_url}", "labeling.openai.model=loopback-model",
            f"labeling.openai.api_key_env={KEY_ENV}", f"labeling.openai.concurrency={args.concurrency}",
            f"labeling.openai.partitions={args.partitions}",
            f"labeling.openai.users_per_request={args.users_per_request}", *args.overrides])
        spark = get_spark(cfg.spark)
        store = TableStore(spark, cfg.tables)
        memory = PeakMemory()
        months = [("gplr", generated_pairs)] + ([("gplr-month-2", next_month)] if args.second_month else [])
        for step, pairs in months:
            started = time.perf_counter()
            n_edges = write_graph_tables(store, pairs(spark, store, args), args)
            write_edge_tiles(RunContext(cfg, store))  # as build-graph does after writing the edges
            users, items = (store.read_table(t).count() for t in (tables.USERS, tables.ITEMS))
            print(json.dumps({"step": "tables" if step == "gplr" else f"tables-{step}", "users": users, "items": items,
                              "edges": n_edges, "seconds": round(time.perf_counter() - started, 1)}), flush=True)
            requests_before = server.request_count
            print(json.dumps(gplr_line(cfg, store, args, memory, step, (users, items, n_edges))
                             | {"requests": server.request_count - requests_before}), flush=True)
    memory.stop()
    spark.stop()
    return 0


def gplr_line(cfg, store: TableStore, args, memory: PeakMemory, step: str, sizes: tuple[int, int, int]) -> dict:
    """One run of the gplr stage as the CLI runs it: its JSON line (phases, tokens, memory, load)."""
    users, items, n_edges = sizes
    load_before = os.getloadavg()
    memory.reset()
    started = time.perf_counter()
    summary = gplr_stage(RunContext(cfg, store))
    seconds = time.perf_counter() - started
    phases = summary["phases"]
    reused = [r for r in summary["per_round"] if r["sampling"] == "reused"]
    line = {
        "step": step, "users": users, "items": items, "edges": n_edges, "personas": args.personas,
        "budget": summary["budget"], "rounds": cfg.gplr.rounds, "assignment": cfg.gplr.assignment,
        "item_signal": cfg.gplr.item_signal, "ell": cfg.affinity.ell, "latency_s": args.latency,
        "concurrency": args.concurrency, "partitions": args.partitions,
        "users_per_request": args.users_per_request, "seconds": round(seconds, 1),
        "edge_tiles": summary["edge_tiles"], "phases": phases, "unaccounted_s": round(seconds - sum(phases.values()), 1),
        "llm_users": sum(r["answered"] for r in summary["per_round"]),
        "per_round": summary["per_round"], "persona_rows": summary["persona_rows"],
        "item_labels": cfg.gplr.item_labels, "items_labelled": summary.get("items_labelled"),
        "refresh": summary["refresh"],
        # user tokens: what the prototypes reused from an earlier month cost back then (paid once, not again),
        # and what this run's new answers cost; item answers from the cache make no request
        "user_tokens_saved": sum(r["prompt_tokens"] + r["completion_tokens"] for r in reused),
        "user_tokens_paid": sum(r["prompt_tokens"] + r["completion_tokens"] for r in summary["per_round"] if r not in reused),
        "cv_micro_f1": summary["assignment_cv_micro_f1"], "peak_rss_mb": round(memory.peak_mb),
        "load_before": list(load_before), "load_after": list(os.getloadavg()), "cpu_count": os.cpu_count(),
    }
    return line


if __name__ == "__main__":
    sys.exit(main())
