"""GPLR quality on a dataset in the paper's format, with recorded LLM labels as the LLM.

    python benchmarks/gplr_quality.py --data "$PERSONA_SPARK_SHARED_DATA/online_retail_gplr"

Two rows per (budget, seed): ``paper`` is the faithful mode (the ``gplr`` and ``affinity``
sections of ``conf/paper.yaml``: T = 10 DU rounds, ℓ̂ = 1, β = 0.5, top-5 of Ψ, no item signal)
and ``ours`` the project's defaults (``GPLRConf()`` / ``AffinityConf()``: DU rounds, learned
assignment with the item signal). Each mode samples its own prototypes through the real
pipeline (Spark affinity engine, labeling layer with the ``recorded`` backend, Delta tables in a
temporary folder) and is scored on the users *its* run did not label. Budgets default to
2.5 / 5 / 10 / 20 %, with every ``--seeds`` at ``--multi-seed-budget`` (5 %) and the first seed
elsewhere. Prints one JSON line per (budget, seed, method):
``{"budget", "seed", "method", "micro_f1", "macro_f1", "precision", "recall", "baseline_micro_f1", "audit", ...}``
where ``baseline_micro_f1`` gives every evaluated user the top-5 personas most frequent among
the prototypes, and ``audit`` is the run's own estimate from its audit sample (``gplr.audit_users``
users it did not label, labelled by the same recorded labels): micro-F1 with its 95 % interval beside
the micro-F1 over all users the run predicted for (``micro_f1``), whether the interval covers it and
the gap. A last line per (budget, method) sums the seeds up: intervals covering, mean absolute gap.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from results_file import RESULTS, append_results_to

from persona_spark import evaluate, labeling
from persona_spark.config import (
    AffinityConf,
    EvaluateConf,
    GPLRConf,
    LabelingConf,
    RecordedConf,
    SparkConf,
    TablesConf,
    load_config,
)
from persona_spark.gplr import GPLRLoop, GPLRSettings, item_vectors_from_labels, items_to_label
from persona_spark.graph import load_gplr_split
from persona_spark.personas import load_persona_set
from persona_spark.runtime.session import get_spark
from persona_spark.stages.cache import label_entities
from persona_spark.tables.store import TableStore

ROOT = Path(__file__).resolve().parents[1]


def mode_settings(mode: str, budget: float, seed: int, sampling: str | None,
                  state_precision: str = "float64") -> tuple[GPLRConf, AffinityConf]:
    """``paper``: conf/paper.yaml's sections; ``ours``: the defaults. Budget, seed (and sampling) from the sweep,
    ``affinity.state_precision`` from ``--state-precision``."""
    if mode == "paper":
        paper = load_config(ROOT / "conf" / "paper.yaml")
        gplr_conf, affinity_conf = paper.gplr, paper.affinity
    else:
        gplr_conf, affinity_conf = GPLRConf(), AffinityConf()
    update = {"budget_fraction": budget, "seed": seed, **({"sampling": sampling} if sampling else {})}
    return gplr_conf.model_copy(update=update), affinity_conf.model_copy(update={"state_precision": state_precision})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder with train.json, personas.json, user/item_personas_gpt4.json")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.025, 0.05, 0.1, 0.2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--multi-seed-budget", type=float, default=0.05, help="the budget run with every seed")
    parser.add_argument("--modes", nargs="+", default=["paper", "ours"], choices=["paper", "ours"])
    parser.add_argument("--sampling", choices=["du", "random"], default=None, help="override both modes' sampling")
    parser.add_argument("--state-precision", choices=["float64", "float32"], default="float64",
                        help="affinity.state_precision for both modes (float32: half the bytes per hop)")
    parser.add_argument("--dump-assignments", type=Path, default=None, metavar="DIR",
                        help="also write each run's personas as DIR/<budget>-<seed>-<method>.json "
                             "({user_idx: [persona_idx, ...]}, the recommender benchmark's --user-personas)")
    parser.add_argument("--item-labels", nargs="+", default=["all"], choices=["all", "prototypes", "edge_share"],
                        help="gplr.item_labels of the item-signal mode, each a run (the items left out count as "
                             "item answers saved)")
    parser.add_argument("--item-edge-share", type=float, default=0.9, help="gplr.item_edge_share")
    parser.add_argument("--audit-users", type=int, default=GPLRConf().audit_users,
                        help="gplr.audit_users of both modes (0: no audit)")
    parser.add_argument("--class-balance", type=float, default=GPLRConf().class_balance,
                        help="gplr.class_balance of both modes (the learned assignment's re-balancing of rare personas)")
    parser.add_argument("--out", default=str(RESULTS / "gplr_quality.jsonl"), help="appends here; - prints only")
    args = parser.parse_args(argv)
    append_results_to(args.out)

    spark = get_spark(SparkConf(master="local[2]", shuffle_partitions=4, default_parallelism=4))
    split = load_split(spark, Path(args.data))
    users, train, reference, label_users = split.users, split.train, split.reference, split.label_users
    n_personas, item_vectors = split.n_personas, split.item_vectors

    audits: dict[tuple, list[dict]] = {}
    for budget in args.budgets:
        for seed in args.seeds if budget == args.multi_seed_budget else args.seeds[:1]:
            for mode, item_labels in ((m, k) for m in args.modes for k in args.item_labels):
                conf, affinity = mode_settings(mode, budget, seed, args.sampling, args.state_precision)
                if not conf.item_signal and item_labels != args.item_labels[0]:
                    continue  # no item signal: one run, whatever the items
                conf = conf.model_copy(update={"item_labels": item_labels, "item_edge_share": args.item_edge_share,
                                               "audit_users": args.audit_users, "class_balance": args.class_balance})
                signal = ItemSignal(train, item_vectors, conf)
                run = GPLRLoop(users, train, label_users, n_personas, GPLRSettings(conf, affinity),
                               signal if conf.item_signal else None)
                started = time.perf_counter()
                answered, rounds = run.sample()
                sampled_s = time.perf_counter() - started
                eval_users = evaluate.evaluation_users(reference, answered).localCheckpoint()
                started = time.perf_counter()
                result = run.assign_all(answered, rounds)
                personas = result.personas.localCheckpoint()
                metrics, _ = evaluate.evaluate_sets(personas, reference, eval_users)
                if args.dump_assignments:
                    _dump(personas, args.dump_assignments / f"{budget}-{seed}-{mode}.json")
                baseline, _ = evaluate.evaluate_sets(
                    evaluate.popular_personas(result.prototypes, eval_users, EvaluateConf().baseline_k), reference, eval_users)
                profile = _sample_profile(train, answered, reference, eval_users)
                audited = _audit(run, answered, personas, metrics["micro_f1"]) if conf.audit_users else None
                if audited:
                    audits.setdefault((budget, mode), []).append(audited)
                print(json.dumps({
                    "budget": budget, "seed": seed, "method": mode,
                    **{k: round(v, 4) for k, v in metrics.items()},
                    "audit": audited,
                    "baseline_micro_f1": round(baseline["micro_f1"], 4),
                    "prototypes": result.prototypes.select("user_idx").distinct().count(),
                    "eval_users": eval_users.count(), "cv_micro_f1": result.model.cv_micro_f1, **profile,
                    "settings": {"rounds": conf.rounds, "sampling": conf.sampling, "assignment": conf.assignment,
                                 "top_k": conf.top_k, "item_signal": conf.item_signal, "ell": affinity.ell,
                                 "class_balance": conf.class_balance,
                                 "beta": affinity.beta, "eps": affinity.eps,
                                 "state_precision": affinity.state_precision, "item_labels": conf.item_labels,
                                 "item_edge_share": conf.item_edge_share},
                    **(signal.counts if conf.item_signal else {}),
                    "sampling_seconds": round(sampled_s, 1),
                    "assignment_seconds": round(time.perf_counter() - started, 1), "load": list(os.getloadavg()),
                }), flush=True)
                run.release()
    for (budget, mode), found in audits.items():
        print(json.dumps({"budget": budget, "method": mode, "audit_summary": {
            "seeds": len(found), "covered": sum(a["covers"] for a in found),
            "mean_abs_gap": round(sum(abs(a["gap"]) for a in found) / len(found), 4)}}), flush=True)
    return 0


class ItemSignal:
    """The run's item signal: the recorded labels of the items ``conf.item_labels`` picks (the others are the
    item answers a run saves), counted in ``counts``."""

    def __init__(self, train: DataFrame, item_vectors: DataFrame, conf: GPLRConf):
        self.train, self.item_vectors, self.conf, self.counts = train, item_vectors, conf, {}

    def __call__(self, prototypes: DataFrame) -> DataFrame:
        wanted = items_to_label(self.train, prototypes, self.conf)
        items = self.train.select("item_idx").distinct().count()
        labelled = items if wanted is None else wanted.count()
        self.counts = {"items": items, "items_labelled": labelled, "item_answers_saved": items - labelled}
        return self.item_vectors if wanted is None else self.item_vectors.join(wanted, "item_idx", "left_semi")


def _audit(run: GPLRLoop, answered: DataFrame, personas: DataFrame, micro_f1: float) -> dict:
    """The run's audit (as the gplr stage draws it) beside the micro-F1 over every user the run predicted for."""
    audit, _ = run.audit(answered, personas)
    found = audit.summary()
    estimate = audit.overall["micro_f1"]
    return {"users": found["users"], "errors": found["errors"], "micro_f1": found["micro_f1"],
            "lower": found["micro_f1_lower"], "upper": found["micro_f1_upper"], "macro_f1": found["macro_f1"],
            "covers": estimate.covers(micro_f1), "gap": round(estimate.value - micro_f1, 4)}


@dataclass
class Split:
    """A dataset in the paper's format behind the real pipeline: its tables, and its recorded labels as the LLM."""

    users: DataFrame
    train: DataFrame
    reference: DataFrame  # user_idx, persona_idx: the recorded labels every run is scored against
    n_personas: int
    item_vectors: DataFrame  # the recorded item labels as the item signal
    label_users: Callable[[DataFrame], DataFrame]  # GPLR's LabelFn, through the labeling layer's cache


def load_split(spark, data: Path) -> Split:
    """Tables (Delta, in a temporary folder) and the ``recorded`` labeling backend over ``data``'s labels."""
    persona_set = load_persona_set(data / "personas.json")
    n_personas = len(persona_set)
    work = Path(tempfile.mkdtemp(prefix="gplr_quality_"))
    store = TableStore(spark, TablesConf(root=str(work / "tables")))
    tables = load_gplr_split(spark, data)
    for name, df in tables.items():
        store.write_table(df, name)
    users, items = store.read_table("users"), store.read_table("items")
    train = store.read_table("edges").filter(F.col("split") == "train").localCheckpoint()
    requests = labeling.build_user_histories(train, items).localCheckpoint()
    recorded = RecordedConf(path=str(data / "user_personas_gpt4.json"), item_path=str(data / "item_personas_gpt4.json"),
                            model="gpt-4 (recorded)")
    user_conf = LabelingConf(backend="recorded", recorded=recorded, journal_dir=str(work / "journal"))
    item_rows = label_entities(store, labeling.build_item_requests(items), persona_set, user_conf, "item")
    item_vectors = item_vectors_from_labels(item_rows, n_personas).localCheckpoint()

    def label_users(selected):
        wanted = requests.join(selected.select("user_idx"), "user_idx", "left_semi")
        return label_entities(store, wanted, persona_set, user_conf, "user")

    return Split(users, train, store.read_table("reference_personas"), n_personas, item_vectors, label_users)


def _sample_profile(train, answered, reference, eval_users) -> dict:
    """Who the run labelled, beside who it is scored on: median train degree and reference personas per user."""
    degree = train.groupBy("user_idx").agg(F.countDistinct("item_idx").alias("degree"))
    labels = reference.groupBy("user_idx").agg(F.count(F.lit(1)).alias("labels"))
    out = {}
    for name, group in (("asked", answered.select("user_idx").distinct()), ("eval", eval_users.select("user_idx"))):
        row = group.join(degree, "user_idx", "left").join(labels, "user_idx", "left").agg(
            F.percentile_approx(F.coalesce("degree", F.lit(0)), 0.5).alias("median_degree"),
            F.avg(F.coalesce("labels", F.lit(0))).alias("labels_per_user")).first()
        out[f"{name}_median_degree"] = int(row["median_degree"])
        out[f"{name}_labels_per_user"] = round(float(row["labels_per_user"]), 3)
    return out


def _dump(personas, path: Path) -> None:
    sets = personas.groupBy("user_idx").agg(F.sort_array(F.collect_list("persona_idx")).alias("p")).collect()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({str(r["user_idx"]): list(r["p"]) for r in sets}))


if __name__ == "__main__":
    sys.exit(main())
