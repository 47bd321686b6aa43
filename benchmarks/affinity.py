"""Affinity engine speed and error against single-machine scipy, all in one process.

    python benchmarks/affinity.py                                  # 1 M edges, 20k users, 51 personas
    python benchmarks/affinity.py --users 206209 --items 49677 --edges 13300000   # Instacart Full size
    python benchmarks/affinity.py ... --connect     # the same on a local Spark Connect server (connect_* rows)
    python benchmarks/affinity.py ... --edges-cache DIR   # generate once into DIR, reuse it in later runs
    python benchmarks/affinity.py ... --graphframes   # also Ψ by GraphFrames' aggregateMessages (classic only)
    python benchmarks/affinity.py ... --components    # also connected components: large-star against GraphFrames

A synthetic purchase graph is generated in Spark (lognormal user activity, Zipf item popularity,
duplicate pairs dropped, so ``edges`` is the unique count actually reached), 5 % of users get
1–5 random personas, L comes from ``prototype_labels``. Then, for every ℓ̂ in ``--ell``: scipy exact,
Spark exact with the tiles cut in the call (cold), Spark exact on the tiles build-graph would have
written (``spark_exact_stored``: read back from a Delta table and cached, the cut and write timed once
as ``tiles_write``), Spark ε-pruned (``--eps``), and Spark with float32 states (``spark_float32``, cold, and
``spark_float32_stored``: ``AffinityConf.state_precision``, a relative error bound), plus the paper's
RevAff with ``--rev-aff`` (slow: small graphs only), Ψ by GraphFrames' ``aggregateMessages`` with
``--graphframes`` (``affinity.graphframes_affinity``; its lines carry ``vs_spark_exact(_stored)``, its seconds over
the engine's of the same ℓ̂), and with ``--components`` the connected components of the same edges by the
package's large-star rounds and by GraphFrames' two algorithms (``components_*`` lines: seconds and summary). GraphFrames'
jars come from ``--graphframes-jars`` (a folder) or else from Maven (``spark.graphframes``). A tiny warm-up run
precedes the timed ones. One JSON object per line:
``{"engine", "edges", "users", "items", "personas", "ell", "eps", "seconds", "max_abs_err",
"mean_abs_err", "max_rel_err", "top5_agreement", "users_nonempty_share", "peak_rss_mb", ...}`` — errors and the
top-5 agreement against scipy exact of the same ℓ̂ (the share of each reached user's exact top-5
personas the engine also ranks top 5), the share of all users with any score; ``peak_rss_mb``
is the peak summed RSS of this process and its children (the JVM, Python workers) during that run;
``load_before``/``load_after`` are the 1-minute load averages (the machine may be shared);
``jit_compile_ms`` is the JVM's JIT compile time during the run (classic sessions: the first
full-size runs of a JVM pay most of it); Spark lines carry ``phases`` (seconds per tile build / hop,
and the data path each hop took).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset
from pyspark.sql import functions as F
from results_file import RESULTS, append_results_to

from persona_spark.affinity import AffinityGraph, compute_affinity, prepare_graph, prototype_labels
from persona_spark.affinity.graphframes_affinity import graphframes_affinity
from persona_spark.affinity.reference import exact_affinity, rev_aff
from persona_spark.config import AffinityConf, SparkConf
from persona_spark.graph import component_summary
from persona_spark.runtime.session import get_spark, is_connect

PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def _tree_rss_mb() -> float:
    """Summed RSS of this process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            statm = (entry / "statm").read_text().split()
        except OSError:
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        rss[pid] = int(statm[1]) * PAGE_MB
    total, todo = 0.0, [os.getpid()]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0.0)
        todo += children.get(pid, [])
    return total


def own_rss_mb() -> float:
    """RSS of this process alone (the Python driver, without the JVM and the Python workers)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE_MB


def jit_compile_ms(spark) -> int | None:
    """The JVM's total JIT compile time so far (classic sessions; None on Spark Connect, which has no JVM here)."""
    if is_connect(spark):
        return None
    return int(spark._jvm.java.lang.management.ManagementFactory.getCompilationMXBean().getTotalCompilationTime())


class PeakMemory:
    """Samples ``measure`` (default: the process tree's RSS) in a thread; ``peak_mb`` is the maximum since ``reset``."""

    def __init__(self, interval_s: float = 0.2, measure=_tree_rss_mb):
        self.interval_s, self.peak_mb, self.measure = interval_s, 0.0, measure
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self._stop.wait(self.interval_s):
            self.peak_mb = max(self.peak_mb, self.measure())

    def reset(self):
        self.peak_mb = self.measure()

    def stop(self):
        self._stop.set()


def synthetic_edges(spark, users: int, items: int, edges: int, zipf: float, sigma: float, seed: int):
    """Unique (user, item) pairs, about ``edges`` of them: lognormal activity, Zipf(``zipf``) items.

    Items are drawn by the inverse CDF of the continuous power law on [1, items+1]; duplicate
    pairs are dropped, so the draw is scaled once by how many survived to approach the target.
    """

    def draw(requested: int):
        activity = spark.range(users).select(F.col("id").cast("int").alias("user_idx"),
                                             F.exp(F.randn(seed) * sigma).alias("a"))
        total = activity.agg(F.sum("a")).first()[0]
        degree = F.least(F.lit(items), F.greatest(F.lit(1), F.round(F.col("a") * (requested / total)).cast("int")))
        r = F.rand(seed + 1)
        if zipf == 1.0:
            x = F.pow(F.lit(items + 1.0), r)
        else:
            x = F.pow(1 + r * (math.pow(items + 1.0, 1 - zipf) - 1), 1 / (1 - zipf))
        item = F.least(F.lit(items - 1), F.floor(x).cast("int") - 1)
        drawn = activity.select("user_idx", F.explode(F.sequence(F.lit(1), degree)).alias("k"))
        return drawn.select("user_idx", item.alias("item_idx")).dropDuplicates(["user_idx", "item_idx"])

    first = draw(edges)
    reached = first.count()
    return draw(int(edges * edges / reached)) if reached < 0.98 * edges else first


def cached_edges(spark, path: str, users: int, items: int, edges: int, zipf: float, sigma: float, seed: int):
    """``synthetic_edges`` written once as parquet to ``path`` (reused when its ``_SUCCESS`` is there), read back.

    A reused folder is taken as it is: the graph's flags must be those it was written with.
    """
    if not Path(path, "_SUCCESS").exists():
        synthetic_edges(spark, users, items, edges, zipf, sigma, seed).write.mode("overwrite").parquet(path)
    return spark.read.parquet(path)


def synthetic_labels(spark, users: int, personas: int, fraction: float, seed: int):
    """``fraction`` of users with 1–5 distinct random personas (``user_idx, persona_idx``)."""
    chosen = spark.range(users).where(F.rand(seed + 2) < fraction).select(F.col("id").cast("int").alias("user_idx"))
    count = F.least(F.lit(personas), (1 + F.floor(F.rand(seed + 3) * 5)).cast("int"))
    picks = F.slice(F.shuffle(F.sequence(F.lit(0), F.lit(personas - 1)), seed + 4), 1, count)
    return chosen.select("user_idx", F.explode(picks).alias("persona_idx"))


def dense_scores(scores, n_users: int, n_personas: int) -> np.ndarray:
    table = scores.toArrow()
    out = np.zeros((n_users, n_personas))
    if table.num_rows:
        values = table.column("scores").combine_chunks().flatten().to_numpy().reshape(-1, n_personas)
        out[table.column("user_idx").to_numpy()] = values
    return out


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Per row, the k best columns; scores rounded to 12 decimals and ties broken by column, so float
    noise between two exact engines does not reorder equal scores."""
    rounded = np.round(scores, 12)
    return np.argsort(-rounded, axis=1, kind="stable")[:, :k]


def top_k_agreement(psi: np.ndarray, exact: np.ndarray, k: int = 5) -> float:
    """Mean share of each reached user's exact top-k personas (those with a score) that ``psi`` also ranks top-k."""
    reached = exact.any(1)
    if not reached.any():
        return 1.0
    want, got = top_k(exact[reached], k), top_k(psi[reached], k)
    scored = np.take_along_axis(exact[reached], want, 1) > 0
    kept = np.take_along_axis(psi[reached], got, 1) > 0
    hits = np.array([len(set(w[s]) & set(g[h])) for w, s, g, h in zip(want, scored, got, kept)])
    return float((hits / scored.sum(1)).mean())


def graphframes_settings(args) -> dict:
    """SparkConf fields that load GraphFrames when a GraphFrames row is asked for: the jars in
    ``--graphframes-jars`` beside the Maven-resolved Delta connector, else GraphFrames from Maven too."""
    if not (args.graphframes or args.components):
        return {}
    if not args.graphframes_jars:
        return {"graphframes": True}
    jars = sorted(str(p) for p in Path(args.graphframes_jars).glob("graphframes-*.jar"))
    if len(jars) != 2:
        raise SystemExit(f"--graphframes-jars: want GraphFrames' two jars (core, graphx) in {args.graphframes_jars}, "
                         f"found {jars}")
    return {"extra": {"spark.jars": ",".join(jars)}}


def time_components(edges, algorithm: str, common: dict, memory: PeakMemory) -> None:
    """One ``components_<algorithm>`` line: the seconds ``component_summary`` takes on ``edges``, and its summary."""
    load_before = os.getloadavg()[0]
    memory.reset()
    started = time.perf_counter()
    summary = component_summary(edges, algorithm=algorithm)
    seconds = time.perf_counter() - started
    print(json.dumps({"engine": f"components_{algorithm.replace('-', '_')}", **common, "seconds": round(seconds, 3),
                      **{k: v for k, v in summary.items() if k != "algorithm"}, "peak_rss_mb": round(memory.peak_mb),
                      "load_before": load_before, "load_after": os.getloadavg()[0]}), flush=True)


def add_graph_arguments(parser: argparse.ArgumentParser) -> None:
    """The generated graph's flags (``synthetic_edges``), shared by the benchmarks that generate one."""
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--edges", type=int, default=1_000_000)
    parser.add_argument("--personas", type=int, default=51)
    parser.add_argument("--zipf", type=float, default=1.0, help="item popularity exponent")
    parser.add_argument("--sigma", type=float, default=1.0, help="lognormal sigma of user activity")
    parser.add_argument("--seed", type=int, default=7)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_graph_arguments(parser)
    parser.add_argument("--labelled-frac", type=float, default=0.05)
    parser.add_argument("--ell", type=int, nargs="+", default=[1, 2], help="ℓ̂ values to run")
    parser.add_argument("--eps", type=float, default=0.02)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--rev-aff", action="store_true", help="also run the pure-Python RevAff (small graphs)")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="10g")
    parser.add_argument("--graphframes", action="store_true",
                        help="also run Ψ by GraphFrames' aggregateMessages (exact); its lines carry "
                             "vs_spark_exact(_stored) = its seconds / spark_exact(_stored)'s of the same ℓ̂")
    parser.add_argument("--components", action="store_true",
                        help="also time the connected components of the edges: large-star against GraphFrames' "
                             "graphframes and graphx algorithms")
    parser.add_argument("--graphframes-jars", help="folder with GraphFrames' two jars (else resolved from Maven)")
    parser.add_argument("--connect", action="store_true",
                        help="a Spark Connect session (a local server on --master) instead of a classic one")
    parser.add_argument("--edges-cache", help="folder for the generated edges (parquet): reused when present")
    parser.add_argument("--broadcast-max-mb", type=float, help="affinity.broadcast_max_bytes in MiB (default: the "
                        "engine's); lower it to send a large hop state through the shuffle join")
    parser.add_argument("--repeat", type=int, default=1, help="run the Spark rows of every ℓ̂ this many times, "
                        "interleaved (timings on a shared machine); lines carry run = 0, 1, ...")
    parser.add_argument("--engines", nargs="+", help="run only these rows (e.g. spark_exact at 100 M edges, where "
                        "scipy and the stored-tile write are not the point); errors are then against nothing")
    parser.add_argument("--out", default=str(RESULTS / "affinity.jsonl"), help="appends here; - prints only")
    args = parser.parse_args(argv)
    append_results_to(args.out)

    spark = get_spark(SparkConf(master=args.master, remote=args.master if args.connect else None, shuffle_partitions=2,
                                default_parallelism=2, driver_memory=args.driver_memory, app_name="affinity-benchmark",
                                **graphframes_settings(args)))
    prefix = "connect_" if args.connect else ""
    memory = PeakMemory()
    with tempfile.TemporaryDirectory(prefix="affinity-bench-") as tmp:
        cached = args.edges_cache or f"{tmp}/edges"
        edges = cached_edges(spark, cached, args.users, args.items, args.edges, args.zipf, args.sigma, args.seed).persist()
        n_edges = edges.count()
        labels = synthetic_labels(spark, args.users, args.personas, args.labelled_frac, args.seed)
        prototypes = prototype_labels(labels, args.personas, args.beta).localCheckpoint()
        # scipy's inputs straight from the parquet files: at 100 M edges a collect would pass maxResultSize
        arrays = pyarrow.dataset.dataset(cached, format="parquet").to_table(columns=["user_idx", "item_idx"])
        u, i = arrays.column("user_idx").to_numpy(), arrays.column("item_idx").to_numpy()
        L = dense_scores(prototypes.withColumnRenamed("vec", "scores"), args.users, args.personas)
        del arrays
        common = {"edges": n_edges, "users": args.users, "items": args.items, "personas": args.personas,
                  "labelled_users": int(np.count_nonzero(L.any(1)))}

        seconds_of: dict[tuple[str, int], float] = {}

        def report(engine: str, ell: int, eps: float, run, exact: np.ndarray | None = None,
                   relative_to: tuple[str, ...] = (), extra: dict | None = None) -> np.ndarray:
            """Time ``run`` (→ result, extras); the result may be a callable giving Ψ, called untimed."""
            load_before = os.getloadavg()[0]
            memory.reset()
            jit_before = jit_compile_ms(spark)
            started = time.perf_counter()
            result, phases = run()
            seconds = time.perf_counter() - started
            jit_ms = None if jit_before is None else jit_compile_ms(spark) - jit_before
            peak_mb = memory.peak_mb
            psi = result() if callable(result) else result
            err = np.abs(psi - (psi if exact is None else exact))
            agreement = {} if exact is None else {
                "top5_agreement": round(top_k_agreement(psi, exact), 5),
                "max_rel_err": float(np.max(err / np.where(exact > 0, exact, np.inf), initial=0.0))}
            line = {"engine": engine, **common, "ell": ell, "eps": eps, "seconds": round(seconds, 3),
                    "max_abs_err": float(err.max()), "mean_abs_err": float(err.mean()), **agreement,
                    "peak_rss_mb": round(peak_mb), "users_reached": int(np.count_nonzero(psi.any(1))),
                    "users_nonempty_share": round(float(psi.any(1).mean()), 5),
                    "load_before": load_before, "load_after": os.getloadavg()[0], "jit_compile_ms": jit_ms,
                    **(extra or {}), **phases}
            seconds_of[engine, ell] = seconds
            for other in relative_to:  # how many times the other engine's time of this ℓ̂
                line[f"vs_{other.removeprefix(prefix)}"] = round(seconds / seconds_of[other, ell], 2)
            print(json.dumps(line), flush=True)
            return psi

        def spark_run(conf: AffinityConf, stored_tiles: str | None = None, compute=compute_affinity):
            def run():
                trace: list[dict] = []
                graph = (AffinityGraph.from_table(spark.read.format("delta").load(stored_tiles)).load(trace)
                         if stored_tiles else None)
                scores = compute(graph or edges, prototypes, args.personas, conf, trace)
                started = time.perf_counter()
                scores.write.format("noop").mode("overwrite").save()  # every score computed, nothing collected
                trace.append({"phase": "unpack scores", "seconds": round(time.perf_counter() - started, 3)})
                if graph is not None:
                    graph.release()
                return (lambda: dense_scores(scores, args.users, args.personas)), {"phases": trace}
            return run

        limit = {} if args.broadcast_max_mb is None else {"broadcast_max_bytes": int(args.broadcast_max_mb * 2**20)}

        def write_tiles():
            """What build-graph pays once per edges version: cut the tiles and write them as a table."""
            trace: list[dict] = []
            graph = prepare_graph(edges, AffinityConf(beta=args.beta, **limit), args.personas, trace=trace)
            started = time.perf_counter()
            graph.to_table().write.format("delta").mode("overwrite").save(f"{tmp}/edge_tiles")
            trace.append({"phase": "write tiles", "seconds": round(time.perf_counter() - started, 3)})
            graph.release()
            return np.zeros((args.users, args.personas)), {"phases": trace}

        # Warm-up on a tiny graph: JIT, Python worker start-up and the Delta connector's first table
        # (a stage has read several before it propagates) are not part of any engine's time. The JVM
        # still compiles through the first full-size calls: jit_compile_ms on each line shows how much.
        tiny = edges.where(F.col("user_idx") < 50)
        compute_affinity(tiny, prototypes.where(F.col("user_idx") < 50), args.personas).count()
        tiny_graph = prepare_graph(tiny, AffinityConf(), args.personas)
        tiny_graph.to_table().write.format("delta").save(f"{tmp}/warm_tiles")
        tiny_graph.release()
        AffinityGraph.from_table(spark.read.format("delta").load(f"{tmp}/warm_tiles")).load().release()
        if args.graphframes:
            graphframes_affinity(tiny, prototypes.where(F.col("user_idx") < 50), args.personas).count()
        def wanted(engine: str) -> bool:
            return args.engines is None or engine in args.engines

        if wanted("tiles_write") or wanted("spark_exact_stored"):
            report(prefix + "tiles_write", 0, 0.0, write_tiles)
        for ell in args.ell:
            exact = (report("scipy_exact", ell, 0.0, lambda ell=ell: (exact_affinity(u, i, L, ell, n_items=args.items), {}))
                     if wanted("scipy_exact") else None)
            for run in range(args.repeat):
                for engine, eps, stored, precision in (
                        ("spark_exact", 0.0, None, "float64"),
                        ("spark_exact_stored", 0.0, f"{tmp}/edge_tiles", "float64"),
                        ("spark_pruned", args.eps, None, "float64"),
                        ("spark_float32", 0.0, None, "float32"),
                        ("spark_float32_stored", 0.0, f"{tmp}/edge_tiles", "float32")):
                    if wanted(engine):
                        report(prefix + engine, ell, eps, spark_run(
                            AffinityConf(ell=ell, eps=eps, beta=args.beta, state_precision=precision, **limit), stored),
                            exact, extra={"state_precision": precision, "run": run})
            if args.graphframes:
                report("graphframes", ell, 0.0, spark_run(AffinityConf(ell=ell, beta=args.beta),
                                                          compute=graphframes_affinity),
                       exact, tuple(e for e in ("spark_exact", "spark_exact_stored") if (e, ell) in seconds_of))
            if args.rev_aff:
                report("rev_aff", ell, args.eps, lambda ell=ell: (rev_aff(u, i, L, ell, args.eps, n_items=args.items), {}), exact)
        if args.components:
            for algorithm in ("large-star", "graphframes", "graphx"):
                time_components(edges, algorithm, {**common, "ell": 0}, memory)
        edges.unpersist()
    memory.stop()
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
