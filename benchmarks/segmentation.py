"""Segmentation quality and speed on real data (paper §7.4, Tables 8 and 9), under either protocol.

    python benchmarks/segmentation.py --data "$PERSONA_SPARK_SHARED_DATA" [--robustness] [--protocol project|paper|both]

``--protocol project`` (the default, the ``segment`` stage's default pipeline):

* personas: the paper's GPT-4 user labels of the OnlineRetail split (online_retail_gplr), one-hot →
  PCA → L2 → KMeans per k → Spark's (squared Euclidean) silhouette;
* rfm: recency / frequency / monetary deciles of the raw Online Retail sample (online_retail_raw) through
  the same pipeline (the GPLR split has no dates or prices, so RFM comes from the raw lines);
* ``--robustness``: two-period stability on the raw sample (each customer's orders halved), personas
  from the offline embedding labeler (it embeds the sample's product names, the slowest step) and
  RFM deciles.

``--protocol paper`` (``segment.protocol=paper``, see ``persona_spark.segment``): Euclidean silhouette;
the first six months (2010-12-01 to 2011-06-01) of the raw sample; rfm = the raw R, F, M values, L2 only;
personas reduced to 3-D by PCA, twice: ``labels: "offline"`` = the offline embedding labeler on each
customer's first-six-months purchases (the same customers as RFM), ``labels: "gpt4"`` = the paper's GPT-4
labels (whole training history: the split has no dates, and its user index cannot be mapped to the raw
sample's customers). ``--robustness``: Table 8 (calendar half-years, 300 customers with > 10 lines in the
year, RFM deciles vs the three most dominant offline-labeler personas).

Prints one JSON line per (protocol, representation, k) ``{"bench": "segmentation", "protocol",
"representation", "labels", "users", "k", "clusters", "silhouette", "seconds"}`` (seconds: the whole KMeans
sweep of that representation) and, with ``--robustness``, one per (protocol, representation)
``{"bench": "robustness", "protocol", "representation", "users", "unchanged", "share_unchanged", "seconds"}``
(paper: also ``in_both_periods``; ``users`` is the whole sample).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from results_file import RESULTS, append_results_to

from persona_spark import segment
from persona_spark.config import LabelingConf, SparkConf, TablesConf
from persona_spark.graph import build_graph, load_gplr_split
from persona_spark.labeling import EmbeddingLabeler
from persona_spark.personas import load_persona_set
from persona_spark.runtime.session import get_spark
from persona_spark.stages.cache import bind_labeler
from persona_spark.tables.store import TableStore


def raw_transactions(spark, csv: Path):
    """The raw sample as canonical transactions: known customers, positive quantities (what ingest keeps)."""
    raw = pd.read_csv(csv, dtype={"InvoiceNo": str, "StockCode": str})
    raw = raw[raw["CustomerID"].notna() & (raw["Quantity"] > 0) & ~raw["InvoiceNo"].str.startswith("C")]
    return spark.createDataFrame(
        pd.DataFrame(
            {
                "customer_id": raw["CustomerID"].astype(int).astype(str),
                "order_id": raw["InvoiceNo"],
                "item_id": raw["StockCode"],
                "item_name": raw["Description"].fillna(raw["StockCode"]),
                "quantity": raw["Quantity"].astype("int64"),
                "unit_price": raw["UnitPrice"].astype(float),
                "ts": pd.to_datetime(raw["InvoiceDate"]),
            }
        )
    )


def sweep(name: str, features, ks: list[int], components: int, key: str, protocol: str, labels: str | None) -> None:
    paper = protocol == "paper"
    started = time.perf_counter()
    clustering = segment.Clustering(components, silhouette="euclidean" if paper else "squared_euclidean")
    result = segment.segment_users(features, ks, clustering, key=key, reduce=not (paper and name == "rfm"))
    seconds = round(time.perf_counter() - started, 2)
    users = result.embedded.count()
    result.release()
    for row in result.silhouettes:
        print(json.dumps({"bench": "segmentation", "protocol": protocol, "representation": name, "labels": labels,
                          "users": users, **row, "silhouette": round(row["silhouette"], 4), "seconds": seconds}),
              flush=True)


def stability(protocol: str, rows, started: float) -> None:
    for row in rows:
        print(json.dumps({"bench": "robustness", "protocol": protocol, **row.asDict(),
                          "share_unchanged": round(row["share_unchanged"], 4),
                          "seconds": round(time.perf_counter() - started, 2)}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the shared data folder (online_retail_gplr, online_retail_raw)")
    parser.add_argument("--ks", type=int, nargs="+", default=[5, 15, 25, 35])
    parser.add_argument("--components", type=int, default=3)
    parser.add_argument("--robustness", action="store_true", help="also the two-period stability (embeds product names)")
    parser.add_argument("--protocol", choices=["project", "paper", "both"], default="project",
                        help="the project's pipeline, the paper's Tables 8/9 protocol, or both")
    parser.add_argument("--out", default=str(RESULTS / "{bench}.jsonl"), help="appends here per bench; - prints only")
    args = parser.parse_args(argv)
    append_results_to(args.out)
    protocols = ["project", "paper"] if args.protocol == "both" else [args.protocol]

    spark = get_spark(SparkConf(master="local[2]", shuffle_partitions=4, default_parallelism=2))
    split = args.data / "online_retail_gplr"
    personas = load_gplr_split(spark, split)["reference_personas"]  # the authors' GPT-4 user labels
    persona_set = load_persona_set(split / "personas.json")
    transactions = raw_transactions(spark, args.data / "online_retail_raw" / "online_retail_sample_40k.csv").localCheckpoint()
    with tempfile.TemporaryDirectory() as folder:
        labeler = None
        if "paper" in protocols or args.robustness:  # the offline labeler over the raw sample's products
            store = TableStore(spark, TablesConf(root=folder))
            users, items, _ = build_graph(transactions, test_fraction=0.0)
            users, items = users.localCheckpoint(), items.localCheckpoint()
            backend = bind_labeler(EmbeddingLabeler(), LabelingConf(), persona_set, "user", store)  # items embedded once
            labeler = segment.period_labeler(backend.label, users, items)
        for protocol in protocols:
            if protocol == "project":
                sweep("personas", segment.persona_vectors(personas, len(persona_set)), args.ks, args.components,
                      "user_idx", protocol, "gpt4")
                sweep("rfm", segment.rfm_vectors(transactions).features, args.ks, args.components, "customer_id",
                      protocol, None)
            else:
                sweep("personas", segment.persona_vectors(personas, len(persona_set)), args.ks, args.components,
                      "user_idx", protocol, "gpt4")
                first = segment.first_six_months(transactions).localCheckpoint()
                labelled = labeler(first).select("customer_id", "persona_idx").localCheckpoint()
                sweep("personas", segment.persona_vectors(labelled, len(persona_set), key="customer_id"), args.ks,
                      args.components, "customer_id", protocol, "offline")
                sweep("rfm", segment.rfm_value_vectors(first).features, args.ks, args.components, "customer_id",
                      protocol, None)
        if args.robustness:
            for protocol in protocols:
                started = time.perf_counter()
                if protocol == "project":
                    stability(protocol, segment.robustness(transactions, labeler).collect(), started)
                else:
                    stability(protocol, segment.paper_robustness(transactions, labeler).collect(), started)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
