"""Labeling throughput against the loopback OpenAI-protocol server (latency + injected 429s).

    python benchmarks/labeling.py                      # 10,000 users, 200 ms, 10 % 429 (Retry-After: 1)
    python benchmarks/labeling.py --users-per-request 5

Runs the real path: synthetic train edges -> ``build_user_histories`` -> ``label_entities`` with the
openai backend (mapInPandas, async client per partition, retries, journal, Delta cache table in a
temporary folder). Prints one JSON line:
``{"users", "seconds", "users_per_second", "requests", "retries", "lost", ...}`` where ``lost`` is
the number of users without a valid answer and ``retries`` the requests beyond one per prompt.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time

from pyspark.sql import functions as F
from results_file import RESULTS, append_results_to

from persona_spark.config import DEFAULT_PERSONAS, LabelingConf, SparkConf, TablesConf
from persona_spark.labeling import build_user_histories
from persona_spark.personas import load_persona_set
from persona_spark.runtime.session import get_spark
from persona_spark.stages.cache import label_entities
from persona_spark.tables.store import TableStore
from persona_spark.testing.openai_server import LoopbackChatServer, obedient, with_rate_limits

KEY_ENV = "PS_BENCHMARK_KEY"


def synthetic_graph(spark, users: int, items: int, per_user: int):
    edges = (
        spark.range(users * per_user)
        .select(
            (F.col("id") / per_user).cast("int").alias("user_idx"),
            ((F.col("id") * 7919) % items).cast("int").alias("item_idx"),
            (1 + F.col("id") % 3).cast("int").alias("n_purchases"),
            (1 + F.col("id") % 5).alias("quantity"),
            F.lit(None).cast("timestamp").alias("first_ts"),
            F.lit(None).cast("timestamp").alias("last_ts"),
            F.lit("train").alias("split"),
        )
        .dropDuplicates(["user_idx", "item_idx"])
    )
    catalog = spark.range(items).select(
        F.col("id").cast("int").alias("item_idx"),
        F.col("id").cast("string").alias("item_id"),
        F.concat(F.lit("PRODUCT NUMBER "), F.col("id").cast("string"), F.lit(" CERAMIC MUG")).alias("item_name"),
        F.lit(1).alias("degree"),
    )
    return edges, catalog


def rate_limit_figures(server: LoopbackChatServer, tpm: int) -> dict:
    """429s before/after the first minute, and the tokens admitted per minute after it (the bucket
    starts full, so the first minute carries a burst) relative to the limit."""
    start = min([t for t, _ in server.accepted] + server.rejected)
    late = [(t, n) for t, n in server.accepted if t - start >= 60]
    span = (late[-1][0] - late[0][0]) if len(late) > 1 else 0.0
    admitted = sum(n for _, n in late[1:]) / span * 60 if span else 0.0
    return {
        "tpm_limit": tpm,
        "http_429_first_minute": sum(1 for t in server.rejected if t - start < 60),
        "http_429_after_first_minute": sum(1 for t in server.rejected if t - start >= 60),
        "tokens_per_minute_after_first_minute": round(admitted),
        "share_of_limit": round(admitted / tpm, 3),
        "run_minutes": round((max(t for t, _ in server.accepted) - start) / 60, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the server waits before every reply")
    parser.add_argument("--rate-limited", type=float, default=0.10, help="share of requests answered 429")
    parser.add_argument("--retry-after", type=float, default=1.0, help="Retry-After of those 429s, seconds")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight per partition")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--users-per-request", type=int, default=1)
    parser.add_argument("--chunk-size", type=int, default=5000)
    parser.add_argument("--tpm", type=int, default=0, help="tokens per minute the server enforces and the job's shared budget uses")
    parser.add_argument("--out", default=str(RESULTS / "labeling.jsonl"), help="appends here; - prints only")
    args = parser.parse_args(argv)
    append_results_to(args.out)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")

    spark = get_spark(SparkConf(master="local[2]", shuffle_partitions=2, default_parallelism=2))
    personas = load_persona_set(DEFAULT_PERSONAS)
    os.environ[KEY_ENV] = "sk-benchmark"
    responder = with_rate_limits(obedient(lambda uid: [personas.names[int(uid) % len(personas)]]), args.rate_limited, args.retry_after)
    with tempfile.TemporaryDirectory() as tmp, LoopbackChatServer(responder, latency_s=args.latency, tokens_per_minute=args.tpm) as server:
        store = TableStore(spark, TablesConf(root=f"{tmp}/tables"))
        edges, items = synthetic_graph(spark, args.users, items=500, per_user=6)
        requests = build_user_histories(edges, items).localCheckpoint()
        requests.count()
        conf = LabelingConf.model_validate({
            "backend": "openai", "chunk_size": args.chunk_size, "journal_dir": f"{tmp}/journal", "progress_interval_s": 5,
            "openai": {"base_url": server.base_url, "api_key_env": KEY_ENV, "model": "loopback-model",
                       "concurrency": args.concurrency, "partitions": args.partitions,
                       "users_per_request": args.users_per_request, "timeout_s": 30, "max_attempts": 8,
                       "tokens_per_minute": args.tpm},
        })
        started = time.perf_counter()
        labels = label_entities(store, requests, personas, conf, "user")
        ok = labels.filter(F.col("status") == "ok").count()
        seconds = time.perf_counter() - started
        requests_made = server.request_count
        result = {
            "users": args.users,
            "seconds": round(seconds, 2),
            "users_per_second": round(args.users / seconds, 1),
            "requests": requests_made,
            "retries": requests_made - math.ceil(args.users / args.users_per_request),
            "lost": args.users - ok,
            "http_429": server.statuses.get(429, 0),
            "latency_s": args.latency,
            "concurrency": args.concurrency,
            "partitions": args.partitions,
            "users_per_request": args.users_per_request,
            "cpu_count": os.cpu_count(),
        }
        if args.tpm:
            result.update(rate_limit_figures(server, args.tpm))
    print(json.dumps(result))
    return 0 if result["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
