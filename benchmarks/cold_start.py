"""Cold start through personas vs popularity, simulated honestly on a split in the paper's format.

    python benchmarks/cold_start.py --data ../shared/data/online_retail_gplr [--seeds 0 1 2]

New customers: 10 % of the users with purchases leave entirely (every edge and their persona
labels leave the training graph); LGCN3 trains on the rest; each held-out user's GPT-4 personas
stand in for what they would pick at sign-up, and all items are ranked from those alone, scored
against all their real purchases (train and test). New items: likewise 10 % of the items, users
ranked for each from its GPT-4 item personas, scored against its real buyers.
Methods: "personas" (mean of the chosen personas' LGCN3 embeddings), "persona_centroids" (mean
final embedding of the training users / items carrying those personas), "popularity" (baseline).
Prints ``{"task", "method", "seed", "ndcg@10", "f1@10", "recall@50", "queries"}`` per run, then
the mean per (task, method) and whether personas beat popularity by ≥ 10 % relative.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recommend import BENCHMARK_DEFAULTS  # noqa: E402  (the settings both benchmarks share)

from persona_spark.config import RecommendConf, parse_override
from persona_spark.recommend.coldstart import ColdStartModel
from persona_spark.recommend.data import csr, load_gplr_json
from persona_spark.recommend.metrics import hit_matrix, summarize
from persona_spark.recommend.spectral import EigenCache
from persona_spark.recommend.train import train

KS = (10, 50)
REPORTED = ("ndcg@10", "f1@10", "recall@50")
METHODS = ("personas", "persona_centroids", "popularity")


def score_rankings(rankings, held: np.ndarray, relevant_pairs: np.ndarray, n_rows: int) -> dict:
    """Metrics of one ranking per held-out query (rankings[i] belongs to held[i]) against ``relevant_pairs``."""
    relevant = csr(relevant_pairs, n_rows)
    n_relevant = np.diff(relevant[0])[held]
    top = np.stack([r.indices for r in rankings])
    return summarize(hit_matrix(top, held, relevant), n_relevant, KS)


def cold_start_run(data, task: str, conf: RecommendConf, seed: int, fraction: float, cache: EigenCache):
    """Train LGCN3 without the held-out users (or items); rank for them from personas and by popularity."""
    reduced, held = (data.holdout_users if task == "new_customers" else data.holdout_items)(fraction, seed)
    result = train(reduced, conf, seed, "lgcn3", cache)
    model = ColdStartModel.from_training(reduced, result.user_embeddings, result.item_embeddings,
                                         result.persona_embeddings)
    centroid = replace(model, query="centroid")
    everything = np.concatenate([data.train, data.test])
    if task == "new_customers":
        labels, relevant, question, n_rows = data.user_personas, everything, "recommend_for_personas", data.n_users
    else:
        labels, relevant, question, n_rows = data.item_personas, everything[:, ::-1], "audience_for_item", data.n_items
    tags = {key: labels[labels[:, 0] == key, 1].tolist() for key in held}
    k = max(KS)
    lines = []
    for method, chosen, ask in (("personas", tags, getattr(model, question)),
                                ("persona_centroids", tags, getattr(centroid, question)),
                                ("popularity", {key: [] for key in held}, getattr(model, question))):
        rankings = [ask(chosen[key], k) for key in held]
        fallback = sum(r.method == "popularity" for r in rankings) if method != "popularity" else 0
        metrics = score_rankings(rankings, held, relevant, n_rows)
        lines.append({"task": task, "method": method, "seed": seed, **{m: round(metrics[m], 5) for m in REPORTED},
                      "queries": len(held), "fell_back_to_popularity": fallback,
                      "train_seconds": round(result.seconds, 1), "device": result.device})
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--fraction", type=float, default=0.1, help="share of users / items held out")
    parser.add_argument("--tasks", nargs="+", default=["new_customers", "new_items"],
                        choices=["new_customers", "new_items"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--eigen-cache", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    conf = RecommendConf(**{**BENCHMARK_DEFAULTS, "device": args.device, **dict(map(parse_override, args.overrides))})
    data = load_gplr_json(args.data)
    cache = EigenCache(args.eigen_cache)
    started = time.perf_counter()
    lines = []
    for task in args.tasks:
        for seed in args.seeds:
            for line in cold_start_run(data, task, conf, seed, args.fraction, cache):
                lines.append(line)
                print(json.dumps(line), flush=True)
    verdict = {}
    for task in args.tasks:
        mean = {method: {m: float(np.mean([l[m] for l in lines if l["task"] == task and l["method"] == method]))
                         for m in REPORTED} for method in METHODS}
        headline = "ndcg@10" if task == "new_customers" else "recall@50"
        lifts = {method: round(mean[method][headline] / mean["popularity"][headline] - 1, 4) for method in METHODS[:2]}
        verdict[task] = {"mean": {k: {m: round(v, 5) for m, v in d.items()} for k, d in mean.items()},
                         f"relative_lift_{headline}": lifts, "target_met": {m: v >= 0.10 for m, v in lifts.items()}}
    print(json.dumps({"summary": verdict, "total_seconds": round(time.perf_counter() - started, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
