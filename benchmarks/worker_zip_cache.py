"""What the worker zip fix (``persona_spark.runtime.worker``) saves per Spark task.

    python benchmarks/worker_zip_cache.py [--tasks 400] [--repeats 3] [--master local[2]]

A trivial ``mapInArrow`` job (one row per task, the rows passed through) runs ``--tasks`` tasks, in
two variants that differ only in the fix: ``with_fix`` imports ``persona_spark`` in the worker (what
unpickling any task of this package's code does, and what applies the fix), ``without_fix`` does not
(Python's own ``zipimporter.invalidate_caches`` stays, so pyspark's ``importlib.invalidate_caches()``
before every task rereads every archive's directory). A patched worker stays patched while it lives,
so each variant runs in a Spark session of its own (its own Python workers), built like the stages'
(the Delta connector's jars on the workers' path), after a warm-up job; the variants alternate
``--repeats`` times. Per variant: the job's wall seconds, seconds per task (wall x task slots / tasks),
and the cost of one ``importlib.invalidate_caches()`` call timed inside each task (what pyspark runs
before it). Prints one JSON line per run and a summary line; appends them, with the command, machine
and date, to ``benchmarks/results/worker_zip_cache.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import time

import pyarrow as pa
from results_file import RESULTS, append_results_to

SCHEMA = "id long, invalidate_s double"


def _timed_invalidation() -> float:
    import importlib

    started = time.perf_counter()
    importlib.invalidate_caches()
    return time.perf_counter() - started


def with_fix(batches):
    import persona_spark  # noqa: F401  (in a worker on Python 3.10/3.11 this applies the fix)

    seconds = _timed_invalidation()
    for batch in batches:
        yield pa.RecordBatch.from_pydict({"id": batch.column("id"), "invalidate_s": [seconds] * batch.num_rows})


def without_fix(batches):
    seconds = _timed_invalidation()
    for batch in batches:
        yield pa.RecordBatch.from_pydict({"id": batch.column("id"), "invalidate_s": [seconds] * batch.num_rows})


VARIANTS = {"with_fix": with_fix, "without_fix": without_fix}


def task_slots(spark) -> int:
    """Tasks that run at once: n of local[n] (the machine's cores for local[*]), else the default parallelism."""
    local = re.fullmatch(r"local\[(\d+|\*)(,\d+)?\]", spark.sparkContext.master)
    if local:
        return os.cpu_count() if local.group(1) == "*" else int(local.group(1))
    return spark.sparkContext.defaultParallelism


def run_once(spark, variant: str, tasks: int, slots: int) -> dict:
    frame = spark.range(0, tasks, 1, tasks).mapInArrow(VARIANTS[variant], SCHEMA)
    started = time.perf_counter()
    rows = frame.collect()
    wall = time.perf_counter() - started
    invalidations = sorted(r["invalidate_s"] for r in rows)
    return {"variant": variant, "tasks": tasks, "task_slots": slots, "wall_s": round(wall, 3),
            "per_task_s": round(wall * slots / tasks, 5),
            "invalidate_caches_median_s": round(statistics.median(invalidations), 6)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--out", default=str(RESULTS / "worker_zip_cache.jsonl"), help="appends here; - prints only")
    args = parser.parse_args()
    append_results_to(args.out)

    from persona_spark.config import load_config
    from persona_spark.runtime.session import get_spark

    cfg = load_config(None, [f"spark.master={args.master}"])
    lines, meta = [], {}
    for repeat in range(args.repeats):
        for variant in VARIANTS:
            spark = get_spark(cfg.spark)  # a fresh session: fresh Python workers
            slots = task_slots(spark)
            meta = {"python": platform.python_version(), "pyspark": spark.version}
            run_once(spark, variant, 2 * slots, slots)  # warm-up: the workers start and import what they import
            line = {"benchmark": "worker_zip_cache", "repeat": repeat, **run_once(spark, variant, args.tasks, slots),
                    **meta}
            spark.stop()
            print(json.dumps(line), flush=True)
            lines.append(line)
    per_task = {v: statistics.median(rec["per_task_s"] for rec in lines if rec["variant"] == v) for v in VARIANTS}
    invalidate = {v: statistics.median(rec["invalidate_caches_median_s"] for rec in lines if rec["variant"] == v)
                  for v in VARIANTS}
    summary = {"benchmark": "worker_zip_cache", "summary": True, "tasks": args.tasks, "repeats": args.repeats,
               "per_task_s_with_fix": per_task["with_fix"], "per_task_s_without_fix": per_task["without_fix"],
               "saving_per_task_s": round(per_task["without_fix"] - per_task["with_fix"], 5),
               "saving_share": round(1 - per_task["with_fix"] / per_task["without_fix"], 3),
               "invalidate_caches_s_with_fix": invalidate["with_fix"],
               "invalidate_caches_s_without_fix": invalidate["without_fix"], **meta}
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
