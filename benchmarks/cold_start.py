"""Cold start through personas vs popularity, simulated honestly on a split in the paper's format.

    python benchmarks/cold_start.py --data "$PERSONA_SPARK_SHARED_DATA/online_retail_gplr" [--seeds 0 1 2]

New customers: 10 % of the users with purchases leave entirely (every edge and their persona
labels leave the training graph); LGCN3 trains on the rest; each held-out user's GPT-4 personas
stand in for what they would pick at sign-up, and all items are ranked from those alone, scored
against all their real purchases (train and test). New items: likewise 10 % of the items, users
ranked for each from its GPT-4 item personas, scored against its real buyers.

Methods, new customers: "personas" (mean of the chosen personas' LGCN3 embeddings against item
embeddings), "persona_centroids" (mean final embedding of the training users carrying those
personas), "popularity" (baseline). New items: "personas" (share of each customer's purchases on
items carrying those personas x activity^γ, γ chosen on validation items carved out of the
training graph, never on the held-out ones), "persona_embeddings" (LGCN3 user embeddings against
the mean persona embedding: the obvious alternative, kept for comparison), "popularity" (customers by activity).
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
from results_file import RESULTS, append_results_to

from persona_spark.config import RecommendTrainConf, parse_override
from persona_spark.recommend.coldstart import ColdStartModel, top_k_ranking
from persona_spark.recommend.data import csr, load_gplr_json
from persona_spark.recommend.metrics import hit_matrix, summarize
from persona_spark.recommend.spectral import EigenCache
from persona_spark.recommend.train import train

KS = (10, 50)
REPORTED = ("ndcg@10", "f1@10", "recall@50")
METHODS = {"new_customers": ("personas", "persona_centroids", "popularity"),
           "new_items": ("personas", "persona_embeddings", "popularity")}
EXPONENTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def score_rankings(rankings, held: np.ndarray, relevant_pairs: np.ndarray, n_rows: int) -> dict:
    """Metrics of one ranking per held-out query (rankings[i] belongs to held[i]) against ``relevant_pairs``."""
    relevant = csr(relevant_pairs, n_rows)
    n_relevant = np.diff(relevant[0])[held]
    top = np.stack([r.indices for r in rankings])
    return summarize(hit_matrix(top, held, relevant), n_relevant, KS)


def tags_of(labels: np.ndarray, keys) -> dict[int, list[int]]:
    return {int(key): labels[labels[:, 0] == key, 1].tolist() for key in keys}


def validated_exponent(reduced, fraction: float, seed: int) -> tuple[float, dict]:
    """γ with the best recall@50 on validation items held out of the *training* graph."""
    inner, held = reduced.holdout_items(fraction, seed + 1000)
    tags = tags_of(reduced.item_personas, held)
    held = np.array([item for item in held if tags[item]])
    buyers = np.concatenate([reduced.train, reduced.test])[:, ::-1]
    model = ColdStartModel.from_training(inner, np.zeros((inner.n_users, 1)), np.zeros((inner.n_items, 1)),
                                         np.zeros((inner.n_personas, 1)))
    recall = {}
    for exponent in EXPONENTS:
        ask = replace(model, activity_exponent=exponent).audience_for_item
        rankings = [ask(tags[item], max(KS)) for item in held]
        recall[exponent] = round(score_rankings(rankings, held, buyers, reduced.n_items)["recall@50"], 5)
    return max(recall, key=recall.get), recall


def cold_start_run(data, task: str, conf: RecommendTrainConf, seed: int, fraction: float, cache: EigenCache):
    """Train LGCN3 without the held-out users (or items); rank for them from personas and by popularity."""
    reduced, held = (data.holdout_users if task == "new_customers" else data.holdout_items)(fraction, seed)
    result = train(reduced, conf, seed, "lgcn3", cache)
    model = ColdStartModel.from_training(reduced, result.user_embeddings, result.item_embeddings,
                                         result.persona_embeddings)
    everything = np.concatenate([data.train, data.test])
    extra = {}
    if task == "new_customers":
        tags, relevant, n_rows = tags_of(data.user_personas, held), everything, data.n_users
        centroid = replace(model, query="centroid")
        methods = {"personas": lambda key: model.recommend_for_personas(tags[key], max(KS)),
                   "persona_centroids": lambda key: centroid.recommend_for_personas(tags[key], max(KS)),
                   "popularity": lambda key: model.recommend_for_personas([], max(KS))}
    else:
        tags, relevant, n_rows = tags_of(data.item_personas, held), everything[:, ::-1], data.n_items
        exponent, validation = validated_exponent(reduced, fraction, seed)
        extra = {"activity_exponent": exponent, "validation_recall@50": validation}
        chosen = replace(model, activity_exponent=exponent)
        users = result.user_embeddings

        def by_embeddings(key):
            query = model.persona_query(tags[key])
            return top_k_ranking(None if query is None else users @ query, model.user_activity, max(KS), ())

        methods = {"personas": lambda key: chosen.audience_for_item(tags[key], max(KS)),
                   "persona_embeddings": by_embeddings,
                   "popularity": lambda key: model.audience_for_item([], max(KS))}
    lines = []
    for method, ask in methods.items():
        rankings = [ask(key) for key in held]
        fallback = sum(r.method == "popularity" for r in rankings) if method != "popularity" else 0
        metrics = score_rankings(rankings, held, relevant, n_rows)
        lines.append({"task": task, "method": method, "seed": seed, **{m: round(metrics[m], 5) for m in REPORTED},
                      "queries": len(held), "fell_back_to_popularity": fallback,
                      **(extra if method == "personas" else {}),
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
    parser.add_argument("--out", default=str(RESULTS / "cold_start.jsonl"), help="appends here; - prints only")
    args = parser.parse_args(argv)
    append_results_to(args.out)
    logging.basicConfig(level=logging.WARNING)

    overrides = dict(parse_override(o, RecommendTrainConf) for o in args.overrides)
    conf = RecommendTrainConf(**{**BENCHMARK_DEFAULTS, "device": args.device, **overrides})
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
        mean = {method: {m: float(np.mean([rec[m] for rec in lines if rec["task"] == task and rec["method"] == method]))
                         for m in REPORTED} for method in METHODS[task]}
        headline = "ndcg@10" if task == "new_customers" else "recall@50"
        lifts = {method: round(mean[method][headline] / mean["popularity"][headline] - 1, 4) for method in METHODS[task][:2]}
        verdict[task] = {"mean": {k: {m: round(v, 5) for m, v in d.items()} for k, d in mean.items()},
                         f"relative_lift_{headline}": lifts, "target_met": {m: v >= 0.10 for m, v in lifts.items()}}
    print(json.dumps({"summary": verdict, "total_seconds": round(time.perf_counter() - started, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
