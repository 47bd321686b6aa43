"""10,000 users through the Batch API path against the loopback server, 5 % of the lines faulty.

    python benchmarks/labeling_batch.py                                  # 10,000 users, 5 % faulty
    python benchmarks/labeling_batch.py --users 2000 --max-lines 500

Runs the real path (``label_entities`` with ``labeling.backend=openai_batch``: Spark renders the
JSONL lines, the driver splits them into batches of ``--max-lines``, uploads, polls, downloads and
maps back; a Delta cache table and the ``label_batches`` ledger in a temporary folder). Faulty
lines are missing, duplicated, malformed or failed in equal shares. Prints one JSON line: users,
rows, lost (users without any row), ok / error rows, lines submitted twice, batches, and the ledger's
cost at the Batch API rates next to what the same tokens cost synchronously.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time

from persona_spark.config import DEFAULT_PERSONAS, LabelingConf, SparkConf, TablesConf
from persona_spark.labeling import build_user_histories, summarize
from persona_spark.labeling.pricing import rates
from persona_spark.personas import load_persona_set
from persona_spark.runtime.session import get_spark
from persona_spark.stages.cache import label_entities
from persona_spark.tables.store import TableStore
from persona_spark.testing.openai_server import BatchFaults, LoopbackChatServer, obedient, random_line_faults

sys.path.insert(0, os.path.dirname(__file__))
from labeling import KEY_ENV, synthetic_graph  # noqa: E402
from results_file import RESULTS, append_results_to  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--faulty", type=float, default=0.05, help="share of lines with a scripted fault")
    parser.add_argument("--max-lines", type=int, default=4000, help="lines per batch (the API allows 50,000)")
    parser.add_argument("--out", default=str(RESULTS / "labeling_batch.jsonl"), help="appends here; - prints only")
    args = parser.parse_args(argv)
    append_results_to(args.out)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")

    spark = get_spark(SparkConf(master="local[2]", shuffle_partitions=2, default_parallelism=2))
    personas = load_persona_set(DEFAULT_PERSONAS)
    os.environ[KEY_ENV] = "sk-benchmark"
    with tempfile.TemporaryDirectory() as tmp, LoopbackChatServer(obedient(lambda uid: [personas.names[int(uid) % len(personas)]])) as server:
        server.batch_faults = BatchFaults(line_fault=random_line_faults(args.faulty, seed=1))
        store = TableStore(spark, TablesConf(root=f"{tmp}/tables"))
        edges, items = synthetic_graph(spark, args.users, items=500, per_user=6)
        requests = build_user_histories(edges, items).localCheckpoint()
        requests.count()
        conf = LabelingConf.model_validate({
            "backend": "openai_batch", "journal_dir": f"{tmp}/journal",
            "batch": {"dir": f"{tmp}/batches", "max_lines": args.max_lines, "poll_initial_s": 0.5, "poll_max_s": 2},
            "openai": {"base_url": server.base_url, "api_key_env": KEY_ENV, "model": "loopback-model"},
        })
        started = time.perf_counter()
        labels = label_entities(store, requests, personas, conf, "user")
        summary = summarize(labels, conf)
        seconds = time.perf_counter() - started
        labelled = labels.select("user_idx").distinct().count()
        sync_price = rates(conf.openai, "sync").cost(summary["prompt_tokens"], summary["cached_prompt_tokens"], summary["completion_tokens"])
        faulty = sum(1 for cid in server.submitted_ids if server.batch_faults.line_fault(cid))
        result = {
            "users": args.users,
            "rows": summary["entities"],
            "lost": args.users - labelled,
            "ok": summary["ok"],
            "error": summary["error"],
            "faulty_lines": faulty,
            "lines_submitted": sum(server.submitted_ids.values()),
            "lines_submitted_twice": sum(1 for n in server.submitted_ids.values() if n > 1),
            "batches": len(server.batches),
            "max_lines": args.max_lines,
            "prompt_tokens": summary["prompt_tokens"],
            "completion_tokens": summary["completion_tokens"],
            "cost_batch_usd": summary["cost_usd"],
            "cost_same_tokens_sync_usd": round(sync_price, 4),
            "channels": sorted(r["channel"] for r in labels.select("channel").distinct().collect()),
            "seconds": round(seconds, 1),
            "cpu_count": os.cpu_count(),
        }
    print(json.dumps(result))
    return 0 if result["lost"] == 0 and result["lines_submitted_twice"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
