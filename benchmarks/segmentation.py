"""Segmentation quality and speed on real data (paper §7.4, Tables 8 and 9).

    python benchmarks/segmentation.py --data ../shared/data [--robustness]

* personas: the paper's GPT-4 user labels of the OnlineRetail split (online_retail_gplr), one-hot →
  PCA → L2 → KMeans per k → silhouette, exactly the ``segment`` stage's pipeline;
* rfm: recency / frequency / monetary deciles of the raw Online Retail sample (online_retail_raw) through
  the same pipeline (the GPLR split has no dates or prices, so RFM comes from the raw lines);
* ``--robustness``: two-period stability on the raw sample, personas from the offline embedding labeler
  (it embeds the sample's product names: minutes on 2 cores) and RFM deciles.

Prints one JSON line per (representation, k) ``{"bench": "segmentation", "representation", "users", "k",
"clusters", "silhouette", "seconds"}`` (seconds: the whole KMeans sweep of that representation) and, with
``--robustness``, one per representation ``{"bench": "robustness", "representation", "users",
"unchanged", "share_unchanged", "seconds"}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from persona_spark import segment
from persona_spark.config import LabelingConf, SparkConf, TablesConf
from persona_spark.graph import build_graph, load_gplr_split
from persona_spark.io import TableStore
from persona_spark.personas import load_persona_set
from persona_spark.session import get_spark
from persona_spark.stages.cache import make_backend


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


def sweep(name: str, features, ks: list[int], components: int, key: str) -> None:
    started = time.perf_counter()
    result = segment.segment_users(features, ks, components, key=key)
    seconds = round(time.perf_counter() - started, 2)
    users = result.embedded.count()
    result.release()
    for row in result.silhouettes:
        print(json.dumps({"bench": "segmentation", "representation": name, "users": users, **row,
                          "silhouette": round(row["silhouette"], 4), "seconds": seconds}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the shared data folder (online_retail_gplr, online_retail_raw)")
    parser.add_argument("--ks", type=int, nargs="+", default=[5, 15, 25, 35])
    parser.add_argument("--components", type=int, default=3)
    parser.add_argument("--robustness", action="store_true", help="also the two-period stability (embeds product names)")
    args = parser.parse_args(argv)

    spark = get_spark(SparkConf(master="local[2]", shuffle_partitions=4, default_parallelism=2))
    split = args.data / "online_retail_gplr"
    personas = load_gplr_split(spark, split)["reference_personas"]  # the authors' GPT-4 user labels
    n_personas = len(load_persona_set(split / "personas.json"))
    sweep("personas", segment.persona_vectors(personas, n_personas), args.ks, args.components, "user_idx")

    transactions = raw_transactions(spark, args.data / "online_retail_raw" / "online_retail_sample_40k.csv").localCheckpoint()
    sweep("rfm", segment.rfm_vectors(transactions).features, args.ks, args.components, "customer_id")

    if args.robustness:
        with tempfile.TemporaryDirectory() as folder:
            store = TableStore(spark, TablesConf(root=folder))
            users, items, _ = build_graph(transactions, test_fraction=0.0)
            users, items = users.localCheckpoint(), items.localCheckpoint()
            conf = LabelingConf()
            backend = make_backend(conf, load_persona_set(split / "personas.json"), "user", store)
            started = time.perf_counter()
            labeler = segment.period_labeler(backend.label, users, items)
            for row in segment.robustness(transactions, labeler).collect():
                print(json.dumps({"bench": "robustness", **row.asDict(), "share_unchanged": round(row["share_unchanged"], 4),
                                  "seconds": round(time.perf_counter() - started, 2)}), flush=True)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
