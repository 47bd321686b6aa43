"""Render docs/benchmarks.md from the curated results files in benchmarks/results/.

    python benchmarks/render_docs.py            # rewrites docs/benchmarks.md
    python benchmarks/render_docs.py --check    # exit 1 when the committed page differs from the files

Every figure of the docs comes from a line a benchmark printed (``benchmarks/results_file.py`` appends it
with its command, machine and date); this script only arranges those lines into tables, and names under
each table the commands, machines and dates of the lines it used. ``tests/test_docs.py`` checks that the
committed page is what the files give.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "benchmarks.md"


def load(name: str) -> list[dict]:
    """The file's lines, each command's from its latest date only: a rerun supersedes what it measured before."""
    with (RESULTS / f"{name}.jsonl").open() as lines:
        records = [json.loads(line) for line in lines if line.strip()]
    latest: dict[str, str] = {}
    for record in records:
        latest[record["command"]] = max(latest.get(record["command"], ""), record["date"])
    return [record for record in records if record["date"] == latest[record["command"]]]


def table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows] + [""]


def provenance(lines: list[dict], name: str) -> list[str]:
    """Where the table's figures come from: the file, then each distinct command with its machine and date."""
    seen: dict[tuple, None] = {}
    for line in lines:
        seen.setdefault((line["command"], line["machine"], line["date"]), None)
    out = [f"Source: `benchmarks/results/{name}.jsonl`, from"]
    out += [f"`{command}` ({machine}, {date})" + (";" if i < len(seen) - 1 else ".")
            for i, (command, machine, date) in enumerate(seen)]
    return ["<small>" + " ".join(out) + "</small>", ""]


def f3(x: float) -> str:
    return f"{x:.3f}"


def mean(values) -> float:
    return statistics.fmean(values)


THREE_SEEDS = (0, 1, 2)  # the seeds the tables of three runs show


def gplr_quality() -> list[str]:
    lines = load("gplr_quality")
    unique: dict[tuple, dict] = {}
    for rec in lines:  # the first line of a (budget, seed, method, sampling) stands; a rerun of it is the same
        if "settings" in rec and not balanced(rec):  # not a summary line, the defaults' assignment
            unique.setdefault((rec["budget"], rec["seed"], rec["method"], rec["settings"]["sampling"]), rec)
    out = ["## GPLR quality on the paper's OnlineRetail split", "",
           "The authors' GPT-4 labels are replayed as the LLM (`recorded` backend); the users a run did not label "
           "are scored against their GPT-4 labels. `paper` is the faithful mode (`conf/paper.yaml`), `ours` the "
           "project's defaults. See [GPLR](concepts/gplr.md) and [the learned assignment](concepts/assignment.md).",
           "", "### 5 % budget, three seeds", ""]
    rows, used = [], []
    for method, label in (("paper", "`paper` (T = 10 DU rounds, ℓ̂ = 1, β = 0.5, top-5 of Ψ)"),
                          ("ours", "`ours` (4 DU rounds, learned assignment, item signal, degree features)")):
        runs = sorted((rec for k, rec in unique.items()
                       if k[0] == 0.05 and k[1] in THREE_SEEDS and k[2] == method and k[3] == "du"),
                      key=lambda rec: rec["seed"])
        used += runs
        rows.append([label, " / ".join(f3(rec["micro_f1"]) for rec in runs), f"**{f3(mean(rec['micro_f1'] for rec in runs))}**",
                     f3(mean(rec["macro_f1"] for rec in runs)), f3(mean(rec["baseline_micro_f1"] for rec in runs)),
                     f"{min(rec['eval_users'] for rec in runs):,}–{max(rec['eval_users'] for rec in runs):,}"])
    out += table(["5 %, seeds 0 / 1 / 2", "micro-F1", "mean", "macro-F1 (mean)", "popularity baseline (mean)",
                  "users scored"], rows)
    out += provenance(used, "gplr_quality")

    out += ["### Budgets, seed 0", ""]
    rows, used = [], []
    for budget in sorted({k[0] for k in unique}):
        paper, ours = unique.get((budget, 0, "paper", "du")), unique.get((budget, 0, "ours", "du"))
        if not (paper and ours):
            continue
        used += [paper, ours]
        baselines = sorted((paper["baseline_micro_f1"], ours["baseline_micro_f1"]))
        rows.append([f"{budget:.1%} ({paper['prototypes']}–{ours['prototypes']})", f3(paper["micro_f1"]),
                     f"**{f3(ours['micro_f1'])}**", f"{ours['micro_f1'] - paper['micro_f1']:+.3f}",
                     f"{f3(paper['macro_f1'])} / {f3(ours['macro_f1'])}", f"{baselines[0]:.2f}–{baselines[1]:.2f}"])
    out += table(["budget (prototypes)", "`paper` micro-F1", "`ours` micro-F1", "`ours` − `paper`",
                  "macro-F1 `paper` / `ours`", "popularity baseline"], rows)
    out += provenance(used, "gplr_quality")

    out += ["### Sampling: DU rounds against random users (`ours`, 5 %)", ""]
    rows, used = [], []
    for sampling, label in (("du", "DU rounds (default)"), ("random", "random")):
        runs = sorted((rec for k, rec in unique.items()
                       if k[0] == 0.05 and k[1] in THREE_SEEDS and k[2] == "ours" and k[3] == sampling),
                      key=lambda rec: rec["seed"])
        used += runs
        cv = [rec["cv_micro_f1"] for rec in runs]
        degree = [rec["asked_median_degree"] for rec in runs]
        rows.append([label, " / ".join(f3(rec["micro_f1"]) for rec in runs), f3(mean(rec["micro_f1"] for rec in runs)),
                     f3(mean(rec["macro_f1"] for rec in runs)), f"{min(cv):.3f}–{max(cv):.3f}",
                     f"{min(degree)}–{max(degree)}"])
    out += table(["`ours` at 5 %, seeds 0 / 1 / 2", "micro-F1", "mean", "macro-F1 (mean)",
                  "cross-fitted micro-F1 on the prototypes", "median degree of the users asked"], rows)
    return out + provenance(used, "gplr_quality") + item_labels_section(lines) + gplr_audit(lines)


def item_labels_section(lines: list[dict]) -> list[str]:
    """`ours` at 5 % with every item labelled against the items the run uses (the runs that count items saved)."""
    runs: dict[str, list[dict]] = {}
    for rec in lines:
        if "item_answers_saved" in rec and rec["budget"] == 0.05:
            how = rec["settings"]["item_labels"]
            runs.setdefault(f"{how} {rec['settings']['item_edge_share']:.0%}" if how == "edge_share" else how, []).append(rec)
    if "all" not in runs:
        return []
    out = ["### Item labelling: what the run uses", "",
           "`ours` at 5 %, the same seeds, labelling every product (`gplr.item_labels=all`) against only the products "
           "the labelled users bought (`prototypes`) or the most bought ones carrying a share of the train edges "
           "(`edge_share`, `gplr.item_edge_share`). Differences are against `all`, seed by seed.", ""]
    reference = {rec["seed"]: rec for rec in runs["all"]}
    rows, used = [], []
    for how in ["all", "prototypes"] + sorted(k for k in runs if k.startswith("edge_share")):
        got = sorted(runs.get(how, []), key=lambda rec: rec["seed"])
        if not got:
            continue
        used += got
        micro = [rec["micro_f1"] - reference[rec["seed"]]["micro_f1"] for rec in got]
        macro = [rec["macro_f1"] - reference[rec["seed"]]["macro_f1"] for rec in got]
        rows.append([f"`{how}`", " / ".join(f3(rec["micro_f1"]) for rec in got), f"{mean(micro):+.4f}",
                     " / ".join(f3(rec["macro_f1"]) for rec in got), f"{mean(macro):+.4f}",
                     f"{mean(rec['items_labelled'] for rec in got):,.0f} of {got[0]['items']:,}",
                     f"{mean(rec['item_answers_saved'] / rec['items'] for rec in got):.0%}"])
    out += table(["items labelled", "micro-F1, seeds " + " / ".join(str(r["seed"]) for r in sorted(runs["all"], key=lambda r: r["seed"])),
                  "Δ micro (mean)", "macro-F1", "Δ macro (mean)", "items labelled (mean)", "item answers saved"], rows)
    within = [row[0] for row in rows[1:] if abs(float(row[2])) <= 0.005 and abs(float(row[4])) <= 0.005]
    out += [("Within 0.005 of `all` on both micro- and macro-F1: " + ", ".join(within) + "." if within else
             "No narrower choice keeps macro-F1 within 0.005 of `all` (micro-F1 stays within it for each): macro-F1 "
             "averages 20 personas, some carried by a few dozen users, and moves more than micro-F1 from seed to seed; "
             "`gplr.item_labels` stays `all` by default.") + "", ""]
    return out + provenance(used, "gplr_quality")


def gplr_audit(lines: list[dict]) -> list[str]:
    """Each `ours` run's own estimate (its audit sample) beside the micro-F1 over every user it predicted for."""
    audited: dict[int, dict] = {}
    for rec in lines:  # the latest line of a seed stands: the audit came after the first runs of these seeds
        if rec.get("audit") and rec.get("budget") == 0.05 and rec.get("method") == "ours" and not balanced(rec):
            audited[rec["seed"]] = rec
    if not audited:
        return []
    out = ["### The run's own estimate: its audit sample (`ours`, 5 %)", "",
           "Each run labels `gplr.audit_users` users drawn at random from those it did not label and scores its "
           "predictions on them ([the audit](concepts/gplr.md#how-good-is-this-run-the-audit)); beside it, the "
           "micro-F1 over all the users it predicted for, which a shop without reference labels cannot compute.",
           ""]
    rows, used = [], []
    for seed in sorted(audited):
        rec = audited[seed]
        used.append(rec)
        audit = rec["audit"]
        rows.append([seed, f"{audit['users']:,}", f"{f3(audit['micro_f1'])} ({f3(audit['lower'])}–{f3(audit['upper'])})",
                     f3(rec["micro_f1"]), "yes" if audit["covers"] else "**no**", f"{audit['gap']:+.3f}",
                     f3(rec["cv_micro_f1"])])
    gaps = [abs(rec["audit"]["gap"]) for rec in used]
    rows.append(["all", "", "", "", f"{sum(rec['audit']['covers'] for rec in used)} of {len(used)}",
                 f"mean abs. {mean(gaps):.3f}", ""])
    out += table(["seed", "users audited", "audit micro-F1 (95 % interval)", "micro-F1, all predicted users",
                  "interval covers it", "audit − all", "cross-fitted micro-F1 on the prototypes"], rows)
    return out + provenance(used, "gplr_quality") + gplr_class_balance(lines, audited)


def balanced(rec: dict) -> bool:
    return bool(rec.get("settings", {}).get("class_balance"))


def gplr_class_balance(lines: list[dict], default: dict[int, dict]) -> list[str]:
    """`gplr.class_balance` against the default (0) on the same seeds: micro- and macro-F1."""
    runs: dict[float, dict[int, dict]] = {}
    for rec in lines:
        if balanced(rec) and rec.get("budget") == 0.05 and rec.get("method") == "ours":
            runs.setdefault(rec["settings"]["class_balance"], {})[rec["seed"]] = rec
    if not runs:
        return []
    out = ["### Rare personas: `gplr.class_balance` (`ours`, 5 %)", "",
           "The learned assignment with each persona's carriers weighted by (mean persona share / its share) ** "
           "`class_balance` in its likelihood ([the learned assignment](concepts/assignment.md#rare-personas)), "
           "against the default (0) on the same seeds.", ""]
    rows, used = [], []
    for power in sorted(runs):
        seeds = sorted(set(runs[power]) & set(default))
        pairs = [(default[s], runs[power][s]) for s in seeds]
        used += [r for pair in pairs for r in pair]
        for label, pick in (("0 (default)", 0), (f"{power:g}", 1)):
            chosen = [pair[pick] for pair in pairs]
            rows.append([label, " / ".join(f3(r["micro_f1"]) for r in chosen), f3(mean(r["micro_f1"] for r in chosen)),
                         " / ".join(f3(r["macro_f1"]) for r in chosen), f"**{f3(mean(r['macro_f1'] for r in chosen))}**"])
    seeds_label = " / ".join(str(s) for s in sorted(set(runs[max(runs)]) & set(default)))
    out += table([f"class_balance, seeds {seeds_label}", "micro-F1", "mean", "macro-F1", "mean"], rows)
    return out + provenance(used, "gplr_quality")


def offline_labeler() -> list[str]:
    lines = load("offline_labeler")
    out = ["## Offline labeler", "",
           "The embedding labeler end to end on the demo shop (generate → ingest → build-graph → gplr → "
           "evaluate against the planted personas) and on the Instacart sample (the 51 persona names without "
           "descriptions). "
           "See [labeling](concepts/labeling.md#the-offline-embedding-labeler).", ""]
    demo = [rec for rec in lines if rec["dataset"] == "demo_shop"]
    rows = []
    for rec in demo:
        weakest = min(rec["recall_per_persona"], key=rec["recall_per_persona"].get)
        top = max(rec["share_per_persona"], key=rec["share_per_persona"].get)
        rows.append([", ".join(f"`{o}`" for o in rec["overrides"]) or "defaults", rec["users"], f3(rec["micro_f1"]),
                     f3(rec["precision"]), f3(rec["recall"]), f3(rec["baseline_micro_f1"]),
                     f"{weakest} {rec['recall_per_persona'][weakest]:.2f}",
                     f"{top} {rec['share_per_persona'][top]:.0%} (planted {rec['planted_share_per_persona'][top]:.0%})"])
    out += table(["demo shop", "customers", "micro-F1", "precision", "recall", "popularity baseline",
                  "lowest recall", "most frequent persona"], rows)
    instacart = [rec for rec in lines if rec["dataset"] == "instacart_sample"]
    out += table(["Instacart sample", "customers", "most frequent persona", "share of customers"],
                 [["defaults", rec["customers"], rec["max_persona"], f"{rec['max_persona_share']:.0%}"] for rec in instacart])
    return out + provenance(lines, "offline_labeler")


AFFINITY_ENGINES = {"scipy_exact": "scipy exact (one process)", "spark_exact": "Spark exact, tiles cut in the call",
                    "spark_exact_stored": "Spark exact, tiles from `edge_tiles`",
                    "spark_float32_stored": "Spark float32 states, tiles from `edge_tiles`",
                    "spark_pruned": "Spark ε-pruned, tiles cut in the call",
                    "graphframes": "GraphFrames aggregateMessages",
                    "connect_spark_exact": "Spark exact on Spark Connect",
                    "connect_spark_pruned": "Spark ε-pruned on Spark Connect"}


def affinity() -> list[str]:
    lines = load("affinity")
    first = lines[0]
    out = ["## Affinity engine", "",
           f"Ψ for all {first['users']:,} users and {first['personas']} personas over {first['edges']:,} train edges "
           f"({first['labelled_users']:,} labelled users, the paper's Instacart Full size), three runs of each Spark "
           "row in one process, median seconds. See [the affinity engine](concepts/affinity.md).", ""]
    runs: dict[tuple, list[dict]] = defaultdict(list)
    for rec in lines:
        if rec["engine"] != "tiles_write":
            runs[(rec["ell"], rec["engine"])].append(rec)
    rows = []
    for (ell, engine), group in sorted(runs.items(), key=lambda kv: (kv[0][0], list(AFFINITY_ENGINES).index(kv[0][1]))):
        scipy = statistics.median(rec["seconds"] for rec in runs[(ell, "scipy_exact")])
        median = statistics.median(rec["seconds"] for rec in group)
        exact = runs.get((ell, "spark_exact_stored"))
        speedup = (f"{statistics.median(rec['seconds'] for rec in exact) / median:.2f}× faster"
                   if engine == "spark_float32_stored" and exact else "")
        rel = max((rec.get("max_rel_err") or 0.0) for rec in group)
        rows.append([AFFINITY_ENGINES[engine], ell, ", ".join(f"{rec['seconds']:.2f}" for rec in group),
                     f"**{median:.2f}**", "—" if engine == "scipy_exact" else f"{median / scipy:.2f}×",
                     speedup, "" if engine == "scipy_exact" else f"{rel:.1e}"])
    out += table(["engine", "ℓ̂", "seconds (runs)", "median", "vs scipy", "float32 vs exact", "max relative error"],
                 rows)
    write = [rec for rec in lines if rec["engine"] == "tiles_write"]
    out += [f"Cutting and writing `edge_tiles` (what build-graph pays once per version of `edges`): "
            f"{write[0]['seconds']:.2f} s. Top-5 agreement with scipy: "
            f"{min(rec['top5_agreement'] for rec in lines if 'top5_agreement' in rec):.1f} on every Spark row.", ""]
    return out + provenance(lines, "affinity")


def affinity_scale() -> list[str]:
    lines = sorted(load("affinity_scale"), key=lambda rec: rec["edges"])
    out = ["## Affinity at 100 M edges on one machine", "",
           "Exact ℓ̂ = 1 with a 64 MiB broadcast limit, so the larger hop states take the cogroup (shuffle) path; "
           "each row is the first run of its JVM.", ""]
    rows, previous = [], None
    for rec in lines:
        phases = ", ".join(f"{p['phase'].split(' (')[0]} {p['seconds']:.1f}"
                           + (f" ({p['path']})" if "path" in p else "")
                           for p in rec["phases"] if p["phase"] != "pack prototypes")
        ratio = f"{rec['seconds'] / previous['seconds']:.1f}×" if previous else "—"
        rows.append([f"{rec['edges'] / 1e6:.2f} M", f"{rec['users']:,}", f"**{rec['seconds']:.1f}**", ratio,
                     f"{rec['peak_rss_mb'] / 1024:.1f} GB", phases])
        previous = rec
    out += table(["edges", "users", "seconds", "vs the size before", "peak RSS", "phases (s)"], rows)
    out += ["![seconds against edges](assets/affinity_scale.png)", "",
            "Drawn by `python benchmarks/plot_affinity_scale.py benchmarks/results/affinity_scale.jsonl --engine "
            "spark_exact --ell 1 --out docs/assets/affinity_scale.png`.", ""]
    return out + provenance(lines, "affinity_scale")


def affinity_side_by_side() -> list[str]:
    out = ["## Affinity on Spark Connect and with GraphFrames", ""]
    lines = load("affinity_connect")
    rows = [[AFFINITY_ENGINES[rec["engine"]], rec["ell"], rec["eps"], f"{rec['seconds']:.1f}"] for rec in lines]
    out += ["Exact ℓ̂ = 1 at 13 M edges on the classic session and on a local Spark Connect server, run one after "
            "the other.", ""]
    out += table(["engine", "ℓ̂", "ε", "seconds"], rows) + provenance(lines, "affinity_connect")
    return out + graphframes_side_by_side()


def graphframes_side_by_side() -> list[str]:
    lines = load("affinity_graphframes")
    out = ["`persona_spark/affinity/graphframes_affinity.py` writes the same propagation the way a Spark user "
           "would with GraphFrames 0.10.1: one `aggregateMessages` per hop over every vertex's `array<double>` "
           "state, each new vertex table checkpointed. Each size is one process: scipy, the engine and GraphFrames "
           "on the same edges, one run each.", ""]
    rows = []
    for edges in sorted({rec["edges"] for rec in lines}):
        for ell in sorted({rec["ell"] for rec in lines if rec["edges"] == edges and rec["ell"]}):
            by = {rec["engine"]: rec for rec in lines if rec["edges"] == edges and rec["ell"] == ell}
            if "graphframes" not in by:
                continue
            frames = by["graphframes"]
            rows.append([f"{edges / 1e6:.2f} M", ell, f"{by['scipy_exact']['seconds']:.2f}",
                         f"{by['spark_exact']['seconds']:.2f}", f"{by['spark_exact_stored']['seconds']:.2f}",
                         f"**{frames['seconds']:.1f}**", f"{frames['vs_spark_exact']:.1f}×",
                         f"{frames['vs_spark_exact_stored']:.1f}×", f"{frames['max_abs_err']:.1e}",
                         f"{frames['load_before']:.1f} → {frames['load_after']:.1f}"])
    out += table(["edges", "ℓ̂", "scipy", "engine, tiles cut", "engine, stored tiles", "GraphFrames",
                  "GraphFrames / tiles cut", "GraphFrames / stored tiles", "max abs error", "load (1 min)"], rows)
    components = [rec for rec in lines if rec["engine"].startswith("components_")]
    if components:
        out += ["Connected components of the same edges (`build-graph`'s `train_components`; the generated graph "
                "is one component): the package's large-star/small-star rounds and GraphFrames' `connectedComponents` "
                "with each of its algorithms, one after the other. `graph.components_algorithm=auto` runs the fastest "
                "at the larger size where the session has GraphFrames, else large-star.", ""]
        out += table(["edges", "algorithm", "seconds", "components", "largest (users + items)", "load (1 min)"],
                     [[f"{rec['edges'] / 1e6:.2f} M", rec["engine"].removeprefix("components_").replace("_", "-"),
                       f"**{rec['seconds']:.1f}**", f"{rec['components']:,}",
                       f"{rec['largest_users'] + rec['largest_items']:,}",
                       f"{rec['load_before']:.1f} → {rec['load_after']:.1f}"] for rec in components])
    return out + provenance(lines, "affinity_graphframes")


def gplr_scale() -> list[str]:
    lines = load("gplr_scale")
    runs = [rec for rec in lines if rec.get("step") == "gplr"]
    run = runs[-1]
    phases = sorted(run["phases"].items(), key=lambda kv: -kv[1])
    items = ("every item labelled" if run.get("item_labels", "all") == "all"
             else f"{run['items_labelled']:,} of {run['items']:,} items labelled (`gplr.item_labels={run['item_labels']}`)")
    out = ["## GPLR end to end at Instacart Full size", "",
           f"The `gplr` stage on {run['users']:,} users, {run['edges']:,} edges and {run['personas']} personas: a "
           f"{run['llm_users']:,}-user budget over {run['rounds']} rounds, {items}, the learned "
           f"assignment, against the loopback OpenAI-protocol server answering in "
           f"{run['latency_s'] * 1000:.0f} ms per request "
           f"({run['concurrency']} in flight × {run['partitions']} partitions). The synthetic answers do not follow "
           f"the graph (cross-fitted micro-F1 {run['cv_micro_f1']:.2f}), so the model gives every unlabelled user many "
           "personas and the refresh record is larger than with real answers.", ""]
    out += table(["stage seconds", "requests", "propagated rows", "peak RSS", "edge tiles"],
                 [[f"**{run['seconds']:.1f}** ({run['seconds'] / 60:.1f} min)", f"{run['requests']:,}",
                   f"{run['persona_rows']['propagated']:,}", f"{run['peak_rss_mb'] / 1024:.1f} GB", run["edge_tiles"]]])
    if len(runs) == 1:
        out += table(["phase", "seconds"], [[name.replace("_", " "), f"{seconds:.1f}"] for name, seconds in phases])
        return out + provenance(lines, "gplr_scale")
    out += ["Phase by phase, each run of the file (the latest last; `load` is the 1-minute load average before the run "
            "on this shared 2-core machine, `reasons` where the refresh record wrote `persona_reasons`):", ""]
    header = ["phase"] + [f"{rec['date']}, {'every row' if rec.get('refresh', {}).get('reasons', 'every row') == 'every row' else 'reasons on request'}"
                          for rec in runs]
    rows = [[name.replace("_", " ")] + [f"{rec['phases'].get(name, 0.0):.1f}" for rec in runs] for name, _ in phases]
    rows.append(["**the stage**"] + [f"**{rec['seconds']:.1f}** ({rec['seconds'] / 60:.1f} min)" for rec in runs])
    rows.append(["load before"] + [f"{rec['load_before'][0]:.1f}" for rec in runs])
    rows.append(["peak RSS"] + [f"{rec['peak_rss_mb'] / 1024:.1f} GB" for rec in runs])
    out += table(header, rows)
    return out + provenance(lines, "gplr_scale")


def labeling() -> list[str]:
    lines = load("labeling")
    plain = [rec for rec in lines if "tpm_limit" not in rec]
    tpm = [rec for rec in lines if "tpm_limit" in rec]
    out = ["## Labeling throughput", "",
           "Against the loopback OpenAI-protocol server (200 ms per request). See "
           "[labeling and cost](concepts/labeling.md).", ""]
    out += table(["users", "users/s", "requests", "answered 429 and retried", "lost", "in flight"],
                 [[f"{rec['users']:,}", f"**{rec['users_per_second']:.0f}**", f"{rec['requests']:,}", f"{rec['retries']:,}",
                   rec["lost"], f"{rec['concurrency']} × {rec['partitions']}"] for rec in plain])
    out += table(["token-rate limit", "users", "minutes", "429 answers", "tokens/min admitted after the first minute",
                  "share of the limit", "lost"],
                 [[f"{rec['tpm_limit']:,} TPM", rec["users"], rec["run_minutes"], rec["http_429"],
                   f"{rec['tokens_per_minute_after_first_minute']:,}", f"**{rec['share_of_limit']:.0%}**", rec["lost"]]
                  for rec in tpm])
    out += provenance(lines, "labeling")
    lines = load("labeling_batch")
    out += ["### Batch API", "", "Scripted faults: 5 % of the lines missing, duplicated, malformed or failed.", ""]
    out += table(["users", "batches", "rows", "labels", "error rows (= faulty lines)", "lost", "submitted twice",
                  "cost at batch rates", "same tokens synchronously", "seconds"],
                 [[f"{rec['users']:,}", rec["batches"], f"{rec['rows']:,}", f"{rec['ok']:,}", f"{rec['error']:,}", rec["lost"],
                   rec["lines_submitted_twice"], f"${rec['cost_batch_usd']:.4f}", f"${rec['cost_same_tokens_sync_usd']:.4f}",
                   f"{rec['seconds']:.0f}"] for rec in lines])
    return out + provenance(lines, "labeling_batch")


RECOMMENDERS = [("mf", None, "MF (BPR)"), ("lightgcn", None, "LightGCN (3 layers)"), ("lgcn", None, "LGCN"),
                ("lgcn3", "gpt4", "LGCN3, GPT-4 personas"), ("algcn3", "gpt4", "A-LGCN3 (α = 0.1), GPT-4 personas"),
                ("afdgcf", None, "AFDGCF (LightGCN + AFDGCF's loss, α = 1e-4)"),
                ("lgcn3", "gplr5", "LGCN3, personas from a 5 % GPLR run")]


def recommend() -> list[str]:
    lines = load("recommend")
    summaries = {(rec["summary"], rec["personas"]): rec for rec in lines if "summary" in rec}
    out = ["## Recommender", "",
           "OnlineRetail split; dim 64, k = 128 eigenvectors, lr 0.01, batch 4096, at most 40 epochs, early stop on a "
           "validation split carved from the training edges, test scored once; mean ± std over seeds; nothing tuned. "
           "See [the recommender guide](guides/recommender.md).", ""]
    rows = []
    for model, personas, label in RECOMMENDERS:
        s = summaries.get((model, personas))
        if s:
            rows.append([label, s["seeds"], f"{s['ndcg@10_mean']:.4f} ± {s['ndcg@10_std']:.4f}",
                         f"{s['f1@10_mean']:.4f} ± {s['f1@10_std']:.4f}", f"{s['seconds_mean']:.0f}"])
    out += table(["model", "seeds", "NDCG@10", "F1@10", "s / run"], rows)
    targets = next(rec for rec in lines if rec.get("targets"))
    out += [f"LGCN3 / LGCN on NDCG@10: **{targets['targets']['lgcn3_over_lgcn']:.2f}**; personas from a 5 % GPLR run "
            f"keep {targets['targets']['gplr5_gain_kept']:.0%} of that gain. The first command below (six "
            f"configurations × three seeds, eigen solves included) took {targets['total_seconds'] / 60:.1f} min on "
            "the CPU.", ""]
    out += provenance(lines, "recommend")
    lines = load("cold_start")
    summary = next(rec["summary"] for rec in lines if "summary" in rec)
    out += ["### Cold start", "",
            "10 % of users / items held out with all their edges, 3 seeds. New customers are ranked from their "
            "personas alone; new items are ranked to customers from their persona tags.", ""]
    rows = []
    for task, metric in (("new_customers", "ndcg@10"), ("new_items", "recall@50")):
        means = summary[task]["mean"]
        lift = summary[task][f"relative_lift_{metric}"]
        for method, values in means.items():
            rows.append([task.replace("_", " "), method.replace("_", " "), f3(values["ndcg@10"]), f3(values["f1@10"]),
                         f3(values["recall@50"]), "" if method == "popularity" else f"{lift[method]:+.1%} on {metric}"])
    out += table(["task", "method", "NDCG@10", "F1@10", "recall@50", "vs popularity"], rows)
    return out + provenance(lines, "cold_start")


def segmentation() -> list[str]:
    lines = load("segmentation")
    out = ["## Segmentation and robustness", "",
           "Silhouette of KMeans segments for k = 5 / 15 / 25 / 35 under the project's protocol and the paper's "
           "(Table 9). See [segments and the report](guides/segments-and-report.md).", ""]
    groups: dict[tuple, dict[int, float]] = defaultdict(dict)
    users = {}
    for rec in lines:
        key = (rec["protocol"], rec["representation"], rec.get("labels") or "")
        groups[key][rec["k"]] = rec["silhouette"]
        users[key] = rec["users"]
    rows = []
    for (protocol, representation, labels), by_k in groups.items():
        what = representation + (f", {'GPT-4 labels' if labels == 'gpt4' else 'offline labeler'}" if labels else "")
        rows.append([protocol, what, f"{users[(protocol, representation, labels)]:,}",
                     " / ".join(f3(by_k[k]) for k in sorted(by_k))])
    rows.append(["*paper, Table 9*", "*personas / RFM*", "", "*0.451 / 0.671 / 0.771 / 0.788* vs "
                 "*0.366 / 0.404 / 0.431 / 0.445*"])
    out += table(["protocol", "representation", "customers", "silhouette, k = 5 / 15 / 25 / 35"], rows)
    out += provenance(lines, "segmentation")
    lines = load("robustness")
    out += ["### Robustness", "", "Customers whose personas (or RFM deciles) stay the same between two periods.", ""]
    out += table(["protocol", "representation", "customers", "in both periods", "unchanged", "share"],
                 [[rec["protocol"], rec["representation"], f"{rec['users']:,}", f"{rec.get('in_both_periods', '')}",
                   rec["unchanged"], f"{rec['share_unchanged']:.1%}"] for rec in lines])
    out += ["The paper reports 54 of 300 (18 %) for GPT-4-Turbo personas and 4 of 300 (1.3 %) for RFM.", ""]
    return out + provenance(lines, "robustness")


def worker_zip_cache() -> list[str]:
    lines = load("worker_zip_cache")
    summary = next(rec for rec in lines if rec.get("summary"))
    out = ["## Importing the package in Spark's Python workers", "",
           "Spark calls `importlib.invalidate_caches()` before every Python task; on Python 3.10 and 3.11 that rereads "
           "the directory of every zip archive on the worker's path (pyspark.zip, py4j, the Spark jars). Importing "
           "`persona_spark` in a worker keeps those directories, which do not change while the worker lives "
           "(`persona_spark/runtime/worker.py`; nothing changes in the driver or on Python 3.12+). One-row "
           "`mapInArrow` tasks, each variant in its own session, median of the repeats:", ""]
    out += table(["", "seconds per task", "one `invalidate_caches()` call"],
                 [["with the package imported", f"{summary['per_task_s_with_fix']:.3f}",
                   f"{summary['invalidate_caches_s_with_fix'] * 1e6:.0f} µs"],
                  ["without", f"{summary['per_task_s_without_fix']:.3f}",
                   f"{summary['invalidate_caches_s_without_fix'] * 1e3:.0f} ms"]])
    return out + provenance(lines, "worker_zip_cache")


def render() -> str:
    out = ["# Benchmarks", "",
           "<!-- generated by benchmarks/render_docs.py from benchmarks/results/*.jsonl; do not edit -->", "",
           "Every figure on this page is a line a script under `benchmarks/` printed and appended to its results file "
           "(`benchmarks/results/<benchmark>.jsonl`, one per benchmark and figure), with the command, the machine and "
           "the date; `python benchmarks/render_docs.py` rebuilds the page from those files. The machine is a 2-core "
           "development box with local Spark (`local[2]`), often shared with other jobs, so the seconds are upper "
           "bounds; the quality figures do not depend on it.", ""]
    for section in (gplr_quality, offline_labeler, affinity, affinity_scale, affinity_side_by_side, gplr_scale,
                    labeling, recommend, segmentation, worker_zip_cache):
        out += section()
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/benchmarks.md is not current")
    args = parser.parse_args(argv)
    page = render()
    if args.check:
        current = PAGE.exists() and PAGE.read_text() == page
        print("docs/benchmarks.md is current" if current else "docs/benchmarks.md is stale: run "
              "python benchmarks/render_docs.py", file=sys.stderr)
        return 0 if current else 1
    PAGE.write_text(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
