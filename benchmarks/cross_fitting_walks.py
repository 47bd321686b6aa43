"""GPLR cross-fitting's affinity: one walk per prototype set against the sets side by side, in one process.

    python benchmarks/cross_fitting_walks.py                                   # 1 M edges, 20k users
    python benchmarks/cross_fitting_walks.py --users 206209 --items 49677 --edges 13300000 --edges-cache /tmp/edges-13m
    python benchmarks/cross_fitting_walks.py ... --stack-max-mb 1024      # stack at 13 M too (as wide as the tiles)

The learned assignment needs Ψ(ℓ̂=1) and Ψ(ℓ̂=2) for ``--folds`` prototype sets (all prototypes but one
fold's) and for all prototypes: ``--folds`` + 1 sets over the same train edges. ``separate`` walks each set
alone (``compute_affinity_depths``, as GPLR did before); ``side_by_side`` stacks as many sets into one walk
as ``affinity.stack_max_bytes`` (``--stack-max-mb``) and the tiles allow (``compute_affinity_depths_of_sets``,
what GPLR does now). The graph, its synthetic
labels and the tiles (cut once, not timed) are those of ``benchmarks/affinity.py``. Both runs write every
score of every set (noop sink) from its local checkpoint, as GPLR reads them. One JSON line per run: ``{"engine", "edges", "users", "personas", "sets",
"walks", "seconds", "peak_rss_mb", "max_abs_diff", ...}``, ``max_abs_diff`` against ``separate``'s scores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
from pyspark.sql import functions as F

from affinity import (PeakMemory, add_graph_arguments, cached_edges, dense_scores,  # noqa: E402  (benchmarks/ on sys.path)
                      synthetic_labels)
from persona_spark.runtime.checkpoint import checkpoint
from persona_spark.affinity import (compute_affinity_depths, compute_affinity_depths_of_sets,
                                    prepare_graph, prototype_labels)
from persona_spark.config import AffinityConf, SparkConf
from persona_spark.runtime.session import get_spark

DEPTHS = (1, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_graph_arguments(parser)
    parser.add_argument("--labelled-frac", type=float, default=0.05)
    parser.add_argument("--folds", type=int, default=4, help="gplr.cv_folds")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="10g")
    parser.add_argument("--edges-cache", help="folder for the generated edges (parquet): reused when present")
    parser.add_argument("--stack-max-mb", type=float, help="affinity.stack_max_bytes in MiB (default: the engine's)")
    args = parser.parse_args(argv)

    spark = get_spark(SparkConf(master=args.master, shuffle_partitions=2, default_parallelism=2,
                                driver_memory=args.driver_memory, app_name="cross-fitting-benchmark"))
    memory = PeakMemory()
    with tempfile.TemporaryDirectory(prefix="cross-fitting-bench-") as tmp:
        edges = cached_edges(spark, args.edges_cache or f"{tmp}/edges", args.users, args.items, args.edges, args.zipf,
                             args.sigma, args.seed).persist()
        n_edges = edges.count()
        labels = synthetic_labels(spark, args.users, args.personas, args.labelled_frac, args.seed)
        fold = F.pmod(F.xxhash64("user_idx"), F.lit(args.folds))
        label_sets = [labels.where(fold != k) for k in range(args.folds)] + [labels]
        sets = [prototype_labels(s, args.personas, 0.0).localCheckpoint() for s in label_sets]
        conf = AffinityConf() if args.stack_max_mb is None else AffinityConf(stack_max_bytes=int(args.stack_max_mb * 2**20))
        graph = prepare_graph(edges, conf, args.personas)
        # warm-up (JIT, Python workers) on a few users, not timed
        compute_affinity_depths(graph, sets[0].where(F.col("user_idx") < 50), args.personas, DEPTHS, conf)[2].count()
        common = {"edges": n_edges, "users": args.users, "items": args.items, "personas": args.personas,
                  "sets": len(sets), "tiles_width": graph.width, "stack_max_bytes": conf.stack_max_bytes}
        results = {}
        for engine in ("separate", "side_by_side"):
            load_before = os.getloadavg()[0]
            memory.reset()
            started = time.perf_counter()
            trace: list[dict] = []
            if engine == "separate":
                psi = [{d: checkpoint(frame)  # as GPLR pinned each walk's Ψ
                        for d, frame in compute_affinity_depths(graph, s, args.personas, DEPTHS, conf, trace).items()}
                       for s in sets]
            else:
                psi = compute_affinity_depths_of_sets(graph, sets, args.personas, DEPTHS, conf, trace)
            for per_set in psi:
                for frame in per_set.values():
                    frame.write.format("noop").mode("overwrite").save()
            seconds = time.perf_counter() - started
            results[engine] = [dense_scores(p[2], args.users, args.personas) for p in psi]
            diff = max(float(np.abs(a - b).max()) for a, b in zip(results[engine], results["separate"]))
            print(json.dumps({"engine": engine, **common, "seconds": round(seconds, 3),
                              "walks": sum(1 for t in trace if t["phase"] == "pack prototypes"),
                              "hops_seconds": round(sum(t["seconds"] for t in trace if t["phase"].startswith("hop")), 3),
                              "peak_rss_mb": round(memory.peak_mb), "max_abs_diff": diff,
                              "load_before": load_before, "load_after": os.getloadavg()[0]}), flush=True)
        graph.release()
        edges.unpersist()
    memory.stop()
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
