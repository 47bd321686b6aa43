"""Does the offline embedding labeler tell customers apart? Demo shop vs planted personas, Instacart sample.

    python benchmarks/offline_labeler.py [--instacart-conf conf/instacart.yaml] [--skip-instacart]

Runs the real stages (Delta tables in a temporary folder, ``labeling.backend=embedding``):

* demo shop: generate -> ingest -> build-graph -> gplr -> evaluate against the planted personas.
  Prints ``{"dataset": "demo_shop", "micro_f1", "macro_f1", "precision", "recall",
  "baseline_micro_f1", "users", "recall_per_persona": {name: recall}, "share_per_persona": {name:
  share of customers predicted}, "planted_share_per_persona", "seconds"}``.
* Instacart sample (skipped when the data is absent): ingest -> build-graph -> gplr. Prints
  ``{"dataset": "instacart_sample", "customers", "max_persona_share", "max_persona", "top_shares",
  "seconds"}``; the sample has no reference labels, so only how spread the personas are is measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from pyspark.sql import functions as F
from results_file import RESULTS, append_results_to

from persona_spark.config import load_config
from persona_spark.personas import load_persona_set
from persona_spark.runtime.session import get_spark
from persona_spark.stages import STAGES, RunContext
from persona_spark.tables.store import TableStore

REPO = Path(__file__).resolve().parent.parent


def run_stages(cfg, store, names: list[str]) -> dict:
    return {name: STAGES[name](RunContext(cfg, store)) for name in names}


def persona_shares(store: TableStore, names: list[str]) -> dict[str, float]:
    """Share of all customers (``users``) carrying each persona in ``personas``: |R| rows."""
    customers = store.read_table("users").count()
    counts = store.read_table("personas").groupBy("persona_idx").agg(F.countDistinct("user_idx").alias("n")).collect()
    shares = {names[r["persona_idx"]]: round(r["n"] / customers, 4) for r in counts}
    return dict(sorted(shares.items(), key=lambda kv: -kv[1]))


def demo_shop(root: Path, overrides: list[str]) -> dict:
    started = time.perf_counter()
    cfg = load_config(REPO / "conf" / "local.yaml", [f"tables.root={root / 'demo'}", "labeling.backend=embedding", *overrides])
    store = TableStore(get_spark(cfg.spark), cfg.tables)
    run_stages(cfg, store, ["generate", "ingest", "build-graph", "gplr"])
    evaluation = STAGES["evaluate"](RunContext(cfg, store))
    names = load_persona_set(cfg.personas).names
    per = store.read_table("evaluation_per_persona").filter(F.col("run_id") == evaluation["run_id"]).collect()
    planted = store.read_table("planted_personas").groupBy("persona_idx").agg(F.countDistinct("customer_id").alias("n")).collect()
    customers = store.read_table("planted_personas").select("customer_id").distinct().count()
    return {
        "dataset": "demo_shop",
        **{k: evaluation[k] for k in ("users", "micro_f1", "macro_f1", "precision", "recall", "baseline_micro_f1")},
        "recall_per_persona": {names[r["persona_idx"]]: round(r["recall"], 4) for r in sorted(per, key=lambda r: r["persona_idx"])},
        "min_recall": round(min(r["recall"] for r in per), 4),
        "share_per_persona": persona_shares(store, names),
        "planted_share_per_persona": {names[r["persona_idx"]]: round(r["n"] / customers, 4) for r in sorted(planted, key=lambda r: r["persona_idx"])},
        "seconds": round(time.perf_counter() - started, 1),
    }


def instacart(root: Path, conf_path: Path, overrides: list[str]) -> dict | None:
    cfg = load_config(conf_path, [f"tables.root={root / 'instacart'}", "labeling.backend=embedding", *overrides])
    if not Path(cfg.ingest.source).exists():
        print(f"instacart sample not found at {cfg.ingest.source}: skipped", file=sys.stderr)
        return None
    started = time.perf_counter()
    store = TableStore(get_spark(cfg.spark), cfg.tables)
    run_stages(cfg, store, ["ingest", "build-graph", "gplr"])
    shares = persona_shares(store, load_persona_set(cfg.personas).names)
    top = next(iter(shares.items()))
    return {"dataset": "instacart_sample", "customers": store.read_table("users").count(),
            "max_persona_share": top[1], "max_persona": top[0], "top_shares": dict(list(shares.items())[:8]),
            "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instacart-conf", type=Path, default=REPO / "conf" / "instacart.yaml")
    parser.add_argument("--skip-instacart", action="store_true")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for both runs, e.g. --set labeling.embedding.temperature=0.5")
    parser.add_argument("--out", default=str(RESULTS / "offline_labeler.jsonl"), help="appends here; - prints only")
    args = parser.parse_args(argv)
    append_results_to(args.out)
    with tempfile.TemporaryDirectory(prefix="offline_labeler_") as folder:
        root = Path(folder)
        results = []
        if not args.skip_demo:
            results.append(demo_shop(root, args.overrides))
        if not args.skip_instacart:
            results.append(instacart(root, args.instacart_conf, args.overrides))
        for result in results:
            if result is not None:
                print(json.dumps({**result, "overrides": args.overrides}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
