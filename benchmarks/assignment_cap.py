"""The learned assignment's capped fit against the uncapped one: driver memory and micro-F1.

    python benchmarks/assignment_cap.py online-retail --data ../shared/data/online_retail_gplr
    python benchmarks/assignment_cap.py generated --users 100000 --items 20000 --edges 1000000
    python benchmarks/assignment_cap.py generated --users 1500000 --items 300000 --edges 100000000 \
        --budgets 0.05 --caps 20000 5000 --edges-cache /tmp/edges-100m     # item 4's graph, generated once

``online-retail``: the paper's split with the authors' GPT-4 labels as the LLM (the setup of
``gplr_quality.py``, project defaults: DU rounds, learned assignment with the item signal); per
``--budgets`` the prototypes are sampled once, then the model is fitted uncapped and under every
``--caps`` × ``--floors`` (``gplr.max_train_users`` / ``gplr.min_train_per_persona``), each scored on
the users the run did not label. ``generated``: a graph from ``affinity.py``'s generator, every item
given one persona (skewed towards low indices), every user the 1–5 personas most frequent among its
purchases (the "LLM" reads the history); ``--budgets`` random prototypes, uncapped and capped at
each of ``--caps`` below their number, with the default floor, so the prototypes grow while the cap holds;
``--edges-cache`` is ``affinity.py``'s (the graph written once as parquet, reused when present: pass the flags
it was written with), the tiles are cut once and shared by the fits (``tiles_seconds`` on every line), and
``--eps`` / ``--state-precision`` are the fits' ``affinity.eps`` / ``affinity.state_precision`` (the learned
assignment's Ψ is always ℓ̂ = 1 and 2, whatever ``affinity.ell``). One JSON line per fit:
``{"dataset", "budget", "prototypes", "cap", "floor", "fitted_on", "micro_f1", "macro_f1", "cv_micro_f1",
"driver_rss_before_mb", "driver_peak_rss_mb", "tree_peak_rss_mb", "seconds", "load_before", "load_after"}``;
``driver_*`` is the RSS of this Python process (where the model is fitted), sampled every 0.1 s from
just before the assignment to the end of it; ``tree_peak_rss_mb`` adds the JVM and the Python workers.
RSS does not fall back after a big fit (the allocator keeps freed memory), so a fit after a larger one
reads that one's peak: ``driver_alloc_peak_mb`` is the peak of what the assignment itself allocated on
the driver (tracemalloc, numpy arrays included), the figure comparable across fits of one process.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from affinity import PeakMemory, cached_edges, own_rss_mb  # noqa: E402  (benchmarks/ is on sys.path)
from gplr_quality import load_split  # noqa: E402
from persona_spark import evaluate
from persona_spark.affinity import AffinityGraph, prepare_graph
from persona_spark.config import AffinityConf, GPLRConf, SparkConf
from persona_spark.gplr import GPLRLoop, GPLRSettings
from persona_spark.sampling import pick_random
from persona_spark.runtime.session import get_spark

UNCAPPED = 10**9


def planted_personas(edges: DataFrame, n_personas: int, seed: int) -> DataFrame:
    """``user_idx, persona_idx``: each item one persona, P(persona < x) = sqrt(x / |R|); each user the
    1–5 (by a hash of the user) personas most frequent among its purchases, ties to the lower index."""
    u = F.pmod(F.xxhash64(F.lit(seed), "item_idx"), F.lit(1_000_003)) / 1_000_003.0
    item_persona = F.least(F.floor(F.pow(u, 2) * n_personas).cast("int"), F.lit(n_personas - 1))
    counts = edges.select("user_idx", item_persona.alias("persona_idx")).groupBy("user_idx", "persona_idx").count()
    wanted = 1 + F.pmod(F.xxhash64(F.lit(seed + 1), "user_idx"), F.lit(5))
    order = Window.partitionBy("user_idx").orderBy(F.desc("count"), "persona_idx")
    return (counts.withColumn("rank", F.row_number().over(order)).filter(F.col("rank") <= wanted)
            .select("user_idx", "persona_idx"))


def as_answers(chosen: DataFrame, reference: DataFrame) -> DataFrame:
    """Chosen users' reference personas as answered label rows (what ``GPLRLoop.sample`` returns)."""
    labels = reference.groupBy("user_idx").agg(F.sort_array(F.collect_list("persona_idx")).alias("persona_idx"))
    return chosen.select("user_idx").join(labels, "user_idx").select(
        "user_idx", "persona_idx", F.lit("ok").alias("status"), F.lit(0).alias("prompt_tokens"),
        F.lit(0).alias("completion_tokens"))


class Fits:
    """Fits the assignment for one set of answers under several caps; prints a JSON line per fit."""

    def __init__(self, dataset: str, users: DataFrame, train: DataFrame, reference: DataFrame, n_personas: int,
                 item_vectors: DataFrame | None, affinity_conf: AffinityConf | None = None,
                 graph: AffinityGraph | None = None):
        self.dataset, self.users, self.train, self.reference = dataset, users, train, reference
        self.n_personas, self.item_vectors = n_personas, item_vectors
        self.affinity_conf, self.graph = affinity_conf or AffinityConf(), graph
        self.driver, self.tree = PeakMemory(0.1, own_rss_mb), PeakMemory(0.2)

    def fit(self, answered: DataFrame, rounds: list[dict], conf: GPLRConf, budget: float, extra: dict) -> None:
        run = GPLRLoop(self.users, self.train, lambda _: None, self.n_personas, GPLRSettings(conf, self.affinity_conf),
                       self.item_vectors, graph=self.graph)
        eval_users = evaluate.evaluation_users(self.reference, answered).localCheckpoint()
        gc.collect()
        load_before = os.getloadavg()[0]
        self.driver.reset()
        self.tree.reset()
        before = self.driver.peak_mb
        tracemalloc.reset_peak()
        allocated_before = tracemalloc.get_traced_memory()[0]
        started = time.perf_counter()
        result = run.assign_all(answered, rounds)
        personas = result.personas.localCheckpoint()
        seconds = time.perf_counter() - started
        driver_peak, tree_peak = self.driver.peak_mb, self.tree.peak_mb
        alloc_peak = (tracemalloc.get_traced_memory()[1] - allocated_before) / 2**20
        metrics, _ = evaluate.evaluate_sets(personas, self.reference, eval_users)
        fitted_on = result.model.fitted_on
        print(json.dumps({
            "dataset": self.dataset, "budget": budget, "prototypes": fitted_on["prototypes_available"],
            "cap": None if conf.max_train_users == UNCAPPED else conf.max_train_users,
            "floor": conf.min_train_per_persona, "personas": self.n_personas, **extra, "fitted_on": fitted_on,
            **{k: round(v, 4) for k, v in metrics.items()}, "cv_micro_f1": result.model.cv_micro_f1,
            "eval_users": eval_users.count(), "driver_rss_before_mb": round(before),
            "driver_peak_rss_mb": round(driver_peak), "driver_alloc_peak_mb": round(alloc_peak),
            "tree_peak_rss_mb": round(tree_peak),
            "seconds": round(seconds, 1), "phases": result.seconds,
            "load_before": load_before, "load_after": os.getloadavg()[0],
        }), flush=True)
        run.release()
        del result, personas


def online_retail(args) -> None:
    spark = get_spark(SparkConf(master="local[2]", shuffle_partitions=4, default_parallelism=4))
    split = load_split(spark, Path(args.data))
    fits = Fits("online_retail", split.users, split.train, split.reference, split.n_personas, split.item_vectors)
    for budget in args.budgets:
        conf = GPLRConf(budget_fraction=budget, seed=args.seed)
        sampler = GPLRLoop(split.users, split.train, split.label_users, split.n_personas, GPLRSettings(conf),
                           split.item_vectors)
        answered, rounds = sampler.sample()
        sampler.release()
        n_ok = sum(r["ok"] for r in rounds)
        settings = [(cap, floor) for cap in args.caps if cap < n_ok for floor in args.floors]
        settings += [(UNCAPPED, conf.min_train_per_persona)]
        for cap, floor in settings:
            capped = conf.model_copy(update={"max_train_users": cap, "min_train_per_persona": floor})
            fits.fit(answered, rounds, capped, budget, {})


def generated(args) -> None:
    spark = get_spark(SparkConf(master="local[2]", shuffle_partitions=4, default_parallelism=4,
                                driver_memory=args.driver_memory, app_name="assignment-cap-benchmark"))
    affinity_conf = AffinityConf(eps=args.eps, state_precision=args.state_precision)
    with tempfile.TemporaryDirectory(prefix="assignment-cap-") as tmp:
        train = cached_edges(spark, args.edges_cache or f"{tmp}/edges", args.users, args.items, args.edges,
                             args.zipf, args.sigma, args.seed).persist()
        n_edges = train.count()
        reference = planted_personas(train, args.personas, args.seed).localCheckpoint()
        users = spark.range(args.users).select(F.col("id").cast("int").alias("user_idx"))
        started = time.perf_counter()
        tiles = prepare_graph(train, affinity_conf, args.personas)
        graph = {"users": args.users, "items": args.items, "edges": n_edges, "eps": args.eps,
                 "state_precision": args.state_precision, "tiles_seconds": round(time.perf_counter() - started, 1)}
        fits = Fits("generated", users, train, reference, args.personas, None, affinity_conf, tiles)
        for budget in args.budgets:
            conf = GPLRConf(budget_fraction=budget, seed=args.seed, item_signal=False)
            answered = as_answers(pick_random(users, conf.budget_size(args.users), args.seed), reference)
            answered = answered.localCheckpoint()
            rounds = [{"sampling": "random", "answered": answered.count()}]
            for cap in [*(c for c in args.caps if c < answered.count()), UNCAPPED]:
                fits.fit(answered, rounds, conf.model_copy(update={"max_train_users": cap}), budget, graph)
        tiles.release()
        train.unpersist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="dataset", required=True)
    real = sub.add_parser("online-retail", help="the paper's OnlineRetail split with recorded GPT-4 labels")
    real.add_argument("--data", required=True, help="folder with train.json, personas.json, user/item_personas_gpt4.json")
    real.add_argument("--budgets", type=float, nargs="+", default=[0.05, 0.2])
    real.add_argument("--caps", type=int, nargs="+", default=[400, 200, 100],
                      help="caps below the budget's prototypes are run")
    real.add_argument("--floors", type=int, nargs="+", default=[0, 10])
    real.add_argument("--seed", type=int, default=0)
    synthetic = sub.add_parser("generated", help="a generated graph with planted personas")
    synthetic.add_argument("--users", type=int, default=100_000)
    synthetic.add_argument("--items", type=int, default=20_000)
    synthetic.add_argument("--edges", type=int, default=1_000_000)
    synthetic.add_argument("--personas", type=int, default=51)
    synthetic.add_argument("--budgets", type=float, nargs="+", default=[0.025, 0.05, 0.1, 0.2])
    synthetic.add_argument("--caps", type=int, nargs="+", default=[2500])
    synthetic.add_argument("--zipf", type=float, default=1.0)
    synthetic.add_argument("--sigma", type=float, default=1.0)
    synthetic.add_argument("--seed", type=int, default=7)
    synthetic.add_argument("--driver-memory", default="6g")
    synthetic.add_argument("--edges-cache", help="folder for the generated edges (parquet): reused when present")
    synthetic.add_argument("--eps", type=float, default=0.0, help="affinity.eps of the fits' Ψ (0: exact)")
    synthetic.add_argument("--state-precision", choices=["float64", "float32"], default="float64",
                           help="affinity.state_precision of the fits' Ψ")
    args = parser.parse_args(argv)
    tracemalloc.start()
    (online_retail if args.dataset == "online-retail" else generated)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
